"""Per-topic calibration of uncertainty estimators (seed 002; Kapoor et al. 2024).

For every model, each estimator (Zero-Shot Classifier, Probe, LoRA, LoRA + Prompt, or any
registered one: ``knowlens.estimators.estimator_names()``) is trained once on the model's
graded answers, then scored per topic of a suite's held-out split (``mc_suite``, MMLU-like;
``qa_suite``, open answers, for models too small for multiple choice). Where the
training answers come from is the ``setting``:

- ``cross_task`` (the seed paper's): a training mix of other tasks (``train_tasks``), disjoint
  from the evaluated topics; measures whether the estimator carries over to a new task.
- ``in_distribution``: the evaluated suite's own train split (``train_limit`` questions, none
  equal to a test question: same text and options); measures whether the model's answers on
  this suite carry a learnable correctness signal at all. At 135M parameters the cross-task
  estimators sit near chance while in-distribution probes do not, so both are offered and the
  report names the setting.

    cell[topic, model | estimator, metric] = ECE, AUROC or PRR of P(correct) on that topic's
                                             answers (``metrics``; default all three)

``topics`` keeps only those topics' questions (test split, and the train split in the
``in_distribution`` setting) before ``eval_limit`` / ``train_limit`` apply, so a run spends
its answers on the rows it draws; ``eval_task_options`` goes to the suite's builder (e.g.
``{per_topic: 450}``: more questions on mc_suite's generated topics). ``topic_accuracy =
[lo, hi]`` shows only topics whose accuracy lies in [lo, hi] on every model (a one-class or
near one-class topic has no AUROC worth drawing). A topic whose accuracy is not above its
guessing rate (1 / options; one-sided binomial test, p < 0.05) on every model is never shown:
there correctness is a coin flip no estimator can predict (both embedded models answer one
letter to ~95 % of mc_suite's questions). The ``topics`` table records every evaluated
topic's accuracy, guessing rate and test p-value per model and whether it is shown. The
pooled row ``(all)`` pools every evaluated answer.

    cell[topic, model | estimator, metric] = ECE, AUROC or PRR of P(correct) on that topic's
                                             answers (``metrics``; default all three)

Tables: ``topic_calibration`` (one row per topic x model x estimator x metric, with n and a
bootstrap 95% CI; topic ``(all)`` pools the topics), ``reliability`` (bins per model x
estimator, pooled), ``scores`` (per-answer P(correct), so every cell can be recomputed),
``accuracy``, ``topics``, ``settings`` (setting, min_n). With ``train.temperature_scaling``
every estimator also appears as "<name> + TS" (temperature scaling fitted on a validation
split, ``EstimatorBench.fit_variants``) and ``temperatures`` records each fitted T.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.experiments._common import (
    METRIC_LABEL,
    accuracy_row,
    activation_needs,
    check_accuracy_range,
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
    known_estimators,
)

if TYPE_CHECKING:
    from knowlens.tasks import Task

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

# 2: topics table, setting, topic_accuracy; 3: differences table; 4: topics filter the
# questions asked, train/test disjoint on text and options (same-stem questions were dropped);
# 5: topics at the guessing rate are not shown
CODE_VERSION = "5"
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
    setting: Literal["cross_task", "in_distribution"] = Field(
        default="cross_task",
        description="Train on other tasks (cross_task, the seed paper's) or on the eval "
        "suite's own train split (in_distribution).",
    )
    train_limit: int | None = Field(
        default=None, ge=1, description="in_distribution: max training questions (None = 'limit')."
    )
    topic_accuracy: tuple[float, float] | None = Field(
        default=None,
        description="[lo, hi]: show only topics with accuracy in [lo, hi] on every model.",
    )
    train_tasks: list[str] = Field(
        default_factory=lambda: ["capitals", "country_currency", "arithmetic", "nli_geo"],
        min_length=1,
        description="Training mix (train split of each); disjoint from the evaluated topics.",
    )
    eval_task: str = Field(
        default="mc_suite", description="Multiple-choice task whose topics are the rows."
    )
    topics: list[str] | None = Field(
        default=None,
        description="Topics whose questions are asked and shown (None = every topic of "
        "eval_task); applied before eval_limit / train_limit.",
    )
    eval_task_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of eval_task's builder, e.g. {per_topic: 450} for "
        "mc_suite (checked by the task library).",
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
    reference: str | None = Field(
        default="zero_shot",
        description="Estimator every other one is compared with (paired bootstrap of the "
        "AUROC and ECE differences over the same answers, table 'differences'); None = none.",
    )
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

    @field_validator("reference")
    @classmethod
    def _known_reference(cls, v: str | None) -> str | None:
        return None if v is None else known_estimators([v])[0]

    @field_validator("topic_accuracy")
    @classmethod
    def _range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        return check_accuracy_range(v)


def _suite_split(cfg: Config, split: str, limit: int | None, kw: dict[str, Any]) -> Task:
    """``split`` of the suite (``eval_task_options``), only ``topics``' questions when given,
    then at most ``limit`` of them."""
    opts = {**cfg.eval_task_options, **kw}
    return load_split(
        cfg.eval_task, split, limit, cfg.seed, topics=cfg.topics, who="topic_calibration", **opts
    )


def _train_split(cfg: Config, kw: dict[str, Any]) -> list[Task]:
    """The tasks whose train split the estimators learn from (see ``setting``)."""
    if cfg.setting == "cross_task":
        return [load_split(name, "train", cfg.limit, cfg.seed) for name in cfg.train_tasks]
    test = _suite_split(cfg, "test", None, kw)
    return [disjoint_from(_suite_split(cfg, "train", cfg.train_limit or cfg.limit, kw), test)]


def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    from knowlens import metrics

    rel_rows: list[pd.DataFrame] = []
    score_rows: list[pd.DataFrame] = []
    acc_rows: list[dict[str, Any]] = []
    temp_rows: list[dict[str, Any]] = []
    bench = EstimatorBench(ctx, cfg.train, cfg.seed, cfg.sampling)
    chance: dict[str, float] = {}
    kw = {} if cfg.eval_k_shot is None else {"k_shot": cfg.eval_k_shot}
    for spec in require_models(cfg):
        model = ctx.load_model(spec)
        needs = activation_needs(cfg.estimators, model)  # read while generating (one pass)
        parts = []
        for task in _train_split(cfg, kw):
            g = decided(generations(ctx, model, task, "train", capture=needs))
            acc_rows.append(accuracy_row(spec, task, "train", g))
            parts.append(g)
        train = concat(parts)
        require_labels(train.correct, f"topic_calibration ({spec})")

        task = _suite_split(cfg, "test", cfg.eval_limit or cfg.limit, kw)
        ev = decided(generations(ctx, model, task, "test", capture=needs))
        acc_rows.append(accuracy_row(spec, task, "test", ev))
        topics = np.array([r.topic or "(none)" for r in ev.rows])
        y = ev.correct
        chance = _chance_rates(task)

        for est_name in ctx.track(cfg.estimators, f"{short_model(spec)}: estimators"):
            for fitted in bench.fit_variants(est_name, model, train):  # and its "+ TS"
                p = bench.score(fitted, ev)
                score_rows.append(
                    pd.DataFrame(
                        {
                            "model": spec,
                            "estimator": fitted.label,
                            "example_id": ev.example_ids,
                            "topic": topics,
                            "correct": y,
                            "p": p,
                        }
                    )
                )
                rel = metrics.reliability(y, p, 10)
                rel_rows.append(rel.assign(model=spec, estimator=fitted.label))
                if fitted.calibration is not None:
                    temp_rows.append({"model": spec, **fitted.calibration})
    scores = pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame()
    topic_tab = _topic_table(scores, cfg, chance)
    return {
        "topic_calibration": frame(_cells(scores, topic_tab, cfg), COLUMNS),
        "reliability": pd.concat(rel_rows, ignore_index=True) if rel_rows else pd.DataFrame(),
        "scores": scores,
        "accuracy": frame(acc_rows, ["model", "task", "split", "n", "n_correct", "accuracy"]),
        "topics": topic_tab,
        "settings": pd.DataFrame([{"min_n": cfg.min_n, "setting": cfg.setting}]),
        "differences": frame(_differences(scores, topic_tab, cfg), DIFF_COLUMNS),
        **(
            {"temperatures": frame(temp_rows, ["model", *TEMPERATURE_COLUMNS])}
            if cfg.train.temperature_scaling
            else {}
        ),
    }


TOPIC_COLUMNS = [
    "model",
    "topic",
    "n",
    "n_correct",
    "accuracy",
    "chance",
    "p_above_chance",
    "shown",
]
ABOVE_CHANCE_ALPHA = 0.05
DIFF_COLUMNS = ["model", "estimator", "reference", "metric", "value", "ci_low", "ci_high", "n"]


def _differences(
    scores: pd.DataFrame, topic_tab: pd.DataFrame, cfg: Config
) -> list[dict[str, Any]]:
    """Each estimator minus ``cfg.reference`` per model, AUROC and ECE, on the answers of the
    shown topics pooled: a paired bootstrap (both scores on the same resampled answers), so
    the interval is that of the difference."""
    from knowlens.experiments._estimators import display_name
    from knowlens.metrics import bootstrap_diff

    if cfg.reference is None or scores.empty:
        return []
    ref = display_name(cfg.reference)
    shown = set(topic_tab.loc[topic_tab["shown"].astype(bool), "topic"])
    rows: list[dict[str, Any]] = []
    for spec, s in scores[scores["topic"].isin(shown)].groupby("model", sort=False):
        wide = s.pivot_table(index="example_id", columns="estimator", values="p", sort=False)
        y = s.drop_duplicates("example_id").set_index("example_id")["correct"].loc[wide.index]
        if ref not in wide:
            continue
        for label in wide.columns:
            if label == ref:
                continue
            for m in ("auroc", "ece"):
                d = bootstrap_diff(
                    m, y, wide[label], wide[ref], n_resamples=cfg.n_bootstrap, seed=cfg.seed
                )
                rows.append(
                    {
                        "model": spec,
                        "estimator": label,
                        "reference": ref,
                        "metric": m,
                        "value": d.value,
                        "ci_low": d.low,
                        "ci_high": d.high,
                        "n": d.n,
                    }
                )
    return rows


def _chance_rates(task: Task) -> dict[str, float]:
    """Per topic, the accuracy of answering at random: the mean of 1 / number of options over
    its questions (0 for open answers)."""
    rates: dict[str, list[float]] = {}
    for ex in task.examples:
        rates.setdefault(ex.topic or "(none)", []).append(
            1 / len(ex.options) if ex.options else 0.0
        )
    return {t: float(np.mean(v)) for t, v in rates.items()}


def _topic_table(scores: pd.DataFrame, cfg: Config, chance: dict[str, float]) -> pd.DataFrame:
    """Accuracy of every evaluated topic per model, and whether the figure shows it: a topic
    is shown when it is wanted, inside ``topic_accuracy`` and above its guessing rate on
    every model (one-sided binomial test, p < ABOVE_CHANCE_ALPHA). At the guessing rate the
    model's correctness is a coin flip (e.g. one letter answered to every question), which
    no estimator can predict, so a cell there would only draw noise."""
    from scipy.stats import binomtest

    if scores.empty:
        return pd.DataFrame(columns=TOPIC_COLUMNS)
    first = scores.drop_duplicates(["model", "example_id"])  # one row per answer
    acc = (
        first.groupby(["model", "topic"], sort=True)["correct"]
        .agg(n="size", n_correct="sum", accuracy="mean")
        .reset_index()
    )
    acc["n_correct"] = acc["n_correct"].astype(int)
    acc["chance"] = [chance.get(t, 0.0) for t in acc["topic"]]
    acc["p_above_chance"] = [
        # open answers (guessing rate 0): no test, the accuracy range decides
        binomtest(int(k), int(n), c, alternative="greater").pvalue if c > 0 else 0.0
        for k, n, c in zip(acc["n_correct"], acc["n"], acc["chance"], strict=True)
    ]
    wanted = set(cfg.topics) if cfg.topics else set(acc["topic"])
    shown = acc["topic"].isin(wanted)
    above = (acc["p_above_chance"] < ABOVE_CHANCE_ALPHA).groupby(acc["topic"]).transform("all")
    shown &= above
    if cfg.topic_accuracy is not None:
        lo, hi = cfg.topic_accuracy
        inside = acc["accuracy"].between(lo, hi)
        ok = inside.groupby(acc["topic"]).transform("all")  # on every model
        shown &= ok
    return acc.assign(shown=shown.to_numpy())[TOPIC_COLUMNS]


def _cells(scores: pd.DataFrame, topic_tab: pd.DataFrame, cfg: Config) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if scores.empty:
        return rows
    hidden = set(topic_tab.loc[~topic_tab["shown"].astype(bool), "topic"])
    for (spec, label), s in scores.groupby(["model", "estimator"], sort=False):
        topics, y, p = s["topic"].to_numpy(), s["correct"].to_numpy(), s["p"].to_numpy()
        wanted = cfg.topics or sorted(set(topics))
        # The bootstrap seed follows the topic's place in ``wanted`` (so hiding a topic by
        # accuracy leaves the other cells' numbers unchanged).
        for t_i, topic in enumerate([*wanted, ALL]):
            if topic in hidden:
                continue
            sel = np.ones(len(y), bool) if topic == ALL else topics == topic
            for m in cfg.metrics:
                cell = metric_cell(m, y[sel], p[sel], n_boot=cfg.n_bootstrap, seed=cfg.seed + t_i)
                rows.append(
                    {
                        "analysis": "topic_calibration",
                        "model": spec,
                        "estimator": label,
                        "topic": topic,
                        **cell,
                    }
                )
    return rows


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
        f"scales reversed so darker is better in every row. Setting: {_setting(tables)}.",
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


SETTING_TEXT = {
    "cross_task": "cross_task: trained on other tasks (does the estimator carry over?)",
    "in_distribution": "in_distribution: trained on the suite's own train split (is there a "
    "learnable correctness signal?)",
}
TRAINED_ON = {
    "cross_task": "on a training mix of other tasks (the seed paper's cross-task setting)",
    "in_distribution": "on the suite's own train split, no question shared with the test "
    "split (in-distribution setting)",
}


def _setting(tables: dict[str, pd.DataFrame]) -> str:
    s = tables.get("settings")
    if s is None or "setting" not in s or s.empty:
        return "cross_task"  # results stored before the setting existed
    return str(s["setting"].iloc[0])


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
    keys.update(resolution(t[t["topic"] != ALL], min_n_of(tables)))
    setting = _setting(tables)
    keys["setting"] = SETTING_TEXT[setting]
    diffs = tables.get("differences")
    if diffs is not None and len(diffs):
        for r in diffs.itertuples():
            keys[
                f"{r.estimator} minus {r.reference}, {METRIC_LABEL.get(r.metric, r.metric)} "
                f"({short_model(r.model)})"
            ] = f"{r.value:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}], n={r.n} (paired bootstrap)"
    temps = tables.get("temperatures")
    if temps is not None and len(temps):
        keys["temperature scaling: fitted T"] = "; ".join(
            f"{r.estimator} ({short_model(r.model)}) {r.temperature:.2f}"
            for r in temps.itertuples()
        )
    hidden = tables.get("topics")
    if hidden is not None and len(hidden) and not hidden["shown"].astype(bool).all():
        gone = sorted(set(hidden.loc[~hidden["shown"].astype(bool), "topic"]))
        keys["topics not shown (accuracy range, topic list or at guessing rate)"] = ", ".join(gone)
        if "p_above_chance" in hidden:  # results stored before the guessing-rate test lack it
            low = hidden[hidden["p_above_chance"] >= ABOVE_CHANCE_ALPHA]
            if len(low):
                keys["at the guessing rate (not shown: correctness is a coin flip there)"] = (
                    "; ".join(
                        f"{short_model(r.model)} {r.topic} {r.accuracy:.0%} (guessing {r.chance:.0%})"
                        for r in low.itertuples()
                    )
                )
    png = {f.stem: f for f in figs if f.suffix == ".png"}
    out = [
        Section(
            title="Per-topic calibration of uncertainty estimators",
            caption=(
                "Rows: topics of the evaluated suite; columns: models; panels: "
                "estimator (columns) x metric (rows). ECE (10 bins on the predicted-class "
                "confidence, lower is better), AUROC and PRR (prediction-rejection ratio: 1 = "
                "oracle ranking, 0 = random) of P(correct) against the graded correctness of "
                "the model's own answer, in percent, each with a bootstrap 95% interval in "
                "the table. Estimators were trained once per model "
                + TRAINED_ON[setting]
                + ". Hatched cells have too few answers to be reliable."
            ),
            figures=[png["topic_calibration"]] if "topic_calibration" in png else [],
            key_numbers=keys,
            tables=[
                "topic_calibration",
                "differences",
                *(["temperatures"] if temps is not None else []),
            ],
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
