"""The one home of bootstrap intervals: unpaired, paired and proportions (knowlens.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from knowlens import metrics as M
from knowlens.errors import DataError


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    p1 = np.clip(0.5 * y + 0.5 * rng.random(n), 0, 1)
    p2 = rng.random(n)
    return y, p1, p2


def test_bootstrap_diff_is_the_paired_percentile_bootstrap():
    y, p1, p2 = _data()
    d = M.bootstrap_diff("auroc", y, p1, p2, n_resamples=200, seed=5)
    assert d.value == pytest.approx(roc_auc_score(y, p1) - roc_auc_score(y, p2), abs=1e-12)
    rng = np.random.default_rng(5)  # the same resamples, by hand
    stats = []
    for _ in range(200):
        idx = rng.integers(0, len(y), len(y))
        stats.append(roc_auc_score(y[idx], p1[idx]) - roc_auc_score(y[idx], p2[idx]))
    lo, hi = np.quantile(stats, [0.025, 0.975])
    assert (d.low, d.high) == pytest.approx((lo, hi), abs=1e-12)
    assert d.low < d.value < d.high and d.n == len(y)


def test_bootstrap_diff_of_a_score_with_itself_is_zero():
    y, p1, _ = _data()
    d = M.bootstrap_diff("auroc", y, p1, p1, n_resamples=50)
    assert d.value == d.low == d.high == 0.0


def test_bootstrap_diff_drops_nan_rows_and_checks_lengths():
    y, p1, p2 = _data()
    p2 = p2.copy()
    p2[:10] = np.nan
    d = M.bootstrap_diff("auroc", y, p1, p2, n_resamples=20)
    assert d.n == len(y) - 10
    with pytest.raises(DataError, match="same length"):
        M.bootstrap_diff("auroc", y, p1, p2[:-1])


def test_paired_interval_is_narrower_than_the_unpaired_spread():
    # p2 = p1 + small noise: the paired CI of the difference is far tighter than either CI
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200).astype(float)
    p1 = np.clip(0.2 * y + 0.8 * rng.random(200), 0, 1)  # AUROC about 0.7
    p2 = np.clip(p1 + np.random.default_rng(2).normal(0, 0.02, len(p1)), 0, 1)
    d = M.bootstrap_diff("auroc", y, p1, p2, n_resamples=300)
    a = M.bootstrap("auroc", y, p1, n_resamples=300)
    assert (d.high - d.low) < 0.5 * (a.high - a.low)


def test_proportion_interval_matches_binomial_resampling():
    ci = M.proportion_interval(7, 40, n_resamples=500, seed=3)
    draws = np.random.default_rng(3).binomial(40, 7 / 40, size=500) / 40
    assert ci.value == 7 / 40 and ci.n == 40
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])))
    assert M.proportion_interval(0, 0).n == 0
    with pytest.raises(DataError):
        M.proportion_interval(5, 3)
    with pytest.raises(DataError, match="n_resamples"):
        M.proportion_interval(1, 3, n_resamples=0)
