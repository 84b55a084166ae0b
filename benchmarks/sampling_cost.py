"""What sampling costs beside greedy decoding, per question (issue 16).

    python benchmarks/sampling_cost.py [--models smollm2-135m-instruct,gemma3-270m]
        [--tasks capitals,sentiment_gen] [--n 70] [--k 5,10] [--rounds 2]

For each model and task, the same ``--n`` test questions are answered greedily
(``knowlens.generate``) and with ``k`` samples each (``knowlens.sample``, temperature 1,
seeded; the K samples of a prompt share its prefill), caches off, in one process; every
contender runs ``--rounds`` times interleaved and the best time counts (the machine is
noisy: only the ratios measured side by side here are meaningful). Prints seconds per
question and the ratio sample / greedy.
"""

from __future__ import annotations

import argparse
import time

import knowlens as kl


def _seconds(model, task, k: int | None) -> float:
    """One uncached greedy decode (``k`` None) or draw of ``k`` samples per question."""
    t0 = time.perf_counter()
    if k is None:
        kl.generate(model, task, cache=False, progress=False)
    else:
        kl.sample(model, task, k=k, seed=0, cache=False, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--tasks", default="capitals,sentiment_gen")
    ap.add_argument("--n", type=int, default=70)
    ap.add_argument("--k", default="5,10")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    ks = [int(x) for x in a.k.split(",")]
    cols = " ".join(f"{'K=' + str(k) + ' s/q (x greedy)':>22s}" for k in ks)
    print(f"{'model':24s} {'task':14s} {'greedy s/q':>10s} {cols}")
    for spec in a.models.split(","):
        model = kl.load_model(spec)
        for name in a.tasks.split(","):
            task = kl.load_task(name, split="test", limit=a.n)
            n = len(task.examples)
            _seconds(model, kl.load_task(name, split="train", limit=4), 2)  # warm-up, untimed
            best: dict[int | None, float] = {}
            for _ in range(a.rounds):  # interleaved: each contender sees the same load
                for k in [None, *ks]:
                    best[k] = min(best.get(k, float("inf")), _seconds(model, task, k))
            greedy = best[None]
            cells = " ".join(f"{f'{best[k] / n:.3f} ({best[k] / greedy:.1f}x)':>22s}" for k in ks)
            print(f"{model.name:24s} {name:14s} {greedy / n:10.3f} {cells}", flush=True)


if __name__ == "__main__":
    main()
