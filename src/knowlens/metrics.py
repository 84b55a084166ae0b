"""Scores of uncertainty estimators: AUROC, ECE, Brier, accuracy, PRR, reliability data, CIs.

Every metric takes ``y`` (labels, 1 = the model's answer is correct, 0 = wrong; NaN =
undecided) and ``p`` (an estimator's P(correct)), both shape (n,). Definitions follow
``FIGURES.md`` ("Shared vocabulary"):

    auroc(y, p)          sklearn ``roc_auc_score`` of P(correct) against correct
    ece(y, p)            10 equal-width bins on the predicted-class confidence max(p, 1-p)
    ece_pcorrect(y, p)   20 equal-width bins on P(correct) itself (secondary column)
    brier(y, p)          mean (p - y)^2
    prr(y, p)            normalised prediction-rejection ratio (1 = oracle, 0 = random)

    m = bootstrap(auroc, y, p)          # Interval(value, low, high, n), 1,000 seeded resamples
    d = bootstrap_diff(auroc, y, p1, p2)  # paired: the same resamples for both scores
    r = proportion_interval(k, n)        # a rate such as an attack success rate

Undefined cases (empty input, a single class for AUROC / PRR) return NaN with a
``UndefinedMetricWarning`` naming the cause: never a crash, never a silent 0.5. Rows whose
label or score is NaN are dropped (with a warning giving the count). Mismatched lengths are
a user error (``DataError``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from knowlens.errors import DataError

__all__ = [
    "METRICS",
    "Interval",
    "UndefinedMetricWarning",
    "accuracy",
    "auroc",
    "bootstrap",
    "bootstrap_diff",
    "brier",
    "ece",
    "ece_pcorrect",
    "proportion_interval",
    "prr",
    "reliability",
    "score_table",
]


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on this input (empty, one class) and NaN was returned."""


def _numeric(x: Any, what: str, name: str) -> np.ndarray:
    """A 1-D float array from numbers / bools / None (NaN); strings and others are errors."""
    a = np.asarray(x)
    if a.dtype.kind == "O":
        # bools are ints; None becomes NaN (undecided)
        ok = (int, float, np.number, type(None))
        bad = next((v for v in a.reshape(-1) if not isinstance(v, ok)), None)
        if bad is not None:
            raise DataError(
                f"{name}: {what} must be numbers; got a {type(bad).__name__} ({bad!r}). "
                + _FIX[what]
            )
    elif a.dtype.kind not in "biuf":
        first = a.reshape(-1)[0].item() if a.size else None
        raise DataError(
            f"{name}: {what} must be numbers; got dtype {a.dtype} (e.g. {first!r}). " + _FIX[what]
        )
    a = a.astype(np.float64)
    if a.ndim > 1 and sum(d > 1 for d in a.shape) > 1:
        raise DataError(
            f"{name}: {what} must be one value per example (shape (n,)); got shape {a.shape}. "
            "Pass a 1-D array (for a 2-column predict_proba output, its column for 'correct')."
        )
    return a.reshape(-1)


_FIX = {
    "labels": "Pass 1 (correct) / 0 (wrong), e.g. GenerationSet.correct, or NaN for undecided.",
    "scores": "Pass each example's P(correct) (or, for AUROC / PRR, any real-valued score).",
}


def _clean(
    y: Any, p: Any, name: str, *, probabilities: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The one input check of every metric: numeric 1-D labels and scores of equal length,
    labels 0/1, NaN rows removed (with a warning), and scores in [0, 1] when the metric
    reads them as probabilities (``probabilities``); rank metrics take any real scores."""
    y = _numeric(getattr(y, "correct", y), "labels", name)
    p = _numeric(p, "scores", name)
    if len(y) != len(p):
        raise DataError(
            f"{name}: labels and scores must have the same length; got {len(y)} labels and "
            f"{len(p)} scores. Pass P(correct) for exactly the labelled examples."
        )
    bad = np.isnan(y) | np.isnan(p)
    if bad.any():
        warnings.warn(
            f"{name}: dropped {int(bad.sum())} of {len(y)} rows with an undecided label or a "
            "NaN score.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        y, p = y[~bad], p[~bad]
    if len(y) and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(
            f"{name}: labels must be 0/1 (or NaN for undecided); got values {np.unique(y)[:5]}. "
            + _FIX["labels"]
        )
    if probabilities and len(p) and ((p < 0) | (p > 1)).any():
        raise DataError(
            f"{name}: scores must be probabilities in [0, 1]; got range "
            f"[{p.min():.4g}, {p.max():.4g}]. Pass P(correct), not a raw logit or log-prob."
        )
    return y, p


def _check_int(value: Any, what: str, name: str, *, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value >= hi):
        allowed = f"an integer >= {lo}" + (f" and < {hi}" if hi is not None else "")
        raise DataError(f"{name}: {what} must be {allowed}; got {value!r}.")


def _undefined(name: str, why: str) -> float:
    warnings.warn(f"{name} is undefined: {why}; returning NaN.", UndefinedMetricWarning, 3)
    return float("nan")


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve of ``p`` against ``y`` (FIGURES.md: sklearn ``roc_auc_score``).

    Computed as the Mann-Whitney U statistic with average ranks (ties count 1/2), which is
    exactly sklearn's value and ~10x faster inside a bootstrap. NaN if empty or one class.
    """
    y, p = _clean(y, p, "auroc", probabilities=False)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if len(y) == 0:
        return _undefined("AUROC", "no examples")
    if n_pos == 0 or n_neg == 0:
        return _undefined("AUROC", f"only one class present (all {int(y[0])})")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def brier(y: Any, p: Any) -> float:
    """Brier score ``mean((p - y)^2)`` (= sklearn ``brier_score_loss``). NaN if empty."""
    y, p = _clean(y, p, "brier", probabilities=True)
    if len(y) == 0:
        return _undefined("Brier score", "no examples")
    return float(np.mean((p - y) ** 2))


def accuracy(y: Any, p: Any, threshold: float = 0.5) -> float:
    """Fraction of examples where the estimator's call (``p >= threshold``) matches ``y``."""
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise DataError(f"accuracy: threshold must be a number in [0, 1]; got {threshold!r}.")
    y, p = _clean(y, p, "accuracy", probabilities=True)
    if len(y) == 0:
        return _undefined("accuracy", "no examples")
    return float(np.mean((p >= threshold).astype(np.float64) == y))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each value in [0, 1] for bins [k/n, (k+1)/n), the last one closed at 1.0.

    ``floor(c * n)`` can be off by one when ``c * n`` rounds across an integer; the two
    corrections compare against the edge ``k / n`` itself, so ``c == 0.3`` lands in [0.3, 0.4).
    """
    idx = np.floor(conf * n_bins).astype(np.int64)
    idx = np.where(idx / n_bins > conf, idx - 1, idx)
    idx = np.where((idx + 1) / n_bins <= conf, idx + 1, idx)
    return np.clip(idx, 0, n_bins - 1)


def reliability(y: Any, p: Any, n_bins: int = 10, *, mode: str = "max_class") -> pd.DataFrame:
    """Reliability-diagram data: one row per bin (empty bins included, with count 0).

    Args:
        y: labels (n,), 1 = correct.
        p: P(correct) (n,).
        n_bins: number of equal-width bins over [0, 1].
        mode: ``"max_class"`` (FIGURES.md ECE convention): confidence = max(p, 1 - p) and
            accuracy = how often the predicted class (``p >= 0.5`` -> correct) equals the
            label; ``"p_correct"``: confidence = p, accuracy = mean label.

    Returns:
        DataFrame with columns ``bin, lo, hi, count, confidence, accuracy, gap`` (gap =
        accuracy - confidence; NaN for empty bins).
    """
    if mode not in {"max_class", "p_correct"}:
        raise DataError(f"reliability: mode must be 'max_class' or 'p_correct'; got '{mode}'.")
    _check_int(n_bins, "n_bins", "reliability", lo=1)
    y, p = _clean(y, p, "reliability", probabilities=True)
    if mode == "max_class":
        conf = np.maximum(p, 1 - p)
        hit = ((p >= 0.5).astype(np.float64) == y).astype(np.float64)
    else:
        conf, hit = p, y
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
    edges = np.arange(n_bins + 1) / n_bins
    return pd.DataFrame(
        {
            "bin": np.arange(n_bins),
            "lo": edges[:-1],
            "hi": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": mean_acc,
            "gap": mean_acc - mean_conf,
        }
    )


def ece(y: Any, p: Any, n_bins: int = 10, *, mode: str = "max_class") -> float:
    """Expected calibration error (FIGURES.md, "Shared vocabulary").

    ``sum_b (n_b / n) * |accuracy_b - confidence_b|`` over ``n_bins`` equal-width bins
    [lo, hi) on [0, 1], the last closed at 1.0, empty bins skipped. The default ``mode``
    bins the predicted-class confidence max(p, 1 - p) and scores the predicted class
    (``p >= 0.5`` means "correct"; at exactly 0.5 the call is "correct"). NaN if empty.
    """
    return _ece(y, p, n_bins, mode, "ece")


def ece_pcorrect(y: Any, p: Any, n_bins: int = 20) -> float:
    """ECE with 20 equal-width bins on P(correct) itself (FIGURES.md secondary column)."""
    return _ece(y, p, n_bins, "p_correct", "ece_pcorrect")


def _ece(y: Any, p: Any, n_bins: int, mode: str, who: str) -> float:
    # Validate under the caller's name (errors say "ece: ...", not "reliability: ...").
    _check_int(n_bins, "n_bins", who, lo=1)
    y, p = _clean(y, p, who, probabilities=True)
    rel = reliability(y, p, n_bins, mode=mode)
    n = int(rel["count"].sum())
    if n == 0:
        return _undefined("ECE", "no examples")
    full = rel[rel["count"] > 0]
    return float((full["count"] / n * (full["accuracy"] - full["confidence"]).abs()).sum())


def _tie_averaged(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Labels sorted by descending score, each tie group replaced by its mean label, so the
    rejection curve is the expectation over random tie-breaking (constant scores -> random)."""
    order = np.argsort(-score, kind="stable")
    s, ys = score[order], y[order]
    _, start, counts = np.unique(-s, return_index=True, return_counts=True)
    group_mean = np.add.reduceat(ys, start) / counts
    return np.repeat(group_mean, counts)


def prr(y: Any, p: Any) -> float:
    """Normalised prediction-rejection ratio (Malinin et al.; LM-Polygraph's PRR).

    Reject the least confident answers first; the rejection curve is the accuracy of the
    kept answers at every kept count m = n..1. With AUC = mean of that curve,
    ``PRR = (AUC_estimator - AUC_random) / (AUC_oracle - AUC_random)``: 1 for a perfect
    ranking, ~0 for a random one, negative when worse than random. Ties in ``p`` are averaged
    over random order. NaN if empty or one class (oracle = random).
    """
    y, p = _clean(y, p, "prr", probabilities=False)
    if len(y) == 0:
        return _undefined("PRR", "no examples")
    if y.min() == y.max():
        return _undefined("PRR", f"only one class present (all {int(y[0])})")
    m = np.arange(1, len(y) + 1)

    def curve_auc(score: np.ndarray) -> float:
        return float(np.mean(np.cumsum(_tie_averaged(y, score)) / m))

    auc_rand = float(y.mean())
    auc_oracle = curve_auc(y)
    return (curve_auc(p) - auc_rand) / (auc_oracle - auc_rand)


METRICS: dict[str, Callable[..., float]] = {
    "auroc": auroc,
    "ece": ece,
    "ece_pcorrect": ece_pcorrect,
    "brier": brier,
    "accuracy": accuracy,
    "prr": prr,
}


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval (``level`` = 0.95 by default)."""

    value: float
    low: float
    high: float
    n: int
    n_resamples: int
    level: float = 0.95


def _resample_interval(
    stat: Callable[[np.ndarray], float], n: int, n_resamples: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of ``stat(idx)`` over seeded resamples of ``n`` indices with
    replacement; NaN when fewer than half the resamples are defined."""
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for b in range(n_resamples):
            stats[b] = stat(rng.integers(0, n, n))
    return _percentiles(stats, n_resamples, level)


def _percentiles(stats: np.ndarray, n_resamples: int, level: float) -> tuple[float, float]:
    stats = stats[~np.isnan(stats)]
    if len(stats) < n_resamples / 2:
        return float("nan"), float("nan")
    a = round((1 - level) / 2, 12)  # 0.025, not 0.025000000000000022
    low, high = np.quantile(stats, [a, 1 - a])
    return float(low), float(high)


def _metric_fn(metric: Callable[..., float] | str, who: str) -> Callable[..., float]:
    if isinstance(metric, str):
        if metric not in METRICS:
            raise DataError(f"{who}: unknown metric '{metric}'. Available: {', '.join(METRICS)}.")
        return METRICS[metric]
    return metric


def _check_resampling(n_resamples: int, level: float, who: str) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)):
        raise DataError(f"{who}: n_resamples must be an integer; got {n_resamples!r}.")
    if n_resamples < 1 or not 0 < level < 1:
        raise DataError(
            f"{who}: need n_resamples >= 1 and 0 < level < 1; got n_resamples={n_resamples}, "
            f"level={level}."
        )


def bootstrap(
    metric: Callable[..., float] | str,
    y: Any,
    p: Any,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    **kwargs: Any,
) -> Interval:
    """Percentile bootstrap interval of ``metric(y, p)`` (examples resampled with replacement).

    Resamples on which the metric is undefined (e.g. one class drawn) are skipped; the
    interval is NaN if fewer than half are defined. Same ``seed`` -> same interval.

        ci = bootstrap("auroc", y, p)      # Interval(value=0.81, low=0.74, high=0.87, ...)
    """
    fn = _metric_fn(metric, "bootstrap")
    _check_resampling(n_resamples, level, "bootstrap")
    y, p = _clean(y, p, "bootstrap")
    value = fn(y, p, **kwargs)
    n = len(y)
    if n == 0:
        return Interval(value, float("nan"), float("nan"), 0, n_resamples, level)
    low, high = _resample_interval(
        lambda idx: fn(y[idx], p[idx], **kwargs), n, n_resamples, level, seed
    )
    return Interval(float(value), low, high, n, n_resamples, level)


def bootstrap_diff(
    metric: Callable[..., float] | str,
    y: Any,
    p1: Any,
    p2: Any,
    *,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Paired bootstrap of ``metric(y, p1) - metric(y, p2)``: both scores are evaluated on the
    same resampled examples, so the interval reflects the difference, not two noises.

    Rows where ``y``, ``p1`` or ``p2`` is NaN are dropped. The interval is NaN when the
    difference itself is undefined.

        d = bootstrap_diff("auroc", y, p_probe, p_baseline)   # Interval of the AUROC gain
    """
    fn = _metric_fn(metric, "bootstrap_diff")
    _check_resampling(n_resamples, level, "bootstrap_diff")
    y, p1, p2 = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (y, p1, p2))
    if not len(y) == len(p1) == len(p2):
        raise DataError(
            f"bootstrap_diff: labels and both scores must have the same length; got "
            f"{len(y)}, {len(p1)} and {len(p2)}."
        )
    keep = ~(np.isnan(y) | np.isnan(p1) | np.isnan(p2))
    y, p1, p2 = y[keep], p1[keep], p2[keep]
    n = len(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        value = float(fn(y, p1) - fn(y, p2)) if n else float("nan")
    if not np.isfinite(value):
        return Interval(value, float("nan"), float("nan"), n, n_resamples, level)
    low, high = _resample_interval(
        lambda idx: fn(y[idx], p1[idx]) - fn(y[idx], p2[idx]), n, n_resamples, level, seed
    )
    return Interval(value, low, high, n, n_resamples, level)


def proportion_interval(
    k: int, n: int, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> Interval:
    """Bootstrap interval of the proportion ``k / n`` of binary outcomes.

    Resampling n binary items with replacement is a Binomial(n, k/n) draw, so the resamples
    are drawn directly (same distribution as index resampling, n times cheaper).
    """
    _check_resampling(n_resamples, level, "proportion_interval")
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, n_resamples, level)
    if not 0 <= k <= n:
        raise DataError(f"proportion_interval: need 0 <= k <= n; got k={k}, n={n}.")
    draws = np.random.default_rng(seed).binomial(n, k / n, size=n_resamples) / n
    low, high = _percentiles(draws, n_resamples, level)
    return Interval(k / n, low, high, n, n_resamples, level)


def score_table(
    y: Any,
    p: Any,
    metrics: Sequence[str] = ("auroc", "ece", "ece_pcorrect", "brier", "prr"),
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    **labels: Any,
) -> pd.DataFrame:
    """Tidy table, one row per metric: ``metric, value, ci_low, ci_high, n`` plus ``labels``
    (e.g. ``score_table(y, p, estimator="probe", model="smollm2")``, ready to concat)."""
    rows = []
    for name in metrics:
        ci = bootstrap(name, y, p, n_resamples=n_resamples, seed=seed)
        rows.append(
            {**labels, "metric": name, "value": ci.value, "ci_low": ci.low, "ci_high": ci.high}
            | {"n": ci.n}
        )
    return pd.DataFrame(rows)
