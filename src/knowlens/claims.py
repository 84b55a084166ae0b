"""What the seed figures claim, checked against one run's stored tables (issue 15).

    from knowlens.claims import check_run, claims_frame
    rows = check_run([("topic_calibration", "topic_calibration", tables, 1000, 0), ...])

Each claim is one function taking an analysis' stored tables (``name -> DataFrame``, as
``experiments._rundir.read_tables`` returns them) and returning typed :class:`ClaimRow`
rows (one per subject: estimator, judge, model, statistic). A row holds the measured
value, its 95% interval, what the interval rests on (``n``, ``unit``) and a verdict that
comes from the numbers by one rule (:func:`verdict`): every claim is "the value lies
``above`` / ``below`` a threshold"; *reproduced* when the whole interval lies on the
claimed side, *not reproduced* when it lies wholly on the other side, *inconclusive at
this n* when it straddles the threshold or is undefined. Nothing here is hand-written
per run; the texts only say what was computed.

Intervals (each row names its own in ``ci_method``):

- seed 002 (topic_calibration, ``scores``): paired bootstrap over answers, each model's
  answers resampled separately, LoRA + Prompt and its strongest rival scored on the same
  resample; the statistic is the mean over models of the pooled (all topics) metric, as
  the analysis' own ranking line.
- seed 001 (estimator_transfer, ``scores``): paired bootstrap over each row model's
  answers, every "Trained On" column scored on the same resample.
- seed 003 (probe_transfer, ``scores``): paired bootstrap over test answers, each test
  dataset's answers resampled separately and every cell's probe and baseline AUROC on that
  dataset recomputed on the same resample; probes held fixed. Runs written before the
  ``scores`` table (probe_transfer CODE_VERSION 1) fall back to a normal approximation from
  the per-cell intervals: SE of a cell = interval width / 3.92, test sets independent,
  cells that share a test set combined at worst-case correlation (conservative).
- seed 000 (prompt_transfer, ``verdicts``): bootstrap over attack prompts, every cell of
  the matrix recomputed on the same resampled prompts.
- seed 004 (activation_maps, per-cell ``se``): normal approximation over prompts, the SE
  of the band-share statistic by the delta method from the Difference cells' SEs. The
  table stores no covariance between cells, so one position's cells (the same tokens
  through the layers) are combined at worst-case correlation and positions taken as
  independent. (A parametric bootstrap redrawing each cell was tried and rejected: |D + noise|
  pulls every resample toward equal shares, so its percentile interval misses the point
  estimate and favours the "no position trend" claim.) Runs without ``se``
  (activation_maps CODE_VERSION 1) fall back to a bootstrap over the map's other axis
  (positions for the layer bands, layers for the position bands): how consistently the
  pattern holds across the map, not prompt-sampling noise.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd

from knowlens import metrics
from knowlens._cache import atomic_write_json
from knowlens.experiments._common import DISPLAY, short_model

__all__ = [
    "CLAIMS",
    "CLAIMS_FILE",
    "ClaimRow",
    "Side",
    "Verdict",
    "check_analysis",
    "check_run",
    "claims_frame",
    "difference_by_layer",
    "difference_by_position",
    "estimators_transfer",
    "lora_prompt_best_auroc",
    "lora_prompt_lowest_ece",
    "probes_best_on_own_dataset",
    "resamples_for",
    "transfer_between_refusing_models",
    "verdict",
    "write_claims",
]

_log = logging.getLogger(__name__)

CLAIMS_FILE = "claims.json"
CLAIMS_VERSION = 2  # 2: seed 003 bootstrap over answers, seed 004 interval over prompts

Verdict = Literal["reproduced", "not reproduced", "inconclusive at this n", "not run"]
Side = Literal["above", "below"]
_Z = 1.959963984540054  # two-sided 95% normal quantile
_OTHER: dict[str, str] = {"above": "below", "below": "above"}
_ABOVE: Side = "above"
_BELOW: Side = "below"


@dataclass(frozen=True)
class ClaimRow:
    """One row of the seed-claims table."""

    seed: str
    """Seed figure number ("000" ... "004")."""
    analysis: str
    """Analysis id in the run whose tables the row was computed from."""
    claim: str
    """What the seed figure shows, as a checkable statement."""
    seed_shows: str
    """The seed figure's own numbers for it (from ../shared/seeds)."""
    measured: str
    """What ``value`` is, with its subject (estimator, judge, statistic)."""
    value: float
    ci_low: float
    ci_high: float
    n: int
    """How many ``unit`` the interval rests on."""
    unit: str
    threshold: float
    side: Side
    """The claim says ``value`` lies on this side of ``threshold``."""
    verdict: Verdict
    rule: str
    """The verdict rule in words."""
    ci_method: str
    detail: str
    """Computed facts behind the value (ranking, range, bands...)."""
    percent: bool = False
    """``value`` is in percent."""


def verdict(ci_low: float, ci_high: float, threshold: float, side: Side) -> Verdict:
    """Reproduced if the interval lies wholly (strictly) on the claimed ``side`` of
    ``threshold``, not reproduced if wholly on the other side, else inconclusive (an
    interval touching the threshold, or an undefined one, decides nothing)."""
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "inconclusive at this n"
    above, below = ci_low > threshold, ci_high < threshold
    if (side == "above" and above) or (side == "below" and below):
        return "reproduced"
    if (side == "above" and below) or (side == "below" and above):
        return "not reproduced"
    return "inconclusive at this n"


def _rule(threshold: float, side: Side, percent: bool) -> str:
    t = f"{threshold:g} %" if percent else f"{threshold:g}"
    return (
        f"reproduced if the 95% CI lies {side} {t}, not reproduced if it lies "
        f"{_OTHER[side]}, inconclusive if it contains {t}"
    )


def _row(
    *,
    seed: str,
    analysis: str,
    claim: str,
    seed_shows: str,
    measured: str,
    value: float,
    ci: tuple[float, float],
    n: int,
    unit: str,
    threshold: float,
    side: Side,
    ci_method: str,
    detail: str,
    percent: bool = False,
) -> ClaimRow:
    lo, hi = float(ci[0]), float(ci[1])
    return ClaimRow(
        seed=seed,
        analysis=analysis,
        claim=claim,
        seed_shows=seed_shows,
        measured=measured,
        value=float(value),
        ci_low=lo,
        ci_high=hi,
        n=int(n),
        unit=unit,
        threshold=float(threshold),
        side=side,
        verdict=verdict(lo, hi, threshold, side),
        rule=_rule(threshold, side, percent),
        ci_method=ci_method,
        detail=detail,
        percent=percent,
    )


def _not_run(seed: str, analysis: str, claim: str, seed_shows: str, why: str) -> ClaimRow:
    nan = float("nan")
    return ClaimRow(
        seed=seed,
        analysis=analysis,
        claim=claim,
        seed_shows=seed_shows,
        measured="",
        value=nan,
        ci_low=nan,
        ci_high=nan,
        n=0,
        unit="",
        threshold=nan,
        side="above",
        verdict="not run",
        rule="",
        ci_method="",
        detail=why,
    )


def _missing(tables: Mapping[str, pd.DataFrame], name: str, cols: Iterable[str]) -> str | None:
    """Why ``tables[name]`` cannot be used (absent, empty, lacking columns), or None."""
    df = tables.get(name)
    if df is None:
        return f"the run stores no '{name}' table for this analysis"
    if df.empty:
        return f"table '{name}' is empty"
    lack = [c for c in cols if c not in df.columns]
    if lack:
        return f"table '{name}' lacks column(s) {', '.join(lack)} (written by an older knowlens?)"
    return None


def _ci(stats: np.ndarray) -> tuple[float, float]:
    """Percentile 95% interval; NaN when fewer than half the resamples are defined (the rule
    of ``knowlens.metrics.bootstrap``)."""
    ok = stats[np.isfinite(stats)]
    if len(ok) == 0 or len(ok) < len(stats) / 2:
        return float("nan"), float("nan")
    lo, hi = np.quantile(ok, [0.025, 0.975])
    return float(lo), float(hi)


def _metric(name: str, y: np.ndarray, p: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        return float(metrics.METRICS[name](y, p)) if len(y) else float("nan")


def _draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` examples is drawn in each resample (idx: resamples x draws)."""
    flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
    return np.bincount(flat, minlength=len(idx) * n).reshape(len(idx), n).astype(float)


def _weighted_auroc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of every resample given by draw counts ``w`` (resamples x n); NaN where a
    resample holds one class."""
    if w.shape[1] == 0:
        return np.full(len(w), np.nan)
    # Mann-Whitney with ties 1/2 (metrics.auroc) over draw counts w: per group of equal
    # scores, positives' weight x (negatives' weight below + half of those tied).
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(ws * ys, starts, axis=1)
    neg = np.add.reduceat(ws * (1 - ys), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _resampled(metric: str, y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``metric`` on every resample ``y[idx[b]], p[idx[b]]`` (idx: resamples x n), from the
    draw counts of each example; AUROC and ECE vectorised (tests: equal to knowlens.metrics
    to 1e-12), others one call per resample."""
    n = len(y)
    w = _draw_counts(idx, n)
    if metric == "auroc":
        return _weighted_auroc(y, p, w)
    if metric != "ece":
        return np.array([_metric(metric, y[i], p[i]) for i in idx])
    # ECE: metrics.ece is ~2-6 ms a call (a DataFrame per call), too slow for thousands of
    # resamples at report time. An example's bin does not change when it is drawn again, so
    # a resample's ECE is sum_b |sum_i w_i (hit_i - conf_i)| / n: metrics.reliability's
    # "max_class" terms.
    conf = np.maximum(p, 1 - p)
    gap = ((p >= 0.5).astype(float) == y).astype(float) - conf
    onehot = np.zeros((len(p), 10))
    onehot[np.arange(len(p)), metrics._bin_index(conf, 10)] = gap
    return np.abs(w @ onehot).sum(1) / n


def _nanmean(values: Iterable[float]) -> float:
    a = np.asarray(list(values), dtype=float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def resamples_for(n_bootstrap: int) -> int:
    """Resamples for a claim's interval: the analysis' ``n_bootstrap``, at least 200 (a
    verdict needs an interval even where the analysis drew none) and at most 1000."""
    return int(min(max(n_bootstrap, 200), 1000))


# -- seed 002: topic_calibration -----------------------------------------------------------
SEED_ESTIMATORS = tuple(DISPLAY[k] for k in ("zero_shot", "probe", "lora", "lora_prompt"))
LORA_PROMPT = DISPLAY["lora_prompt"]
_ALL_TOPICS = "(all)"  # topic_calibration's pooled row (topic_calibration.ALL)
_SEED_002 = (
    "Zero-Shot < Probe < LoRA < LoRA + Prompt in every model (LoRA + Prompt cells about "
    "70-90 %, Zero-Shot 20-60 %); the paper, 7B models averaged over MMLU subjects: AUROC "
    "Zero-Shot 0.51-0.64 vs LoRA + Prompt 0.69-0.74, ECE 0.19-0.24 vs 0.07-0.14"
)


def _per_model(scores: pd.DataFrame) -> list[tuple[str, np.ndarray, pd.DataFrame]]:
    """Per model: labels and an example x estimator frame of P(correct)."""
    out = []
    for model, s in scores.groupby("model", sort=False):
        wide = s.groupby(["example_id", "estimator"], sort=False)["p"].first().unstack()
        y = s.groupby("example_id", sort=False)["correct"].first().reindex(wide.index)
        out.append((str(model), y.to_numpy(dtype=float), wide))
    return out


def _lora_prompt_best(
    tables: Mapping[str, pd.DataFrame],
    metric: Literal["auroc", "ece"],
    analysis: str,
    n_resamples: int,
    seed: int,
) -> list[ClaimRow]:
    label = "AUROC" if metric == "auroc" else "ECE"
    best = "best" if metric == "auroc" else "lowest"
    claim = f"LoRA + Prompt has the {best} mean {label} of the four estimators"
    why = _missing(tables, "scores", ("model", "estimator", "example_id", "correct", "p"))
    if why:
        return [_not_run("002", analysis, claim, _SEED_002, why)]
    scores = tables["scores"]
    scores = scores[scores["estimator"].isin(SEED_ESTIMATORS)]
    present = [e for e in SEED_ESTIMATORS if e in set(scores["estimator"])]
    if LORA_PROMPT not in present or len(present) < 2:
        return [
            _not_run(
                "002",
                analysis,
                claim,
                _SEED_002,
                f"needs LoRA + Prompt and at least one other seed estimator; the run has "
                f"{', '.join(present) or 'none of them'}",
            )
        ]
    models = _per_model(scores)
    means = {}  # estimator -> mean over models of its pooled metric
    for e in present:
        per = []
        for _, y, w in models:
            if e in w:
                p = w[e].to_numpy(float)
                ok = np.isfinite(y) & np.isfinite(p)
                per.append(_metric(metric, y[ok], p[ok]))
        means[e] = _nanmean(per)
    others = {e: v for e, v in means.items() if e != LORA_PROMPT and math.isfinite(v)}
    higher_better = metric == "auroc"
    order = sorted(
        [e for e in present if math.isfinite(means[e])],
        key=lambda e: -means[e] if higher_better else means[e],
    )
    ranking = ", ".join(f"{e} {means[e]:.3f}" for e in order)
    rival = (max if higher_better else min)(others, key=lambda e: others[e]) if others else None
    side: Side = "above" if higher_better else "below"
    measured = (
        f"mean over models of {label}(LoRA + Prompt) - {label}({rival or 'rival'}), "
        "all topics pooled"
    )
    # Rows where the label and both scores are defined, per model (paired).
    pairs = []
    for _, y, w in models:
        if rival is None or LORA_PROMPT not in w or rival not in w:
            continue
        a, b = w[LORA_PROMPT].to_numpy(float), w[rival].to_numpy(float)
        ok = np.isfinite(y) & np.isfinite(a) & np.isfinite(b)
        if ok.any():
            pairs.append((y[ok], a[ok], b[ok]))

    value = (
        _nanmean(_metric(metric, y, a) - _metric(metric, y, b) for y, a, b in pairs)
        if pairs
        else float("nan")
    )
    rng = np.random.default_rng(seed)
    boots = np.full(n_resamples, np.nan)
    if pairs:  # per model: the same resampled answers for both estimators
        per = []
        for y, a, b in pairs:
            idx = rng.integers(0, len(y), (n_resamples, len(y)))
            per.append(_resampled(metric, y, a, idx) - _resampled(metric, y, b, idx))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no model defined
            boots = np.nanmean(np.vstack(per), axis=0)
    cells = tables.get("topic_calibration")
    fig = ""
    if cells is not None and {"topic", "metric", "estimator", "value"} <= set(cells.columns):
        c = cells[(cells["topic"] != _ALL_TOPICS) & (cells["metric"] == metric)]
        cm = c.groupby("estimator")["value"].mean()
        if LORA_PROMPT in cm and rival in cm:
            fig = (
                f"; mean over the figure's {c['topic'].nunique()} topic cells x models: "
                f"LoRA + Prompt {cm[LORA_PROMPT]:.3f}, {rival} {cm[rival]:.3f}"
            )
    settings = tables.get("settings")
    setting = (
        f"; setting: {settings['setting'].iloc[0]}"
        if settings is not None and "setting" in settings and len(settings)
        else ""
    )
    return [
        _row(
            seed="002",
            analysis=analysis,
            claim=claim,
            seed_shows=_SEED_002,
            measured=measured,
            value=value,
            ci=_ci(boots),
            n=sum(len(y) for y, _, _ in pairs),
            unit="answers",
            threshold=0.0,
            side=side,
            ci_method=(
                f"paired bootstrap over answers ({n_resamples} resamples; each model's answers "
                "resampled separately, both estimators scored on the same resample)"
            ),
            detail=f"{label} over {len(models)} model(s), all topics pooled, best first: "
            f"{ranking}{fig}"
            f"{setting}",
        )
    ]


def lora_prompt_best_auroc(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "topic_calibration",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 002: LoRA + Prompt has the best mean AUROC of the four estimators. Value = mean
    over models of AUROC(LoRA + Prompt) - AUROC(the strongest other of the four), answers of
    all topics pooled; claimed > 0."""
    return _lora_prompt_best(tables, "auroc", analysis, n_resamples, seed)


def lora_prompt_lowest_ece(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "topic_calibration",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 002: LoRA + Prompt has the lowest mean ECE of the four estimators. Value = mean
    over models of ECE(LoRA + Prompt) - ECE(the best-calibrated other); claimed < 0."""
    return _lora_prompt_best(tables, "ece", analysis, n_resamples, seed)


# -- seed 001: estimator_transfer ----------------------------------------------------------
TRANSFER_MARGIN = -0.05
_SEED_001 = {
    "Probe": "Probe: off-diagonal 0.78, 0.75 vs diagonal 0.65, 0.52 (mean difference +0.18)",
    LORA_PROMPT: "LoRA + Prompt: off-diagonal 0.79, 0.67 vs diagonal 0.68, 0.76 (mean +0.01)",
}
_SEED_001_ALL = "Mistral / LLaMA-2 7B: " + "; ".join(_SEED_001.values())


_Block = tuple[str, np.ndarray, np.ndarray, list[str]]


def _auroc_cells(blocks: list[_Block]) -> list[tuple[str, str, float, float]]:
    """(row model, trained on, AUROC of that cell, AUROC of the row's diagonal) for every
    off-diagonal cell; column 0 of a block is its diagonal."""
    out = []
    for m, y, P, cols in blocks:
        a = [_metric("auroc", y, P[:, j]) for j in range(P.shape[1])]
        out += [(m, cols[j], a[j], a[0]) for j in range(1, P.shape[1])]
    return out


def estimators_transfer(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "estimator_transfer",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 001: estimators transfer across models. Per estimator, value = mean over the
    off-diagonal cells (row model M, trained on T != M) of AUROC(M, T) - AUROC(M, M), both
    on M's answers; claimed above -0.05 (within 0.05 of, or above, the diagonal)."""
    claim = (
        "Estimators transfer across models: off-diagonal AUROC within 0.05 of, or above, "
        "the diagonal"
    )
    why = _missing(
        tables, "scores", ("model", "trained_on", "estimator", "example_id", "correct", "p")
    )
    if why:
        return [_not_run("001", analysis, claim, _SEED_001_ALL, why)]
    scores = tables["scores"]
    rows = []
    for est, s in scores.groupby("estimator", sort=False):
        est = str(est)
        shows = _SEED_001.get(est, _SEED_001_ALL)
        models = list(dict.fromkeys([*s["model"], *s["trained_on"]]))
        # per row model: labels, scores (examples x columns, its diagonal first), columns
        blocks: list[_Block] = []
        for m in models:
            sm = s[s["model"] == m]
            wide = sm.groupby(["example_id", "trained_on"], sort=False)["p"].first().unstack()
            if m not in wide or wide.shape[1] < 2:
                continue
            y = sm.groupby("example_id", sort=False)["correct"].first().reindex(wide.index)
            cols = [m, *[c for c in wide.columns if c != m]]
            P = wide[cols].to_numpy(float)
            yv = y.to_numpy(float)
            ok = np.isfinite(yv) & np.isfinite(P).all(1)  # paired: every column defined
            if ok.any():
                blocks.append((m, yv[ok], P[ok], cols))
        if not blocks:
            rows.append(
                _not_run(
                    "001",
                    analysis,
                    claim,
                    shows,
                    f"{est}: needs at least 2 models with their diagonal cell; got {models}",
                )
            )
            continue

        point = _auroc_cells(blocks)
        value = _nanmean(off - diag for _, _, off, diag in point)
        rng = np.random.default_rng(seed)
        per_cell = []  # (resamples,) per off-diagonal cell: the same draws for a row model
        for _, y, P, _ in blocks:
            idx = rng.integers(0, len(y), (n_resamples, len(y)))
            a = [_resampled("auroc", y, P[:, j], idx) for j in range(P.shape[1])]
            per_cell += [a[j] - a[0] for j in range(1, P.shape[1])]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no cell defined
            boots = np.nanmean(np.vstack(per_cell), axis=0)
        diag = {m: d for m, _, _, d in point}
        worst = min(point, key=lambda c: c[2] - c[3] if math.isfinite(c[2] - c[3]) else math.inf)
        rows.append(
            _row(
                seed="001",
                analysis=analysis,
                claim=claim,
                seed_shows=shows,
                measured=f"{est}: mean over off-diagonal cells of AUROC(model, trained on "
                "another model) - AUROC(model, trained on itself)",
                value=value,
                ci=_ci(boots),
                n=sum(len(b[1]) for b in blocks),
                unit="answers",
                threshold=TRANSFER_MARGIN,
                side="above",
                ci_method=(
                    f"paired bootstrap over each row model's answers ({n_resamples} resamples; "
                    "every Trained On column scored on the same resample)"
                ),
                detail=(
                    f"diagonal (own model) mean {_nanmean(diag.values()):.3f}, off-diagonal mean "
                    f"{_nanmean(c[2] for c in point):.3f} over {len(point)} cell(s); weakest cell: "
                    f"{short_model(worst[0])} judged by {short_model(worst[1])}'s estimator "
                    f"{worst[2] - worst[3]:+.3f}"
                ),
            )
        )
    return rows


# -- seed 003: probe_transfer --------------------------------------------------------------
_SEED_003 = (
    "10 datasets (Orgad et al.): diagonal mean 0.173, off-diagonal mean -0.073, difference "
    "+0.246; the diagonal is the best cell of its test column in 10 of 10"
)


#: columns of probe_transfer's ``scores`` table the paired bootstrap reads
_PROBE_SCORES = ("model", "train_task", "test_task", "role", "example_id", "correct", "p")
_Cell = tuple[str, str, bool]  # train dataset, test dataset, diagonal


def _probe_answers(
    scores: pd.DataFrame,
) -> dict[str, tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]]]]:
    """Per test dataset of one model's ``scores``: its labels and, per train dataset, the
    probe's and the logit baseline's P(correct) on the same answers (stored order)."""
    out = {}
    for test, st in scores.groupby("test_task", sort=False):
        ids = pd.unique(st["example_id"])
        y = st.groupby("example_id", sort=False)["correct"].first().reindex(ids)
        per = {}
        for train, sc in st.groupby("train_task", sort=False):
            p = {
                role: sc[sc["role"] == role]
                .groupby("example_id", sort=False)["p"]
                .first()
                .reindex(ids)
                .to_numpy(float)
                for role in ("probe", "baseline")
            }
            per[str(train)] = (p["probe"], p["baseline"])
        out[str(test)] = (y.to_numpy(float), per)
    return out


def _covers(scores: pd.DataFrame, cells: list[_Cell]) -> bool:
    """Whether ``scores`` holds the probe's and the baseline's answers of every cell."""
    have = scores.groupby(["train_task", "test_task"])["role"].agg(set)
    return all((tr, te) in have and {"probe", "baseline"} <= have[tr, te] for tr, te, _ in cells)


def _probe_boot(
    scores: pd.DataFrame, cells: list[_Cell], n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Diagonal mean minus off-diagonal mean of AUROC(probe) - AUROC(baseline) on every
    resample (rows with a NaN label or score left out, as the analysis' cells do): each test
    dataset's answers drawn once (test datasets in the order of ``cells``), every cell on
    that dataset recomputed on the same draw."""
    answers = _probe_answers(scores)
    diffs = np.full((len(cells), n_resamples), np.nan)
    by_test: dict[str, list[tuple[int, str]]] = {}
    for k, (train, test, _) in enumerate(cells):
        by_test.setdefault(test, []).append((k, train))
    for test, members in by_test.items():
        y, per = answers[test]
        w = _draw_counts(rng.integers(0, len(y), (n_resamples, len(y))), len(y))
        done: dict[tuple[bytes, bytes], np.ndarray] = {}  # the baseline is shared by a column
        for k, train in members:
            pp, pb = per[train]
            keep = np.isfinite(y) & np.isfinite(pp) & np.isfinite(pb)
            key = (keep.tobytes(), pb.tobytes())
            if key not in done:
                done[key] = _weighted_auroc(y[keep], pb[keep], w[:, keep])
            diffs[k] = _weighted_auroc(y[keep], pp[keep], w[:, keep]) - done[key]
    diag = np.array([c[2] for c in cells], dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no cell defined
        return np.nanmean(diffs[diag], axis=0) - np.nanmean(diffs[~diag], axis=0)


def probes_best_on_own_dataset(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "probe_transfer",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 003: probes generalise best to their own dataset. Per model, value = mean of the
    diagonal minus mean of the off-diagonal cells of AUROC(probe) - AUROC(baseline); claimed
    > 0. Interval: paired bootstrap over the test answers of the ``scores`` table; for runs
    without it, a normal approximation from the cells' own intervals (``n_resamples`` /
    ``seed`` unused there)."""
    claim = "Probes generalise best to their own dataset: diagonal above off-diagonal"
    cols = ("model", "train_task", "test_task", "metric", "value", "ci_low", "ci_high", "n")
    why = _missing(tables, "probe_transfer", cols)
    if why:
        return [_not_run("003", analysis, claim, _SEED_003, why)]
    t = tables["probe_transfer"]
    t = t[(t["metric"] == "auroc_minus_baseline") & np.isfinite(t["value"].astype(float))]
    scores = None if _missing(tables, "scores", _PROBE_SCORES) else tables["scores"]
    rows = []
    for model, s in t.groupby("model", sort=False):
        diag_mask = (s["train_task"] == s["test_task"]).to_numpy()
        kd, ko = int(diag_mask.sum()), int((~diag_mask).sum())
        if kd == 0 or ko == 0:
            rows.append(
                _not_run(
                    "003",
                    analysis,
                    claim,
                    _SEED_003,
                    f"{short_model(str(model))}: needs diagonal and off-diagonal cells with a "
                    "value; got "
                    f"{kd} and {ko}",
                )
            )
            continue
        v = s["value"].to_numpy(float)
        value = float(v[diag_mask].mean() - v[~diag_mask].mean())
        cells = list(
            zip(s["train_task"].astype(str), s["test_task"].astype(str), diag_mask, strict=True)
        )
        mine = None if scores is None else scores[scores["model"] == model]
        if mine is not None and _covers(mine, cells):
            boots = _probe_boot(mine, cells, n_resamples, np.random.default_rng(seed))
            ci = _ci(boots)
            method = (
                f"paired bootstrap over test answers ({n_resamples} resamples; each test "
                "dataset's answers resampled separately, every cell's probe and baseline AUROC "
                "recomputed on the same resample); probes held fixed"
            )
        else:  # older runs: no per-answer scores
            se = (s["ci_high"].to_numpy(float) - s["ci_low"].to_numpy(float)) / (2 * _Z)
            w = np.where(diag_mask, 1.0 / kd, -1.0 / ko)
            # Test sets are independent; cells on one test set share its answers (any
            # correlation).
            sd_col = pd.Series(np.abs(w) * se).groupby(s["test_task"].to_numpy()).sum()
            half = _Z * float(np.sqrt((sd_col**2).sum()))
            ci = (value - half, value + half)
            method = (
                "normal approximation from the per-cell bootstrap intervals (SE = width / "
                "3.92); test sets independent, cells sharing a test set combined at "
                "worst-case correlation (conservative); probes held fixed (this run's tables "
                "hold no per-answer scores: written by an older knowlens)"
            )
        best = 0
        tests = list(dict.fromkeys(s["test_task"]))
        for test in tests:
            col = s[s["test_task"] == test]
            d = col[col["train_task"] == test]["value"]
            best += int(len(d) > 0 and float(d.iloc[0]) >= float(col["value"].max()))
        base = str(s["baseline"].iloc[0]) if "baseline" in s else "the logit baseline"
        n = int(s.groupby("test_task")["n"].max().sum())
        rows.append(
            _row(
                seed="003",
                analysis=analysis,
                claim=claim,
                seed_shows=_SEED_003,
                measured=f"{short_model(str(model))}: mean diagonal - mean off-diagonal of "
                "AUROC(probe) - "
                f"AUROC({base})",
                value=value,
                ci=ci,
                n=n,
                unit="test answers",
                threshold=0.0,
                side="above",
                ci_method=method,
                detail=(
                    f"diagonal mean {v[diag_mask].mean():+.3f} ({kd} cells), off-diagonal mean "
                    f"{v[~diag_mask].mean():+.3f} ({ko} cells); the diagonal is the best cell "
                    f"of its test column in {best} of {len(tests)} test sets"
                ),
            )
        )
    return rows


# -- seed 000: prompt_transfer -------------------------------------------------------------
TRANSFER_MIN_PCT = 45.0
REFUSING_MAX_ASR = 50.0
_SEED_000 = (
    "GPT-4, Claude 2, Mistral 7B, Vicuna: 12 off-diagonal cells 45.7-64.1 % (mean 51.3 %), "
    "'all non-zero values are above 45 %'"
)


def _transfer_cells(S: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """T[s, t] in percent for every resample: ``S`` (prompts x models; 1 / 0 / NaN invalid),
    ``weights`` (resamples x prompts, how often each prompt is drawn). Same definition as
    ``prompt_transfer.transfer_matrix``: over prompts valid for both, successes on s that
    also succeed on t. Returns (resamples, models, models); the diagonal is meaningless."""
    valid = np.isfinite(S).astype(float)
    hit = (S == 1).astype(float)
    src = np.einsum("bp,ps,pt->bst", weights, hit, valid)
    both = np.einsum("bp,ps,pt->bst", weights, hit, hit)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(src > 0, 100.0 * both / np.where(src > 0, src, 1.0), np.nan)


def transfer_between_refusing_models(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "prompt_transfer",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 000: attack prompts transfer between refusing models. Per judge, value = mean
    of T[s, t] (percent) over the off-diagonal cells among refusing models (bare-request
    ASR below 50 %; all models if no bare requests were sent); claimed above 45 %."""
    claim = "Attack prompts transfer between refusing models: off-diagonal cells above 45 %"
    why = _missing(tables, "verdicts", ("model", "judge", "prompt_id", "kind", "success"))
    if why:
        return [_not_run("000", analysis, claim, _SEED_000, why)]
    verdicts, asr = tables["verdicts"], tables.get("asr")
    rows = []
    for judge, jv in verdicts.groupby("judge", sort=False):
        models = list(dict.fromkeys(jv["model"]))
        direct = (
            asr[(asr["judge"] == judge) & (asr["kind"] == "direct")].set_index("model")["value"]
            if asr is not None and {"judge", "kind", "model", "value"} <= set(asr.columns)
            else pd.Series(dtype=float)
        )
        if len(direct):
            refusing = [m for m in models if m in direct and float(direct[m]) < REFUSING_MAX_ASR]
            who = ", ".join(f"{m} {float(direct[m]):.0f} %" for m in models if m in direct)
            chosen = f"refusing = bare-request ASR < {REFUSING_MAX_ASR:g} % ({who})"
        else:
            refusing = models
            chosen = "no bare requests were sent: every model counted"
        attack = jv[jv["kind"] == "jailbreak"]
        S = attack.pivot_table(
            index="prompt_id", columns="model", values="success", aggfunc="first"
        )
        S = S.reindex(columns=refusing).to_numpy(float)
        k = len(refusing)
        off = ~np.eye(k, dtype=bool)
        point = _transfer_cells(S, np.ones((1, len(S))))[0] if k else np.zeros((0, 0))
        cells = point[off] if k else np.array([])
        value = _nanmean(cells)
        rng = np.random.default_rng(seed)
        boots = np.array([float("nan")])
        if k >= 2 and len(S):
            draws = rng.integers(0, len(S), (n_resamples, len(S)))
            weights = np.stack([np.bincount(d, minlength=len(S)) for d in draws]).astype(float)
            T = _transfer_cells(S, weights)[:, off]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no cell
                boots = np.nanmean(T, axis=1)
        names = [(refusing[i], refusing[j]) for i in range(k) for j in range(k) if i != j]
        defined = [(c, nm) for c, nm in zip(cells, names, strict=True) if math.isfinite(c)]
        if defined:
            lo_c, hi_c = min(defined), max(defined)
            rng_txt = (
                f"range {lo_c[0]:.1f} % ({lo_c[1][0]} -> {lo_c[1][1]}) to {hi_c[0]:.1f} % "
                f"({hi_c[1][0]} -> {hi_c[1][1]})"
            )
        else:
            rng_txt = "no cell defined (no attack prompt succeeds on a refusing source)"
        succ = np.nansum(S == 1, axis=0) if k else []
        detail = (
            f"{chosen}; {len(defined)} of {len(names)} off-diagonal cells defined, {rng_txt}; "
            "successful prompts per source: "
            + ", ".join(f"{m} {int(c)}" for m, c in zip(refusing, succ, strict=True))
        )
        if k < 2:
            detail = f"fewer than 2 refusing models: {chosen}"
        rows.append(
            _row(
                seed="000",
                analysis=analysis,
                claim=claim,
                seed_shows=_SEED_000,
                measured=f"judge {judge}: mean off-diagonal T[s, t] among refusing models",
                value=value,
                ci=_ci(boots),
                n=len(S),
                unit="attack prompts",
                threshold=TRANSFER_MIN_PCT,
                side="above",
                ci_method=f"bootstrap over attack prompts ({n_resamples} resamples; every cell "
                "recomputed on the same resampled prompts)",
                detail=detail,
                percent=True,
            )
        )
    return rows


# -- seed 004: activation_maps -------------------------------------------------------------
#: a position enters the bands when at least this share of the prompts reach it (the mean
#: at a position few prompts reach is noise)
MIN_PROMPT_SHARE = 0.5
#: "no position trend": no third of the positions holds more than 1/3 + this of |difference|
POSITION_MARGIN = 0.10
_STAT_NAME = {
    "l2": "norm",
    "log10_l2": "log10 norm",
    "refusal": "refusal direction",
    "probe": "probe",
}
_SEED_004 = (
    "LLaMA-3.1-8B: positive differences in the lower layers (0-12 of 32); Mistral-7B: slight, "
    "lower layers (0-8); GPT-JT-6B: uniform; 'no clear token-position trends ... "
    "layer-dependent rather than position-dependent'"
)
_BANDS = ("lower", "middle", "upper")
_PBANDS = ("early", "middle", "late")


class _Grid(NamedTuple):
    model: str
    D: np.ndarray
    """Signed Difference map, layers x kept positions."""
    se: np.ndarray | None
    """Its cells' standard errors over prompts (None: the table has no ``se``)."""
    layers: np.ndarray
    positions: np.ndarray
    n: int
    """Prompts per set (the Difference panel's largest count)."""


def _grids(tables: Mapping[str, pd.DataFrame]) -> list[_Grid]:
    """Per model: the Difference map on the positions the claim uses, with its SEs."""
    main = tables["activation_maps"]
    diff = main[main["panel"] == "Difference"]
    with_se = "se" in diff.columns
    out = []
    for model, d in diff.groupby("model", sort=False):
        grid = d.pivot_table(index="layer", columns="position", values="value", aggfunc="first")
        n = d.groupby("position")["n"].max().reindex(grid.columns)
        keep = (n >= MIN_PROMPT_SHARE * n.max()).to_numpy() & grid.notna().all(0).to_numpy()
        se = None
        if with_se:
            se_grid = d.pivot_table(
                index="layer", columns="position", values="se", aggfunc="first", dropna=False
            ).reindex(index=grid.index, columns=grid.columns)
            se = se_grid.to_numpy(float)[:, keep]
        out.append(
            _Grid(
                str(model),
                grid.to_numpy(float)[:, keep],
                se,
                grid.index.to_numpy(),
                grid.columns.to_numpy()[keep],
                int(n.max()) if len(n) else 0,
            )
        )
    return out


def _band_shares(A: np.ndarray, axis: int) -> np.ndarray:
    """Share of sum |difference| in each third along ``axis`` (0 = layers, 1 = positions)."""
    parts = np.array_split(np.arange(A.shape[axis]), 3)
    total = A.sum()
    if total <= 0 or any(len(p) == 0 for p in parts):
        return np.full(3, np.nan)
    return np.array([np.take(A, p, axis=axis).sum() / total for p in parts])


def _prompt_se(D: np.ndarray, se: np.ndarray, axis: int, plus: int, minus: int | None) -> float:
    """SE over prompts of f = share(``plus`` third) - share(``minus`` third, if any) of
    sum |D| along ``axis``, by the delta method from the cells' SEs ``se``: df/d|D_ij| =
    (1[ij in plus] - 1[ij in minus] - f) / sum |D|. The cells of one position (the same
    tokens through the layers, strongly correlated) are combined at worst-case correlation
    (sum of |gradient| x se), positions as independent (root sum of squares). NaN where a
    used cell has no SE (fewer than 2 prompts)."""
    A = np.abs(D)
    total = A.sum()
    parts = np.array_split(np.arange(A.shape[axis]), 3)
    shares = np.array([np.take(A, q, axis=axis).sum() for q in parts]) / total
    f = shares[plus] - (shares[minus] if minus is not None else 0.0)
    w = np.full(A.shape, -f)
    for band, sign in ((plus, 1.0), (minus, -1.0)):
        if band is not None and axis == 0:
            w[parts[band]] += sign
        elif band is not None:
            w[:, parts[band]] += sign
    per_position = (np.abs(w / total) * se).sum(axis=0)
    return float(np.sqrt((per_position**2).sum()))


def _span(values: np.ndarray, axis_len: int, k: int) -> str:
    part = np.array_split(np.arange(axis_len), 3)[k]
    return f"{values[part[0]]}-{values[part[-1]]}" if len(part) else "-"


def _activation_claim(
    tables: Mapping[str, pd.DataFrame],
    axis: int,
    analysis: str,
    n_resamples: int,
    seed: int,
) -> list[ClaimRow]:
    layers = axis == 0
    claim = (
        "The Jailbreak - Benign difference concentrates in the lower layers"
        if layers
        else "The Jailbreak - Benign difference shows no clear token-position trend"
    )
    why = _missing(tables, "activation_maps", ("model", "panel", "layer", "position", "value", "n"))
    if why:
        return [_not_run("004", analysis, claim, _SEED_004, why)]
    main = tables["activation_maps"]
    metric = str(main["metric"].iloc[0]) if "metric" in main else "l2"
    stat_name = _STAT_NAME.get(metric, metric)
    grids = [g for g in _grids(tables) if g.D.size]
    # over prompts where the table stores each cell's SE (CODE_VERSION 2), else (older
    # runs) over the map's other axis
    over_prompts = bool(grids) and all(g.se is not None for g in grids)
    rng = np.random.default_rng(seed)
    per_model: list[float] = []
    details: list[str] = []
    boots_by_model: list[np.ndarray] = []
    ses: list[float] = []
    n = 0  # prompts per set (smallest over models), or resampled positions / layers
    for g in grids:
        D, lay, pos = g.D, g.layers, g.positions
        A = np.abs(D)
        shares = _band_shares(A, axis)
        if not np.isfinite(shares).all():
            continue
        top = int(np.argmax(shares))
        # the compared bands are fixed by the point estimate: layers, the lower third vs the
        # larger of the other two; positions, the largest third
        rival = 1 + int(np.argmax(shares[1:]))
        per_model.append(float(shares[0] - shares[rival] if layers else shares[top]))
        if over_prompts and g.se is not None:
            n = g.n if not ses else min(n, g.n)
            ses.append(_prompt_se(D, g.se, axis, *((0, rival) if layers else (top, None))))
        else:  # older tables: resample the map's other axis
            n += A.shape[1 - axis]
            b = np.empty(n_resamples)
            for i in range(n_resamples):
                if layers:
                    r = _band_shares(A[:, rng.integers(0, A.shape[1], A.shape[1])], 0)
                    b[i] = r[0] - r[rival]
                else:
                    b[i] = _band_shares(A[rng.integers(0, A.shape[0], A.shape[0])], 1)[top]
            boots_by_model.append(b)
        if layers:
            band = np.array_split(np.arange(A.shape[0]), 3)[top]
            where, names = f"layers {_span(lay, len(lay), top)}", _BANDS
            signed = float(D[band].mean())
        else:
            band = np.array_split(np.arange(A.shape[1]), 3)[top]
            where, names = f"positions {_span(pos, len(pos), top)}", _PBANDS
            signed = float(D[:, band].mean())
        details.append(
            f"{short_model(g.model)}: "
            + " / ".join(f"{nm} {s:.2f}" for nm, s in zip(names, shares, strict=True))
            + f" (top: {names[top]}, {where}, mean Jailbreak - Benign there {signed:+.3g})"
        )
    value = _nanmean(per_model)
    boots = np.array([np.nan])
    if boots_by_model:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample with no model defined
            boots = np.nanmean(np.vstack(boots_by_model), axis=0)
    ci = _ci(boots)
    if over_prompts:  # the models saw the same prompts: their SEs add (worst case)
        half = _Z * float(np.mean(ses)) if ses else float("nan")
        ci = (value - half, value + half)
    if layers:
        measured = (
            f"{stat_name}: share of sum |Jailbreak - Benign| in the lower third of the layers "
            "minus the larger share of the other two thirds, mean over models"
        )
        unit, thr, side = "positions (resampled)", 0.0, _ABOVE
        method = (
            f"bootstrap over positions ({n_resamples} resamples, per model; this run's table "
            "stores no per-prompt spread: written by an older knowlens): how consistently the "
            "layer profile holds across positions"
        )
    else:
        measured = (
            f"{stat_name}: share of sum |Jailbreak - Benign| in the position third that holds "
            "the most, mean over models"
        )
        unit, thr, side = "layers (resampled)", 1 / 3 + POSITION_MARGIN, _BELOW
        method = (
            f"bootstrap over layers ({n_resamples} resamples, per model; this run's table "
            "stores no per-prompt spread: written by an older knowlens): how consistently the "
            "position profile holds across layers"
        )
    if over_prompts:
        unit = "prompts per set"
        method = (
            "normal approximation over prompts: SE by the delta method from each Difference "
            "cell's stored SE (Benign and Jailbreak sets independent; one position's cells "
            "through the layers at worst-case correlation, positions independent; models at "
            "worst-case correlation; the compared bands fixed); none where a used cell rests "
            "on fewer than 2 prompts"
        )
    kept = f"positions reached by at least {MIN_PROMPT_SHARE:.0%} of the prompts"
    return [
        _row(
            seed="004",
            analysis=analysis,
            claim=f"{claim} ({stat_name})",
            seed_shows=_SEED_004,
            measured=measured,
            value=value,
            ci=ci,
            n=n,
            unit=unit,
            threshold=thr,
            side=side,
            ci_method=method,
            detail=f"shares of sum |difference| ({kept}): " + "; ".join(details)
            if details
            else "no model has a map with a nonzero difference over 3+ layers and positions",
        )
    ]


def difference_by_layer(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "activation_maps",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 004, layers: the difference concentrates in the lower layers. Value = share of
    sum |Difference| in the lower third of the layers minus the larger of the other two
    thirds' shares (mean over models); claimed > 0."""
    return _activation_claim(tables, 0, analysis, n_resamples, seed)


def difference_by_position(
    tables: Mapping[str, pd.DataFrame],
    *,
    analysis: str = "activation_maps",
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Seed 004, positions: no clear position trend. Value = the share of sum |Difference|
    in the position third holding the most (mean over models); claimed below 1/3 + 0.10."""
    return _activation_claim(tables, 1, analysis, n_resamples, seed)


# -- the run -------------------------------------------------------------------------------
ClaimFn = Callable[..., list[ClaimRow]]

#: registry name of an analysis -> its claims, in table order
CLAIMS: dict[str, tuple[ClaimFn, ...]] = {
    "prompt_transfer": (transfer_between_refusing_models,),
    "estimator_transfer": (estimators_transfer,),
    "topic_calibration": (lora_prompt_best_auroc, lora_prompt_lowest_ece),
    "probe_transfer": (probes_best_on_own_dataset,),
    "activation_maps": (difference_by_layer, difference_by_position),
}
_SEED_OF = {
    "prompt_transfer": "000",
    "estimator_transfer": "001",
    "topic_calibration": "002",
    "probe_transfer": "003",
    "activation_maps": "004",
}
#: seed 004 is claimed for both of these statistics (activation_maps' ``statistic``)
_MAP_STATISTICS = {"norm": ("l2", "log10_l2"), "refusal direction": ("refusal",)}


def check_analysis(
    analysis: str,
    key: str,
    tables: Mapping[str, pd.DataFrame],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> list[ClaimRow]:
    """Every claim of analysis ``analysis`` (registry name; none for others) on its tables."""
    out: list[ClaimRow] = []
    for fn in CLAIMS.get(analysis, ()):
        try:
            out += fn(tables, analysis=key, n_resamples=n_resamples, seed=seed)
        except Exception as e:  # the closing table must never cost a run its report
            why = f"could not be computed from the stored tables ({type(e).__name__}: {e})"
            _log.warning("seed claim %s of %s: %s", fn.__name__, key, why)
            seed_no = _SEED_OF.get(analysis, "")
            out.append(_not_run(seed_no, key, fn.__name__.replace("_", " "), "", why))
    return out


def check_run(
    analyses: Iterable[tuple[str, str, Mapping[str, pd.DataFrame], int, int]],
) -> list[ClaimRow]:
    """The claims table of a run from ``(registry name, id, tables, n_bootstrap, seed)`` per
    analysis, ordered by seed. Analyses absent from the run give no rows; where
    activation_maps ran for only one of the norm / refusal-direction statistics, one
    "not run" row names the other."""
    rows: list[ClaimRow] = []
    map_metrics: set[str] = set()
    map_keys: list[str] = []
    for name, key, tables, n_boot, seed in analyses:
        rows += check_analysis(name, key, tables, n_resamples=resamples_for(n_boot), seed=seed)
        main = tables.get("activation_maps")
        if name == "activation_maps" and main is not None and "metric" in main and len(main):
            map_metrics.add(str(main["metric"].iloc[0]))
            map_keys.append(key)
    if map_keys:
        for stat, names in _MAP_STATISTICS.items():
            if not map_metrics & set(names):
                rows.append(
                    _not_run(
                        "004",
                        ", ".join(map_keys),
                        f"The Jailbreak - Benign difference: where it concentrates ({stat})",
                        _SEED_004,
                        f"no activation_maps analysis with statistic {names[0]} in this run; add "
                        f"one (e.g. id: activation_maps_{names[0]}, statistic: {names[0]})",
                    )
                )
    return sorted(rows, key=lambda r: r.seed)  # stable: analyses keep their order per seed


def claims_frame(rows: Iterable[ClaimRow]) -> pd.DataFrame:
    """The rows as a table (one column per :class:`ClaimRow` field)."""
    return pd.DataFrame([asdict(r) for r in rows], columns=list(ClaimRow.__dataclass_fields__))


def write_claims(run_dir: str | Path, rows: Iterable[ClaimRow]) -> Path:
    """``<run_dir>/claims.json``: the rows (NaN as null) and the version of these rules."""
    recs = [
        {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(r).items()
        }
        for r in rows
    ]
    path = Path(run_dir) / CLAIMS_FILE
    atomic_write_json(path, {"claims_version": CLAIMS_VERSION, "rows": recs})
    return path
