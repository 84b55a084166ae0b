"""Hidden states while generating vs ``generate`` then ``extract``, on SmolLM2-135M.

    python benchmarks/generate_extract.py [--n 32] [--batch-size 16] [--threads 2] [--rounds 2]
    python benchmarks/generate_extract.py --parity [--models tiny,smollm2-135m-instruct,gemma3-270m]

Side by side in one process, each contender on a fresh cache (the full product path: cache
entries written, ``dtype="auto"``), ``--rounds`` times interleaved, best time counts:

  (a) ``kl.generate(model, task)`` then ``kl.extract(model, gens, layers=..., tokens=...)``;
  (b) ``kl.generate(model, task, layers=..., tokens=...)``: one pass;

for all layers at ``exact_answer`` and for 3 layers (``--few``, default n/4, n/2, -1).
Prints (a)/(b) per setting. Target (issue 14): >= 1.5x.

``--parity`` instead measures, per selector, max |captured - teacher-forced| / max |value| of
that layer (float32, all layers, the worst layer) on the answers of ``--task``: the table in
``knowlens.activations._capture`` and docs/ARCHITECTURE.md. ``tiny`` is the tests' random
4-layer Llama (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def timed(fn: Any) -> tuple[float, float, Any]:
    """(wall seconds, process CPU seconds, result): CPU time is steadier on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def tiny_model() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_tiny_llama, build_tiny_tokenizer
    from knowlens.models import handle_from_objects

    tok = build_tiny_tokenizer()
    return handle_from_objects(build_tiny_llama(len(tok), seed=1, n_layers=4), tok, name="tiny")


def parity(args: argparse.Namespace) -> None:
    import knowlens as kl
    from knowlens.activations import SELECTORS, extract, generate_capturing

    task = kl.load_task(args.task, limit=args.n)
    rows: dict[str, dict[str, str]] = {}
    for spec in args.models.split(","):
        model = tiny_model() if spec == "tiny" else kl.load_model(spec, device="cpu")
        t0 = time.perf_counter()
        gens, sets = generate_capturing(
            model,
            task,
            [("all", t) for t in SELECTORS],
            dtype="float32",
            batch_size=args.batch_size,
            cache=False,
            progress=False,
        )
        assert sets is not None
        stops = {r: sum(g.stop_reason == r for g in gens) for r in ("eos", "newline", "length")}
        print(f"{model.name}: {len(gens)} answers {stops}, {time.perf_counter() - t0:.1f} s")
        for acts in sets:
            ref = extract(
                model,
                gens,
                layers="all",
                tokens=acts.tokens,
                dtype="float32",
                cache=False,
                progress=False,
            )
            a, r = np.asarray(acts.values), np.asarray(ref.values)
            assert (acts.positions == ref.positions).all() and (acts.mask == ref.mask).all()
            scale = np.abs(r).max(axis=(0, 2, 3), keepdims=True)
            rel = float((np.abs(a - r) / scale).max())
            rows.setdefault(acts.tokens, {})[model.name] = f"{rel:.1e}"
            print(f"  {acts.tokens:20s} rel {rel:.2e}  abs {float(np.abs(a - r).max()):.2e}")
    names = list(next(iter(rows.values())))
    print(f"\n{'selector':20s} " + " ".join(f"{n:>24s}" for n in names))
    for tokens, cells in rows.items():
        print(f"{tokens:20s} " + " ".join(f"{cells[n]:>24s}" for n in names))


def speed(args: argparse.Namespace) -> None:
    import knowlens as kl

    model = kl.load_model(args.model, device="cpu")  # converted in the user's cache once
    task = kl.load_task(args.task, limit=args.n)
    n = model.n_layers
    few = [int(x) for x in args.few.split(",")] if args.few else [n // 4, n // 2, -1]
    settings = {"all layers": "all", f"layers {few}": few}
    gen_kw = dict(batch_size=args.batch_size, progress=False)
    print(
        f"{model.name}: {args.task} x {len(task.examples)}, batch {args.batch_size}, "
        f"{args.threads} threads, torch {torch.__version__}",
        flush=True,
    )

    def fresh(fn: Any) -> Any:
        def run() -> Any:
            with tempfile.TemporaryDirectory() as d:
                os.environ["KNOWLENS_CACHE"] = d
                return fn()

        return run

    contenders: dict[str, Any] = {}
    for label, layers in settings.items():

        def separate(layers: Any = layers) -> Any:
            gens = kl.generate(model, task, **gen_kw)
            acts = kl.extract(model, gens, layers=layers, tokens=args.tokens, progress=False)
            return gens, acts

        def joint(layers: Any = layers) -> Any:
            return kl.generate(model, task, layers=layers, tokens=args.tokens, **gen_kw)

        contenders[f"{label}: (a) generate, then extract"] = fresh(separate)
        contenders[f"{label}: (b) one pass"] = fresh(joint)

    wall = {k: float("inf") for k in contenders}
    cpu = {k: float("inf") for k in contenders}
    out: dict[str, Any] = {}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            w, c, out[k] = timed(fn)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
            print(f"  {k}: {w:.2f} s wall, {c:.2f} s cpu", flush=True)
    keys = list(contenders)
    for i in range(0, len(keys), 2):
        (ga, aa), (gb, ab) = out[keys[i]], out[keys[i + 1]]
        assert ga.to_frame().equals(gb.to_frame()), "the answers differ"
        assert aa.meta["cache_key"] == ab.meta["cache_key"], "not extract's entry"
        a32, b32 = np.asarray(aa.values, np.float32), np.asarray(ab.values, np.float32)
        rel = float(np.abs(a32 - b32).max() / max(np.abs(a32).max(), 1e-30))
        label = keys[i].split(":")[0]
        print(
            f"{label}: {aa.shape} {aa.values.dtype}, answers identical, max rel diff {rel:.1e}; "
            f"(a)/(b) wall {wall[keys[i]] / wall[keys[i + 1]]:.2f}x, "
            f"cpu {cpu[keys[i]] / cpu[keys[i + 1]]:.2f}x (target >= 1.5x)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="capitals")
    ap.add_argument("--tokens", default="exact_answer")
    ap.add_argument("--few", default="", help="the 3-layer setting, e.g. 7,15,30")
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--models", default="tiny,smollm2-135m-instruct,gemma3-270m")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parity(args) if args.parity else speed(args)


if __name__ == "__main__":
    main()
