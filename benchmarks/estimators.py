"""The estimators on the embedded models: topic_calibration's estimator stage, before vs
after shared query reads and length-bucketed LoRA batches (default), or every estimator's
quality on a built-in QA task (``--quality``).

Stage (issue 14, target >= 2x): the four seed estimators (zero_shot, probe, lora,
lora_prompt) fitted on a training mix and scored on the multiple-choice suite through
``EstimatorBench``, exactly as ``topic_calibration`` runs them, in one process, twice per
repetition, alternating:

* before: every estimator reads alone (``share_reads=False``), LoRA batches are plain
  shuffled batches padded to their longest row (``length_window=1``), LoRA + Prompt runs
  its frozen pass in every training step, and no pass shares a prompt prefix (the code
  path before issue 14);
* after: one ``QueryReads`` per run (the probe's features and LoRA + Prompt's frozen
  states come from the Zero-Shot Classifier's / the probe's passes), bucketed batches,
  and the queries' shared prefixes (chat template, few-shot block) run once per pass
  (``SharedPrefixes``: query reads, LoRA validation and scoring).

Prints seconds (wall and this process' CPU) per estimator and mode, the ratio, the LoRA
training batches' padding share in both modes and how far the scores moved (zero_shot and
probe must agree to 1e-5; the LoRA fits train on other batches, so they may differ more).

    python benchmarks/estimators.py                                 # small stage run
    python benchmarks/estimators.py --limit 32 --eval-limit 66 --lora-steps 12   # demo size
    python benchmarks/estimators.py --quality --task city_country --train-limit 300

Quality (``--quality``): for each model, greedy answers on the train and test splits, each
estimator fitted on train and scored on test: AUROC and ECE with 95% bootstrap intervals.
The logistic probe's layer and token selector are picked by a sweep on the training split
only (stratified 25% validation), as FIGURES.md section 3 prescribes; the "best logit
baseline" is likewise the one with the highest *training* AUROC, so the comparison with the
probes uses no test labels.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_model(name: str, args: argparse.Namespace) -> pd.DataFrame:
    import knowlens as kl
    from knowlens import metrics as M
    from knowlens.estimators import (
        SPANS,
        STATISTICS,
        LogitBaseline,
        LoRAProbe,
        LoRAPrompt,
        MLPProbe,
        PTrue,
        ZeroShotClassifier,
        sweep_probes,
    )

    model = kl.load_model(name)
    train_task = kl.load_task(args.task, split="train", limit=args.train_limit, seed=args.seed)
    test_task = kl.load_task(args.task, split="test", limit=args.test_limit, seed=args.seed)
    gens_tr, t_gen_tr = _timed(lambda: kl.generate(model, train_task))
    gens_te, t_gen_te = _timed(lambda: kl.generate(model, test_task))
    y_tr, y_te = gens_tr.correct, gens_te.correct
    # the bare question (no few-shot block) for the query-based and LoRA estimators
    by_id = {e.id: e.question for e in [*train_task.examples, *test_task.examples]}
    q_tr = [by_id[i] for i in gens_tr.example_ids]
    q_te = [by_id[i] for i in gens_te.example_ids]
    print(
        f"{name}: train {len(gens_tr)} (acc {gens_tr.accuracy:.2f}, {t_gen_tr:.0f}s), "
        f"test {len(gens_te)} (acc {gens_te.accuracy:.2f}, {t_gen_te:.0f}s)",
        flush=True,
    )
    rows: list[dict[str, Any]] = []

    def score(estimator: str, kind: str, p: np.ndarray, fit_s: float, **extra: Any) -> None:
        line = [f"  {estimator:<40s} fit {fit_s:7.1f}s"]
        for metric in ("auroc", "ece"):
            ci = M.bootstrap(metric, y_te, p, n_resamples=args.resamples, seed=args.seed)
            rows.append(
                {
                    "model": name,
                    "estimator": estimator,
                    "kind": kind,
                    "metric": metric,
                    "value": ci.value,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "n": ci.n,
                    "fit_s": fit_s,
                    **extra,
                }
            )
            line.append(f"{metric} {ci.value:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
        print("  ".join(line), flush=True)  # long runs show results as they come

    # -- logit baselines (no training; the best is chosen on training AUROC) -------------
    train_auroc = {}
    for stat in STATISTICS:
        for span in SPANS:
            est = LogitBaseline(statistic=stat, span=span)
            train_auroc[est.name] = M.auroc(y_tr, est.predict_proba(gens_tr))
            p, t = _timed(lambda est=est: est.predict_proba(gens_te))
            score(f"logit {est.name}", "logit", p, 0.0, train_auroc=train_auroc[est.name])
    best_logit = max(
        train_auroc, key=lambda k: -np.inf if np.isnan(train_auroc[k]) else train_auroc[k]
    )

    # -- asking the model -----------------------------------------------------------------
    for cls in (ZeroShotClassifier, PTrue):
        est = cls(model=model, progress=False).fit(gens_tr)
        p, t = _timed(lambda est=est: est.predict_proba(gens_te, q_te))
        score(cls.display_name, "query", p, 0.0, predict_s=t)
        print(f"  {cls.display_name}: {t:.0f}s", flush=True)

    # -- probes -----------------------------------------------------------------------------
    last_layer = model.n_layers
    acts = {}
    for split, g in (("train", gens_tr), ("test", gens_te)):
        acts[split, "last"] = kl.extract(model, g, layers=[last_layer], tokens="last")
    mlp, t = _timed(lambda: MLPProbe(layer=last_layer).fit(acts["train", "last"], gens_tr))
    score("Probe (MLP, last layer/token)", "probe", mlp.predict_proba(acts["test", "last"]), t)

    layers = list(range(0, last_layer + 1, args.layer_stride))
    selectors = ("exact_answer", "last")
    sweep_sets = {s: kl.extract(model, gens_tr, layers=layers, tokens=s) for s in selectors}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep, t_sweep = _timed(lambda: sweep_probes(sweep_sets, gens_tr, seed=args.seed))
        best = sweep.best
        lp, t_fit = _timed(lambda: sweep.best_probe(sweep_sets, gens_tr))
    te = kl.extract(model, gens_te, layers=[int(best["layer"])], tokens=best["tokens"])
    score(
        f"Probe (logistic, L{int(best['layer'])} {best['tokens']})",
        "probe",
        lp.predict_proba(te),
        t_sweep + t_fit,
        val_auroc=best["auroc"],
    )

    # -- LoRA estimators ----------------------------------------------------------------------
    for cls in (LoRAProbe, LoRAPrompt):
        # a fixed number of steps (no validation split): the table compares passes, not fits
        est = cls(
            model=model,
            steps=args.lora_steps,
            validation_fraction=0,
            seed=args.seed,
            cache=not args.no_cache,
        )
        est, t = _timed(lambda est=est: est.fit(gens_tr, questions=q_tr))
        fit_s = est.train_time_s_ if getattr(est, "from_cache_", False) else t
        p = est.predict_proba(gens_te, q_te)
        print(f"  {cls.display_name}: fit {fit_s:.0f}s", flush=True)
        score(
            f"{cls.display_name} ({args.lora_steps} steps)",
            "lora",
            p,
            fit_s,
            loss_first=float(np.mean(est.loss_history_[:5])),
            loss_last=float(np.mean(est.loss_history_[-5:])),
        )

    df = pd.DataFrame(rows)
    df["best_logit"] = df["estimator"] == f"logit {best_logit}"
    df["train_acc"] = gens_tr.accuracy
    df["test_acc"] = gens_te.accuracy
    return df


# -- topic_calibration's estimator stage, before vs after ---------------------------------
STAGE_ESTIMATORS = ("zero_shot", "probe", "lora", "lora_prompt")


@contextlib.contextmanager
def _old_path(before: bool) -> Iterator[None]:
    """Before issue 14 LoRA + Prompt ran its frozen pass inside every training step (with
    no states read up front, ``_loss`` does exactly that) and every pass fed each query
    whole (a shared prefix shorter than its minimum length is not shared)."""
    from knowlens import generation
    from knowlens.estimators import LoRAPrompt

    if not before:
        yield
        return
    real, minimum = LoRAPrompt._before_training, generation._MIN_SHARED
    LoRAPrompt._before_training = lambda self, items, schedule: None  # type: ignore[method-assign]  # restored below
    generation._MIN_SHARED = 1 << 30
    try:
        yield
    finally:
        LoRAPrompt._before_training = real  # type: ignore[method-assign]  # restored below
        generation._MIN_SHARED = minimum


def stage_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """The run context, the model and topic_calibration's train / eval answers (cached)."""
    from knowlens.experiments import RunContext
    from knowlens.experiments._common import decided, generations, load_split
    from knowlens.experiments._estimators import concat
    from knowlens.experiments.topic_calibration import Config

    cfg = Config(
        models=[args.model],
        limit=args.limit,
        eval_limit=args.eval_limit,
        eval_k_shot=args.eval_k_shot,
        train_tasks=args.train_tasks,
        estimators=list(STAGE_ESTIMATORS),
        train={
            "probe_epochs": args.probe_epochs,
            "lora_steps": args.lora_steps,
            "lora_validation_fraction": 0,  # fixed steps: before / after do the same work
        },
    )
    ctx = RunContext(run_dir=Path(tempfile.mkdtemp()), cfg=cfg, seed=args.seed)
    model = ctx.load_model(args.model)
    parts = [
        decided(generations(ctx, model, load_split(t, "train", args.limit, args.seed), "train"))
        for t in args.train_tasks
    ]
    kw = {"k_shot": args.eval_k_shot}
    task = load_split("mc_suite", "test", args.eval_limit, args.seed, **kw)
    ev = decided(generations(ctx, model, task, "test"))
    return ctx, model, concat(parts), ev


def run_stage(ctx: Any, model: Any, train: Any, ev: Any, *, before: bool) -> dict[str, Any]:
    """One pass of the estimator stage (no cache lookups): seconds and scores per estimator."""
    from knowlens.experiments._estimators import EstimatorBench

    ctx.use_cache = False
    bench = EstimatorBench(
        ctx,
        ctx.cfg.train,
        ctx.seed,
        share_reads=not before,
        estimator_params={"length_window": 1} if before else {},
    )
    out: dict[str, Any] = {"wall": {}, "cpu": {}, "p": {}, "padding": {}}
    with _old_path(before):
        for name in STAGE_ESTIMATORS:
            w0, c0 = time.perf_counter(), time.process_time()
            fitted = bench.fit(name, model, train)
            out["p"][name] = bench.score(fitted, ev)
            out["wall"][name] = time.perf_counter() - w0
            out["cpu"][name] = time.process_time() - c0
            pad = getattr(fitted.estimator, "train_padding_", None)
            if pad is not None:
                out["padding"][name] = pad
    if not before:
        out["reads"] = (bench.reads.rows_run, bench.reads.tokens_run, bench.reads.slots_run)
    return out


def stage_main(args: argparse.Namespace) -> None:
    ctx, model, train, ev = stage_inputs(args)
    print(
        f"{args.model}: train {len(train)} answers ({', '.join(args.train_tasks)}), eval "
        f"{len(ev)} (mc_suite, {args.eval_k_shot}-shot), LoRA {args.lora_steps} steps x 4",
        flush=True,
    )
    # estimator fits and scores go to a scratch cache; the answers above stay cached
    os.environ["KNOWLENS_CACHE"] = tempfile.mkdtemp(prefix="kl-stage-")
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for rep in range(args.repeats):
        for mode in ("before", "after") if rep % 2 == 0 else ("after", "before"):
            r = run_stage(ctx, model, train, ev, before=mode == "before")
            runs[mode].append(r)
            total = sum(r["wall"].values())
            print(f"  rep {rep} {mode:<6s} {total:7.1f}s wall {sum(r['cpu'].values()):7.1f}s cpu")
    b, a = runs["before"], runs["after"]
    print(f"\n{'estimator':<12s} {'before s':>9s} {'after s':>9s} {'ratio':>6s}  median wall | cpu")
    for name in STAGE_ESTIMATORS:
        tb, ta = (float(np.median([r["wall"][name] for r in x])) for x in (b, a))
        cb, ca = (float(np.median([r["cpu"][name] for r in x])) for x in (b, a))
        print(
            f"{name:<12s} {tb:9.1f} {ta:9.1f} {tb / ta:6.2f} | {cb:7.1f} {ca:7.1f} {cb / ca:6.2f}"
        )
    for clock in ("wall", "cpu"):
        tb = float(np.median([sum(r[clock].values()) for r in b]))
        ta = float(np.median([sum(r[clock].values()) for r in a]))
        print(f"stage ({clock}): before {tb:.1f}s after {ta:.1f}s ratio {tb / ta:.2f}x")
    for name in ("lora", "lora_prompt"):
        print(
            f"{name} training padding: before {b[0]['padding'][name]:.1%} "
            f"after {a[0]['padding'][name]:.1%} of the batches' token slots"
        )
    rows, tokens, slots = a[0]["reads"]
    print(f"shared reads: {rows} queries, padding {1 - tokens / slots:.1%} of their slots")
    for name in STAGE_ESTIMATORS:
        diff = float(np.max(np.abs(b[0]["p"][name] - a[0]["p"][name])))
        print(f"max |p_before - p_after| {name}: {diff:.2e}")


def print_table(df: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for model, d in df.groupby("model", sort=False):
        table = Table(title=f"{model}  (test acc {d.test_acc.iloc[0]:.2f}, n={d.n.iloc[0]})")
        for col in ("estimator", "AUROC [95% CI]", "ECE [95% CI]", "fit s"):
            table.add_column(col)
        for est, e in d.groupby("estimator", sort=False):
            a = e[e.metric == "auroc"].iloc[0]
            c = e[e.metric == "ece"].iloc[0]
            mark = " *" if a.best_logit else ""
            table.add_row(
                est + mark,
                f"{a.value:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]",
                f"{c.value:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]",
                f"{a.fit_s:.1f}",
            )
        console.print(table)
        auc = d[d.metric == "auroc"]
        best_logit = auc[auc.best_logit].iloc[0]
        for _, r in auc[auc.kind.isin(["probe", "lora"])].iterrows():
            verdict = "beats" if r.value > best_logit.value else "does NOT beat"
            console.print(
                f"  {r.estimator} {verdict} the best logit baseline "
                f"({best_logit.estimator}, {best_logit.value:.3f}) on test AUROC: {r.value:.3f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", action="store_true", help="every estimator's AUROC / ECE")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--task", default="capitals")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--lora-steps", type=int, default=None, help="quality: 60, stage: 3")
    ap.add_argument("--layer-stride", type=int, default=2)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--no-cache", action="store_true", help="retrain LoRA estimators")
    ap.add_argument("--out", default=None, help="write the tidy table here (.csv or .parquet)")
    stage = ap.add_argument_group("stage (default mode)")
    stage.add_argument("--model", default="smollm2-135m-instruct")
    stage.add_argument("--train-tasks", nargs="+", default=["winogrande_gen", "nli_geo"])
    stage.add_argument("--limit", type=int, default=8, help="training answers per task")
    stage.add_argument("--eval-limit", type=int, default=16)
    stage.add_argument("--eval-k-shot", type=int, default=1)
    stage.add_argument("--probe-epochs", type=int, default=60)
    stage.add_argument("--repeats", type=int, default=1, help="before/after pairs, alternating")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not args.quality:
        args.lora_steps = 3 if args.lora_steps is None else args.lora_steps
        stage_main(args)
        return
    args.lora_steps = 60 if args.lora_steps is None else args.lora_steps
    frames = []
    for m in args.models:
        frames.append(run_model(m, args))
        df = pd.concat(frames, ignore_index=True)
        print_table(df[df.model == m])
        if args.out:  # written after every model, so a long run keeps what it finished
            (df.to_parquet if args.out.endswith(".parquet") else df.to_csv)(args.out, index=False)


if __name__ == "__main__":
    main()
