"""Every registered estimator on one table: AUROC, PRR and ECE with bootstrap CIs, and time.

    python benchmarks/estimator_families.py --models smollm2-135m-instruct,gemma3-270m \
        --tasks capitals,sentiment_gen --train 200 --test 200 --k 5,10

Per model x task: greedy answers on the train and test splits, the estimators fitted on the
train answers (through the registry, as the analyses build them) and scored on the test
answers; sample estimators are run once per K with samples drawn by ``knowlens.sample``
(time of the draw reported per question beside greedy's). Caches are used as in any run
(``--no-cache`` for cold times). Writes a CSV next to ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import knowlens as kl
from knowlens import metrics
from knowlens._types import SampledGenerations
from knowlens.estimators import estimator_names, get_estimator
from knowlens.experiments._estimators import TrainSettings

# trained on 100s of answers and slow on CPU: run only when asked
SLOW = {"lora"}


def _inputs(spec, model, gens, task, samples_by_k, k, cache):
    src = spec.inputs.source
    if src == "generations":
        return gens
    if src == "activations":
        layer = spec.inputs.resolve_layer(model.n_layers)
        return kl.extract(model, gens, layers=[layer], tokens=spec.inputs.tokens, progress=False)
    key = (gens.meta.get("cache_key"), k)
    if key not in samples_by_k:
        t0 = time.perf_counter()
        s = kl.sample(model, gens, k=k, task=task, seed=0, cache=cache, progress=False)
        samples_by_k[key] = (SampledGenerations.of(gens, s), time.perf_counter() - t0)
    return samples_by_k[key][0]


def _remember_uncertainty(est) -> dict[int, np.ndarray]:
    """Make ``est.uncertainty`` remember its value per input object, so the raw score of the
    test answers is the one ``predict_proba`` computed (sample judges, P(True) reads: not
    paid twice). Returns the memo; empty for estimators without one raw score."""
    memo: dict[int, np.ndarray] = {}
    orig = getattr(est, "uncertainty", None)
    if orig is None:
        return memo

    def uncertainty(X):
        if id(X) not in memo:
            memo[id(X)] = np.asarray(orig(X), dtype=float)
        return memo[id(X)]

    est.uncertainty = uncertainty  # instance attribute: this run only
    return memo


def _raw_confidence(u: np.ndarray | None) -> np.ndarray | None:
    """The raw score's ranking as a confidence in (0, 1) (``-uncertainty`` ranked: AUROC and
    PRR depend only on the order; undefined scores at the median). Its AUROC is the method's
    own (what LM-Polygraph reports), whatever calibration did: a clipped calibration slope
    makes P(correct) constant (AUROC 0.5), not the raw score."""
    from scipy.stats import rankdata

    if u is None:
        return None
    return rankdata(np.where(np.isnan(u), np.nanmedian(u), -u)) / (len(u) + 1)


def _note(est, n_train: int, n_test: int) -> str:
    """What a reader of the table must know to read a row: statements not parsed
    (verbalised confidence), a calibration slope clipped to 0 (constant P(correct))."""
    out = []
    if getattr(est, "n_unparsed_", None) is not None:
        out.append(
            f"unparsed {est.n_unparsed_}/{n_train} train, {est.last_n_unparsed}/{n_test} test"
        )
    cal = getattr(est, "calibration_", None)
    if isinstance(cal, dict) and cal.get("slope_clipped"):
        out.append("calibration slope clipped to 0 (constant)")
    if getattr(est, "best_step_", None) is not None:
        out.append(f"kept step {est.best_step_} of {est.stopped_step_} (budget {est.steps})")
    return "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", default="capitals,sentiment_gen")
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--k", default="5,10")
    ap.add_argument("--estimators", default="", help="comma list; default: all but LoRA")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--lora-steps", type=int, default=None, help="LoRA step budget")
    ap.add_argument("--out", default="benchmarks/results/estimator_families.csv")
    a = ap.parse_args()
    cache = not a.no_cache
    names = (
        a.estimators.split(",") if a.estimators else [n for n in estimator_names() if n not in SLOW]
    )
    ks = [int(x) for x in a.k.split(",")]
    settings = TrainSettings() if a.lora_steps is None else TrainSettings(lora_steps=a.lora_steps)
    rows = []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec_m in a.models.split(","):
        model = kl.load_model(spec_m)
        for tname in a.tasks.split(","):
            tr_task = kl.load_task(tname, split="train", limit=a.train)
            te_task = kl.load_task(tname, split="test", limit=a.test)
            t0 = time.perf_counter()
            g_tr = kl.generate(model, tr_task, cache=cache, progress=False)
            g_te = kl.generate(model, te_task, cache=cache, progress=False)
            greedy_s = (time.perf_counter() - t0) / (len(g_tr) + len(g_te))
            y = g_te.correct
            print(
                f"{model.name} {tname}: train acc {g_tr.accuracy:.2f} (n={len(g_tr)}), "
                f"test acc {g_te.accuracy:.2f} (n={len(g_te)}); greedy {greedy_s:.3f} s/question"
            )
            samples: dict = {}
            for name in names:
                spec = get_estimator(name)
                for k in ks if spec.inputs.source == "samples" else [None]:
                    t0 = time.perf_counter()
                    est = spec.make(model=model, settings=settings, seed=0)
                    X_tr = _inputs(spec, model, g_tr, tr_task, samples, k, cache)
                    X_te = _inputs(spec, model, g_te, te_task, samples, k, cache)
                    sample_s = sum(v[1] for kk, v in samples.items() if kk[1] == k) if k else 0.0
                    memo = _remember_uncertainty(est)
                    t1 = time.perf_counter()
                    est.fit(X_tr, g_tr.correct)
                    p = np.asarray(est.predict_proba(X_te), dtype=float)
                    fit_s = time.perf_counter() - t1
                    row = {
                        "model": model.name,
                        "task": tname,
                        "estimator": spec.display_name,
                        "k": k,
                        "n_test": int(np.isfinite(y).sum()),
                        "seconds": round(fit_s, 2),
                        "sampling_s_per_question": round(sample_s / (len(g_tr) + len(g_te)), 3)
                        if k
                        else None,
                        "greedy_s_per_question": round(greedy_s, 3),
                        "inputs_s": round(t1 - t0, 2),
                    }
                    row["note"] = _note(est, len(g_tr), len(g_te))
                    for m in ("auroc", "prr", "ece"):
                        iv = metrics.bootstrap(m, y, p, n_resamples=a.n_bootstrap, seed=0)
                        row[m], row[f"{m}_low"], row[f"{m}_high"] = iv.value, iv.low, iv.high
                    raw = _raw_confidence(memo.get(id(X_te)))
                    for m in ("auroc", "prr") if raw is not None else ():
                        iv = metrics.bootstrap(m, y, raw, n_resamples=a.n_bootstrap, seed=0)
                        row[f"{m}_raw"], row[f"{m}_raw_low"], row[f"{m}_raw_high"] = (
                            iv.value,
                            iv.low,
                            iv.high,
                        )
                    rows.append(row)
                    pd.DataFrame(rows).to_csv(out, index=False)  # a stopped run keeps its rows
                    print(
                        f"  {spec.display_name:28s} k={k!s:4s} AUROC {row['auroc']:.3f} "
                        f"[{row['auroc_low']:.3f}, {row['auroc_high']:.3f}]  PRR {row['prr']:.3f} "
                        f"ECE {row['ece']:.3f}  raw AUROC {row.get('auroc_raw', float('nan')):.3f}"
                        f"  ({fit_s:.1f}s)",
                        flush=True,
                    )
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
