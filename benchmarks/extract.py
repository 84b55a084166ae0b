"""Extraction speed on SmolLM2-135M: knowlens vs a naive HF loop vs a bare batched forward.

    python benchmarks/extract.py [--n 48] [--batch-size 8] [--threads 2] [--rounds 2]

Prints tokens/s and ratios, all measured side by side in one process (the machine is noisy,
so each contender runs ``--rounds`` times interleaved and the best time counts):

  (a) knowlens ``extract_texts``: all 31 hidden states at every position, float16, written to
      a fresh cache (memmap shards), i.e. the full product path;
  (b) naive: one example at a time, ``model(..., output_hidden_states=True)``, stacked and
      copied to float16 numpy (LM head included, as in typical user code);
  (c) ceiling: a bare batched forward of the trunk (``model.model``, no LM head, no hooks,
      nothing kept) over the same length-sorted batches as (a);
  (a') knowlens with few layers (``--few``, default 0,4,8): early stop after block 8.

Targets (issue 3): (a)/(c) >= 0.9, (a)/(b) >= 1.5, (a') > (c).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import tempfile
import time

import numpy as np
import torch

SENTENCES = [
    "The capital of France is Paris, a city on the Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The Pacific is the largest and deepest of the world's oceans.",
    "Mount Kilimanjaro is the highest mountain in Africa.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "The speed of light in vacuum is about 300,000 kilometres per second.",
    "Honey never spoils if it is stored in a sealed container.",
    "The Great Wall of China stretches for thousands of kilometres.",
    "Octopuses have three hearts and blue blood.",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """Deterministic texts of 1-8 sentences (roughly 15-120 tokens): mixed lengths."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(SENTENCES, k=rng.randint(1, 8))) for _ in range(n)]


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds): CPU time is steadier on a shared machine."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--few", default="0,4,8")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from knowlens.activations import extract_texts
    from knowlens.models import load_model

    model = load_model(args.model, device="cpu")
    hf, tok = model.model, model.tokenizer
    texts = make_texts(args.n)
    enc = [tok(t)["input_ids"] for t in texts]
    n_tokens = sum(len(e) for e in enc)
    few = [int(x) for x in args.few.split(",")]
    print(
        f"{model.name}: {args.n} texts, {n_tokens} tokens (lengths {min(map(len, enc))}-"
        f"{max(map(len, enc))}), batch {args.batch_size}, {args.threads} threads, "
        f"torch {torch.__version__}, attn {hf.config._attn_implementation}",
        flush=True,
    )

    order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))  # as knowlens batches
    batches = []
    for s in range(0, len(order), args.batch_size):
        rows = order[s : s + args.batch_size]
        t = max(len(enc[r]) for r in rows)
        ids = torch.full((len(rows), t), tok.pad_token_id, dtype=torch.long)
        am = torch.zeros((len(rows), t), dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(enc[r])] = torch.tensor(enc[r])
            am[j, : len(enc[r])] = 1
        batches.append((ids, am, torch.arange(t)[None].expand(len(rows), -1)))

    caches: list[str] = []  # a fresh cache per knowlens run, deleted after the timings

    def fresh_cache() -> None:
        caches.append(tempfile.mkdtemp(prefix="knowlens-bench-"))
        os.environ["KNOWLENS_CACHE"] = caches[-1]

    def knowlens_all() -> None:
        fresh_cache()
        acts = extract_texts(
            model, texts, layers="all", tokens="all", batch_size=args.batch_size, progress=False
        )
        assert acts.shape[:2] == (args.n, model.n_layers + 1)

    def knowlens_few() -> None:
        fresh_cache()
        extract_texts(
            model, texts, layers=few, tokens="all", batch_size=args.batch_size, progress=False
        )

    @torch.inference_mode()
    def naive() -> None:
        for e in enc:
            out = hf(torch.tensor([e]), output_hidden_states=True)
            np.stack([h[0].to(torch.float16).numpy() for h in out.hidden_states])

    @torch.inference_mode()
    def bare() -> None:
        for ids, am, pos in batches:
            hf.model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False)

    contenders = {
        "(a) knowlens, all layers, all positions": knowlens_all,
        "(b) naive per-example loop": naive,
        "(c) bare batched trunk forward": bare,
        f"(a') knowlens, layers {args.few}": knowlens_few,
    }
    bare()  # warm-up (allocator, SDPA kernels)
    wall = {k: float("inf") for k in contenders}
    cpu = {k: float("inf") for k in contenders}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            w, c = timed(fn)
            wall[k], cpu[k] = min(wall[k], w), min(cpu[k], c)
            print(f"  {k}: {w:.2f} s wall, {c:.2f} s cpu", flush=True)
    for d in caches:
        shutil.rmtree(d, ignore_errors=True)
    print(f"{'':44s} {'wall s':>8s} {'cpu s':>8s} {'tokens/s':>9s}")
    for k in contenders:
        print(f"{k:44s} {wall[k]:8.2f} {cpu[k]:8.2f} {n_tokens / wall[k]:9.0f}")
    for name, t in (("wall", wall), ("cpu", cpu)):
        a, b, c, few_t = t.values()
        print(
            f"{name}: (a)/(c) = {c / a:.2f} (>= 0.9)   (a)/(b) = {b / a:.2f} (>= 1.5)   "
            f"(a')/(c) = {c / few_t:.2f} (> 1)"
        )


if __name__ == "__main__":
    main()
