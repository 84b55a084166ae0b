"""Peak memory of generation + extraction as the data grows: 200 vs 2,000 examples.

    python benchmarks/memory.py [--sizes 200,2000] [--max-new-tokens 8] [--model smollm2-135m-instruct]

Each size runs in a fresh process (peak RSS is a per-process high-water mark), uncached (the
converted model comes from the usual cache): greedy answers to ``n`` distinct questions (``generate_texts``, batch 16), then
every layer's hidden state at the last answer token (``extract``, float16 memmap shards).
What must not grow with ``n`` is everything held in memory at once: the model, one batch of
KV cache and hidden states, one shard being written. What may grow is the list of
``Generation`` rows (a few KB each) and the results on disk.

Target (issue 14): peak RSS at the largest size within 10 % of the smallest.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

COUNTRIES = [
    "France", "Japan", "Brazil", "Kenya", "Canada", "Norway", "India", "Peru", "Egypt",
    "Italy", "Chile", "Vietnam", "Spain", "Ghana", "Poland", "Mexico", "Sweden", "Nepal",
    "Cuba", "Greece",
]  # fmt: skip
ASKS = [
    "What is the capital of {}?",
    "Name a river in {}.",
    "Which language is spoken in {}?",
    "Name a famous dish from {}.",
    "What currency does {} use?",
]


def prompts(n: int) -> list[str]:
    # Distinct texts (no cache or dedup can shortcut them) of realistic, varied lengths.
    base = [a.format(c) for a in ASKS for c in COUNTRIES]
    return [f"{base[i % len(base)]} (question {i + 1})" for i in range(n)]


def child(n: int, args: argparse.Namespace) -> None:
    import torch

    from knowlens.activations import extract
    from knowlens.generation import generate_texts
    from knowlens.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    gens = generate_texts(
        model, prompts(n), max_new_tokens=args.max_new_tokens, batch_size=16, cache=False,
        progress=False,
    )  # fmt: skip
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    acts = extract(
        model, gens, layers="all", tokens="last", batch_size=8, cache=False, progress=False
    )
    t_ext = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    print(
        json.dumps(
            {
                "n": n,
                "after_load_mib": base_rss,
                "peak_mib": peak,
                "gen_s": t_gen,
                "extract_s": t_ext,
                "shape": list(acts.values.shape),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="200,2000")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{args.model}, {args.max_new_tokens} new tokens, all layers at the last answer token")
    print(f"{'n':>6s} {'after load MiB':>15s} {'peak MiB':>9s} {'gen s':>7s} {'extract s':>10s}")
    res = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", str(n)]
        cmd += ["--max-new-tokens", str(args.max_new_tokens), "--model", args.model]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        res.append(r)
        print(
            f"{r['n']:6d} {r['after_load_mib']:15.0f} {r['peak_mib']:9.0f} "
            f"{r['gen_s']:7.1f} {r['extract_s']:10.1f}",
            flush=True,
        )
    growth = res[-1]["peak_mib"] / res[0]["peak_mib"] - 1
    print(f"peak RSS growth {sizes[0]} -> {sizes[-1]}: {100 * growth:+.1f} % (target <= +10 %)")


if __name__ == "__main__":
    main()
