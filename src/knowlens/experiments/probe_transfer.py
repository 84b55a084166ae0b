"""Cross-dataset generalisation of error-detection probes (seed 003; Orgad et al. 2024).

For one model (or each model listed), a logistic-regression probe (scikit-learn defaults) is
trained on the hidden state at the exact-answer token of each training dataset, at a layer
(and token selector) picked by a sweep on a held-out part of that dataset's training split,
or fixed in the config. Every probe is scored on every dataset's test split:

    cell[train, test] = AUROC(probe_train on test) - AUROC(logit baseline on test)

The baseline (default: mean log-probability of the exact-answer tokens) is named in the
figure. Tables: ``probe_transfer`` (metric ``auroc_minus_baseline``, and for each of
``metrics``, default AUROC, ECE and PRR, the probe's ``m`` and the baseline's
``baseline_m``, each with a bootstrap 95% CI), ``layers`` (the sweep), ``accuracy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.errors import ConfigError
from knowlens.experiments._common import (
    METRIC_LABEL,
    accuracy_row,
    activations,
    decided,
    frame,
    generations,
    load_split,
    metric_cell,
    min_n_of,
    paired_diff_cell,
    require_models,
    short_model,
)

__all__ = [
    "CODE_VERSION",
    "COLUMNS",
    "STAT_LABEL",
    "Config",
    "Statistic",
    "baseline_label",
    "figures",
    "headline",
    "report_sections",
    "run",
]

CODE_VERSION = "1"
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
    max_iter: int = Field(default=1000, ge=10, description="LogisticRegression max_iter.")
    metrics: list[Metric] = Field(
        default_factory=_default_metrics,
        min_length=1,
        description="Metrics of the probe and of the baseline (with CIs); must include auroc.",
    )

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
    baseline = LogitBaseline(statistic=cfg.baseline, span=cfg.baseline_span)
    for spec in require_models(cfg):
        model = ctx.load_model(spec)
        layers = _candidate_layers(cfg, model.n_layers)
        data: dict[str, dict[str, Any]] = {}
        for name in ctx.track(cfg.tasks, f"{short_model(spec)}: generate + extract"):
            data[name] = {}
            for split in ("train", "test"):
                task = load_split(name, split, cfg.limit, cfg.seed)
                gens = decided(generations(ctx, model, task, split))
                acc_rows.append(accuracy_row(spec, task, split, gens))
                acts = {}
                for tok in cfg.tokens:
                    what = f"extract {short_model(spec)} · {name}/{split} · {tok}"
                    with ctx.step(what, kind="extract", model=model.name):
                        acts[tok] = activations(ctx, model, gens, layers=layers, tokens=tok)
                data[name][split] = _with_position(gens, acts)

        probes: dict[str, Any] = {}
        for name in cfg.tasks:
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

        for j, test_name in enumerate(cfg.tasks):
            gens, acts = data[test_name]["test"]
            y = gens.correct
            base = baseline.predict_proba(gens)
            seed = cfg.seed + 7919 * j  # same resamples for every row of one test set
            for train_name in cfg.tasks:
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
    return {
        "probe_transfer": frame(rows, COLUMNS),
        "layers": frame(
            sweep_rows,
            ["analysis", "model", "task", "layer", "position", "metric", "value", "n", "chosen"],
        ),
        "accuracy": frame(acc_rows, ["model", "task", "split", "n", "n_correct", "accuracy"]),
        "settings": pd.DataFrame([{"min_n": cfg.min_n}]),
    }


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


def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from knowlens import plots

    t = tables["probe_transfer"]
    paths: list[Path] = []
    min_n = min_n_of(tables)
    for model in dict.fromkeys(t["model"]):
        m = short_model(model)
        baseline = str(t[t["model"] == model]["baseline"].iloc[0])
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
    for model in dict.fromkeys(t["model"]):
        m = short_model(model)
        h = headline(t, model)
        base = str(t[t["model"] == model]["baseline"].iloc[0])
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
            base_v = sub.loc[sub["metric"] == f"baseline_{met}", "value"].mean()
            keys[f"{METRIC_LABEL.get(met, met)} (mean over cells)"] = (
                f"probe {probe_v:.3f}, baseline {base_v:.3f}"
            )
        keys.update({f"chosen layer · {k}": v for k, v in chosen.items()})
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
                    "0 = random), each with a bootstrap 95% interval."
                ),
                figures=[f for f in figs if f.suffix == ".png" and f.stem.endswith(f"_{m}")],
                key_numbers=keys,
                tables=["probe_transfer", "layers"],
            )
        )
    return out
