"""Child process of the kill suite: one knowlens job on a tiny model, then its result's bytes.

    python _kill_child.py generate|extract|run MODEL_DIR OUT_JSON '{"batch_size": 4}'

Prints nothing; on success writes ``OUT_JSON``: {file name: xxh3 of its bytes} of the job's
published result, so the parent can compare an interrupted + resumed job with a clean one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import xxhash

N = 160  # examples: many batches / shards, so a kill lands between records


QUESTIONS = {"kill_run_b": "Which country is city {i} in?"}


def _task(name: str = "kill_toy", gold: dict[str, tuple[str, ...]] | None = None):
    from knowlens.tasks import Example, TaskSpec, register_task

    examples = [
        Example(
            id=f"q{i:02d}",
            question=QUESTIONS.get(name, "What is the capital of country {i}?").format(i=i),
            answers=(gold or {}).get(f"q{i:02d}", ("zzzq",)),
            topic=f"t{i % 2}",
        )
        for i in range(N)
    ]
    mod = sys.modules[__name__]
    setattr(mod, f"_build_{name}", lambda: examples)
    register_task(
        TaskSpec(
            name=name,
            builder=f"{__name__}:_build_{name}",
            kind="qa",
            grader="alias_substring",
            template="Q: {question}\nA:",
            max_new_tokens=8,
        ),
        overwrite=True,
    )
    return name


VOLATILE = {"seconds", "batches_reused", "cache_hit"}  # how the run went, not what it computed


def _bytes(p: Path) -> bytes:
    if p.name == "meta.json":
        meta = json.loads(p.read_text())
        return json.dumps({k: v for k, v in meta.items() if k not in VOLATILE}).encode()
    return p.read_bytes()


def _digests(paths: list[Path], root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): xxhash.xxh3_128(_bytes(p)).hexdigest()
        for p in sorted(paths)
        if p.is_file() and p.name != "checksums.json"
    }


def main() -> None:
    job, model_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    opts = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    import torch

    torch.set_num_threads(1)
    sys.modules.setdefault("_kill_child", sys.modules[__name__])
    from knowlens._cache import entry_dir
    from knowlens.models import load_model
    from knowlens.tasks import load_task

    model = load_model(model_dir, device="cpu")
    import time

    t0 = time.perf_counter()
    Path(str(out) + ".started").write_text("")  # the parent's kill clock starts here
    if job in ("generate", "extract"):
        from knowlens.generation import generate

        task = load_task(_task(), split="test", limit=None)
        gens = generate(model, task, batch_size=opts.get("gen_batch_size", 4), progress=False)
        entry = entry_dir("generations", gens.meta["cache_key"])
        result = _digests(list(entry.iterdir()), entry)
        if job == "extract":
            from knowlens.activations import extract

            acts = extract(
                model,
                gens,
                layers="all",
                tokens="all",
                batch_size=opts.get("batch_size", 4),
                shard_size=opts.get("shard_size", 4),
                progress=False,
            )
            entry = Path(acts.meta["path"])
            result = _digests(
                [entry / f for f in ("values.npy", "mask.npy", "positions.npy")], entry
            )
    elif job == "run":
        from knowlens.experiments import run

        # Gold = the model's own greedy answers on every other example: both classes present.
        from knowlens.generation import generate

        for name in ("kill_run_a", "kill_run_b"):
            gold: dict[str, tuple[str, ...]] = {}
            _task(name)
            for split in ("train", "validation", "test"):
                g = generate(model, load_task(name, split=split), progress=False)
                for k, r in enumerate(g):
                    if k % 2 == 0 and r.answer.strip():
                        gold[r.example_id] = (r.answer.strip(),)
            _task(name, gold)
        out_dir = Path(opts["output"])
        res = run(
            {
                "name": "kill",
                "analysis": "probe_transfer",
                "models": [model_dir],
                "tasks": ["kill_run_a", "kill_run_b"],
                "sweep_layers": [1, 2],
                "n_bootstrap": 20,
                "device": "cpu",
                "min_n": 2,
            },
            output=out_dir,
            progress=False,
        )
        tables = res.run_dir / "tables"
        result = _digests([p for p in tables.iterdir() if p.suffix == ".parquet"], tables)
    else:
        raise SystemExit(f"unknown job {job}")
    Path(str(out) + ".seconds").write_text(f"{time.perf_counter() - t0:.3f}")
    out.write_text(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
