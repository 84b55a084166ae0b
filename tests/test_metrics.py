"""knowlens.metrics against scikit-learn and hand computations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from knowlens import metrics as M
from knowlens.errors import DataError


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_brier_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 50 + 40 * seed
    y = rng.integers(0, 2, n).astype(float)
    p = rng.random(n)
    p[:10] = np.round(p[:10], 1)  # some ties
    assert abs(M.auroc(y, p) - roc_auc_score(y, p)) < 1e-9
    assert abs(M.brier(y, p) - brier_score_loss(y, p)) < 1e-9


def test_ece_hand_computed():
    # max-class confidences: 0.9 (pred 1, y 1), 0.8 (pred 0, y 0), 0.6 (pred 1, y 0),
    # 0.95 (pred 1, y 1), 0.55 (pred 0, y 1)
    p = np.array([0.9, 0.2, 0.6, 0.95, 0.45])
    y = np.array([1, 0, 0, 1, 1])
    # bins: [0.5,0.6): {0.55 wrong} -> |0-0.55|; [0.6,0.7): {0.6 wrong} -> |0-0.6|
    # [0.8,0.9): {0.8 right} -> |1-0.8|; [0.9,1.0]: {0.9, 0.95 right} -> |1-0.925|*2
    expected = (0.55 + 0.6 + 0.2 + 2 * 0.075) / 5
    assert M.ece(y, p) == pytest.approx(expected, abs=1e-12)
    rel = M.reliability(y, p)
    assert list(rel["count"]) == [0, 0, 0, 0, 0, 1, 1, 0, 1, 2]
    assert rel["accuracy"].isna().sum() == 6  # empty bins are NaN, skipped by ECE


def test_ece_edges_confidence_one_and_empty_bins():
    # p = 1.0 and p = 0.0 both have confidence exactly 1.0 -> the last (closed) bin
    y = np.array([1, 0, 1])
    p = np.array([1.0, 0.0, 0.0])
    rel = M.reliability(y, p)
    assert rel["count"].iloc[-1] == 3 and rel["count"].iloc[:-1].sum() == 0
    assert M.ece(y, p) == pytest.approx(1 / 3)
    # a value exactly on an edge goes to the bin that starts there: [0.3, 0.35)
    rel20 = M.reliability([1], [0.3], 20, mode="p_correct")
    assert rel20["count"].iloc[6] == 1
    assert M.ece_pcorrect([1, 0], [0.3, 0.3]) == pytest.approx(abs(0.5 - 0.3))
    assert M.ece([1, 1, 0, 0], [0.7, 0.7, 0.3, 0.3]) == pytest.approx(0.3)


def test_perfectly_calibrated_has_small_ece():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(float)
    assert M.ece_pcorrect(y, p) < 0.01


def test_prr_oracle_random_and_reversed():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 2000).astype(float)
    assert M.prr(y, y) == pytest.approx(1.0)
    assert M.prr(y, y + 0.1 * rng.random(len(y))) == pytest.approx(1.0)
    vals = [M.prr(y, np.random.default_rng(s).random(len(y))) for s in range(20)]
    assert abs(np.mean(vals)) < 0.05
    assert M.prr(y, np.full(len(y), 0.5)) == pytest.approx(0.0, abs=1e-12)  # ties = random
    assert M.prr(y, 1 - y) < -0.9


def test_undefined_cases_return_nan_with_warning():
    with pytest.warns(M.UndefinedMetricWarning, match="one class"):
        assert np.isnan(M.auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(M.UndefinedMetricWarning, match="no examples"):
        assert np.isnan(M.ece([], []))
    with pytest.warns(M.UndefinedMetricWarning, match="one class"):
        assert np.isnan(M.prr([0, 0], [0.1, 0.2]))
    with pytest.warns(M.UndefinedMetricWarning, match="dropped 1"):
        assert M.auroc([1, 0, np.nan], [0.9, 0.1, 0.5]) == 1.0
    with pytest.raises(DataError, match="same length"):
        M.auroc([1, 0], [0.5])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        M.ece([1, 0], [-2.0, 0.3])


def test_bootstrap_contains_estimate_and_shrinks():
    rng = np.random.default_rng(2)

    def data(n):
        y = rng.integers(0, 2, n).astype(float)
        return y, np.clip(0.2 * y + 0.8 * rng.random(n), 0, 1)

    widths = []
    for n in (100, 1600):
        y, p = data(n)
        for name in ("auroc", "ece", "brier", "prr"):
            ci = M.bootstrap(name, y, p, n_resamples=300, seed=0)
            assert ci.low <= ci.value <= ci.high, (name, ci)
            if name == "auroc":
                widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 2  # ~1/sqrt(16) = 1/4 of the width
    y, p = data(80)
    assert M.bootstrap("auroc", y, p, seed=3) == M.bootstrap("auroc", y, p, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one-class resamples are skipped silently
        M.bootstrap("auroc", [1, 0, 0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5], n_resamples=50)


def test_score_table_is_tidy():
    y = np.array([1, 0, 1, 0, 1, 1])
    p = np.array([0.9, 0.2, 0.7, 0.4, 0.6, 0.8])
    t = M.score_table(y, p, n_resamples=50, estimator="x")
    assert list(t["metric"]) == ["auroc", "ece", "ece_pcorrect", "brier", "prr"]
    assert set(t.columns) >= {"estimator", "value", "ci_low", "ci_high", "n"}
    assert t.loc[t.metric == "auroc", "value"].item() == 1.0


PROB_METRICS = ["brier", "ece", "ece_pcorrect", "accuracy"]
RANK_METRICS = ["auroc", "prr"]


@pytest.mark.parametrize("name", [*PROB_METRICS, *RANK_METRICS])
def test_every_metric_validates_inputs_alike(name):
    fn = M.METRICS[name]
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.6, 0.4]
    for bad_y, needle in [
        (["yes", "no", "yes", "no"], "labels must be numbers; got dtype <U3 (e.g. 'yes')"),
        (["1", "0", "1", "0"], "labels must be numbers"),  # no silent str -> float
        ([1, "x", 1, 0], "labels must be numbers"),
        ([2, 0, 1, 0], "labels must be 0/1"),
        ([[1, 0], [1, 0]], "one value per example"),
    ]:
        with pytest.raises(DataError) as e:
            fn(bad_y, p)
        assert needle in str(e.value) and str(e.value).startswith(name), str(e.value)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="scores must be numbers"):
        fn(y, ["a", "b", "c", "d"])
    with pytest.raises(DataError, match="same length"):
        fn(y, p[:3])
    # bools, object arrays with None (undecided) and (n, 1) columns are accepted
    ref = fn(y, p)
    assert fn(np.array(y, dtype=bool), np.array(p).reshape(-1, 1)) == pytest.approx(ref)
    with pytest.warns(M.UndefinedMetricWarning, match="dropped 1 of 5"):
        assert fn(np.array([*y, None], dtype=object), [*p, 0.5]) == pytest.approx(ref)


@pytest.mark.parametrize("name", PROB_METRICS)
def test_probability_metrics_reject_scores_outside_0_1(name):
    for p in ([0.9, 0.2, 1.5, 0.4], [0.9, -0.1, 0.5, 0.4], [0.9, 0.2, np.inf, 0.4]):
        with pytest.raises(DataError, match=r"probabilities in \[0, 1\]") as e:
            M.METRICS[name]([1, 0, 1, 0], p)
        assert str(e.value).startswith(name)
    assert M.brier([1, 0], [1.0, 0.0]) == 0.0  # the closed ends are fine


def test_rank_metrics_take_any_real_scores():
    # AUROC / PRR rank the scores, so a log-prob or logit baseline is a valid input.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80).astype(float)
    logits = rng.normal(size=80) * 5 + y
    assert M.auroc(y, logits) == pytest.approx(roc_auc_score(y, logits), abs=1e-12)
    assert M.prr(y, logits) == pytest.approx(M.prr(y, 1 / (1 + np.exp(-logits))), abs=1e-12)


def test_metric_arguments_are_validated():
    with pytest.raises(DataError, match="threshold must be a number in"):
        M.accuracy([1, 0], [0.5, 0.5], threshold=2)
    for n_bins in (0, True, 2.5):
        with pytest.raises(DataError, match="n_bins must be an integer >= 1"):
            M.ece([1, 0], [0.5, 0.5], n_bins=n_bins)
