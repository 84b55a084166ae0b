"""Cross-model transfer of uncertainty estimators (seed 001; Kapoor et al. 2024).

For N models, each estimator is trained on the graded answers of one model ("Trained On",
columns) and judges the held-out answers of every model ("Model", rows). The estimator
always reads with its own model: a probe trained on model T reads T's hidden states of the
row model's question + answer; LoRA + Prompt runs T's adapters on them.

    cell[model M, trained on T, metric] = AUROC, ECE or PRR (``metrics``; default all three)
                                          of estimator_T's P(correct) on M's test answers

``topics`` keeps only those topics' questions of each task before ``limit`` (the demo: five
of qa_suite's). A training question that the test split also asks is dropped. This is the
selection topic_calibration's in_distribution setting makes, so with the same train
settings the diagonal cells reuse its cached answers and fits.

Tables: ``estimator_transfer`` (one row per estimator x model x trained_on x metric, with n
and a bootstrap 95% CI), ``scores`` (per-answer P(correct)), ``accuracy``. With
``train.temperature_scaling`` every estimator also appears as "<name> + TS" (temperature
fitted on the trained-on model's validation split, ``EstimatorBench.fit_variants``) and
``temperatures`` records each fitted T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.experiments._common import (
    METRIC_LABEL,
    accuracy_row,
    activation_needs,
    decided,
    disjoint_from,
    frame,
    generations,
    load_split,
    metric_cell,
    min_n_of,
    require_labels,
    require_models,
    resolution,
    short_model,
)
from knowlens.experiments._estimators import (
    ESTIMATORS_HELP,
    TEMPERATURE_COLUMNS,
    EstimatorBench,
    SamplingSettings,
    TrainSettings,
    concat,
    display_name,
    known_estimators,
)

__all__ = ["CODE_VERSION", "COLUMNS", "Config", "figures", "headline", "report_sections", "run"]

# 2: topics; training questions the test split asks are dropped
CODE_VERSION = "2"
COLUMNS = [
    "analysis",
    "model",
    "trained_on",
    "estimator",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_correct",
]

Metric = Literal["auroc", "ece", "brier", "prr"]


def _default_metrics() -> list[Metric]:  # a def: a lambda's list would be typed list[str]
    return ["auroc", "ece", "prr"]


class Config(AnalysisConfig):
    """N x N "Model" x "Trained On" matrix per estimator."""

    analysis: Literal["estimator_transfer"] = "estimator_transfer"
    tasks: list[str] = Field(
        default_factory=lambda: ["capitals", "country_currency", "arithmetic"],
        min_length=1,
        description="Tasks whose train split trains and whose test split evaluates.",
    )
    topics: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Only these topics' questions of each task (e.g. qa_suite's), before "
        "'limit'; each task must have them all.",
    )
    estimators: list[str] = Field(
        default_factory=lambda: ["probe", "lora_prompt"], min_length=1, description=ESTIMATORS_HELP
    )
    metrics: list[Metric] = Field(default_factory=_default_metrics, min_length=1)
    train: TrainSettings = Field(default_factory=TrainSettings)
    sampling: SamplingSettings = Field(
        default_factory=SamplingSettings,
        description="How sample estimators' answers are drawn (k, temperature, ...).",
    )

    @field_validator("estimators", "metrics", "tasks", "topics")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("lists an entry twice; list each once")
        return v

    @field_validator("estimators")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        return known_estimators(v)


def _split_tasks(cfg: Config, split: str) -> list[Any]:
    """Each task's ``split`` (only ``topics``' questions when given); the train split without
    any question its test split asks. The same selection as topic_calibration's
    in_distribution setting makes, so the two analyses share cached answers and fits."""
    out = []
    for name in cfg.tasks:

        def get(s: str, limit: int | None, name: str = name) -> Any:
            return load_split(name, s, limit, cfg.seed, topics=cfg.topics, who="estimator_transfer")

        task = get(split, cfg.limit)
        out.append(disjoint_from(task, get("test", None)) if split == "train" else task)
    return out


def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    specs = require_models(cfg)
    train: dict[str, Any] = {}
    test: dict[str, Any] = {}
    acc_rows: list[dict[str, Any]] = []
    # the same questions for every model: selected once
    questions = {split: _split_tasks(cfg, split) for split in ("train", "test")}
    for spec in specs:
        model = ctx.load_model(spec)
        needs = activation_needs(cfg.estimators, model)  # its own answers: read while generating
        for split, store in (("train", train), ("test", test)):
            parts = []
            for task in questions[split]:
                g = decided(generations(ctx, model, task, split, capture=needs))
                acc_rows.append(accuracy_row(spec, task, split, g))
                parts.append(g)
            # one test task: its own set, as topic_calibration scores it, so the diagonal's
            # scores are shared too (training sets are concatenated in both analyses)
            store[spec] = parts[0] if split == "test" and len(parts) == 1 else concat(parts)
        require_labels(train[spec].correct, f"estimator_transfer ({spec})")

    rows: list[dict[str, Any]] = []
    score_rows: list[pd.DataFrame] = []
    temp_rows: list[dict[str, Any]] = []
    bench = EstimatorBench(ctx, cfg.train, cfg.seed, cfg.sampling)
    for est_name in cfg.estimators:
        for trained_on in ctx.track(specs, f"{display_name(est_name)}: train + judge"):
            reader = ctx.load_model(trained_on)
            for fitted in bench.fit_variants(est_name, reader, train[trained_on]):  # and "+ TS"
                if fitted.calibration is not None:
                    temp_rows.append({"trained_on": trained_on, **fitted.calibration})
                for i, judged in enumerate(specs):
                    ev = test[judged]
                    p = bench.score(fitted, ev)
                    score_rows.append(
                        pd.DataFrame(
                            {
                                "model": judged,
                                "trained_on": trained_on,
                                "estimator": fitted.label,
                                "example_id": ev.example_ids,
                                "correct": ev.correct,
                                "p": p,
                            }
                        )
                    )
                    for m in cfg.metrics:
                        # Same resamples for one row model across columns and estimators.
                        cell = metric_cell(
                            m, ev.correct, p, n_boot=cfg.n_bootstrap, seed=cfg.seed + i
                        )
                        rows.append(
                            {
                                "analysis": "estimator_transfer",
                                "model": judged,
                                "trained_on": trained_on,
                                "estimator": fitted.label,
                                **cell,
                            }
                        )
    return {
        "estimator_transfer": frame(rows, COLUMNS),
        "scores": pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame(),
        "accuracy": frame(acc_rows, ["model", "task", "split", "n", "n_correct", "accuracy"]),
        "settings": pd.DataFrame([{"min_n": cfg.min_n}]),
        **(
            {"temperatures": frame(temp_rows, ["trained_on", *TEMPERATURE_COLUMNS])}
            if cfg.train.temperature_scaling
            else {}
        ),
    }


def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Seed 001 layout: one panel per estimator, side by side, each with its own colour bar
    (sequential, dark purple -> orange), rows "Model", columns "Trained On", values + CI."""
    import matplotlib.pyplot as plt

    from knowlens import plots

    t = tables["estimator_transfer"]
    min_n = min_n_of(tables)
    paths: list[Path] = []
    models = list(dict.fromkeys(t["model"]))
    labels = [short_model(m) for m in models]
    for met in dict.fromkeys(t["metric"]):
        sub = t[t["metric"] == met].assign(
            model=lambda d: d["model"].map(short_model),
            trained_on=lambda d: d["trained_on"].map(short_model),
        )
        ests = list(dict.fromkeys(sub["estimator"]))
        # Wide enough for "0.84 [0.67, 1.00]" in a cell even for one or two models.
        w, h = max(4.6, 1.3 * len(models) + 3.2), max(3.2, 0.9 * len(models) + 2.4)
        fig, axes = plt.subplots(1, len(ests), figsize=(w * len(ests), h), squeeze=False)
        for j, est in enumerate(ests):
            s = sub[sub["estimator"] == est]

            def piv(col: str, s: pd.DataFrame = s) -> pd.DataFrame:
                return plots.pivot(
                    s,
                    index="model",
                    columns="trained_on",
                    value=col,
                    index_order=labels,
                    column_order=labels,
                )

            n = piv("n")
            plots.heatmap(
                axes[0, j],
                piv("value"),
                fmt=".2f",
                ci_low=piv("ci_low"),
                ci_high=piv("ci_high"),
                cbar_label=METRIC_LABEL.get(met, met),
                title=est,
                xlabel="Trained On",
                ylabel="Model",
                hatch_mask=n < min_n,
                hatch_label=f"n < {min_n}",
            )
        fig.tight_layout()
        paths += plots.save_figure(fig, out_dir, f"estimator_transfer_{met}")
    return paths


def headline(t: pd.DataFrame, metric: str = "auroc") -> dict[str, dict[str, float]]:
    """Per estimator: mean diagonal (own model) vs off-diagonal (transferred) value."""
    out = {}
    sub = t[t["metric"] == metric]
    for est, s in sub.groupby("estimator", sort=False):
        diag = s[s["model"] == s["trained_on"]]["value"]
        off = s[s["model"] != s["trained_on"]]["value"]
        out[str(est)] = {
            "diag_mean": float(diag.mean()) if len(diag) else float("nan"),
            "off_mean": float(off.mean()) if len(off) else float("nan"),
        }
    return out


def report_sections(tables: dict[str, pd.DataFrame], figs: list[Path]) -> list[Any]:
    t = tables["estimator_transfer"]
    keys = {}
    for met in dict.fromkeys(t["metric"]):
        for est, h in headline(t, met).items():
            keys[f"{est} · {METRIC_LABEL.get(met, met)}"] = (
                f"own model {h['diag_mean']:.3f}, transferred {h['off_mean']:.3f}"
            )
    keys.update(resolution(t, min_n_of(tables)))
    acc = tables.get("accuracy")
    if acc is not None and len(acc):
        # what each row model's cells rest on: an estimator separates right from wrong
        # answers, so the share of each (and the count) bounds what the figure can show
        test = acc[acc["split"] == "test"].groupby("model", sort=False)[["n", "n_correct"]].sum()
        keys["test answers correct"] = "; ".join(
            f"{short_model(m)} {r.n_correct / r.n:.0%} of {int(r.n)}"
            for m, r in test.iterrows()
            if r.n
        )
    temps = tables.get("temperatures")
    if temps is not None and len(temps):
        keys["temperature scaling: fitted T"] = "; ".join(
            f"{r.estimator} (trained on {short_model(r.trained_on)}) {r.temperature:.2f}"
            for r in temps.itertuples()
        )
    return [
        Section(
            title="Cross-model transfer of estimators",
            caption=(
                "Rows (Model): the model whose held-out answers are judged; columns (Trained "
                "On): the model whose answers and correctness labels trained the estimator, "
                "which reads with its own weights. Cell = AUROC, ECE (10 bins, lower is "
                "better) or PRR (prediction-rejection ratio: 1 = oracle ranking, 0 = random) "
                "of P(correct) with its bootstrap 95% interval; one figure per metric, one "
                "panel per estimator."
            ),
            figures=[f for f in figs if f.suffix == ".png"],
            key_numbers=keys,
            tables=["estimator_transfer", *(["temperatures"] if temps is not None else [])],
        )
    ]
