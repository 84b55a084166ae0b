"""Helpers shared by the knowledge analyses: splits, cached generations, metric cells."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from knowlens.errors import ConfigError, DataError

if TYPE_CHECKING:
    from knowlens._types import ActivationSet, GenerationSet
    from knowlens.models import ModelHandle
    from knowlens.tasks import Task

__all__ = [
    "DISPLAY",
    "METRIC_LABEL",
    "accuracy_row",
    "activation_needs",
    "activations",
    "check_accuracy_range",
    "decided",
    "disjoint_from",
    "frame",
    "generations",
    "load_split",
    "metric_cell",
    "min_n_of",
    "paired_diff_cell",
    "require_labels",
    "require_models",
    "short_model",
]

# Display names used in tables and figures (seed 001/002 wording).
DISPLAY = {
    "zero_shot": "Zero-Shot Classifier",
    "probe": "Probe",
    "lora": "LoRA",
    "lora_prompt": "LoRA + Prompt",
    "logistic": "Logistic probe",
}
METRIC_LABEL = {
    "auroc": "AUROC",
    "ece": "ECE",
    "ece_pcorrect": "ECE (P(correct), 20 bins)",
    "brier": "Brier",
    "prr": "PRR",
}


def load_split(
    name: str,
    split: str,
    limit: int | None,
    seed: int,
    *,
    topics: Sequence[str] | None = None,
    who: str = "analysis",
    **kwargs: Any,
) -> Task:
    """A task split (the task library raises its own one-line errors for unknown names);
    with ``topics`` only those topics' questions, then at most ``limit`` of them (a listed
    topic the split does not have is a ``ConfigError`` naming ``who`` and the ones it has)."""
    from dataclasses import replace

    from knowlens.tasks import load_task

    if not topics:
        with warnings.catch_warnings():
            # a split smaller than the limit: the task library also logs it, and one line
            # in the run's output is enough (a library caller still gets the warning)
            warnings.filterwarnings("ignore", "Task .* fewer than limit", UserWarning)
            return load_task(name, split=split, limit=limit, seed=seed, **kwargs)
    task = load_task(name, split=split, limit=None, seed=seed, **kwargs)
    have = {ex.topic for ex in task.examples}
    missing = [t for t in topics if t not in have]
    if missing:
        raise ConfigError(
            f"{who}: topics {missing} are not topics of {name}'s {split} split; it has: "
            f"{', '.join(sorted(str(t) for t in have))}."
        )
    wanted = set(topics)
    return replace(task, examples=[ex for ex in task.examples if ex.topic in wanted][:limit])


def _question(ex: Any) -> tuple[str, tuple[str, ...]]:
    """What makes two questions the same one: the text and, for multiple choice, the options
    (mc_suite asks "Which of these numbers is prime?" about many different option sets)."""
    return ex.question, tuple(getattr(ex, "options", None) or ())


def disjoint_from(train: Task, test: Task) -> Task:
    """``train`` without the questions ``test`` asks: split ids are disjoint, but two ids may
    carry the same question, which would then be seen in training and scored at test."""
    from dataclasses import replace

    asked = {_question(ex) for ex in test.examples}
    kept = [ex for ex in train.examples if _question(ex) not in asked]
    return train if len(kept) == len(train.examples) else replace(train, examples=kept)


# Hidden states captured while generating, per run context (dropped with it): what
# ``activations`` copies rows from instead of running the model again.
_CAPTURED: dict[int, list[tuple[GenerationSet, ActivationSet]]] = {}


def _local(ctx: Any) -> bool:
    # the in-process executor (the only one that decodes here, so the only one to observe)
    return getattr(getattr(ctx, "executor", None), "name", None) == "local"


def _keep_for(ctx: Any) -> bool:
    """Open ``_CAPTURED[id(ctx)]``, dropped when ``ctx`` is (False: it cannot be watched)."""
    if id(ctx) not in _CAPTURED:
        try:
            weakref.finalize(ctx, _CAPTURED.pop, id(ctx), None)
        except TypeError:
            return False
        _CAPTURED[id(ctx)] = []
    return True


def generations(
    ctx: Any,
    model: ModelHandle,
    task: Task,
    split: str,
    *,
    capture: Sequence[tuple[Any, str]] = (),
) -> GenerationSet:
    """Greedy answers of ``model`` on ``task`` (cached by the generation stage), recorded;
    computed on the run's executor (``ctx.executor``: local or Ray, same rows).

    ``capture``: ``(layers, tokens)`` that ``activations`` will ask of ``model`` for these
    answers (or a subset / concatenation of them). When the answers are not cached, their
    hidden states are read while generating (one pass, on any executor) and later
    ``activations`` calls copy them instead of running the model again."""
    ctx.record_task(task, split=split)
    what = f"generate {model.name} · {task.name}/{split} ({len(task.examples)})"
    with ctx.step(what, kind="generate", model=model.name):
        if capture:
            from knowlens.executors._stages import generate_capturing

            gens, sets = generate_capturing(
                model,
                task,
                capture,
                executor=getattr(ctx, "executor", None),
                cache=ctx.use_cache,
                progress=False,
                extract_on_hit=False,
            )
            if sets and _keep_for(ctx):
                _CAPTURED[id(ctx)].extend((gens, a) for a in sets)
        else:
            from knowlens.executors._stages import generate

            gens = generate(model, task, executor=ctx.executor, cache=ctx.use_cache, progress=False)
        ctx.count_cache("generations", hit=bool(gens.meta.get("cache_hit")))
    return gens


def activation_needs(estimators: Sequence[str], model: ModelHandle) -> list[tuple[Any, str]]:
    """``(layers, tokens)`` that the activation readers among ``estimators`` ask of
    ``model`` (``EstimatorBench.inputs``), for ``generations(..., capture=)``."""
    from knowlens.estimators import get_estimator

    out: list[tuple[Any, str]] = []
    for name in estimators:
        need = get_estimator(name).inputs
        if need.source == "activations" and need.text == "answer":  # not query reads
            req = ([need.resolve_layer(int(model.n_layers))], str(need.tokens))
            if req not in out:
                out.append(req)
    return out


def activations(ctx: Any, model: ModelHandle, gens: GenerationSet, **kwargs: Any) -> ActivationSet:
    """Hidden states of ``gens`` under ``model`` (cached), on the run's executor; rows
    captured while generating (``generations(..., capture=)``) are copied, not rerun."""
    from knowlens.executors._stages import extract

    def run() -> ActivationSet:
        return extract(
            model, gens, executor=ctx.executor, cache=ctx.use_cache, progress=False, **kwargs
        )

    captured = _CAPTURED.get(id(ctx))
    if captured:
        from knowlens.activations import extract_reusing

        acts = extract_reusing(
            model,
            gens,
            captured,
            cache=ctx.use_cache,
            progress=False,
            numerics=None if _local(ctx) else ctx.executor.numerics(model),
            fallback=run,
            **kwargs,
        )
    else:
        acts = run()
    ctx.count_cache("activations", hit=bool(acts.meta.get("cache_hit")))  # in the open step
    return acts


def check_accuracy_range(v: tuple[float, float] | None) -> tuple[float, float] | None:
    """A config's ``[lo, hi]`` accuracy filter (topic_accuracy, task_accuracy): None, or
    ``0 <= lo < hi <= 1``."""
    if v is not None and not 0.0 <= v[0] < v[1] <= 1.0:
        raise ValueError(f"must be [lo, hi] with 0 <= lo < hi <= 1; got {list(v)}")
    return v


def decided(gens: GenerationSet) -> GenerationSet:
    """Only the rows with a correct/wrong verdict (undecided grades cannot be scored)."""
    y = gens.correct
    keep = ~np.isnan(y)
    return gens if keep.all() else gens.subset(keep)


def accuracy_row(model: str, task: Task, split: str, gens: GenerationSet) -> dict[str, Any]:
    y = gens.correct
    y = y[~np.isnan(y)]
    return {
        "model": model,
        "task": task.name,
        "split": split,
        "n": len(y),
        "n_correct": int(y.sum()),
        "accuracy": float(y.mean()) if len(y) else float("nan"),
    }


def metric_cell(
    metric: str, y: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """value, 95% CI, n and n_correct of one metric (knowlens.metrics), NaN when undefined."""
    from knowlens import metrics

    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    keep = ~(np.isnan(y) | np.isnan(p))
    y, p = y[keep], p[keep]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        if n_boot > 0 and len(y):
            ci = metrics.bootstrap(metric, y, p, n_resamples=n_boot, seed=seed)
            value, lo, hi = ci.value, ci.low, ci.high
        else:
            value = metrics.METRICS[metric](y, p) if len(y) else float("nan")
            lo = hi = float("nan")
    return {
        "metric": metric,
        "value": float(value),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": len(y),
        "n_correct": int(y.sum()),
    }


def paired_diff_cell(
    y: np.ndarray,
    p1: np.ndarray,
    p2: np.ndarray,
    *,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int,
    seed: int,
    name: str,
) -> dict[str, Any]:
    """metric(y, p1) - metric(y, p2) with a paired bootstrap CI (``metrics.bootstrap_diff``)."""
    from knowlens import metrics

    ci = metrics.bootstrap_diff(metric, y, p1, p2, n_resamples=max(1, n_boot), seed=seed)
    lo, hi = (ci.low, ci.high) if n_boot > 0 else (float("nan"), float("nan"))
    keep = ~(np.isnan(np.asarray(y, float)) | np.isnan(np.asarray(p1, float)))
    keep &= ~np.isnan(np.asarray(p2, float))
    return {
        "metric": name,
        "value": ci.value,
        "ci_low": lo,
        "ci_high": hi,
        "n": ci.n,
        "n_correct": int(np.asarray(y, float)[keep].sum()),
    }


def resolution(cells: pd.DataFrame, min_n: int, metric: str = "auroc") -> dict[str, str]:
    """What a figure's ``metric`` cells can resolve, as report key numbers: how many cells are
    drawn (n >= ``min_n`` and a finite value), their smallest n, and the median half-width of
    their 95% CIs (a difference much smaller than that is not resolved by one cell)."""
    sub = cells[cells["metric"] == metric]
    drawn = sub[(sub["n"] >= min_n) & np.isfinite(sub["value"].to_numpy(dtype=float))]
    half = (drawn["ci_high"] - drawn["ci_low"]).to_numpy(dtype=float) / 2
    half = half[np.isfinite(half)]
    name = {"auroc_minus_baseline": "AUROC - baseline"}.get(metric, metric)
    name = name.upper() if metric in ("auroc", "ece", "prr") else name
    return {
        f"{name} cells drawn (n >= {min_n})": f"{len(drawn)} of {len(sub)}",
        f"smallest n of a drawn {name} cell": str(int(drawn["n"].min())) if len(drawn) else "-",
        f"median {name} 95% CI half-width": f"{np.median(half):.3f}" if len(half) else "-",
    }


def require_models(cfg: Any, *, at_least: int = 1) -> list[str]:
    if len(cfg.models) < at_least:
        raise ConfigError(
            f"{cfg.analysis}: field 'models' needs at least {at_least} model(s); got "
            f"{cfg.models!r}. Add e.g. 'models: [smollm2-135m-instruct]' or pass --models."
        )
    return list(cfg.models)


def require_labels(y: np.ndarray, who: str) -> None:
    y = y[~np.isnan(y)]
    if len(y) == 0 or y.min() == y.max():
        what = "no graded answers" if len(y) == 0 else f"all {len(y)} answers graded {int(y[0])}"
        raise DataError(
            f"{who}: training data has {what}; an estimator needs both correct and wrong "
            "answers. Raise 'limit' or choose tasks the model gets partly right."
        )


def min_n_of(tables: dict[str, pd.DataFrame], default: int = 10) -> int:
    """The run's ``min_n`` from its ``settings`` table (older result tables: ``default``)."""
    settings = tables.get("settings")
    if settings is None or "min_n" not in settings or settings.empty:
        return default
    return int(settings["min_n"].iloc[0])


def short_model(name: str) -> str:
    """Compact model label for figure axes (paths -> last component)."""
    return str(name).rstrip("/").split("/")[-1]


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """DataFrame with a fixed column order (so empty tables still have the right schema)."""
    df = pd.DataFrame(rows)
    for c in columns:
        if c not in df:
            df[c] = pd.Series(dtype=float)
    return df[columns + [c for c in df.columns if c not in columns]]
