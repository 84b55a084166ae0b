"""Estimators that need no sampling: Mahalanobis / relative Mahalanobis distance on hidden
states, verbalised confidence, named token statistics; end to end through the registry and
EstimatorBench on the tiny model. Parity with lm-polygraph: tests/test_polygraph_density.py."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from knowlens import metrics
from knowlens._types import ActivationSet, Generation, GenerationSet
from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators import (
    LogitBaseline,
    MahalanobisDistance,
    MaximumSequenceProbability,
    MaxTokenEntropy,
    MeanTokenEntropy,
    Perplexity,
    RelativeMahalanobisDistance,
    VerbalizedConfidence,
    fit_cached,
    get_estimator,
    load,
)
from knowlens.estimators._verbal import VERBAL_TEMPLATE, parse_confidence, verbal_texts

# Reuse the tiny tasks of the experiment tests (about half the answers are correct).
from test_experiments import second_model_dir, tasks  # noqa: F401


def acts_of(x: np.ndarray, layer: int = 2, key: str | None = None) -> ActivationSet:
    n, d = x.shape
    return ActivationSet(
        values=x.reshape(n, 1, 1, d).astype(np.float32),
        mask=np.ones((n, 1), bool),
        layers=[layer],
        tokens="last",
        example_ids=[f"e{i}" for i in range(n)],
        positions=np.zeros((n, 1), int),
        meta={} if key is None else {"cache_key": key},
    )


def planted(n: int = 300, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correct answers ~ N(mu, I); wrong ones spread wider (4x the variance), so they lie
    further from the training answers (float32-exact values, as extracted)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(float)
    x = rng.normal(size=(n, d)) * np.where(y[:, None] == 1, 1.0, 2.0) + 1.0
    return x.astype(np.float32).astype(np.float64), y


# -- Mahalanobis distance --------------------------------------------------------------------
def test_mahalanobis_equals_scipy():
    x, _ = planted()
    tr, te = x[:200], x[200:]
    md = MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(tr))
    assert md.jitter_ == {"fit": 1e-15} and md.n_fit_ == {"fit": 200}
    vi = np.linalg.inv(np.cov(tr, rowvar=False) + 1e-15 * np.eye(tr.shape[1]))
    mu = tr.mean(0)
    expected = np.array([scipy_mahalanobis(h, mu, vi) for h in te])
    np.testing.assert_allclose(md.uncertainty(acts_of(te)), expected, rtol=1e-10)
    # uncalibrated P(correct) = exp(-MD)
    np.testing.assert_allclose(md.predict_proba(acts_of(te)), np.exp(-expected), rtol=1e-10)
    # the layer is found by its hidden-state index; negative counts from the last held
    np.testing.assert_allclose(
        MahalanobisDistance(layer=-1, calibrate=False).fit(acts_of(tr)).uncertainty(acts_of(te)),
        expected,
        rtol=1e-10,
    )


def test_mahalanobis_fit_on_correct_and_calibration():
    x, y = planted()
    acts = acts_of(x)
    md = MahalanobisDistance(layer=2, fit_on="correct", calibrate=False).fit(acts, y)
    np.testing.assert_allclose(md.fits_["fit"].mean, x[y == 1].mean(0), rtol=1e-12)
    assert md.n_fit_ == {"fit": 150}
    cal = MahalanobisDistance(layer=2).fit(acts, y)  # default: all answers, Platt on labels
    assert cal.n_fit_ == {"fit": 300} and cal.calibration_["a"] > 0
    u, p = cal.uncertainty(acts), cal.predict_proba(acts)
    assert np.all(np.diff(p[np.argsort(u)]) <= 1e-12)  # P(correct) falls as MD grows
    assert metrics.auroc(y, p) > 0.8  # wrong answers lie further out
    assert metrics.prr(y, p) > 0.5


def test_calibration_is_cross_fitted_when_answers_are_fewer_than_dimensions():
    """m <= d (SmolLM2's 576-dim states, 140 answers): every training answer lies in the
    fit's span, so in-sample distances are all alike and Platt on them would learn a constant.
    The calibration is fitted on 5-fold out-of-fold distances instead."""
    from sklearn.model_selection import StratifiedKFold

    from knowlens.estimators._score import platt_fit

    rng = np.random.default_rng(3)
    n, d = 60, 100
    y = (np.arange(n) % 2).astype(float)
    x = rng.normal(size=(n, d)) * np.where(y[:, None] == 1, 1.0, 2.0)  # wrong: further out
    te_y = (np.arange(40) % 2).astype(float)
    te = rng.normal(size=(40, d)) * np.where(te_y[:, None] == 1, 1.0, 2.0)
    with pytest.warns(UserWarning, match="fitted on 60 answers of dimension 100"):
        md = MahalanobisDistance(layer=2).fit(acts_of(x), y)
    with pytest.warns(UserWarning, match="fitted on 60 answers"):
        plain = MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(x))
    in_sample = plain.uncertainty(acts_of(x))
    assert np.ptp(in_sample) < 1e-6 * in_sample.mean()  # all alike: useless for Platt
    # the calibration equals Platt on the out-of-fold distances, computed by hand
    oof = np.empty(n)
    for fit_i, held_i in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            part = MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(x[fit_i]))
        oof[held_i] = part.uncertainty(acts_of(x[held_i]))
    a, b, _ = platt_fit(-oof, y)
    assert md.calibration_["a"] == pytest.approx(a, rel=1e-9) and a > 0
    assert md.calibration_["b"] == pytest.approx(b, rel=1e-9)
    p = md.predict_proba(acts_of(te))
    assert np.ptp(p) > 0.1 and metrics.auroc(te_y, p) > 0.8


def test_mahalanobis_rank_deficient_by_hand():
    """Zero training variance along 2 of 5 axes: S + eps I has eigenvalue eps there, so MD^2
    = the in-span form + (off-span part)^2 / eps, exactly (lm-polygraph's float32 inverse of
    a 1e15-sized matrix cannot give this; knowlens sums eigen-components in float64)."""
    rng = np.random.default_rng(1)
    tr = np.zeros((50, 5))
    tr[:, :3] = rng.normal(size=(50, 3)) + 2.0
    te = rng.normal(size=(10, 5))
    md = MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(tr))
    eps = md.jitter_["fit"]
    assert eps == 1e-15
    mu = tr.mean(0)
    vi = np.linalg.inv(np.cov(tr[:, :3], rowvar=False) + eps * np.eye(3))
    # float32 features, as ActivationSet.features returns them
    te32 = te.astype(np.float32).astype(np.float64)
    span = np.array([scipy_mahalanobis(h[:3], mu[:3], vi) ** 2 for h in te32])
    off = (te32[:, 3:] ** 2).sum(1) / eps
    np.testing.assert_allclose(md.uncertainty(acts_of(te)), np.sqrt(span + off), rtol=1e-9)


def test_mahalanobis_warns_when_a_fit_has_no_more_answers_than_dimensions():
    rng = np.random.default_rng(2)
    with pytest.warns(UserWarning, match=r"fitted on 6 answers of dimension 8: its covariance"):
        MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(rng.normal(size=(6, 8))))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 9 answers of dimension 8: full rank, no warning
        MahalanobisDistance(layer=2, calibrate=False).fit(acts_of(rng.normal(size=(9, 8))))


def test_relative_mahalanobis_is_md_to_correct_minus_md_to_all():
    x, y = planted(seed=3)
    acts, te = acts_of(x[:200]), acts_of(x[200:])
    rmd = RelativeMahalanobisDistance(layer=2, calibrate=False).fit(acts, y[:200])
    fg = MahalanobisDistance(layer=2, fit_on="correct", calibrate=False).fit(acts, y[:200])
    bg = MahalanobisDistance(layer=2, fit_on="all", calibrate=False).fit(acts, y[:200])
    u = rmd.uncertainty(te)
    np.testing.assert_allclose(u, fg.uncertainty(te) - bg.uncertainty(te), rtol=1e-12)
    assert rmd.n_fit_ == {"foreground": 100, "background": 200}
    # RMD may take both signs: the uncalibrated map is sigmoid(-RMD), not exp(-RMD)
    np.testing.assert_allclose(rmd.predict_proba(te), 1 / (1 + np.exp(u)), rtol=1e-12)
    assert u[y[200:] == 1].mean() < u[y[200:] == 0].mean()
    cal = RelativeMahalanobisDistance(layer=2).fit(acts, y[:200])
    assert metrics.auroc(y[200:], cal.predict_proba(te)) > 0.8


def test_density_errors_are_one_line():
    x, y = planted(n=40)
    acts = acts_of(x)
    with pytest.raises(ConfigError, match=r"fit_on must be 'correct'.*RMD = 0"):
        RelativeMahalanobisDistance(layer=2, fit_on="all").fit(acts, y)
    with pytest.raises(ConfigError, match="fit_on must be 'all' or 'correct'; got 'wrong'"):
        MahalanobisDistance(layer=2, fit_on="wrong").fit(acts, y)
    with pytest.raises(ConfigError, match="reduce must be one of last, first, mean"):
        MahalanobisDistance(layer=2, reduce="max").fit(acts, y)
    with pytest.raises(DataError, match="needs labels"):
        RelativeMahalanobisDistance(layer=2, calibrate=False).fit(acts)
    one = np.zeros(40)
    one[0] = 1
    with pytest.raises(DataError, match="'correct' fit has 1 training answer"):
        RelativeMahalanobisDistance(layer=2, calibrate=False).fit(acts, one)
    md = MahalanobisDistance(layer=2).fit(acts, y)
    with pytest.raises(DataError, match="d_model=3 but the fit has 5"):
        md.predict_proba(acts_of(x[:, :3]))
    hole = acts_of(x)
    hole.mask[4] = False  # an example without an extracted position
    hole.values[4] = np.nan
    with pytest.raises(DataError, match=r"1 examples have no extracted position.*'e4'"):
        md.predict_proba(hole)
    with pytest.raises(KnowlensError, match="not fitted yet"):
        MahalanobisDistance(layer=2).uncertainty(acts)
    with pytest.raises(KnowlensError, match="Layer 7 was not extracted"):
        MahalanobisDistance(layer=7).fit(acts, y)


def test_density_save_load_and_the_estimator_cache(tmp_path):
    x, y = planted(seed=4)
    acts, te = acts_of(x[:200], key="train-acts"), acts_of(x[200:])
    for cls in (MahalanobisDistance, RelativeMahalanobisDistance):
        est = fit_cached(cls(layer=2), acts, y[:200])
        assert est.from_cache_ is False
        back = load(est.save(tmp_path / cls.__name__))
        assert type(back) is cls and back.n_fit_ == est.n_fit_ and back.jitter_ == est.jitter_
        np.testing.assert_array_equal(back.uncertainty(te), est.uncertainty(te))
        np.testing.assert_array_equal(back.predict_proba(te), est.predict_proba(te))
        again = fit_cached(cls(layer=2), acts, y[:200])
        assert again.from_cache_ is True
        np.testing.assert_array_equal(again.predict_proba(te), est.predict_proba(te))
        # other labels are another fit (the foreground / calibration read them)
        assert cls(layer=2).cache_key(acts, 1 - y[:200]) != est.cache_key()


# -- token statistics ------------------------------------------------------------------------
def _row(i: int, lp: list[float], ent: list[float], span=None, correct=None) -> Generation:
    return Generation(
        example_id=f"g{i}",
        task="t",
        prompt=f"Q{i}?",
        answer="x" * len(lp),
        prompt_ids=[1, 2],
        answer_ids=list(range(len(lp))),
        token_logprobs=lp,
        token_entropies=ent,
        correct=correct,
        grader="test",
        exact_answer_tokens=span,
    )


def test_token_statistics_hand_values():
    gens = GenerationSet(
        [
            _row(0, [-0.1, -2.0, -0.3], [0.5, 2.0, 1.0], span=(1, 3), correct=True),
            _row(1, [-1.0, -1.0], [0.2, 0.4], correct=False),
            _row(2, [], [], correct=False),
        ],
        {"task": "t"},
    )
    cases = {
        MaximumSequenceProbability: [2.4, 2.0, np.inf],
        Perplexity: [0.8, 1.0, np.inf],
        MeanTokenEntropy: [3.5 / 3, 0.3, np.inf],
        MaxTokenEntropy: [2.0, 0.4, np.inf],
    }
    for cls, want in cases.items():
        est = cls(calibrate=False).fit(gens)
        np.testing.assert_allclose(est.uncertainty(gens), want, rtol=1e-12, err_msg=cls.__name__)
        np.testing.assert_allclose(est.predict_proba(gens), np.exp(-np.array(want)), rtol=1e-12)
    # the exact-answer span: row 0 reads tokens 1..2, the rows without a span fall back
    ent = MaxTokenEntropy(span="exact_answer", calibrate=False).fit(gens)
    np.testing.assert_allclose(ent.uncertainty(gens), [2.0, 0.4, np.inf])
    assert ent.n_fallback_ == 2
    mean = MeanTokenEntropy(span="exact_answer", calibrate=False).fit(gens)
    np.testing.assert_allclose(mean.uncertainty(gens)[0], 1.5)
    # LogitBaseline's new max_entropy statistic is the negated maximum
    base = LogitBaseline(statistic="max_entropy", span="answer")
    np.testing.assert_allclose(base.score(gens), [-2.0, -0.4, -np.inf])
    with pytest.raises(ConfigError, match="span must be 'answer' or 'exact_answer'"):
        MaxTokenEntropy(span="all").fit(gens)
    # calibrated (default): Platt on the training labels. Here the correct answer has the
    # higher entropy: the slope is clipped to 0, never inverted (a constant P(correct))
    cal = MeanTokenEntropy().fit(gens)
    assert cal.calibration_["slope_clipped"] is True
    np.testing.assert_allclose(cal.predict_proba(gens), 0.5)
    ents = [[0.1, 0.2], [0.3], [1.8], [0.2], [2.0], [1.5, 2.5]]
    ys = [True, True, True, False, False, False]
    more = GenerationSet(
        [
            _row(i, [-1.0] * len(e), e, correct=c)
            for i, (e, c) in enumerate(zip(ents, ys, strict=True))
        ],
        {"task": "t"},
    )
    cal = MeanTokenEntropy().fit(more)
    u, p = cal.uncertainty(more), cal.predict_proba(more)
    assert cal.calibration_["a"] > 0 and not cal.calibration_["slope_clipped"]
    order = np.argsort(u)  # P(correct) falls as the entropy rises (two rows tie at 2.0)
    assert np.all(np.diff(p[order]) <= 0) and p[order[0]] > p[order[-1]] + 0.3


def test_named_logit_entries_in_the_registry():
    for name, cls, label in [
        ("max_sequence_prob", MaximumSequenceProbability, "Max. sequence probability"),
        ("perplexity", Perplexity, "Perplexity"),
        ("mean_entropy", MeanTokenEntropy, "Mean token entropy"),
        ("max_entropy", MaxTokenEntropy, "Max. token entropy"),
        ("mahalanobis", MahalanobisDistance, "Mahalanobis distance"),
        ("relative_mahalanobis", RelativeMahalanobisDistance, "Relative Mahalanobis distance"),
        ("verbalized", VerbalizedConfidence, "Verbalised confidence"),
    ]:
        spec = get_estimator(name)
        assert spec.cls is cls and spec.display_name == label
        assert get_estimator(cls.__name__) is spec
    assert get_estimator("mahalanobis").inputs.describe() == "activations (layer last, tokens last)"
    assert get_estimator("verbalized").inputs.describe() == "generations + model"
    assert get_estimator("MeanTokenEntropy").name == "mean_entropy"
    assert get_estimator("Verbalized1S").name == "verbalized"


# -- verbalised confidence -------------------------------------------------------------------
PARSE_CASES = [
    ("0.8", 0.8),
    ("80%", 0.8),
    ("80 %", 0.8),
    ("Probability: 0.7", 0.7),
    ("Probability:0.05 (fairly unsure)", 0.05),
    ("Guess: 1945\nProbability: 0.6", 0.6),  # the labelled number, not the guess
    ("My confidence is 85 percent.", 0.85),
    ("I am 90% sure.", 0.9),
    (".8", 0.8),
    ("0,75", 0.75),
    ("1", 1.0),
    ("0", 0.0),
    ("100%", 1.0),
    ("75", 0.75),  # a plain number in (1, 100] is a percentage
    ("4/5", 0.8),
    ("8 out of 10", 0.8),
    ("Likely.", 0.75),
    ("Very unlikely", 0.07),
    ("probably not", 0.3),
    ("It is almost certain.", 0.93),
    ("Chances about even", 0.5),
    # unparseable: None
    ("I don't know", None),
    ("Paris", None),
    ("", None),
    ("1945", None),  # > 100: a year, not a probability
    ("-0.5", None),
    ("Probability: 1.7%", 0.017),
    ("Probability: 250", None),
    ("Probability: <the probability between 0.0 and 1.0 that the answer is correct>", None),
    ("0ct", None),  # a number glued to letters is no number
    ("3/0", None),
    ("uncertain", None),
]


@pytest.mark.parametrize(("text", "want"), PARSE_CASES)
def test_parse_confidence_table(text, want):
    got = parse_confidence(text)
    assert got == (None if want is None else pytest.approx(want, abs=1e-12))


class _Scripted:
    """Stands in for generate_texts: answers prompts with scripted statements, records calls."""

    def __init__(self, said: dict[str, str]) -> None:
        self.said = said
        self.calls: list[dict] = []

    def __call__(self, model, prompts, **kw):
        self.calls.append({"prompts": list(prompts), **kw})
        rows = [
            replace(
                _row(i, [], []),
                answer=next(s for k, s in self.said.items() if f"Answer: {k}\n" in p),
            )
            for i, p in enumerate(prompts)
        ]
        return GenerationSet(rows, {"cache_hit": False})


def _qa_gens(answers: list[str], correct: list[bool | None]) -> GenerationSet:
    rows = [
        replace(_row(i, [-0.5], [0.1], correct=c), answer=" " + a, user_turn=f"Question {i}?")
        for i, (a, c) in enumerate(zip(answers, correct, strict=True))
    ]
    return GenerationSet(rows, {"task": "t", "cache_key": "qa-" + "-".join(answers)})


def test_verbalized_with_scripted_statements(tiny_model, monkeypatch):
    import knowlens.generation as generation

    said = {
        "a0": "Probability: 0.9",
        "a1": "80%",
        "a2": "no idea",
        "a3": "Probability: 0.2",
        "a4": "likely",
        "a5": "hmm",
        "b0": "Probability: 0.95",
        "b1": "whatever",
    }
    fake = _Scripted(said)
    monkeypatch.setattr(generation, "generate_texts", fake)
    train = _qa_gens([f"a{i}" for i in range(6)], [True, True, False, False, True, False])
    est = VerbalizedConfidence(model=tiny_model, calibrate=False, progress=False).fit(train)
    # parsed: 0.9, 0.8, 0.2, 0.75 -> median 0.775; two unparsed, counted
    assert est.n_unparsed_ == 2 and est.n_train_ == 6
    assert est.fallback_confidence_ == pytest.approx(0.775)
    # the prompt: the question and the answer in the template, through the one decoder
    call = fake.calls[0]
    assert call["prompts"][0].startswith(
        VERBAL_TEMPLATE.format(question="Question 0?", answer="a0")
    )
    assert call["max_new_tokens"] == 16 and call["stop_on_newline"] is False
    test = _qa_gens(["b0", "b1"], [True, False])
    with pytest.warns(UserWarning, match=r"1 of 2 statements give no probability.*'whatever'"):
        u = est.uncertainty(test)
    np.testing.assert_allclose(u, [0.05, 1 - 0.775])
    assert est.last_n_unparsed == 1 and est.last_statements == ["Probability: 0.95", "whatever"]
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(est.predict_proba(test), [0.95, 0.775])  # P = c uncalibrated
    # calibrated: Platt on the stated probability, oriented (a >= 0)
    with pytest.warns(UserWarning):
        cal = VerbalizedConfidence(model=tiny_model, progress=False).fit(train)
    assert cal.calibration_["a"] > 0
    with pytest.warns(UserWarning):
        p = cal.predict_proba(test)
    assert p[0] > p[1]


def test_verbalized_when_nothing_parses(tiny_model, monkeypatch):
    import knowlens.generation as generation

    monkeypatch.setattr(generation, "generate_texts", _Scripted({"a": "??", "b": "no"}))
    train = _qa_gens(["a", "b", "a", "b"], [True, False, False, False])
    with pytest.warns(UserWarning, match="every answer gets the training accuracy 0.25"):
        est = VerbalizedConfidence(model=tiny_model, calibrate=False, progress=False).fit(train)
    assert est.n_unparsed_ == est.n_train_ == 4 and est.fallback_confidence_ == 0.25
    with pytest.warns(UserWarning, match="4 of 4 statements give no probability"):
        np.testing.assert_allclose(est.predict_proba(train), [0.25] * 4)
    unlabelled = _qa_gens(["a", "b"], [None, None])
    with pytest.raises(DataError, match="no labels to fall back on"):
        VerbalizedConfidence(model=tiny_model, calibrate=False, progress=False).fit(unlabelled)
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer >= 1; got 0"):
        VerbalizedConfidence(model=tiny_model, max_new_tokens=0).fit(train)
    with pytest.raises(ConfigError, match="needs model=ModelHandle"):
        VerbalizedConfidence().fit(train)


def test_verbalized_reads_the_tiny_model_through_the_cached_decoder(
    tiny_model, monkeypatch, tmp_path
):
    import knowlens.generation as generation
    from test_estimators_model import tiny_gens

    calls = []
    real = generation.generate_texts

    def spy(*a, **kw):
        out = real(*a, **kw)
        calls.append(out.meta["cache_hit"])
        return out

    monkeypatch.setattr(generation, "generate_texts", spy)

    def no_generate(*a, **kw):  # the one decoder is generate_texts, never model.generate
        raise AssertionError("model.generate was called")

    monkeypatch.setattr(tiny_model.model, "generate", no_generate)
    gens = tiny_gens(tiny_model, n=6)
    est = VerbalizedConfidence(model=tiny_model, progress=False)
    said = est.statements(gens)
    expected = real(
        tiny_model,
        verbal_texts(tiny_model, gens),
        max_new_tokens=16,
        batch_size=16,
        stop_on_newline=False,
        progress=False,
    )
    assert said == [r.answer for r in expected.rows] and len(said) == 6
    assert est.statements(gens) == said and calls == [False, True]  # the second: cached
    # the chat model is asked in its template (no completion cue); a base reading adds it
    assert not verbal_texts(tiny_model, gens)[0].endswith("Probability:")
    plain = verbal_texts(tiny_model, gens, use_chat_template=False)[0]
    assert plain.endswith("\n\nProbability:")
    # fitted on the tiny model (its statements state no probability: accuracy fallback),
    # saved and loaded with the same model; another model is refused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est.fit(gens)
        p = est.predict_proba(gens)
    assert est.n_unparsed_ == sum(parse_confidence(s) is None for s in said)
    back = VerbalizedConfidence.load(est.save(tmp_path / "verbal"), model=tiny_model)
    assert back.fallback_confidence_ == est.fallback_confidence_
    assert back.n_unparsed_ == est.n_unparsed_ and back.calibration_ == est.calibration_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_array_equal(back.predict_proba(gens), p)
    other = replace(tiny_model, system_prompt="Be brief.")
    with pytest.raises(KnowlensError, match="fitted with model"):
        VerbalizedConfidence.load(tmp_path / "verbal", model=other)


# -- end to end: config -> registry -> EstimatorBench -> tables ------------------------------
NEW = ["mahalanobis", "relative_mahalanobis", "max_entropy", "mean_entropy", "max_sequence_prob"]


def test_new_estimators_run_in_topic_calibration_from_a_config(
    tasks,  # noqa: F811
    tiny_model,
    tiny_model_dir,
    tmp_path,
):
    """The density, token-statistic and verbal estimators by config name: scores equal
    direct fits on the same answers / activations, and the tables report AUROC, ECE and PRR
    (the default metrics) with bootstrap CIs."""
    from knowlens.activations import extract
    from knowlens.estimators import retokenize
    from knowlens.experiments import run
    from knowlens.experiments._common import decided
    from knowlens.experiments._estimators import concat
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    cfg = {
        "name": "density",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],
        "eval_task": tasks[1],
        "estimators": [*NEW, "verbalized"],
        "n_bootstrap": 30,
        "device": "cpu",
        "min_n": 5,
    }
    with warnings.catch_warnings():
        # the tiny model states no probability (accuracy fallback, warned) and its training
        # answers may not outnumber its 32 hidden dimensions (singular covariance, warned)
        warnings.simplefilter("ignore", UserWarning)
        res = run(cfg, output=tmp_path / "runs", progress=False)
    tabs = res.tables["topic_calibration"]
    t, s = tabs["topic_calibration"], tabs["scores"]
    labels = {get_estimator(n).display_name for n in [*NEW, "verbalized"]}
    assert set(t["estimator"]) == labels
    assert list(dict.fromkeys(t["metric"])) == ["ece", "auroc", "prr"]

    train = concat(
        [decided(generate(tiny_model, load_task(tasks[0], split="train"), progress=False))]
    )
    ev = decided(generate(tiny_model, load_task(tasks[1], split="test"), progress=False))
    last = tiny_model.n_layers
    feats = {
        k: extract(
            tiny_model, retokenize(g, tiny_model), layers=[last], tokens="last", progress=False
        )
        for k, g in (("train", train), ("test", ev))
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        direct = {
            "Mahalanobis distance": MahalanobisDistance(layer=last)
            .fit(feats["train"], train.correct)
            .predict_proba(feats["test"]),
            "Relative Mahalanobis distance": RelativeMahalanobisDistance(layer=last)
            .fit(feats["train"], train.correct)
            .predict_proba(feats["test"]),
            "Max. token entropy": MaxTokenEntropy().fit(train).predict_proba(ev),
            "Mean token entropy": MeanTokenEntropy().fit(train).predict_proba(ev),
            "Max. sequence probability": MaximumSequenceProbability().fit(train).predict_proba(ev),
            "Verbalised confidence": VerbalizedConfidence(model=tiny_model, progress=False)
            .fit(train)
            .predict_proba(ev),
        }
    y = ev.correct
    for label, p in direct.items():
        got = s[s["estimator"] == label]
        np.testing.assert_allclose(got["p"].to_numpy(), p, rtol=1e-9, atol=1e-12, err_msg=label)
        pooled = t[(t["estimator"] == label) & (t["topic"] == "(all)")].set_index("metric")
        for m in ("ece", "auroc", "prr"):
            want = metrics.METRICS[m](y, p)  # a constant score (clipped slope): 0.5, 0
            assert pooled.loc[m, "value"] == pytest.approx(want), (label, m)
        if len(np.unique(p)) > 1:  # a CI around every defined value
            for m in ("auroc", "prr"):
                lo, hi = pooled.loc[m, "ci_low"], pooled.loc[m, "ci_high"]
                assert lo <= pooled.loc[m, "value"] <= hi, (label, m)
    # the report names the metrics it shows, PRR among them
    html = res.report.read_text()
    assert "PRR: prediction-rejection ratio" in html and "ECE: expected calibration" in html
