"""Temperature scaling (issue 15): fit_temperature / apply_temperature against known values
and a brute-force grid, TemperatureScaled against a by-hand split, fits that bring their own
validation split, persistence, and "+ TS" variants in topic_calibration."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from knowlens import metrics
from knowlens._types import ActivationSet, GenerationSet, SampledGenerations, SampleSet
from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators import (
    Estimator,
    LogisticProbe,
    TemperatureScaled,
    activations,
    apply_temperature,
    clone,
    fit_cached,
    fit_temperature,
    load,
    register_estimator,
)
from knowlens.estimators._base import labels_for
from knowlens.estimators._calibrate import (
    EPS,
    declares_validation,
    subset_rows,
    validation_split,
)

# Reuse the tiny tasks of the experiment tests (about half the answers are correct).
from test_experiments import _base, second_model_dir, tasks  # noqa: F401


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _nll(p, y, T):
    z = np.log(np.clip(p, EPS, 1 - EPS)) - np.log1p(-np.clip(p, EPS, 1 - EPS))
    s = z / T
    return float(np.mean(np.logaddexp(0, s) - y * s))


# -- the scalar fit ------------------------------------------------------------------------
def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 20000)
    y = (rng.random(20000) < _sigmoid(z)).astype(float)
    p = _sigmoid(z * 2.5)  # logits 2.5x too large: T0 = 2.5 undoes it
    T = fit_temperature(p, y)
    assert abs(T - 2.5) < 0.05
    # and an underconfident one (T0 = 0.4 < 1)
    assert abs(fit_temperature(_sigmoid(z * 0.4), y) - 0.4) < 0.01


def test_fit_temperature_is_the_grid_minimum_of_the_nll():
    rng = np.random.default_rng(1)
    p = rng.beta(0.6, 0.6, 400)
    y = (rng.random(400) < 0.3 + 0.4 * p).astype(float)
    T = fit_temperature(p, y)
    grid = np.exp(np.linspace(-5, 5, 20001))  # log-step 5e-4
    losses = np.array([_nll(p, y, t) for t in grid])
    best = grid[int(np.argmin(losses))]
    assert abs(np.log(T) - np.log(best)) <= 5e-4
    assert _nll(p, y, T) <= losses.min() + 1e-12
    assert fit_temperature(p, y) == T  # deterministic
    # NaN rows are left out; all-0.5 scores carry no scale
    assert fit_temperature(np.r_[p, np.nan], np.r_[y, 1.0]) == T
    assert fit_temperature(np.full(6, 0.5), [0, 1, 0, 1, 1, 0]) == 1.0


def test_apply_temperature():
    rng = np.random.default_rng(2)
    p = rng.uniform(1e-3, 1 - 1e-3, 500)
    assert np.array_equal(apply_temperature(p, 1), p)
    z = np.log(p / (1 - p))
    np.testing.assert_allclose(apply_temperature(p, 2.0), _sigmoid(z / 2.0), rtol=1e-13)
    assert apply_temperature(np.array([0.0, 1.0]), 1.0).tolist() == [EPS, 1 - EPS]
    q = apply_temperature(p, 3.0)  # monotone: the ranking (AUROC) is unchanged
    assert np.array_equal(np.argsort(q, kind="stable"), np.argsort(p, kind="stable"))
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="T must be a finite number > 0"):
            apply_temperature(p, bad)


def test_one_class_or_empty_validation_is_one_line():
    msg = "needs both correct and wrong validation answers"
    for p, y in (([0.2, 0.9], [1, 1]), ([0.2], [0]), ([], [])):
        with pytest.raises(ConfigError, match=msg) as e:
            fit_temperature(p, y)
        assert "\n" not in str(e.value) and "use more training answers" in str(e.value)
    with pytest.raises(DataError, match="labels must be 0/1"):
        fit_temperature([0.2, 0.3], [0, 2])
    with pytest.raises(DataError, match="2 scores and 3 labels"):
        fit_temperature([0.2, 0.3], [0, 1, 1])


# -- synthetic activations -----------------------------------------------------------------
D = 8


def make_acts(x, ids=None, key=None):
    n = len(x)
    return ActivationSet(
        values=np.asarray(x, dtype=np.float32)[:, None, None, :],
        mask=np.ones((n, 1), bool),
        layers=[0],
        tokens="last",
        example_ids=list(ids) if ids is not None else [f"e{i}" for i in range(n)],
        positions=np.zeros((n, 1), np.int64),
        meta={} if key is None else {"cache_key": key},
    )


def synthetic(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    w = np.linspace(1.0, -0.5, D)
    y = (rng.random(n) < _sigmoid(x @ w * 0.8)).astype(float)
    return x, y


class SharpProbe(LogisticProbe):
    """A logistic probe made overconfident by construction: its logit times 4."""

    def predict_proba(self, acts):
        p = super().predict_proba(acts)
        return _sigmoid(4.0 * np.log(p / (1 - p)))


def test_temperature_scaled_probe_matches_a_by_hand_split_and_lowers_ece():
    x, y = synthetic(600, 0)
    x_te, y_te = synthetic(4000, 1)
    acts, test = make_acts(x), make_acts(x_te)
    ts = TemperatureScaled(SharpProbe(layer=0), validation_fraction=0.25, seed=3).fit(acts, y)
    # by hand: sklearn's stratified split, the base on the rest, T on the held-out part
    fit_i, val_i = train_test_split(np.arange(600), test_size=0.25, stratify=y, random_state=3)
    fit_i, val_i = np.sort(fit_i), np.sort(val_i)
    hand = SharpProbe(layer=0).fit(make_acts(x[fit_i]), y[fit_i])
    T = fit_temperature(hand.predict_proba(make_acts(x[val_i])), y[val_i])
    assert ts.temperature_ == T and ts.validation_ == "held_out"
    assert (ts.n_validation_, ts.n_validation_correct_) == (150, int(y[val_i].sum()))
    assert np.array_equal(ts.estimator_.clf_.coef_, hand.clf_.coef_)
    p_ts = ts.predict_proba(test)
    assert np.array_equal(p_ts, apply_temperature(hand.predict_proba(test), T))
    assert np.array_equal(p_ts, apply_temperature(ts.estimator_.predict_proba(test), T))
    # overconfident 4x: T near 4, and the held-out test ECE drops
    assert 3.0 < T < 5.5
    raw_ece, ts_ece = metrics.ece(y_te, hand.predict_proba(test)), metrics.ece(y_te, p_ts)
    assert ts_ece < raw_ece / 2, (raw_ece, ts_ece)
    assert metrics.auroc(y_te, p_ts) == pytest.approx(
        metrics.auroc(y_te, hand.predict_proba(test)), abs=1e-12
    )
    # the wrapped estimator itself is never fitted
    assert not ts.estimator._is_fitted()


def test_save_load_and_fit_cached(tmp_path):
    x, y = synthetic(300, 4)
    acts, test = make_acts(x, key="acts-300"), make_acts(synthetic(50, 5)[0])
    ts = TemperatureScaled(SharpProbe(layer=0, C=0.5)).fit(acts, y)
    back = load(ts.save(tmp_path / "ts"))
    assert isinstance(back, TemperatureScaled) and isinstance(back.estimator, SharpProbe)
    assert back.estimator.C == 0.5 and back.temperature_ == ts.temperature_
    assert back.validation_ == "held_out" and back.n_validation_ == ts.n_validation_
    assert np.array_equal(back.predict_proba(test), ts.predict_proba(test))
    rec = json.loads((tmp_path / "ts" / "estimator.json").read_text())
    assert rec["params"]["estimator"] == {
        "class": "SharpProbe",
        "params": {"layer": 0, "reduce": "last", "C": 0.5, "max_iter": 100},
    }
    # one fit, then loaded from the cache; other base parameters -> another entry
    first = fit_cached(TemperatureScaled(SharpProbe(layer=0)), acts, y)
    again = fit_cached(TemperatureScaled(SharpProbe(layer=0)), acts, y)
    assert (first.from_cache_, again.from_cache_) == (False, True)
    assert again.temperature_ == first.temperature_
    assert np.array_equal(again.predict_proba(test), first.predict_proba(test))
    other = TemperatureScaled(SharpProbe(layer=0, C=0.5))
    assert other.cache_key(acts, y) != first.cache_key()
    assert TemperatureScaled(SharpProbe(layer=0), seed=1).cache_key(acts, y) != first.cache_key()
    assert first.cache_key() == TemperatureScaled(SharpProbe(layer=0)).cache_key(acts, y)


class OwnSplit(Estimator):
    """Holds out its last ``n_val`` answers (as the LoRA estimators' early stopping does)
    and keeps its P(correct) of them; P(correct) = sigmoid(3 * feature 0)."""

    validation_scores_: list[float] | None

    def __init__(self, *, n_val: int = 40) -> None:
        self.n_val = n_val

    def fit(self, X, y=None):
        yy = labels_for(y, len(X), X.example_ids, "OwnSplit")
        self.n_seen_ = len(X)
        if self.n_val:
            self.validation_scores_ = self.predict_proba(X)[-self.n_val :].tolist()
            self.validation_labels_ = yy[-self.n_val :].tolist()
        else:
            self.validation_scores_ = self.validation_labels_ = None
        return self

    def predict_proba(self, X):
        return _sigmoid(3.0 * X.features(0, "last")[:, 0].astype(np.float64))


def test_a_base_with_its_own_validation_split_trains_on_everything():
    x, y = synthetic(200, 6)
    acts = make_acts(x)
    assert declares_validation(OwnSplit) and not declares_validation(LogisticProbe)
    ts = TemperatureScaled(OwnSplit()).fit(acts, y)
    assert ts.validation_ == "estimator" and ts.estimator_.n_seen_ == 200
    p = OwnSplit().predict_proba(acts)
    assert ts.temperature_ == fit_temperature(p[-40:], y[-40:]) and ts.n_validation_ == 40
    # its split turned off: TemperatureScaled holds out its own 20 %
    ts0 = TemperatureScaled(OwnSplit(n_val=0)).fit(acts, y)
    fit_i, val_i = validation_split(y, 0.2, 0)
    assert ts0.validation_ == "held_out" and ts0.estimator_.n_seen_ == len(fit_i) == 160
    assert ts0.temperature_ == fit_temperature(p[val_i], y[val_i])


class NeedsModel(OwnSplit):
    _OBJECT_PARAMS = ("model",)

    def __init__(self, *, model=None, n_val: int = 40) -> None:
        self.model = model
        self.n_val = n_val


def test_bases_with_live_objects_cannot_be_saved_and_say_so(tmp_path):
    x, y = synthetic(100, 7)
    acts = make_acts(x)
    handle = object()
    ts = TemperatureScaled(NeedsModel(model=handle))
    copy = clone(ts)  # the nested estimator is cloned, its model shared (not deep-copied)
    assert copy.estimator is not ts.estimator and copy.estimator.model is handle
    ts.fit(acts, y)
    assert ts.estimator_.model is handle and ts.validation_ == "estimator"
    msg = re.escape("TemperatureScaled cannot save or cache a NeedsModel: it needs model=")
    with pytest.raises(KnowlensError, match=msg) as e:
        ts.save(tmp_path / "x")
    assert "\n" not in str(e.value) and "ts.estimator_" in str(e.value)
    assert not (tmp_path / "x").exists()
    with pytest.raises(KnowlensError, match=msg):  # refused before any fitting
        fit_cached(TemperatureScaled(NeedsModel(model=handle)), acts, y)


def test_bad_inputs_are_one_line():
    x, y = synthetic(40, 8)
    with pytest.raises(ConfigError, match="wraps a knowlens Estimator"):
        TemperatureScaled("probe").fit(make_acts(x), y)
    with pytest.raises(ConfigError, match=re.escape("validation_fraction must be in (0, 1)")):
        TemperatureScaled(LogisticProbe(layer=0), validation_fraction=1.0).fit(make_acts(x), y)
    with pytest.raises(DataError, match="takes a GenerationSet, ActivationSet"):
        TemperatureScaled(LogisticProbe(layer=0)).fit(x, y)
    one_wrong = np.r_[np.ones(39), 0.0]  # 1 wrong answer: nothing to stratify
    with pytest.raises(ConfigError, match="needs at least 2 correct and 2 wrong") as e:
        TemperatureScaled(LogisticProbe(layer=0)).fit(make_acts(x), one_wrong)
    assert "\n" not in str(e.value)


def test_subset_rows_of_every_input_type_names_the_subset():
    from knowlens._types import Generation, Sample

    rows = [
        Generation(
            example_id=f"g{i}",
            task="t",
            prompt=f"Q{i}",
            answer="a",
            prompt_ids=[1],
            answer_ids=[2],
            token_logprobs=[-0.1],
            token_entropies=[0.1],
            correct=bool(i % 2),
            grader="test",
        )
        for i in range(6)
    ]
    gens = GenerationSet(rows, {"cache_key": "parent", "target_id": "m"})
    idx = np.array([1, 4])
    sub = subset_rows(gens, idx)
    assert sub.example_ids == ["g1", "g4"] and sub.meta["target_id"] == "m"
    assert sub.meta["cache_key"] not in (
        "parent",
        subset_rows(gens, np.array([1, 5])).meta["cache_key"],
    )
    assert gens.meta["cache_key"] == "parent"  # the parent is untouched
    acts = make_acts(np.arange(6 * D, dtype=float).reshape(6, D), ids=gens.example_ids, key="a")
    acts.meta["exact_answer_found"] = [True, False, True, True, False, True]
    sa = subset_rows(acts, idx)
    assert np.array_equal(sa.values, acts.values[idx]) and sa.example_ids == ["g1", "g4"]
    assert sa.meta["exact_answer_found"] == [False, False] and sa.meta["cache_key"] != "a"
    samples = SampleSet(
        [
            Sample(
                example_id=r.example_id,
                task="t",
                prompt=r.prompt,
                user_turn=None,
                prompt_ids=[1],
                texts=["a", "b"],
                answer_ids=[[2], [3]],
                token_logprobs=[[-0.1], [-0.2]],
                sampling_logprobs=[[-0.1], [-0.2]],
                token_entropies=[[0.1], [0.2]],
                stop_reasons=["eos", "eos"],
                correct=[True, False],
            )
            for r in rows
        ],
        {"k": 2},
    )
    ss = subset_rows(SampledGenerations(gens, samples), idx)
    assert ss.samples.example_ids == ss.gens.example_ids == ["g1", "g4"]
    assert ss.gens.meta["cache_key"] == sub.meta["cache_key"]


# -- in an analysis ------------------------------------------------------------------------
@register_estimator(
    "toy_own_split",
    display_name="Toy own split",
    inputs=activations(layer="last", tokens="last"),
)
class ToyOwnSplit(Estimator):
    """Nearest-centroid direction fitted on 75 % of its answers; the other 25 % (stratified)
    are its validation split, kept as ``validation_scores_`` / ``validation_labels_``."""

    validation_scores_: list[float] | None

    def __init__(self, *, layer: int = -1) -> None:
        self.layer = layer

    def fit(self, X, y=None):
        x = X.features(self.layer, "last").astype(np.float64)
        yy = labels_for(y, len(x), X.example_ids, "ToyOwnSplit")
        tr, va = validation_split(yy, 0.25, 0)
        self.mean_, self.std_ = x[tr].mean(0), x[tr].std(0) + 1e-6
        z = (x[tr] - self.mean_) / self.std_
        self.direction_ = z[yy[tr] == 1].mean(0) - z[yy[tr] == 0].mean(0)
        self.n_seen_ = len(x)
        self.validation_scores_ = self.predict_proba(X)[va].tolist()
        self.validation_labels_ = yy[va].tolist()
        return self

    def predict_proba(self, X):
        z = (X.features(self.layer, "last").astype(np.float64) - self.mean_) / self.std_
        # scaled down: scores below EPS would be clipped into ties (AUROC not kept)
        return _sigmoid(z @ self.direction_ / len(self.direction_))

    def _state(self):
        return {
            "n_seen": self.n_seen_,
            "validation_scores": self.validation_scores_,
            "validation_labels": self.validation_labels_,
        }

    def _weights(self):
        return {"mean": self.mean_, "std": self.std_, "direction": self.direction_}

    def _restore(self, state, weights):
        self.mean_, self.std_, self.direction_ = (
            weights["mean"],
            weights["std"],
            weights["direction"],
        )
        self.n_seen_ = state["n_seen"]
        self.validation_scores_ = state["validation_scores"]
        self.validation_labels_ = state["validation_labels"]


@register_estimator(
    "toy_fraction_split",
    display_name="Toy fraction split",
    inputs=activations(layer="last", tokens="last"),
)
class ToyFractionSplit(ToyOwnSplit):
    """ToyOwnSplit whose split is a parameter, as the LoRA estimators' ``validation_fraction``:
    at 0 it trains on every answer and keeps no validation scores."""

    def __init__(self, *, layer: int = -1, validation_fraction: float = 0.25) -> None:
        self.layer = layer
        self.validation_fraction = validation_fraction

    def fit(self, X, y=None):
        if self.validation_fraction > 0:
            return super().fit(X, y)
        x = X.features(self.layer, "last").astype(np.float64)
        yy = labels_for(y, len(x), X.example_ids, "ToyFractionSplit")
        self.mean_, self.std_ = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean_) / self.std_
        self.direction_ = z[yy == 1].mean(0) - z[yy == 0].mean(0)
        self.n_seen_ = len(x)
        self.validation_scores_ = self.validation_labels_ = None
        return self


@pytest.mark.parametrize("fraction", [0.25, 0.0])
def test_ts_uses_the_configured_split_and_fits_once(fraction, tiny_model, tmp_path):
    """With its split switched off (validation_fraction 0, as lora_validation_fraction: 0)
    the estimator is fitted once, on 80 %, and T on the other 20 %; with it on, once on all
    answers and T on its own split. Never a second, discarded fit."""
    from knowlens.experiments import RunContext
    from knowlens.experiments._estimators import EstimatorBench, TrainSettings
    from knowlens.experiments.topic_calibration import Config
    from test_estimators_model import tiny_gens

    train = tiny_gens(tiny_model, n=20, seed=1)
    ctx = RunContext(run_dir=tmp_path, cfg=Config(models=["tiny"]), seed=0, use_cache=False)
    bench = EstimatorBench(
        ctx,
        TrainSettings(temperature_scaling=True),
        0,
        estimator_params={"validation_fraction": fraction},
    )
    fits = []
    orig = ToyFractionSplit.fit
    ToyFractionSplit.fit = lambda self, X, y=None: (fits.append(len(X)), orig(self, X, y))[1]
    try:
        raw, ts = bench.fit_variants("toy_fraction_split", tiny_model, train)
    finally:
        ToyFractionSplit.fit = orig
    n = len(train)
    if fraction:
        assert fits == [n] and ts.calibration["validation"] == "estimator"
    else:
        assert fits == [n - int(np.ceil(0.2 * n))] and ts.calibration["validation"] == "held_out"
    assert raw.estimator.validation_fraction == fraction and ts.temperature > 0


def test_topic_calibration_reports_ts_variants(
    tasks,  # noqa: F811
    tiny_model_dir,
    tmp_path,
):
    from knowlens._cache import cache_root
    from knowlens.experiments import run
    from knowlens.experiments.topic_calibration import Config

    def cfg(name, **train):
        return {
            "name": name,
            "analysis": "topic_calibration",
            "models": [str(tiny_model_dir)],
            "train_tasks": [tasks[0]],
            "eval_task": tasks[1],
            "estimators": ["logistic", "logit", "toy_own_split"],
            "train": {"probe_epochs": 5, **train},
            **_base(tmp_path),
        }

    res = run(cfg("ts", temperature_scaling=True), output=tmp_path / "runs", progress=False)
    tabs = res.tables["topic_calibration"]
    t, s, temps = tabs["topic_calibration"], tabs["scores"], tabs["temperatures"]
    raw = ["Logistic probe", "Logit baseline", "Toy own split"]
    assert list(dict.fromkeys(t["estimator"])) == [x for r in raw for x in (r, f"{r} + TS")]
    assert temps["estimator"].tolist() == [f"{r} + TS" for r in raw]
    assert temps["validation"].tolist() == ["held_out", "held_out", "estimator"]
    assert (temps["temperature"] > 0).all() and temps["model"].eq(str(tiny_model_dir)).all()
    n_train = int(tabs["accuracy"].query("split == 'train'")["n"].sum())
    assert temps["n_validation"].tolist()[:2] == [int(np.ceil(0.2 * n_train))] * 2
    for r, T in zip(raw, temps["temperature"], strict=True):
        a, b = (s[s["estimator"] == e].reset_index(drop=True) for e in (r, f"{r} + TS"))
        assert a["example_id"].tolist() == b["example_id"].tolist()
        np.testing.assert_array_equal(b["p"], apply_temperature(a["p"].to_numpy(), T))
        ca, cb = (t[(t["estimator"] == e) & (t["metric"] == "auroc")] for e in (r, f"{r} + TS"))
        for col in ("value", "ci_low", "ci_high"):  # monotone: same AUROC, same resamples
            np.testing.assert_allclose(cb[col], ca[col], atol=1e-12, rtol=0)
    # one base fit per estimator (raw and TS share it); the toy trained on every answer
    entries = [
        json.loads((e / "estimator.json").read_text())
        for e in (cache_root() / "estimators").iterdir()
    ]
    assert len(entries) == 3
    toy = next(e for e in entries if e["class"] == "ToyOwnSplit")
    assert toy["state"]["n_seen"] == n_train
    v = toy["state"]
    assert temps["temperature"].iloc[2] == fit_temperature(
        v["validation_scores"], v["validation_labels"]
    )
    man = json.loads((res.run_dir / "manifest.json").read_text())
    assert man["analyses"]["topic_calibration"]["cache"]["estimators"] == {"hits": 0, "misses": 3}
    assert "temperature scaling: fitted T" in res.report.read_text()

    # off: the field is left out of the config dump (same result key) and tables are equal
    def dump(c):
        return Config(**{k: v for k, v in c.items() if k != "name"}).model_dump(mode="json")

    assert dump(cfg("x", temperature_scaling=False)) == dump(cfg("x"))
    assert "temperature_scaling" not in dump(cfg("x"))["train"]
    assert dump(cfg("x", temperature_scaling=True))["train"]["temperature_scaling"] is True
    off = run(cfg("off", temperature_scaling=False), output=tmp_path / "runs", progress=False)
    plain = run(cfg("plain"), output=tmp_path / "runs", progress=False)
    assert plain.cache_hits == {"topic_calibration": True}  # the identical analysis: reused
    a, b = off.tables["topic_calibration"], plain.tables["topic_calibration"]
    assert set(a) == set(b) and "temperatures" not in a
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert "+ TS" not in " ".join(a["topic_calibration"]["estimator"])
    # an estimator with its own split trains on all answers either way: same raw rows
    toy_on = t[t["estimator"] == "Toy own split"].reset_index(drop=True)
    toy_off = a["topic_calibration"].query("estimator == 'Toy own split'").reset_index(drop=True)
    pd.testing.assert_frame_equal(toy_on, toy_off)


def test_estimator_transfer_reports_ts_variants(
    tasks,  # noqa: F811
    tiny_model_dir,
    second_model_dir,  # noqa: F811
    tmp_path,
):
    from knowlens.experiments import run

    models = [str(tiny_model_dir), str(second_model_dir)]
    cfg = {
        "name": "et-ts",
        "analysis": "estimator_transfer",
        "models": models,
        "tasks": tasks,
        "estimators": ["logistic"],
        "train": {"temperature_scaling": True},
        **_base(tmp_path),
    }
    tabs = run(cfg, output=tmp_path / "runs", progress=False).tables["estimator_transfer"]
    t, s, temps = tabs["estimator_transfer"], tabs["scores"], tabs["temperatures"]
    assert set(t["estimator"]) == {"Logistic probe", "Logistic probe + TS"}
    assert len(t) == 2 * 2 * 2 * 3  # variants x models x trained_on x metrics
    assert temps["trained_on"].tolist() == models  # one T per trained-on model
    assert temps["estimator"].eq("Logistic probe + TS").all()
    assert temps["validation"].eq("held_out").all()
    for row in temps.itertuples():
        raw = s[(s["trained_on"] == row.trained_on) & (s["estimator"] == "Logistic probe")]
        ts = s[(s["trained_on"] == row.trained_on) & (s["estimator"] == row.estimator)]
        assert raw["example_id"].tolist() == ts["example_id"].tolist()
        expect = apply_temperature(raw["p"].to_numpy(), row.temperature)
        np.testing.assert_array_equal(ts["p"].to_numpy(), expect)
    auc = t[t["metric"] == "auroc"].pivot_table(
        index=["model", "trained_on"], columns="estimator", values="value"
    )
    np.testing.assert_allclose(auc["Logistic probe + TS"], auc["Logistic probe"], atol=1e-12)


def test_seed_002_claim_ignores_ts_variants():
    from knowlens.claims import lora_prompt_best_auroc, lora_prompt_lowest_ece

    rng = np.random.default_rng(9)
    y = (rng.random(80) < 0.5).astype(float)
    rows = []
    for est, sharp in (("Zero-Shot Classifier", 0.5), ("Probe", 1.0), ("LoRA + Prompt", 2.0)):
        p = _sigmoid(sharp * (2 * y - 1) + rng.normal(size=80))
        for label, q in ((est, p), (f"{est} + TS", apply_temperature(p, 3.0))):
            rows.append(
                pd.DataFrame(
                    {
                        "model": "m",
                        "estimator": label,
                        "example_id": range(80),
                        "correct": y,
                        "p": q,
                    }
                )
            )
    with_ts = pd.concat(rows, ignore_index=True)
    raw_only = with_ts[~with_ts["estimator"].str.endswith(" + TS")]
    for claim in (lora_prompt_best_auroc, lora_prompt_lowest_ece):
        a = claim({"scores": with_ts}, n_resamples=200)
        b = claim({"scores": raw_only}, n_resamples=200)
        assert a == b
