"""Shared prompt prefixes on a few-shot task: knowlens' decoder with and without running each
shared prefix once, and HF ``generate`` at the same batch size, on the embedded models; then
the Zero-Shot Classifier's reads of those answers with and without.

    python benchmarks/prefix_sharing.py [--task mc_suite] [--n 160] [--rounds 2]

Few-shot prompts of one topic begin with the same instructions and worked examples, so most
of a prefill re-reads text another prompt already read; with short answers (``mc_suite``:
3 new tokens) the prefill is nearly all of the work. The three contenders greedily answer the
same prompts (``kl.generate``'s prompts and stop rule; HF with knowlens' order and padding,
``batch_size`` per call, answers cut where knowlens' rule stops), interleaved over
``--rounds`` (best time counts). The script checks that the answers are identical and prints
the largest log-prob difference between sharing and not sharing (ulps: other batch shapes).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mc_suite")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import knowlens as kl

    task = kl.load_task(args.task, split="test", limit=args.n, seed=0)
    for name in args.models.split(","):
        run_model(name, task, args)


def decode(model: Any, task: Any, batch_size: int, minimum: int) -> Any:
    """``kl.generate`` with prefixes of at least ``minimum`` tokens shared."""
    import knowlens as kl
    from knowlens import generation as G

    default, G._MIN_SHARED = G._MIN_SHARED, minimum
    try:
        return kl.generate(model, task, batch_size=batch_size, cache=False, progress=False)
    finally:
        G._MIN_SHARED = default


@torch.inference_mode()
def hf_generate(model: Any, gens: Any, batch_size: int) -> list[list[int]]:
    """HF ``generate`` on ``gens``' prompts in knowlens' order and padding, each batch up to
    its longest answer; answers cut to knowlens' lengths (its stop rule)."""
    from knowlens.models._batch import pad_batch, pad_id

    pad = pad_id(model.tokenizer)
    order = sorted(range(len(gens)), key=lambda i: (-len(gens[i].prompt_ids), i))
    res: list[list[int]] = [[] for _ in order]
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        ids, mask, _ = pad_batch([gens[i].prompt_ids for i in chunk], pad)
        new = model.model.generate(
            ids, attention_mask=mask, do_sample=False, pad_token_id=pad,
            max_new_tokens=max(len(gens[i].answer_ids) for i in chunk) + 1,
        )[:, ids.shape[1] :]  # fmt: skip
        for j, i in enumerate(chunk):
            res[i] = new[j, : len(gens[i].answer_ids)].tolist()
    return res


def fed_tokens(ids: list[list[int]], window: int) -> int:
    """Prompt tokens the prefills feed with shared prefixes run once (within each window)."""
    from knowlens import generation as G

    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    fed = 0
    for s in range(0, len(order), window):
        w = [ids[i] for i in order[s : s + window]]
        lens = G.shared_prefix_lengths(w)
        fed += sum(len(p) - n for p, n in zip(w, lens, strict=True))
        fed += sum(len(p) for p in {tuple(p[:n]) for p, n in zip(w, lens, strict=True) if n})
    return fed


def run_model(name: str, task: Any, args: argparse.Namespace) -> None:
    import knowlens as kl
    from knowlens import generation as G

    model = kl.load_model(name)
    out: dict[str, Any] = {}
    names = ("knowlens, shared prefixes once", "knowlens, whole prompts", "HF generate")
    best = dict.fromkeys(names, float("inf"))
    for r in range(args.rounds):
        for k in names:
            t0 = time.perf_counter()
            if k == names[0]:
                out[k] = decode(model, task, args.batch_size, G._MIN_SHARED)
            elif k == names[1]:
                out[k] = decode(model, task, args.batch_size, 10**9)
            else:
                out[k] = hf_generate(model, out[names[0]], args.batch_size)
            best[k] = min(best[k], time.perf_counter() - t0)
            print(f"  {name} round {r + 1} {k}: {best[k]:.2f} s", flush=True)
    a, b, hf = (out[k] for k in names)
    ids = [g.prompt_ids for g in a]
    fed = fed_tokens(ids, G.decode_window(args.batch_size))
    same = sum(x.answer_ids == y.answer_ids for x, y in zip(a, b, strict=True))
    same_hf = sum(x.answer_ids == y for x, y in zip(a, hf, strict=True))
    dlp = max(
        float(np.max(np.abs(np.subtract(x.token_logprobs, y.token_logprobs)), initial=0.0))
        for x, y in zip(a, b, strict=True)
    )
    print(
        f"{name}, {task.name} x {len(a)} (accuracy {a.accuracy:.2f}): prefills feed {fed} of "
        f"{sum(map(len, ids))} prompt tokens; identical answers {same}/{len(a)} vs whole "
        f"prompts, {same_hf}/{len(a)} vs HF; max |log-prob difference| {dlp:.1e}"
    )
    print(
        f"  shared prefixes: {best[names[1]] / best[names[0]]:.2f}x whole prompts, "
        f"{best[names[2]] / best[names[0]]:.2f}x HF generate at batch {args.batch_size}",
        flush=True,
    )
    zero_shot(model, a, args.rounds)


def zero_shot(model: Any, gens: Any, rounds: int) -> None:
    """The Zero-Shot Classifier's reads of the same answers (its query repeats the few-shot
    prompt), with and without shared prefixes."""
    from knowlens import generation as G
    from knowlens.estimators import ZeroShotClassifier

    default = G._MIN_SHARED
    best, p = {}, {}
    for r in range(rounds):
        for label, minimum in (("shared prefixes once", default), ("whole queries", 10**9)):
            G._MIN_SHARED = minimum
            try:
                t0 = time.perf_counter()
                p[label] = ZeroShotClassifier(model=model, progress=False).fit().predict_proba(gens)
                best[label] = min(best.get(label, float("inf")), time.perf_counter() - t0)
            finally:
                G._MIN_SHARED = default
            print(f"  zero-shot classifier round {r + 1}, {label}: {best[label]:.2f} s", flush=True)
    shared, whole = best["shared prefixes once"], best["whole queries"]
    diff = float(np.abs(p["shared prefixes once"] - p["whole queries"]).max())
    print(
        f"  zero-shot classifier: shared prefixes {whole / shared:.2f}x whole queries; "
        f"max |P(correct) difference| {diff:.1e}",
        flush=True,
    )


if __name__ == "__main__":
    main()
