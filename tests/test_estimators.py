"""Estimators that need no model: logit baselines, probes, sweeps, save/load, errors."""

from __future__ import annotations

import re

import numpy as np
import pytest

from knowlens import metrics as M
from knowlens._types import ActivationSet, Generation, GenerationSet
from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators import (
    Estimator,
    LogisticProbe,
    LogitBaseline,
    MLPProbe,
    NotFittedError,
    load,
    sweep_probes,
    user_turn,
)


def planted_acts(n=200, d=16, layers=(0, 3, 6), signal_layer=3, seed=0, tokens="exact_answer"):
    """Random activations where only ``signal_layer`` carries the label along one direction."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    rng.shuffle(y)
    n_pos = 3
    values = rng.normal(size=(n, len(layers), n_pos, d)).astype(np.float16)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    li = list(layers).index(signal_layer)
    lengths = rng.integers(1, n_pos + 1, n)
    mask = np.arange(n_pos)[None, :] < lengths[:, None]
    for i in range(n):
        # the signal sits at each example's last real position
        values[i, li, lengths[i] - 1] += (2.5 * (2 * y[i] - 1) * direction).astype(np.float16)
    positions = np.where(mask, np.arange(n_pos)[None, :] + 10, -1)
    acts = ActivationSet(
        values=values,
        mask=mask,
        layers=list(layers),
        tokens=tokens,
        example_ids=[f"ex{i}" for i in range(n)],
        positions=positions,
        meta={},
    )
    return acts, y


def make_gens(logprobs, spans=None, correct=None, prompts=None):
    rows = []
    for i, lp in enumerate(logprobs):
        rows.append(
            Generation(
                example_id=f"g{i}",
                task="t",
                prompt=prompts[i] if prompts else f"Q{i}?",
                answer="x" * len(lp),
                prompt_ids=[1, 2, 3],
                answer_ids=list(range(10, 10 + len(lp))),
                token_logprobs=list(lp),
                token_entropies=[-v / 2 for v in lp],
                correct=None if correct is None else correct[i],
                grader="test",
                exact_answer_tokens=None if spans is None else spans[i],
            )
        )
    return GenerationSet(rows, {"task": "t"})


def test_logit_baselines_hand_values():
    gens = make_gens(
        [[-0.1, -2.0, -0.3], [-1.0, -1.0], []],
        spans=[(1, 3), None, None],
        correct=[True, False, False],
    )
    mean_ans = LogitBaseline(statistic="mean_logprob", span="answer").predict_proba(gens)
    np.testing.assert_allclose(mean_ans, [np.exp(-2.4 / 3), np.exp(-1.0), 0.0])
    ex = LogitBaseline(statistic="mean_logprob", span="exact_answer").fit(gens)
    np.testing.assert_allclose(ex.predict_proba(gens), [np.exp(-1.15), np.exp(-1.0), 0.0])
    assert ex.n_fallback_ == 2
    s = LogitBaseline(statistic="min_logprob", span="answer").score(gens)
    np.testing.assert_allclose(s[:2], [-2.0, -1.0])
    s = LogitBaseline(statistic="last_logprob", span="answer").score(gens)
    np.testing.assert_allclose(s[:2], [-0.3, -1.0])
    s = LogitBaseline(statistic="seq_prob", span="answer").score(gens)
    np.testing.assert_allclose(s[:2], [-2.4, -2.0])
    s = LogitBaseline(statistic="mean_entropy", span="answer").score(gens)
    np.testing.assert_allclose(s[:2], [-0.4, -0.5])
    assert s[2] == -np.inf


def test_logit_calibrated_keeps_ranking_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    lps = [list(-rng.exponential(1.0, rng.integers(1, 5))) for _ in range(120)]
    score = np.array([np.mean(lp) for lp in lps])
    # 80% correct while exp(mean log-prob) averages ~0.4: raw scores are under-confident
    correct = list((score + rng.normal(0, 0.3, len(score))) > np.quantile(score, 0.2))
    gens = make_gens(lps, correct=correct)
    raw = LogitBaseline(span="answer").predict_proba(gens)
    cal = LogitBaseline(span="answer", calibrate=True).fit(gens)
    p = cal.predict_proba(gens)
    assert M.auroc(gens.correct, p) == pytest.approx(M.auroc(gens.correct, raw))
    assert M.ece(gens.correct, p) < M.ece(gens.correct, raw) / 2
    again = load(cal.save(tmp_path / "cal"))
    np.testing.assert_array_equal(again.predict_proba(gens), p)


def test_logit_errors():
    gens = make_gens([[-1.0]], correct=[True])
    with pytest.raises(ConfigError, match="statistic must be one of"):
        LogitBaseline(statistic="median").predict_proba(gens)
    with pytest.raises(DataError, match="one class"):
        LogitBaseline(calibrate=True).fit(gens)
    with pytest.raises(DataError, match="0 generations"):
        LogitBaseline().predict_proba(GenerationSet([]))
    with pytest.raises(NotFittedError, match="not fitted"):
        LogitBaseline(calibrate=True).predict_proba(gens)


@pytest.mark.parametrize("cls", [LogisticProbe, MLPProbe])
def test_probe_separates_planted_signal(cls, tmp_path):
    # train and evaluate on disjoint parts of one draw (one planted direction)
    acts, yy = planted_acts(n=400, seed=2)
    tr = np.arange(400) < 300
    probe = cls(layer=3).fit(_sub(acts, tr), yy[tr])
    p = probe.predict_proba(_sub(acts, ~tr))
    assert p.shape == (100,)
    assert ((p >= 0) & (p <= 1)).all()
    assert M.auroc(yy[~tr], p) > 0.95
    # a layer without the signal does not separate it
    p0 = cls(layer=0).fit(_sub(acts, tr), yy[tr]).predict_proba(_sub(acts, ~tr))
    assert M.auroc(yy[~tr], p0) < 0.75
    # save / load round trip gives identical predictions; the key is stable
    again = load(probe.save(tmp_path / "probe"))
    assert type(again) is cls
    np.testing.assert_array_equal(again.predict_proba(_sub(acts, ~tr)), p)
    assert again.cache_key() == probe.cache_key()
    assert sorted(p.name for p in (tmp_path / "probe").iterdir()) == [
        "estimator.json",
        "weights.safetensors",
    ]


def _sub(acts, idx):
    from knowlens.estimators._probe import _subset

    return _subset(acts, np.flatnonzero(idx))


def test_probe_labels_from_generationset_are_aligned():
    acts, y = planted_acts(n=120, seed=3)
    gens = make_gens(
        [[-1.0]] * 120, correct=[bool(v) for v in y], prompts=[f"q{i}" for i in range(120)]
    )
    for r, eid in zip(gens.rows, acts.example_ids, strict=True):
        r.example_id = eid
    shuffled = GenerationSet(gens.rows[::-1], gens.meta)
    a = LogisticProbe(layer=3).fit(acts, y).predict_proba(acts)
    b = LogisticProbe(layer=3).fit(acts, shuffled).predict_proba(acts)
    np.testing.assert_allclose(a, b)


def test_probe_errors():
    acts, y = planted_acts(n=20)
    with pytest.raises(KnowlensError, match="Layer 5 was not extracted"):
        LogisticProbe(layer=5).fit(acts, y)
    with pytest.raises(DataError, match="same length"):
        LogisticProbe(layer=3).fit(acts, y[:-1])
    with pytest.raises(DataError, match="one class"):
        LogisticProbe(layer=3).fit(acts, np.ones(20))
    with pytest.raises(NotFittedError):
        MLPProbe().predict_proba(acts)
    with pytest.raises(NotFittedError):
        MLPProbe().save("unused")
    with pytest.raises(DataError, match="ActivationSet"):
        LogisticProbe().fit(np.zeros((3, 4)), [0, 1, 0])
    with pytest.raises(ConfigError, match="reduce"):
        LogisticProbe(reduce="max").fit(acts, y)
    empty = planted_acts(n=20)[0]
    empty.mask[0] = False
    with pytest.raises(DataError, match="no extracted position"):
        LogisticProbe(layer=3).fit(empty, y)
    with pytest.warns(UserWarning, match="undecided"):
        yy = y.copy()
        yy[0] = np.nan
        LogisticProbe(layer=3).fit(acts, yy)


def test_sweep_picks_the_signal_layer_and_selector():
    exact, y = planted_acts(n=240, seed=4, tokens="exact_answer")
    last, _ = planted_acts(n=240, seed=4, tokens="last")
    rng = np.random.default_rng(0)
    last.values[:] = rng.normal(size=last.values.shape)  # no signal anywhere
    sweep = sweep_probes([exact, last], y, progress=False)
    t = sweep.table
    assert len(t) == 6 and set(t.tokens) == {"exact_answer", "last"}
    assert sweep.best["tokens"] == "exact_answer" and sweep.best["layer"] == 3
    assert sweep.best["auroc"] > 0.95
    assert (t.n_val == 60).all()
    fitted = sweep.best_probe([exact, last], y)
    assert M.auroc(y, fitted.predict_proba(exact)) > 0.95


def test_load_errors(tmp_path):
    with pytest.raises(KnowlensError, match="No saved estimator"):
        Estimator.load(tmp_path)
    acts, y = planted_acts(n=40)
    p = LogisticProbe(layer=3).fit(acts, y).save(tmp_path / "p")
    with pytest.raises(KnowlensError, match="holds a LogisticProbe"):
        MLPProbe.load(p)


def test_user_turn_recovery():
    assert user_turn("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nWhat?<|im_end|>\n") == (
        "What?"
    )
    assert user_turn("<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n") == (
        "Hi there"
    )
    assert user_turn("<|user|>Q?<|end|>\n<|assistant|>") == "Q?"
    assert user_turn("Q: capital of France?\nA:") == "Q: capital of France?\nA:"


def test_user_turn_prefers_the_recorded_field():
    """A row that recorded its user turn returns it as asked (no template parsing, even for a
    template the parser does not know); a row without it falls back to parsing the prompt."""
    from knowlens.estimators._text import questions_for

    prompts = ["<<odd>>What?<</odd>>", "<|user|>Q?<|end|>\n<|assistant|>"]
    gens = make_gens([[-0.1], [-0.2]], prompts=prompts)
    gens.rows[0].user_turn = "What?"
    assert user_turn(gens.rows[0]) == "What?"
    assert user_turn(gens.rows[1]) == "Q?"  # no field (an older entry): parsed from the prompt
    assert questions_for(gens) == ["What?", "Q?"]
    assert questions_for(gens, ["a", "b"]) == ["a", "b"]


# -- scikit-learn parameter API, cache keys, the one estimator cache ---------------------------
def test_estimator_base_is_abstract_and_typed():
    import inspect

    with pytest.raises(TypeError, match="abstract"):
        Estimator()

    class NoPredict(Estimator):
        def fit(self, X, y=None):
            return self

    with pytest.raises(TypeError, match="predict_proba"):
        NoPredict()
    assert Estimator.fit.__isabstractmethod__ and Estimator.predict_proba.__isabstractmethod__
    sig = inspect.signature(Estimator.fit)
    assert list(sig.parameters) == ["self", "X", "y"]
    assert sig.return_annotation == "E" and sig.parameters["y"].annotation == "Labels"


def test_get_set_params_and_clone_follow_sklearn():
    from knowlens.estimators import clone

    p = MLPProbe(layer=3, hidden=(8, 4), epochs=7)
    assert p.get_params() == p.get_params(deep=False)
    assert p.get_params()["hidden"] == (8, 4) and p.get_params()["epochs"] == 7
    assert p.set_params(epochs=3, lr=0.01) is p and (p.epochs, p.lr) == (3, 0.01)
    with pytest.raises(
        ConfigError, match=re.escape("Unknown parameter 'epoch'. Did you mean: epochs?")
    ):
        p.set_params(epoch=2)
    acts, y = planted_acts(n=60)
    fitted = p.fit(acts, y)
    c = clone(fitted)
    assert type(c) is MLPProbe and c.get_params() == fitted.get_params()
    assert not c._is_fitted() and not hasattr(c, "head_")
    with pytest.raises(NotFittedError):
        c.predict_proba(acts)
    # parameters are copies (sklearn clone), a refit of the clone reproduces the original
    lst = LogisticProbe(layer=3)
    lst.tags = ["a"]  # not a parameter: not copied
    assert not hasattr(clone(lst), "tags")
    np.testing.assert_array_equal(c.fit(acts, y).predict_proba(acts), fitted.predict_proba(acts))

    class Converting(MLPProbe):
        def __init__(self, *, hidden: tuple[int, ...] = (8,)):
            super().__init__(hidden=hidden)
            self.hidden = list(hidden)  # converts instead of storing: clone cannot rebuild it

    with pytest.raises(KnowlensError, match="__init__ changes parameter 'hidden'"):
        clone(Converting())


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogisticProbe(layer=3),
        lambda: MLPProbe(layer=3, epochs=2),
    ],
)
def test_cache_key_before_fit_equals_key_after_fit(make):
    acts, y = planted_acts(n=40)
    y = y.copy()
    y[5] = np.nan  # undecided rows are part of the key exactly as fit records them
    est = make()
    before = est.cache_key(acts, y)
    with pytest.warns(UserWarning, match="undecided"):
        est.fit(acts, y)
    assert est.cache_key() == before
    assert make().cache_key(acts, np.where(np.isnan(y), np.nan, 1 - y)) != before  # labels count


def test_logit_cache_key_before_fit():
    gens = make_gens([[-0.5], [-1.0], [-2.0], [-0.1]], correct=[True, False, None, True])
    raw = LogitBaseline()
    assert raw.cache_key(gens) == raw.fit(gens).cache_key()
    assert LogitBaseline().cache_key(gens) == LogitBaseline().cache_key(
        gens.subset(np.array([0, 1]))
    )
    cal = LogitBaseline(calibrate=True)
    k = cal.cache_key(gens)
    with pytest.warns(UserWarning, match="undecided"):
        cal.fit(gens)
    assert cal.cache_key() == k != raw.cache_key()


def test_fit_cached_stores_once_and_reuses(tmp_path):
    from knowlens._cache import cache_root
    from knowlens.estimators import fit_cached

    acts, y = planted_acts(n=80)
    est = fit_cached(LogisticProbe(layer=3), acts, y)
    key = est.cache_key()
    entry = cache_root() / "estimators" / key
    assert not est.from_cache_
    assert sorted(p.name for p in entry.iterdir()) == [
        "checksums.json",
        "estimator.json",
        "weights.safetensors",
    ]
    assert [p.name for p in (cache_root() / "estimators").iterdir()] == [key]
    again = fit_cached(LogisticProbe(layer=3), acts, y)
    assert again.from_cache_ and again.cache_key() == key
    np.testing.assert_array_equal(again.predict_proba(acts), est.predict_proba(acts))
    # other parameters -> another entry
    other = fit_cached(LogisticProbe(layer=3, C=0.1), acts, y)
    assert not other.from_cache_ and other.cache_key() != key
    # cache=False refits, keeps the intact entry
    refit = fit_cached(LogisticProbe(layer=3), acts, y, cache=False)
    assert not refit.from_cache_ and entry.exists()


def test_fit_cached_refits_a_damaged_entry(caplog):
    from knowlens._cache import cache_root
    from knowlens.estimators import fit_cached

    acts, y = planted_acts(n=80)
    est = fit_cached(MLPProbe(layer=3, epochs=3), acts, y)
    p = est.predict_proba(acts)
    w = cache_root() / "estimators" / est.cache_key() / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-9] ^= 0xFF  # same size, other bytes
    w.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="knowlens.cache"):
        again = fit_cached(MLPProbe(layer=3, epochs=3), acts, y)
    assert not again.from_cache_
    assert "damaged entry estimators/" in caplog.text and "checksum" in caplog.text
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    np.testing.assert_array_equal(again.predict_proba(acts), p)  # refit: same seed, same probe
    assert fit_cached(MLPProbe(layer=3, epochs=3), acts, y).from_cache_


def test_logistic_probe_reaches_the_optimum_on_raw_residual_like_states():
    """Raw residual states (a few outlier dimensions, large means) stored in float16: the
    probe reaches the L2-regularised optimum without a warning, as far down as a long lbfgs
    run in float64 (sklearn's default solver, in float32, warns and stops short)."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n, d = 280, 576
    x = rng.normal(size=(n, d))
    x[:, :3] *= 150
    x += rng.normal(size=d) * 5
    w = rng.normal(size=d) / np.sqrt(d)
    y = (x @ w / np.std(x @ w) + rng.normal(size=n) > 0).astype(int)
    acts = ActivationSet(
        values=x[:, None, None, :].astype(np.float16),
        mask=np.ones((n, 1), dtype=bool),
        layers=[0],
        tokens="last",
        example_ids=[f"ex{i}" for i in range(n)],
        positions=np.zeros((n, 1), dtype=np.int64),
        meta={},
    )
    xf = acts.features(0, "last").astype(np.float64)

    def objective(coef, intercept):
        z = xf @ coef + intercept
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * np.sum(coef**2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = LogisticProbe(layer=0).fit(acts, y)
    assert probe.clf_.n_iter_[0] < 20
    ref = LogisticRegression(max_iter=20_000, tol=1e-10).fit(xf, y)
    ours = objective(probe.clf_.coef_[0], probe.clf_.intercept_[0])
    assert ours <= objective(ref.coef_[0], ref.intercept_[0]) + 1e-6
