"""ScoreEstimator: Platt calibration that never flips a method's orientation, and explicit
handling of undefined scores."""

from __future__ import annotations

import logging

import numpy as np

from knowlens.estimators._score import ScoreEstimator, platt_fit


class Toy(ScoreEstimator):
    """Uncertainty = the array passed as X (NaN = undefined)."""

    def __init__(self, *, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def uncertainty(self, X):
        return np.asarray(X, dtype=float)


def test_platt_slope_is_non_negative_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    y = (x + rng.normal(size=300) > 0).astype(int)
    a, b, clipped = platt_fit(x, y)
    lr = LogisticRegression(C=np.inf).fit(x[:, None], y)
    assert not clipped and np.isclose(a, lr.coef_[0, 0]) and np.isclose(b, lr.intercept_[0])
    a, b, clipped = platt_fit(-x, y)  # anti-correlated: constant = training log-odds
    assert clipped and a == 0.0 and np.isclose(b, np.log(y.mean() / (1 - y.mean())))


def test_predict_proba_orientation_and_undefined_scores(caplog):
    u = np.array([0.1, 0.2, 0.3, 2.0, 2.5, 3.0])
    y = np.array([1, 1, 1, 0, 0, 1])
    est = Toy().fit(u, y)
    p = est.predict_proba(np.array([0.0, 1.0, 5.0]))
    assert p[0] > p[1] > p[2]  # less uncertain -> more likely correct
    with caplog.at_level(logging.WARNING, logger="knowlens.estimators"):
        p = est.predict_proba(np.array([0.1, np.nan]))
    assert est.n_undefined_ == 1 and "undefined score" in caplog.text
    assert np.isclose(p[1], y.mean())  # the uninformative value: the training accuracy
    raw = Toy(calibrate=False).fit(u)
    assert np.allclose(raw.predict_proba(np.array([0.0, 1.0, np.nan])), [1.0, np.exp(-1), 0.5])
