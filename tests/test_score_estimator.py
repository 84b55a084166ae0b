"""ScoreEstimator: Platt calibration that never flips a method's orientation, and explicit
handling of undefined scores."""

from __future__ import annotations

import logging

import numpy as np

from knowlens.estimators._score import ScoreEstimator, platt_fit

# the tiny tasks of the experiment tests (about half the answers are correct)
from test_experiments import _base, second_model_dir, tasks  # noqa: F401


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


# -- in an analysis: the score_maps table and its report section ----------------------------
from knowlens.estimators import generations as generations_input  # noqa: E402
from knowlens.estimators import register_estimator  # noqa: E402


@register_estimator("toy_inverted", display_name="Toy inverted", inputs=generations_input())
class ToyInverted(ScoreEstimator):
    """Uncertainty = the answer's correctness: it rises with correctness, so the calibration
    slope is clipped (a constant P(correct)) on any training split with both labels."""

    def __init__(self, *, calibrate: bool = True) -> None:
        self.calibrate = calibrate

    def uncertainty(self, X):
        return np.nan_to_num(np.asarray(X.correct, dtype=float), nan=0.5)


def test_topic_calibration_reports_each_score_map_and_flags_clipped_slopes(
    tasks,  # noqa: F811
    tiny_model_dir,
    tmp_path,
):
    from knowlens.experiments import run

    cfg = {
        "name": "maps",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],
        "eval_task": tasks[1],
        "estimators": ["logit", "mean_entropy", "toy_inverted"],
        **_base(tmp_path),
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    tabs = res.tables["topic_calibration"]
    maps = tabs["score_maps"].set_index("estimator")
    assert list(maps.index) == ["Mean token entropy", "Toy inverted"]  # the logit baseline has none
    toy = maps.loc["Toy inverted"]
    assert bool(toy["slope_clipped"]) and toy["a"] == 0.0
    assert toy["n_train"] == int(tabs["accuracy"].query("split == 'train'")["n"].sum())
    cells = tabs["topic_calibration"]
    auc = cells[(cells["estimator"] == "Toy inverted") & (cells["metric"] == "auroc")]
    assert (auc["value"] == 0.5).all()  # constant P(correct): 0.5 by construction ...
    text = res.report.read_text()
    assert "Score calibration of the one-score estimators" in text  # ... and the report says so
    assert "constant P(correct) (the training accuracy)" in text
    constant = int((maps["slope_clipped"] | (maps["a"] == 0)).sum())
    assert f"{constant} of 2 fits give a constant P(correct)" in text
    me = maps.loc["Mean token entropy"]  # a real map: finite, slope never negative
    assert me["a"] >= 0 and np.isfinite(me["b"]) and not (me["slope_clipped"] and me["a"] > 0)
