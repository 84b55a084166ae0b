"""Cross-dataset generalisation of error-detection probes (seed 003; Orgad et al. 2024).

For one model (or each model listed), a logistic-regression probe (scikit-learn defaults) is
trained on the hidden state at the exact-answer token of each training dataset, at a layer
(and token selector) picked by a sweep on a held-out part of that dataset's training split,
or fixed in the config. Every probe is scored on every dataset's test split:

    cell[train, test] = AUROC(probe_train on test) - AUROC(logit baseline on test)

The baseline (default: mean log-probability of the exact-answer tokens) is named in the
figure. Tables: ``probe_transfer`` (metric ``auroc_minus_baseline``, and for each of
``metrics``, default AUROC, ECE and PRR, the probe's ``m`` and the baseline's
``baseline_m``, each with a bootstrap 95% CI), ``layers`` (the sweep), ``accuracy``,
``scores`` (per answer of every cell: label, the probe's P(correct), the logit baseline's
and each further baseline's; columns ``SCORE_COLUMNS``, ``role`` = probe / baseline (the
logit one the difference subtracts) / extra, ``scorer`` = the name the main table gives it),
so every cell can be recomputed and the seed claim bootstrapped over answers.

Further baselines (``baselines:``, registered estimator names as ``topic_calibration``'s
``estimators:``, e.g. ``[max_entropy, mc_entropy, semantic_entropy, mahalanobis,
verbalized]``) go beside the logit baseline: each is fitted, like the probe, on the train
dataset's training split (through the one estimator cache; an estimator that learns
nothing just scores) and scored on every test split, giving ``baseline_m`` rows whose
``baseline`` column names it (its display name). Every row of one test split is
bootstrapped on the same resamples, so probe and baselines are compared on equal terms.
Sample estimators draw their answers with the ``sampling:`` settings, learned ones train
with ``train:`` (``SamplingSettings`` / ``TrainSettings``, as in the other analyses).
``layer`` / ``position`` name the cell's probe on every row. ``train_limit`` caps the
training answers per dataset apart from ``limit`` (the test answers): probes need more
answers to train than a test cell needs to resolve its AUROC.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.errors import ConfigError, DataError
from knowlens.experiments._common import (
    METRIC_LABEL,
    accuracy_row,
    activations,
    check_accuracy_range,
    decided,
    frame,
    generations,
    load_split,
    metric_cell,
    min_n_of,
    paired_diff_cell,
    require_models,
    resolution,
    short_model,
)
from knowlens.experiments._estimators import (
    ESTIMATORS_HELP,
    EstimatorBench,
    SamplingSettings,
    TrainSettings,
    display_name,
    known_estimators,
)

__all__ = [
    "CODE_VERSION",
    "COLUMNS",
    "SCORE_COLUMNS",
    "STAT_LABEL",
    "Config",
    "Statistic",
    "baseline_label",
    "baseline_summary",
    "figures",
    "headline",
    "left_out",
    "report_sections",
    "run",
]

CODE_VERSION = "2"  # 2: scores table (cached results without it are recomputed)
COLUMNS = [
    "analysis",
    "model",
    "estimator",
    "baseline",
    "train_task",
    "test_task",
    "layer",
    "position",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_correct",
]
#: the ``scores`` table: one row per (cell, scorer, test answer)
SCORE_COLUMNS = [
    "model",
    "train_task",
    "test_task",
    "layer",
    "position",
    "role",
    "scorer",
    "example_id",
    "correct",
    "p",
]

Statistic = Literal[
    "mean_logprob", "min_logprob", "last_logprob", "mean_entropy", "max_entropy", "seq_prob"
]
STAT_LABEL = {
    "mean_logprob": "mean log-prob",
    "min_logprob": "min log-prob",
    "last_logprob": "last-token log-prob",
    "mean_entropy": "mean entropy (negated)",
    "max_entropy": "max entropy (negated)",
    "seq_prob": "sequence log-prob",
}


Metric = Literal["auroc", "ece", "prr", "brier"]


def _default_metrics() -> list[Metric]:  # a def: a lambda's list would be typed list[str]
    return ["auroc", "ece", "prr"]


def baseline_label(statistic: str, span: str) -> str:
    where = "exact-answer tokens" if span == "exact_answer" else "answer tokens"
    return f"{STAT_LABEL.get(statistic, statistic)} of {where}"


class Config(AnalysisConfig):
    """Train dataset x test dataset probe-transfer matrix."""

    analysis: Literal["probe_transfer"] = "probe_transfer"
    tasks: list[str] = Field(
        default_factory=lambda: [
            "capitals",
            "city_country",
            "country_currency",
            "country_language",
            "calling_code",
            "multihop_capital",
            "multihop_capital_wc",
        ],
        min_length=2,
        description="Datasets: rows (train) and columns (test) of the matrix.",
    )
    train_limit: int | None = Field(
        default=None,
        ge=1,
        description="Max training answers per dataset (None = 'limit', which caps the test split).",
    )
    layer: int | None = Field(
        default=None, description="Fixed hidden-state layer; None = sweep 'sweep_layers'."
    )
    sweep_layers: list[int] | None = Field(
        default=None,
        description="Candidate layers for the sweep (None = 6 evenly spaced from 1 to L).",
    )
    tokens: list[str] = Field(
        default_factory=lambda: ["exact_answer"],
        min_length=1,
        description="Token selectors swept with the layers (first = default).",
    )
    baseline: Statistic = Field(
        default="mean_logprob", description="Logit-baseline statistic (knowlens LogitBaseline)."
    )
    baseline_span: Literal["exact_answer", "answer"] = Field(
        default="exact_answer", description="Tokens the baseline statistic is taken over."
    )
    val_fraction: float = Field(
        default=0.3, gt=0, lt=1, description="Share of the train split held out for the sweep."
    )
    max_iter: int = Field(
        default=100, ge=10, description="Most Newton iterations of each LogisticProbe fit."
    )
    metrics: list[Metric] = Field(
        default_factory=_default_metrics,
        min_length=1,
        description="Metrics of the probe and of the baseline (with CIs); must include auroc.",
    )
    baselines: list[str] = Field(
        default_factory=list,
        description="Further baselines beside the logit one: " + ESTIMATORS_HELP,
    )
    task_accuracy: tuple[float, float] | None = Field(
        default=None,
        description="[lo, hi]: leave out (rows and columns, noted in the report) datasets "
        "whose train or test accuracy on the model lies outside [lo, hi]: a near one-class "
        "split trains no probe worth transferring and has no AUROC worth drawing.",
    )
    train: TrainSettings = Field(
        default_factory=TrainSettings,
        description="Training settings of learned baselines (as topic_calibration's train:).",
    )
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="How sample baselines' answers are drawn (k, temperature, ...).",
    )

    @field_validator("baselines")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return known_estimators(v)

    @field_validator("metrics")
    @classmethod
    def _with_auroc(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a metric twice; list each once")
        if "auroc" not in v:
            raise ValueError(
                "must include 'auroc' (the difference matrix and the raw figure are AUROC); "
                f"got {v}"
            )
        return v

    @field_validator("task_accuracy")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return check_accuracy_range(v)

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a task twice; list each dataset once")
        return v

    @field_validator("tokens")
    @classmethod
    def _selectors(cls, v: list[str]) -> list[str]:
        from knowlens.activations import SELECTORS  # checked at load time, before any work

        bad = [t for t in v if t not in SELECTORS]
        if bad:
            raise ValueError(f"unknown token selector {bad[0]!r}; allowed: {', '.join(SELECTORS)}")
        if len(set(v)) != len(v):
            raise ValueError("lists a selector twice; list each once")
        return v


def _candidate_layers(cfg: Config, n_layers: int) -> list[int]:
    if cfg.layer is not None:
        layers = [cfg.layer]
    elif cfg.sweep_layers:
        layers = sorted(set(cfg.sweep_layers))
    else:
        layers = sorted({round(x) for x in np.linspace(1, n_layers, 6)})
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise ConfigError(
            f"probe_transfer: layer {bad[0]} is out of range for this model; allowed 0..{n_layers} "
            f"(0 = embeddings). Fix 'layer'/'sweep_layers' in the config."
        )
    return layers


def _with_position(gens: Any, acts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Keep examples that have a position under every selector (an answer whose exact span
    was not located has none under ``exact_answer``)."""
    from knowlens._types import ActivationSet

    keep = np.ones(len(gens), dtype=bool)
    for a in acts.values():
        keep &= np.asarray(a.mask).any(1)
    if keep.all():
        return gens, acts
    idx = np.flatnonzero(keep)
    out = {
        k: ActivationSet(
            values=np.asarray(a.values[idx]),
            mask=np.asarray(a.mask[idx]),
            layers=list(a.layers),
            tokens=a.tokens,
            example_ids=[a.example_ids[int(i)] for i in idx],
            positions=np.asarray(a.positions[idx]),
            # the parent's cache key must not name the subset (it keys fitted probes)
            meta={k: v for k, v in a.meta.items() if k != "cache_key"}
            | {"subset": "with_position", "subset_of": a.meta.get("cache_key")},
        )
        for k, a in acts.items()
    }
    return gens.subset(keep), out


def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    from knowlens import metrics
    from knowlens.estimators import LogisticProbe, LogitBaseline, get_estimator, sweep_probes
    from knowlens.experiments._estimators import fit_recorded

    rows: list[dict[str, Any]] = []
    sweep_rows: list[dict[str, Any]] = []
    acc_rows: list[dict[str, Any]] = []
    score_parts: list[pd.DataFrame] = []
    baseline = LogitBaseline(statistic=cfg.baseline, span=cfg.baseline_span)
    bench = EstimatorBench(ctx, cfg.train, cfg.seed, cfg.sampling)
    for spec in require_models(cfg):
        model = ctx.load_model(spec)
        layers = _candidate_layers(cfg, model.n_layers)
        data: dict[str, dict[str, Any]] = {}
        for name in ctx.track(cfg.tasks, f"{short_model(spec)}: generate + extract"):
            data[name] = {}
            for split in ("train", "test"):
                limit = (cfg.train_limit or cfg.limit) if split == "train" else cfg.limit
                task = load_split(name, split, limit, cfg.seed)
                # hidden states read while generating (one pass) when both are uncached
                needs = [(layers, tok) for tok in cfg.tokens]
                gens = decided(generations(ctx, model, task, split, capture=needs))
                acc_rows.append(accuracy_row(spec, task, split, gens))
                acts = {}
                for tok in cfg.tokens:
                    what = f"extract {short_model(spec)} · {name}/{split} · {tok}"
                    with ctx.step(what, kind="extract", model=model.name):
                        acts[tok] = activations(ctx, model, gens, layers=layers, tokens=tok)
                data[name][split] = _with_position(gens, acts)

        shown = _within_accuracy(cfg, ctx, spec, data)
        probes: dict[str, Any] = {}
        for name in shown:
            gens, acts = data[name]["train"]
            y = gens.correct
            counts = np.bincount(y.astype(int), minlength=2) if len(y) else np.zeros(2)
            if counts.min() < 2:
                ctx.note(
                    f"{spec}:{name}",
                    f"train split has {counts.tolist()} wrong/correct: "
                    "no probe trained (row is n/a)",
                )
                continue
            with ctx.step(f"probe sweep {short_model(spec)} · {name}", model=model.name):
                if len(layers) * len(cfg.tokens) > 1:
                    sweep = sweep_probes(
                        acts,
                        gens,
                        layers=layers,
                        val_fraction=cfg.val_fraction,
                        seed=cfg.seed,
                        progress=False,
                        max_iter=cfg.max_iter,
                    )
                    best_layer, best_tok = int(sweep.best["layer"]), str(sweep.best["tokens"])
                    for r in sweep.table.itertuples():
                        sweep_rows.append(
                            {
                                "analysis": "probe_transfer",
                                "model": spec,
                                "task": name,
                                "layer": int(r.layer),
                                "position": r.tokens,
                                "metric": "val_auroc",
                                "value": float(r.auroc),
                                "n": int(r.n_val),
                                "chosen": bool(r.layer == best_layer and r.tokens == best_tok),
                            }
                        )
                else:
                    best_layer, best_tok = layers[0], cfg.tokens[0]
                probe = LogisticProbe(layer=best_layer, max_iter=cfg.max_iter)
                probes[name], _ = fit_recorded(ctx, probe, acts[best_tok], gens)

        fitted = _fit_baselines(cfg, ctx, bench, spec, model, {n: data[n] for n in shown})
        scored: dict[tuple[str, str], np.ndarray] = {}

        for test_name in shown:
            gens, acts = data[test_name]["test"]
            y = gens.correct
            base = baseline.predict_proba(gens)
            # same resamples for every row of one test set, whichever datasets are shown
            seed = cfg.seed + 7919 * cfg.tasks.index(test_name)
            for train_name in shown:
                key = {
                    "analysis": "probe_transfer",
                    "model": spec,
                    "estimator": get_estimator("logistic").display_name,
                    "baseline": baseline_label(cfg.baseline, cfg.baseline_span),
                    "train_task": train_name,
                    "test_task": test_name,
                }
                if train_name in probes and len(gens):
                    probe = probes[train_name]
                    layer, tok = int(probe.layer_), str(probe.tokens_)
                    p = probe.predict_proba(acts[tok])
                else:
                    layer, tok, p = -1, cfg.tokens[0], np.full(len(y), np.nan)
                cells = [
                    paired_diff_cell(
                        y,
                        p,
                        base,
                        metric=metrics.auroc,
                        n_boot=cfg.n_bootstrap,
                        seed=seed,
                        name="auroc_minus_baseline",
                    ),
                ]
                for m in cfg.metrics:  # the probe's and the baseline's, same resamples
                    cells.append(metric_cell(m, y, p, n_boot=cfg.n_bootstrap, seed=seed))
                    cells.append(
                        metric_cell(m, y, base, n_boot=cfg.n_bootstrap, seed=seed)
                        | {"metric": f"baseline_{m}"}
                    )
                for c in cells:
                    rows.append({**key, "layer": layer, "position": tok, **c})
                cell = (spec, train_name, test_name, layer, tok, gens.example_ids, y)
                score_parts.append(_scores(*cell, "probe", key["estimator"], p))
                score_parts.append(_scores(*cell, "baseline", key["baseline"], base))
                for b in cfg.baselines:  # after the primary's rows: old tables unchanged
                    fb = fitted[b, train_name]
                    if fb is None or not len(gens):
                        pb = np.full(len(y), np.nan)
                    else:  # a fit that learns nothing has one key for every train task
                        if (fb.key, test_name) not in scored:
                            scored[fb.key, test_name] = bench.score(fb, gens)
                        pb = scored[fb.key, test_name]
                    score_parts.append(_scores(*cell, "extra", display_name(b), pb))
                    for m in cfg.metrics:
                        c = metric_cell(m, y, pb, n_boot=cfg.n_bootstrap, seed=seed)
                        rows.append(
                            {**key, "baseline": display_name(b), "layer": layer, "position": tok}
                            | c
                            | {"metric": f"baseline_{m}"}
                        )
    return {
        "probe_transfer": frame(rows, COLUMNS),
        "layers": frame(
            sweep_rows,
            ["analysis", "model", "task", "layer", "position", "metric", "value", "n", "chosen"],
        ),
        "accuracy": frame(acc_rows, ["model", "task", "split", "n", "n_correct", "accuracy"]),
        "settings": pd.DataFrame([{"min_n": cfg.min_n, **_range_columns(cfg)}]),
        "scores": pd.concat(score_parts, ignore_index=True)
        if score_parts
        else frame([], SCORE_COLUMNS),
    }


def _scores(
    model: str,
    train_task: str,
    test_task: str,
    layer: int,
    position: str,
    example_ids: list[str],
    y: np.ndarray,
    role: str,
    scorer: str,
    p: np.ndarray,
) -> pd.DataFrame:
    """One scorer's P(correct) on one cell's test answers (rows of the ``scores`` table)."""
    n = len(example_ids)
    return pd.DataFrame(
        {
            "model": [model] * n,
            "train_task": [train_task] * n,
            "test_task": [test_task] * n,
            "layer": np.full(n, layer, dtype=np.int64),
            "position": [position] * n,
            "role": [role] * n,
            "scorer": [scorer] * n,
            "example_id": list(example_ids),
            "correct": np.asarray(y, dtype=float),
            "p": np.asarray(p, dtype=float),
        },
        columns=SCORE_COLUMNS,
    )


def _range_columns(cfg: Config) -> dict[str, float]:
    # only when set: the settings table of a run without the filter is unchanged
    if cfg.task_accuracy is None:
        return {}
    return {"task_accuracy_lo": cfg.task_accuracy[0], "task_accuracy_hi": cfg.task_accuracy[1]}


def left_out(tables: dict[str, pd.DataFrame], model: str) -> list[str]:
    """Datasets ``task_accuracy`` left out of ``model``'s matrix (from the saved tables)."""
    st, acc = tables.get("settings"), tables.get("accuracy")
    if st is None or acc is None or "task_accuracy_lo" not in st or st.empty:
        return []
    lo, hi = float(st["task_accuracy_lo"].iloc[0]), float(st["task_accuracy_hi"].iloc[0])
    a = acc[acc["model"] == model]
    out = ~a["accuracy"].between(lo, hi)
    return list(dict.fromkeys(a.loc[out, "task"]))


def _within_accuracy(cfg: Config, ctx: Any, spec: str, data: dict[str, Any]) -> list[str]:
    """The datasets shown for ``spec`` (config order): all, or with ``task_accuracy`` those
    whose train and test accuracy both lie in the range; the others are noted."""
    if cfg.task_accuracy is None:
        return list(cfg.tasks)
    lo, hi = cfg.task_accuracy
    shown = []
    for name in cfg.tasks:
        acc = {
            split: float(np.mean(y)) if len(y := data[name][split][0].correct) else float("nan")
            for split in ("train", "test")
        }  # no answers: NaN, outside any range
        if all(lo <= a <= hi for a in acc.values()):
            shown.append(name)
        else:
            ctx.note(
                f"{spec}:{name}",
                f"accuracy {acc['train']:.2f} (train) / {acc['test']:.2f} (test) is outside "
                f"task_accuracy [{lo:g}, {hi:g}]: dataset left out of the matrix",
            )
    return shown


def _fit_baselines(
    cfg: Config, ctx: Any, bench: EstimatorBench, spec: str, model: Any, data: dict[str, Any]
) -> dict[tuple[str, str], Any]:
    """Each of ``cfg.baselines`` fitted on each train dataset's training split (the probe's
    examples); None (rows n/a, noted) where the split cannot fit it, e.g. one class for a
    calibrated estimator; one that learns nothing fits anyway and scores."""
    out: dict[tuple[str, str], Any] = {}
    if not cfg.baselines:
        return out
    for b in ctx.track(cfg.baselines, f"{short_model(spec)}: baselines"):
        for name in data:
            gens = data[name]["train"][0]
            try:
                if not len(gens):
                    raise DataError("the train split has no graded answers")
                out[b, name] = bench.fit(b, model, gens)
            except DataError as e:
                ctx.note(f"{spec}:{name}:{b}", f"baseline not fitted: {e} (its rows are n/a)")
                out[b, name] = None
    return out


def _matrix(t: pd.DataFrame, model: str, metric: str, col: str = "value") -> pd.DataFrame:
    from knowlens.plots import pivot

    sub = t[(t["model"] == model) & (t["metric"] == metric)]
    order = list(dict.fromkeys(sub["train_task"]))
    return pivot(
        sub,
        index="train_task",
        columns="test_task",
        value=col,
        index_order=order,
        column_order=order,
    )


def _primary(t: pd.DataFrame, model: str) -> str:
    """The logit baseline the difference matrix subtracts (``baseline``/``baseline_span``)."""
    sub = t[(t["model"] == model) & (t["metric"] == "auroc_minus_baseline")]
    return str((sub if len(sub) else t[t["model"] == model])["baseline"].iloc[0])


def baseline_summary(t: pd.DataFrame, model: str) -> dict[str, dict[str, tuple[float, ...]]]:
    """Per scorer (the probe, then each baseline in table order) and metric: the mean over
    the matrix cells of the value and of the two bootstrap bounds."""
    sub = t[t["model"] == model]
    probe = sub[
        ~sub["metric"].str.startswith("baseline_") & (sub["metric"] != "auroc_minus_baseline")
    ]
    base = sub[sub["metric"].str.startswith("baseline_")]
    groups = [(str(probe["estimator"].iloc[0]), probe)] if len(probe) else []
    groups += [(str(b), g) for b, g in base.groupby("baseline", sort=False)]
    out: dict[str, dict[str, tuple[float, ...]]] = {}
    for label, g in groups:
        g = g.assign(metric=g["metric"].str.removeprefix("baseline_"))
        mean = g.groupby("metric", sort=False)[["value", "ci_low", "ci_high"]].mean()
        out[label] = {str(m): tuple(float(x) for x in r) for m, r in mean.iterrows()}
    return out


def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from knowlens import plots

    t = tables["probe_transfer"]
    paths: list[Path] = []
    min_n = min_n_of(tables)
    for model in dict.fromkeys(t["model"]):
        m = short_model(model)
        baseline = _primary(t, model)
        diff = _matrix(t, model, "auroc_minus_baseline")
        n = _matrix(t, model, "auroc_minus_baseline", "n")
        # Hatch only real cells with few test examples; a row whose probe could not be
        # trained (one-class train split) is NaN and drawn as grey "n/a", not as "n < min_n".
        hatch = (n < min_n) & diff.notna()
        fig, ax = plt.subplots(figsize=plots.heatmap_size(diff, cell=0.85))
        plots.heatmap(
            ax,
            diff,
            center=0.0,
            fmt=".2f",
            cbar_label="AUROC(probe) − AUROC(baseline)",
            xlabel="Test dataset",
            ylabel="Train dataset",
            title=f"{m}: probe AUROC minus baseline ({baseline})",
            hatch_mask=hatch,
            hatch_label=f"n < {min_n} test examples",
            diagonal="outline",
        )
        paths += plots.save_figure(fig, out_dir, f"probe_transfer_{m}")

        raw = _matrix(t, model, "auroc")
        fig, ax = plt.subplots(figsize=plots.heatmap_size(raw, cell=0.85))
        plots.heatmap(
            ax,
            raw,
            fmt=".2f",
            vmin=0.5
            if (raw.to_numpy() >= 0.5).sum() == np.isfinite(raw.to_numpy()).sum()
            else None,
            cbar_label="AUROC",
            xlabel="Test dataset",
            ylabel="Train dataset",
            title=f"{m}: probe AUROC (raw)",
            hatch_mask=hatch,
            hatch_label=f"n < {min_n} test examples",
            diagonal="outline",
        )
        paths += plots.save_figure(fig, out_dir, f"probe_transfer_raw_{m}")

        paths += _baselines_figure(t, model, out_dir, min_n)

        lay = tables.get("layers")
        if lay is not None and len(lay[lay["model"] == model]):
            sub = lay[lay["model"] == model].copy()
            sub["col"] = sub["layer"].astype(str) + (
                "" if sub["position"].nunique() == 1 else " · " + sub["position"]
            )
            mat = plots.pivot(sub, index="task", columns="col", value="value")
            chosen = plots.pivot(
                sub.assign(c=sub["chosen"].astype(float)), index="task", columns="col", value="c"
            )
            fig, ax = plt.subplots(figsize=plots.heatmap_size(mat, cell=0.7))
            plots.heatmap(
                ax,
                mat,
                fmt=".2f",
                cbar_label="validation AUROC",
                xlabel="Layer",
                ylabel="Train dataset",
                title=f"{m}: layer sweep (hatched = chosen)",
                hatch_mask=chosen.fillna(0).astype(bool),
                hatch_label="chosen layer",
            )
            paths += plots.save_figure(fig, out_dir, f"probe_layers_{m}")
    return paths


def _baselines_figure(t: pd.DataFrame, model: str, out_dir: Path, min_n: int) -> list[Path]:
    """In-domain AUROC (train = test dataset) of the probe and of every baseline, per test
    dataset; drawn only when the config lists further baselines."""
    import matplotlib.pyplot as plt

    from knowlens import plots

    sub = t[(t["model"] == model) & (t["train_task"] == t["test_task"])]
    base = sub[sub["metric"] == "baseline_auroc"]
    if base["baseline"].nunique() < 2:
        return []
    probe = sub[sub["metric"] == "auroc"]
    cells = pd.concat(
        [probe.assign(scorer=probe["estimator"]), base.assign(scorer=base["baseline"])]
    )
    order = list(dict.fromkeys(t.loc[t["model"] == model, "test_task"]))
    mat = plots.pivot(cells, index="scorer", columns="test_task", column_order=order)
    n = plots.pivot(cells, index="scorer", columns="test_task", value="n", column_order=order)
    lo = plots.pivot(cells, index="scorer", columns="test_task", value="ci_low", column_order=order)
    hi = plots.pivot(
        cells, index="scorer", columns="test_task", value="ci_high", column_order=order
    )
    m = short_model(model)
    fig, ax = plt.subplots(figsize=plots.heatmap_size(mat, cell=0.85))
    plots.heatmap(
        ax,
        mat,
        fmt=".2f",
        ci_low=lo,
        ci_high=hi,
        cbar_label="AUROC",
        xlabel="Dataset (trained and tested on)",
        ylabel="Scorer",
        title=f"{m}: in-domain AUROC, probe and baselines",
        hatch_mask=(n < min_n) & mat.notna(),
        hatch_label=f"n < {min_n} test examples",
    )
    return plots.save_figure(fig, out_dir, f"probe_baselines_{m}")


def headline(t: pd.DataFrame, model: str) -> dict[str, float]:
    """Diagonal vs off-diagonal mean of the difference matrix."""
    d = _matrix(t, model, "auroc_minus_baseline").to_numpy(dtype=float)
    eye = np.eye(len(d), dtype=bool)
    return {
        "diag_mean": float(np.nanmean(d[eye])) if np.isfinite(d[eye]).any() else float("nan"),
        "off_mean": float(np.nanmean(d[~eye])) if np.isfinite(d[~eye]).any() else float("nan"),
    }


def report_sections(tables: dict[str, pd.DataFrame], figs: list[Path]) -> list[Any]:
    t = tables["probe_transfer"]
    out = []
    acc = tables.get("accuracy")
    models = [*t["model"], *(acc["model"] if acc is not None else [])]
    for model in dict.fromkeys(models):
        m = short_model(model)
        gone = left_out(tables, model)
        if not (t["model"] == model).any():  # every dataset left out by task_accuracy
            out.append(
                Section(
                    title=f"Probe transfer across datasets · {m}",
                    notes="No matrix: every dataset's accuracy is outside task_accuracy "
                    f"({', '.join(gone)}: dataset left out of the matrix).",
                    tables=["accuracy"],
                )
            )
            continue
        h = headline(t, model)
        base = _primary(t, model)
        lay = tables.get("layers")
        chosen = {}
        if lay is not None and "chosen" in lay:
            c = lay[(lay["model"] == model) & (lay["chosen"] == True)]  # noqa: E712
            chosen = {r.task: f"{r.layer} ({r.position})" for r in c.itertuples()}
        keys = {
            "diagonal mean (probe − baseline AUROC)": f"{h['diag_mean']:+.3f}",
            "off-diagonal mean": f"{h['off_mean']:+.3f}",
            "baseline": base,
        }
        for met in dict.fromkeys(t["metric"]):
            if met in ("auroc", "auroc_minus_baseline") or met.startswith("baseline_"):
                continue
            sub = t[t["model"] == model]
            probe_v = sub.loc[sub["metric"] == met, "value"].mean()
            prim = sub["baseline"] == base  # the logit baseline's; the others are listed below
            base_v = sub.loc[prim & (sub["metric"] == f"baseline_{met}"), "value"].mean()
            keys[f"{METRIC_LABEL.get(met, met)} (mean over cells)"] = (
                f"probe {probe_v:.3f}, baseline {base_v:.3f}"
            )
        for label, mets in baseline_summary(t, model).items():
            keys[f"{label} (mean over cells)"] = " · ".join(
                f"{METRIC_LABEL.get(k, k)} {v:.3f} [{lo:.3f}, {hi:.3f}]"
                for k, (v, lo, hi) in mets.items()
            )
        keys.update({f"chosen layer · {k}": v for k, v in chosen.items()})
        if gone:
            keys["datasets left out (accuracy outside task_accuracy)"] = ", ".join(gone)
        # what one cell resolves: the probe-minus-baseline cells' n and CI half-width
        keys.update(resolution(t[t["model"] == model], min_n_of(tables), "auroc_minus_baseline"))
        out.append(
            Section(
                title=f"Probe transfer across datasets · {m}",
                caption=(
                    "Rows: dataset the logistic-regression probe was trained on; columns: "
                    "dataset it is tested on. Cell = test AUROC of the probe minus the AUROC of "
                    f"the logit baseline ({base}) on the same test "
                    "split; red = the probe beats the baseline. Diagonal cells are outlined. "
                    "The table also gives the probe's and the baseline's metrics (default "
                    "AUROC, ECE and PRR, the prediction-rejection ratio: 1 = oracle ranking, "
                    "0 = random), each with a bootstrap 95% interval; the summary lines give, for "
                    "the probe and each baseline, the mean over the cells of each metric and of "
                    "its interval bounds. Further baselines (config 'baselines') are registered "
                    "estimators fitted on the train dataset's training split and scored on the "
                    "test split; their rows (baseline_<metric>) name them in column 'baseline', "
                    "and all rows of a test split share the bootstrap resamples. Table scores "
                    "(CSV) holds every scorer's P(correct) per test answer of every cell."
                ),
                figures=[f for f in figs if f.suffix == ".png" and f.stem.endswith(f"_{m}")],
                key_numbers=keys,
                tables=["probe_transfer", "layers"],
            )
        )
    return out
