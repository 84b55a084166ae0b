"""Semantic sets and semantic entropy (knowlens.estimators._semantic) and the entailment
judges (knowlens.estimators._entailment): greedy clustering and the entropy formulas by hand,
the three judges (normalised answers; the tiny causal LM against a direct forward pass; a
tiny random NLI cross-encoder saved to tmp_path), pair caching, config errors, calibration,
save/load and keys. No network, no real model."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators import _entailment as ent
from knowlens.estimators import get_estimator
from knowlens.estimators._entailment import (
    ENTAILMENT_PROMPT,
    EntailmentJudge,
    ModelJudge,
    NLIJudge,
    NormalizedJudge,
    load_judge,
    parse_judge,
)
from knowlens.estimators._registry import samples
from knowlens.estimators._semantic import (
    NumSemSets,
    SemanticEntropy,
    cluster_ids,
    semantic_clusters,
    semantic_entropy,
)
from knowlens.estimators._text import encode
from test_estimators_sampling import sampled as _sampled


def sampled(rows, *, correct=None, questions=None):
    """SampledGenerations from ``rows`` (per example a list of (text, token_logprobs)), built
    by the sampling tests' helper; token ids are placeholders 1..L."""
    return _sampled(rows, correct=correct, prompts=questions)


class CountingJudge(EntailmentJudge):
    """Entailment by a fixed relation on texts; records every batch it is asked."""

    spec = "counting"

    def __init__(self, relation, uses_question=False):
        self.relation = relation
        self.uses_question = uses_question
        self.calls: list[list[tuple[str, str, str | None]]] = []

    def _judge(self, premises, hypotheses, questions, batch_size):
        self.calls.append(list(zip(premises, hypotheses, questions, strict=True)))
        d = np.array([self.relation(a, b) for a, b in zip(premises, hypotheses, strict=True)])
        return d.astype(float), d


# -- clustering and the formulas by hand -------------------------------------------------------
def test_greedy_clustering_compares_with_the_first_member_of_each_cluster():
    # a~b and b~c but a!~c: c is compared with a (cluster 0's first member), not b
    eq = {frozenset("ab"), frozenset("bc")}
    rel = lambda x, y: frozenset((x, y)) in eq  # noqa: E731
    assert cluster_ids(["a", "b", "c"], rel) == [0, 0, 1]
    # d equivalent to both clusters' first members joins the first one; identical texts
    # join without asking
    eq |= {frozenset("da"), frozenset("dc")}
    assert cluster_ids(["a", "c", "d", "c", "a"], rel) == [0, 1, 0, 1, 0]
    # one-way entailment is not enough
    assert cluster_ids(["x", "y"], lambda p, h: (p, h) == ("x", "y")) == [0, 1]


def test_semantic_entropy_formulas_by_hand():
    ids = [0, 0, 1, 0, 2]
    ll = np.log([0.3, 0.2, 0.1, 0.05, 0.05])
    pa, pb, pc = 0.55, 0.1, 0.05
    mean = -(3 * math.log(pa) + math.log(pb) + math.log(pc)) / 5
    assert math.isclose(semantic_entropy(ids, ll), mean, rel_tol=1e-12)
    z = pa + pb + pc
    rao = -sum(p / z * math.log(p / z) for p in (pa, pb, pc))
    assert math.isclose(semantic_entropy(ids, ll, estimate="rao"), rao, rel_tol=1e-12)
    freq = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    for est in ("mean", "rao"):
        got = semantic_entropy(ids, None, probabilities="frequency", estimate=est)
        assert math.isclose(got, freq, rel_tol=1e-12)
    assert semantic_entropy([0, 0, 0], None, probabilities="frequency") == 0.0
    with pytest.raises(DataError, match="one log-likelihood per sample; got 2 for 5"):
        semantic_entropy(ids, ll[:2])


# -- judges ------------------------------------------------------------------------------------
def test_normalized_judge_uses_the_graders_normalisation():
    j = load_judge("normalized")
    assert j is load_judge("normalized")  # cached per process
    assert j.equivalent("Paris", "paris.")
    assert j.equivalent("The Nile", "nile")
    assert j.equivalent("Brasília", "Brasilia!")
    assert not j.equivalent("Paris", "Lyon")
    # the question echo is cut, as the graders' short-answer extraction does
    q = "What is the capital of Peru?"
    assert j.equivalent("The capital of Peru is Lima.", "Lima", q)
    assert NormalizedJudge.key("Answer: D.C.\nmore text") == "dc"
    np.testing.assert_array_equal(
        j.entails(["Paris", "Paris"], ["paris", "Rome"], probs=True), [1.0, 0.0]
    )
    np.testing.assert_array_equal(j.entails(["Paris"], ["paris"]), [True])
    np.testing.assert_array_equal(
        j.equivalent(["a cat", "dog"], ["cat", "cats"]), np.array([True, False])
    )


@pytest.mark.parametrize(
    "spec", ["bogus", "nli", "nli:", "model:", "normalized:x", "", None, 3, "Model:x"]
)
def test_bad_judge_strings_are_one_line_errors_naming_the_forms(spec):
    with pytest.raises(ConfigError) as e:
        parse_judge(spec)
    msg = str(e.value)
    assert "\n" not in msg and repr(spec) in msg
    for form in ("'normalized'", "'model:<model spec>'", "'nli:<hub id or local dir>'"):
        assert form in msg
    with pytest.raises(ConfigError, match="Unknown entailment judge"):
        load_judge(spec)


def test_judge_strings_parse():
    assert parse_judge("normalized") == ("normalized", None)
    assert parse_judge("model") == ("model", "smollm2-135m-instruct")
    assert parse_judge("model:smollm2-135m-instruct") == ("model", "smollm2-135m-instruct")
    assert parse_judge("model:/some/dir:with:colons") == ("model", "/some/dir:with:colons")
    assert parse_judge("nli:microsoft/deberta-large-mnli") == (
        "nli",
        "microsoft/deberta-large-mnli",
    )


def test_model_judge_reads_p_yes_from_one_next_token_forward(tiny_model, tiny_model_dir):
    j = load_judge(f"model:{tiny_model_dir}")
    assert isinstance(j, ModelJudge) and j is load_judge(f"model:{tiny_model_dir}")
    tok = j.handle.tokenizer
    # the tiny tokenizer has "yes"/" yes"/"no"/" no" as single tokens, not "Yes"/"No"
    assert j.labels == ("yes", "no")
    prem, hyp, qs = ["Paris", "Berlin", "It is Rome."], ["paris", "Rome", "Rome"], ["Q1?"] * 3
    p = j.entails(prem, hyp, qs, probs=True, batch_size=2)  # two batches, left-padded
    texts = j.prompts(prem, hyp, qs)
    assert texts[0] == tiny_model.format_prompt(
        ENTAILMENT_PROMPT.format(question="Q1?", premise="Paris", hypothesis="paris")
    )
    assert "Does Possible Answer 1 semantically entail Possible Answer 2?" in texts[0]
    yes = [tok.encode(w, add_special_tokens=False)[0] for w in ("yes", " yes")]
    no = [tok.encode(w, add_special_tokens=False)[0] for w in ("no", " no")]
    want = []
    with torch.no_grad():
        for t in texts:  # one unpadded forward per prompt
            logits = j.handle.model(torch.tensor([encode(tok, t)])).logits[0, -1]
            probs = torch.softmax(logits[yes + no].double(), -1)
            want.append(float(probs[:2].sum()))
    np.testing.assert_allclose(p, want, atol=1e-5)
    np.testing.assert_array_equal(j.entails(prem, hyp, qs), np.asarray(want) > 0.5)
    both = j.equivalent(prem, hyp, qs)
    back = j.entails(hyp, prem, qs)
    np.testing.assert_array_equal(both, (np.asarray(want) > 0.5) & back)


def _tiny_nli(tmp_path, id2label=None):
    from transformers import BertConfig, BertForSequenceClassification

    from conftest import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    id2label = id2label or {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
    )  # fmt: skip
    model = BertForSequenceClassification(cfg).eval()
    d = tmp_path / "tiny-nli"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def test_nli_judge_matches_a_direct_forward_and_reads_labels_from_config(tmp_path):
    d, model, tok = _tiny_nli(tmp_path, {0: "entailment", 1: "neutral", 2: "contradiction"})
    j = load_judge(f"nli:{d}")
    assert isinstance(j, NLIJudge) and (j.entail_id, j.contradict_id) == (0, 2)
    prem = ["The capital of France is Paris.", "Berlin", "Rome, of course", "x"]
    hyp = ["Paris", "Berlin is the capital of Germany.", "Rome", "Lyon is in France."]
    p = j.entails(prem, hyp, probs=True, batch_size=3)  # padded batches of different length
    decided = j.entails(prem, hyp, batch_size=3)
    want_p, want_d = [], []
    with torch.no_grad():
        for a, b in zip(prem, hyp, strict=True):
            probs = torch.softmax(model(**tok(a, b, return_tensors="pt")).logits[0], -1)
            want_p.append(float(probs[0]))
            want_d.append(int(probs.argmax()) == 0)
    np.testing.assert_allclose(p, want_p, atol=1e-5)
    np.testing.assert_array_equal(decided, want_d)


def test_nli_judge_errors_are_one_line(tmp_path):
    d, _, _ = _tiny_nli(tmp_path, {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    with pytest.raises(KnowlensError, match="one entailment and one contradiction class") as e:
        load_judge(f"nli:{d}")
    assert "\n" not in str(e.value) and "label_0" in str(e.value)
    with pytest.raises(KnowlensError, match="cannot load an NLI model") as e:
        load_judge(f"nli:{tmp_path / 'missing'}")
    assert "\n" not in str(e.value)


# -- pair caching ------------------------------------------------------------------------------
def test_each_pair_is_judged_once_forward_then_backward_where_needed():
    j = CountingJudge(lambda a, b: a.lower() == b.lower())
    texts = [["Paris", "paris", "Paris", "Lyon"], ["Rome", "Rome"], ["Lyon", "paris"]]
    ids = semantic_clusters(j, texts)
    assert ids == [[0, 0, 0, 1], [0, 0], [0, 1]]
    # call 1, all examples: (earlier, later) pairs of distinct texts; identical texts are
    # never asked. Call 2: the reverse of the forward pairs that hold, only.
    assert len(j.calls) == 2
    assert [(a, b) for a, b, _ in j.calls[0]] == [
        ("Paris", "paris"), ("Paris", "Lyon"), ("paris", "Lyon"), ("Lyon", "paris"),
    ]  # fmt: skip
    assert [(a, b) for a, b, _ in j.calls[1]] == [("paris", "Paris")]
    memo: dict = {}
    assert semantic_clusters(j, texts, memo=memo) == ids
    assert len(memo) == 5 and len(j.calls) == 4
    semantic_clusters(j, texts, memo=memo)  # all cached: no new call
    assert len(j.calls) == 4
    # a pair a later example needs in reverse is not asked twice
    j2 = CountingJudge(lambda a, b: True)
    semantic_clusters(j2, [["x", "y"], ["y", "x"]])
    assert j2.calls == [[("x", "y", None), ("y", "x", None)]]


def test_pairs_are_cached_per_question_for_judges_that_read_it():
    j = CountingJudge(lambda a, b: True, uses_question=True)
    semantic_clusters(j, [["a", "b"], ["a", "b"]], ["Q1", "Q2"])
    assert j.calls == [[("a", "b", "Q1"), ("a", "b", "Q2")], [("b", "a", "Q1"), ("b", "a", "Q2")]]


def test_estimator_judges_each_pair_once_per_call(monkeypatch):
    j = CountingJudge(lambda a, b: a.lower() == b.lower())
    monkeypatch.setitem(ent._JUDGES, "normalized", j)
    X = sampled([[("Paris", [-0.1]), ("paris", [-1.0]), ("Lyon", [-2.0])]] * 2)
    u = NumSemSets(judge="normalized", calibrate=False).uncertainty(X)
    np.testing.assert_array_equal(u, [2.0, 2.0])
    # the repeated example is not re-asked; only the holding pair is asked backwards
    assert [len(c) for c in j.calls] == [3, 1]


# -- estimators --------------------------------------------------------------------------------
ROWS = [
    [("Paris", [-0.1]), ("paris.", [-0.2, -0.1]), ("Paris", [-0.1])],
    [("Lyon", [-1.0]), ("Nice", [-2.0]), ("Paris", [-0.5])],
    [("Rome", [-0.3]), ("Milan", [-1.5, -0.5]), ("rome", [-0.4])],
    [("Bern", [-0.2]), ("bern", [-0.2]), ("Bern", [-0.2])],
]


def _hand_ids():
    return [[0, 0, 0], [0, 1, 2], [0, 1, 0], [0, 0, 0]]


def test_num_sem_sets_and_semantic_entropy_by_hand_with_the_normalized_judge():
    X = sampled(ROWS)
    est = NumSemSets(judge="normalized", calibrate=False)
    assert est.clusters(X) == _hand_ids()
    np.testing.assert_array_equal(est.uncertainty(X), [1.0, 3.0, 2.0, 1.0])
    np.testing.assert_allclose(est.fit(X).predict_proba(X), [1.0, 1 / 3, 0.5, 1.0])
    lls = [[sum(lp) for _, lp in r] for r in ROWS]
    for kw in (
        {},
        {"estimate": "rao"},
        {"probabilities": "frequency"},
        {"estimate": "rao", "length_normalized": True},
    ):
        se = SemanticEntropy(judge="normalized", calibrate=False, **kw)
        if kw.get("length_normalized"):
            ll = [[float(np.mean(lp)) for _, lp in r] for r in ROWS]
        else:
            ll = lls
        want = [
            semantic_entropy(c, x, **{k: v for k, v in kw.items() if k != "length_normalized"})
            for c, x in zip(_hand_ids(), ll, strict=True)
        ]
        np.testing.assert_allclose(se.uncertainty(X), want, rtol=0, atol=1e-12)
    # example 1, likelihood/mean: one cluster of mass e^-0.1 + e^-0.3 + e^-0.1 (> 1: negative)
    mass = math.exp(-0.1) + math.exp(-0.3) + math.exp(-0.1)
    u0 = SemanticEntropy(judge="normalized", calibrate=False).uncertainty(X)[0]
    assert math.isclose(u0, -math.log(mass), rel_tol=1e-12) and u0 < 0
    p = SemanticEntropy(judge="normalized", calibrate=False).fit(X).predict_proba(X)
    assert p[0] == 1.0  # exp(-max(SE, 0))


def test_empty_samples_are_left_out_and_no_sample_left_is_nan():
    X = sampled([[("Paris", [-0.1]), ("", []), ("Lyon", [-0.2])], [("", []), ("", [])]])
    est = NumSemSets(judge="normalized", calibrate=False)
    with pytest.warns(UserWarning, match=re.escape("1 of 2 examples have no non-empty sample")):
        u = est.uncertainty(X)
    assert u[0] == 2.0 and np.isnan(u[1])
    with pytest.warns(UserWarning, match="no non-empty sample"):
        se = SemanticEntropy(judge="normalized", probabilities="frequency", calibrate=False)
        u = se.uncertainty(X)
    assert math.isclose(u[0], math.log(2), rel_tol=1e-12) and np.isnan(u[1])


def test_calibrated_fit_predict_save_load(tmp_path):
    rows = ROWS * 3
    correct = [1, 0, 0, 1] * 3
    X = sampled(rows, correct=correct)
    se = SemanticEntropy(judge="normalized").fit(X)
    assert se.calibration_["a"] > 0 and not se.calibration_["slope_clipped"]
    p = se.predict_proba(X)
    u = se.uncertainty(X)
    assert p.shape == (12,) and ((p > 0) & (p < 1)).all()
    assert (np.argsort(-u, kind="stable") == np.argsort(p, kind="stable")).all()
    se.save(tmp_path / "se")
    back = SemanticEntropy.load(tmp_path / "se")
    assert back.get_params() == se.get_params()
    np.testing.assert_allclose(back.predict_proba(X), p, rtol=1e-12)
    # the fit is keyed by the samples too: other samples of the same answers, another key
    other = sampled([[(t + " x", lp) for t, lp in r] for r in rows], correct=correct)
    assert se.cache_key(X) != se.cache_key(other)


def test_parameters_are_checked_in_fit_with_one_line_errors():
    X = sampled(ROWS, correct=[1, 0, 0, 1])
    cases = [
        (SemanticEntropy(judge="normalized", probabilities="sum"), "probabilities must be one"),
        (SemanticEntropy(judge="normalized", estimate="direct"), "estimate must be one of"),
        (NumSemSets(judge="normalized", batch_size=0), "batch_size must be an int >= 1"),
        (NumSemSets(judge="deberta"), "Unknown entailment judge 'deberta'"),
    ]
    for est, msg in cases:
        with pytest.raises(ConfigError, match=msg) as e:
            est.fit(X)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="reads sampled answers"):
        NumSemSets(judge="normalized", calibrate=False).fit(X.gens)


def test_registry_entries():
    for name, cls, display in (
        ("num_sem_sets", NumSemSets, "NumSemSets"),
        ("semantic_entropy", SemanticEntropy, "Semantic Entropy"),
    ):
        spec = get_estimator(name)
        assert spec.cls is cls and spec.inputs == samples() and spec.display_name == display
        est = spec.make(judge="normalized")
        assert isinstance(est, cls) and est.judge == "normalized" and est.calibrate is True
    assert get_estimator("se").cls is SemanticEntropy
    assert NumSemSets().judge == SemanticEntropy().judge == "normalized"
