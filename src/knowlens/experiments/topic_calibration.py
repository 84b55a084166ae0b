"""Per-topic calibration of uncertainty estimators (seed 002; Kapoor et al. 2024).

For every model, each estimator (Zero-Shot Classifier, Probe, LoRA, LoRA + Prompt, or any
registered one: ``knowlens.estimators.estimator_names()``) is trained once on the model's graded answers to a training mix of tasks (disjoint from the
evaluated topics), then scored per topic of a multiple-choice suite's held-out split:

    cell[topic, model | estimator, metric] = ECE, AUROC or PRR of P(correct) on that topic's
                                             answers (``metrics``; default all three)

Tables: ``topic_calibration`` (one row per topic x model x estimator x metric, with n and a
bootstrap 95% CI; topic ``(all)`` pools the topics), ``reliability`` (bins per model x
estimator, pooled), ``scores`` (per-answer P(correct), so every cell can be recomputed),
``accuracy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.experiments._common import (
    METRIC_LABEL,
    accuracy_row,
    decided,
    frame,
    generations,
    load_split,
    metric_cell,
    min_n_of,
    require_labels,
    require_models,
    short_model,
)
from knowlens.experiments._estimators import (
    ESTIMATORS_HELP,
    EstimatorBench,
    SamplingSettings,
    TrainSettings,
    concat,
    known_estimators,
)

__all__ = [
    "ALL",
    "CODE_VERSION",
    "COLUMNS",
    "Config",
    "figures",
    "ranking",
    "report_sections",
    "run",
]

CODE_VERSION = "1"
ALL = "(all)"
COLUMNS = [
    "analysis",
    "model",
    "estimator",
    "topic",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_correct",
]

Metric = Literal["ece", "auroc", "brier", "ece_pcorrect", "prr"]


def _default_metrics() -> list[Metric]:  # a def: a lambda's list would be typed list[str]
    return ["ece", "auroc", "prr"]


class Config(AnalysisConfig):
    """Topics x models x estimators, ECE, AUROC and PRR."""

    analysis: Literal["topic_calibration"] = "topic_calibration"
    train_tasks: list[str] = Field(
        default_factory=lambda: ["capitals", "country_currency", "arithmetic", "nli_geo"],
        min_length=1,
        description="Training mix (train split of each); disjoint from the evaluated topics.",
    )
    eval_task: str = Field(
        default="mc_suite", description="Multiple-choice task whose topics are the rows."
    )
    topics: list[str] | None = Field(
        default=None, description="Topics to show (None = every topic of eval_task)."
    )
    eval_k_shot: int | None = Field(
        default=None, ge=0, description="Few-shot examples in eval prompts (None = task's)."
    )
    eval_limit: int | None = Field(
        default=None, ge=1, description="Max eval examples (None = 'limit')."
    )
    estimators: list[str] = Field(
        default_factory=lambda: ["zero_shot", "probe", "lora", "lora_prompt"],
        min_length=1,
        description=ESTIMATORS_HELP,
    )
    metrics: list[Metric] = Field(default_factory=_default_metrics, min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="How sample estimators' answers are drawn (k, temperature, ...).",
    )

    @field_validator("estimators", "metrics", "train_tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists an entry twice; list each once")
        return v

    @field_validator("estimators")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return known_estimators(v)


def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    from knowlens import metrics

    rows: list[dict[str, Any]] = []
    rel_rows: list[pd.DataFrame] = []
    score_rows: list[pd.DataFrame] = []
    acc_rows: list[dict[str, Any]] = []
    bench = EstimatorBench(ctx, cfg.train, cfg.seed, cfg.sampling)
    for spec in require_models(cfg):
        model = ctx.load_model(spec)
        parts = []
        for name in cfg.train_tasks:
            task = load_split(name, "train", cfg.limit, cfg.seed)
            g = decided(generations(ctx, model, task, "train"))
            acc_rows.append(accuracy_row(spec, task, "train", g))
            parts.append(g)
        train = concat(parts)
        require_labels(train.correct, f"topic_calibration ({spec})")

        kw = {} if cfg.eval_k_shot is None else {"k_shot": cfg.eval_k_shot}
        task = load_split(cfg.eval_task, "test", cfg.eval_limit or cfg.limit, cfg.seed, **kw)
        ev = decided(generations(ctx, model, task, "test"))
        acc_rows.append(accuracy_row(spec, task, "test", ev))
        topics = np.array([r.topic or "(none)" for r in ev.rows])
        wanted = cfg.topics or sorted(set(topics))
        y = ev.correct

        for est_name in ctx.track(cfg.estimators, f"{short_model(spec)}: estimators"):
            fitted = bench.fit(est_name, model, train)
            p = bench.score(fitted, ev)
            label = fitted.label
            score_rows.append(
                pd.DataFrame(
                    {
                        "model": spec,
                        "estimator": label,
                        "example_id": ev.example_ids,
                        "topic": topics,
                        "correct": y,
                        "p": p,
                    }
                )
            )
            for t_i, topic in enumerate([*wanted, ALL]):
                sel = np.ones(len(y), bool) if topic == ALL else topics == topic
                for m in cfg.metrics:
                    cell = metric_cell(
                        m, y[sel], p[sel], n_boot=cfg.n_bootstrap, seed=cfg.seed + t_i
                    )
                    rows.append(
                        {
                            "analysis": "topic_calibration",
                            "model": spec,
                            "estimator": label,
                            "topic": topic,
                            **cell,
                        }
                    )
            rel = metrics.reliability(y, p, 10)
            rel_rows.append(rel.assign(model=spec, estimator=label))
    return {
        "topic_calibration": frame(rows, COLUMNS),
        "reliability": pd.concat(rel_rows, ignore_index=True) if rel_rows else pd.DataFrame(),
        "scores": pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame(),
        "accuracy": frame(acc_rows, ["model", "task", "split", "n", "n_correct", "accuracy"]),
        "settings": pd.DataFrame([{"min_n": cfg.min_n}]),
    }


def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Seed 002 layout: rows = topics, columns = models; panels = metric (rows of panels)
    x estimator (columns of panels); one colour scale per metric, values in percent."""
    import matplotlib.pyplot as plt

    from knowlens import plots

    t = tables["topic_calibration"]
    min_n = min_n_of(tables)
    paths: list[Path] = []
    t = t[t["topic"] != ALL]
    ests = list(dict.fromkeys(t["estimator"]))
    mets = list(dict.fromkeys(t["metric"]))
    models = list(dict.fromkeys(t["model"]))
    topics = sorted(dict.fromkeys(t["topic"]))
    if not len(t):
        return paths
    fig, axes = plt.subplots(
        len(mets),
        len(ests),
        figsize=(
            max(3.2, 0.9 * len(models) + 1.6) * len(ests) + 1.5,
            (0.32 * len(topics) + 1.6) * len(mets),
        ),
        squeeze=False,
    )
    for i, met in enumerate(mets):
        sub = t[t["metric"] == met].assign(
            value=lambda d: d["value"] * 100,
            ci_low=lambda d: d["ci_low"] * 100,
            ci_high=lambda d: d["ci_high"] * 100,
            model=lambda d: d["model"].map(short_model),
        )
        vals = sub["value"].to_numpy(dtype=float)
        vmin = float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
        vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 100.0
        # ECE: lower is better, so the scale is reversed (dark = better, as for AUROC).
        cmap = "Purples_r" if met in ("ece", "ece_pcorrect", "brier") else "Purples"
        for j, est in enumerate(ests):
            s = sub[sub["estimator"] == est]
            mat = plots.pivot(
                s,
                index="topic",
                columns="model",
                index_order=topics,
                column_order=[short_model(m) for m in models],
            )
            n = plots.pivot(
                s,
                index="topic",
                columns="model",
                value="n",
                index_order=topics,
                column_order=list(mat.columns),
            )
            plots.heatmap(
                axes[i, j],
                mat,
                fmt=".0f",
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                cbar_label=f"{METRIC_LABEL.get(met, met)} (%)" if j == len(ests) - 1 else "",
                colorbar=j == len(ests) - 1,
                hatch_mask=n < min_n,
                explain=False,
                title=f"{est}\n{METRIC_LABEL.get(met, met)}"
                if i == 0
                else METRIC_LABEL.get(met, met),
                ylabel="Topic" if j == 0 else None,
                xlabel="Model" if i == len(mets) - 1 else None,
            )
            if j:
                axes[i, j].set_yticklabels([])
    fig.tight_layout()
    fig.text(
        0.01,
        0.0,
        f"Hatched cells: fewer than {min_n} answers. Metrics in percent; ECE / Brier "
        "scales reversed so darker is better in every row.",
        fontsize=9,
        color="#444444",
    )
    paths += plots.save_figure(fig, out_dir, "topic_calibration")

    rel = tables.get("reliability")
    if rel is not None and len(rel):
        ests_r = list(dict.fromkeys(rel["estimator"]))
        models_r = list(dict.fromkeys(rel["model"]))
        fig, axes = plt.subplots(
            len(models_r),
            len(ests_r),
            figsize=(2.6 * len(ests_r) + 0.4, 2.5 * len(models_r)),
            squeeze=False,
            sharex=True,
            sharey=True,
        )
        for i, m in enumerate(models_r):
            for j, est in enumerate(ests_r):
                b = rel[(rel["model"] == m) & (rel["estimator"] == est)]
                plots.reliability_diagram(axes[i, j], b, title=f"{short_model(m)}\n{est}")
                if j:
                    axes[i, j].set_ylabel("")
                if i < len(models_r) - 1:
                    axes[i, j].set_xlabel("")
        fig.tight_layout()
        paths += plots.save_figure(fig, out_dir, "reliability")
    return paths


def ranking(t: pd.DataFrame, metric: str) -> list[tuple[str, float]]:
    """Estimators ordered best first by their mean over models of the pooled ``(all)`` cell."""
    sub = t[(t["topic"] == ALL) & (t["metric"] == metric)]
    mean = sub.groupby("estimator")["value"].mean()
    asc = metric in ("ece", "ece_pcorrect", "brier")
    return [(k, float(v)) for k, v in mean.sort_values(ascending=asc).items()]


def report_sections(tables: dict[str, pd.DataFrame], figs: list[Path]) -> list[Any]:
    t = tables["topic_calibration"]
    keys = {}
    for met in dict.fromkeys(t["metric"]):
        r = ranking(t, met)
        keys[f"ranking by {METRIC_LABEL.get(met, met)} (all topics, mean over models)"] = (
            " > ".join(f"{k} {v:.3f}" for k, v in r)
        )
    n_topics = t.loc[t["topic"] != ALL, "topic"].nunique()
    keys["topics x models"] = f"{n_topics} x {t['model'].nunique()}"
    png = {f.stem: f for f in figs if f.suffix == ".png"}
    out = [
        Section(
            title="Per-topic calibration of uncertainty estimators",
            caption=(
                "Rows: topics of the multiple-choice suite; columns: models; panels: "
                "estimator (columns) x metric (rows). ECE (10 bins on the predicted-class "
                "confidence, lower is better), AUROC and PRR (prediction-rejection ratio: 1 = "
                "oracle ranking, 0 = random) of P(correct) against the graded correctness of "
                "the model's own answer, in percent, each with a bootstrap 95% interval in "
                "the table. Estimators were trained "
                "once per model on a training mix of other tasks. Hatched cells have too few "
                "answers to be reliable."
            ),
            figures=[png["topic_calibration"]] if "topic_calibration" in png else [],
            key_numbers=keys,
            tables=["topic_calibration"],
        )
    ]
    if "reliability" in png:
        out.append(
            Section(
                title="Reliability diagrams (all topics pooled)",
                caption=(
                    "Observed accuracy of the predicted class per confidence bin (10 bins on "
                    "max(p, 1-p)); the dashed diagonal is perfect calibration; numbers above "
                    "bars are bin counts."
                ),
                figures=[png["reliability"]],
                tables=["reliability"],
            )
        )
    return out
