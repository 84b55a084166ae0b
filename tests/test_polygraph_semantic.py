"""Parity of NumSemSets / SemanticEntropy with lm-polygraph 0.7.0 fed the same statistics.

lm-polygraph computes both from ``sample_texts``, ``sample_log_probs`` (sum of the sampled
tokens' log-probs), the NLI matrices ``semantic_matrix_entail`` / ``semantic_matrix_contra``
/ ``semantic_matrix_classes`` and the classes of ``SemanticClassesCalculator``
(``semantic_classes_entail``). Here knowlens's judge decisions become those matrices
(entailed -> class ``entailment_id``, P(entail) 1 > P(contra) 0), so each side clusters
and scores the same decisions:

* clusters: lm-polygraph's ``SemanticClassesCalculator`` gives knowlens's greedy clusters;
* ``SemanticEntropy`` (``"sum"`` / ``"frequency"``, ``"mean"``): equal to 1e-6;
* ``NumSemSets``: equal when the equivalence is transitive; lm-polygraph counts connected
  components, knowlens greedy clusters, so on a non-transitive relation they differ
  (documented in ``NumSemSets``; checked against the hand values);
* ``estimate="rao"`` (Farquhar et al.) has no lm-polygraph counterpart ("direct" sums over
  samples, not clusters): tested by hand in test_estimators_semantic.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from _polygraph import polygraph
from knowlens.estimators import _entailment as ent
from knowlens.estimators._semantic import NumSemSets, SemanticEntropy
from test_estimators_semantic import CountingJudge, sampled

ENT_ID = 2

# five examples, K = 5; random-ish log-probs; texts with repeats and case/punctuation variants
TEXTS = [
    ["Paris", "paris.", "Paris", "Lyon", "PARIS"],
    ["Rome", "Milan", "Turin", "Naples", "Rome"],
    ["Bern", "Bern", "Bern", "Bern", "Bern"],
    ["Oslo", "Bergen", "oslo", "Bergen!", "Oslo"],
    ["Lima", "Cusco", "Lima.", "Quito", "Cusco"],
]


def _rows(seed=0):
    rng = np.random.default_rng(seed)
    return [
        [(t, list(-rng.gamma(1.0, 0.7, size=int(rng.integers(1, 4))))) for t in row]
        for row in TEXTS
    ]


def _matrices(judge, texts):
    """lm-polygraph's statistics from knowlens's decisions: [b, i, j] = text i entails j."""
    k = len(texts[0])
    E = np.zeros((len(texts), k, k))
    for b, row in enumerate(texts):
        for i in range(k):
            E[b, i] = judge.entails([row[i]] * k, row)
    return {
        "sample_texts": texts,
        "semantic_matrix_entail": E,
        "semantic_matrix_contra": 1.0 - E,
        "semantic_matrix_classes": np.where(E > 0, ENT_ID, 0),
        "entailment_id": ENT_ID,
    }


def _polygraph_stats(judge, X):
    texts = [list(s.texts) for s in X.samples.rows]
    stats = _matrices(judge, texts)
    classes = polygraph("stat_calculators.semantic_classes").SemanticClassesCalculator()
    stats.update(classes(stats, texts=[""] * len(texts), model=None))
    stats["sample_log_probs"] = [
        [float(np.sum(lp)) for lp in s.token_logprobs] for s in X.samples.rows
    ]
    return stats


def test_clusters_equal_polygraph_semantic_classes():
    X = sampled(_rows())
    judge = ent.load_judge("normalized")
    stats = _polygraph_stats(judge, X)
    ours = NumSemSets(judge="normalized", calibrate=False).clusters(X)
    theirs = stats["semantic_classes_entail"]["sample_to_class"]
    assert [[theirs[b][j] for j in range(5)] for b in range(len(TEXTS))] == ours
    assert ours[0] == [0, 0, 0, 1, 0] and ours[3] == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("probabilities", ["likelihood", "frequency"])
def test_semantic_entropy_equals_polygraph(seed, probabilities):
    X = sampled(_rows(seed))
    stats = _polygraph_stats(ent.load_judge("normalized"), X)
    pg = polygraph("estimators.semantic_entropy").SemanticEntropy(
        class_probability_estimation="sum" if probabilities == "likelihood" else "frequency"
    )
    ours = SemanticEntropy(
        judge="normalized", probabilities=probabilities, calibrate=False
    ).uncertainty(X)
    theirs = pg(stats)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)
    assert np.ptp(ours) > 0.1  # the examples differ: not a constant agreeing by accident


def test_num_sem_sets_equals_polygraph_for_a_transitive_judge():
    X = sampled(_rows())
    stats = _polygraph_stats(ent.load_judge("normalized"), X)
    pg = polygraph("estimators.num_sem_sets").NumSemSets()
    ours = NumSemSets(judge="normalized", calibrate=False).uncertainty(X)
    np.testing.assert_allclose(ours, pg(stats), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ours, [2, 4, 1, 2, 3])


def test_num_sem_sets_differs_from_polygraph_components_on_a_non_transitive_judge(monkeypatch):
    # a~b, b~c, a!~c: greedy clusters {a, b}, {c}; lm-polygraph's graph has one component
    eq = {frozenset("ab"), frozenset("bc")}
    judge = CountingJudge(lambda x, y: x == y or frozenset((x, y)) in eq)
    judge.spec = "normalized"
    monkeypatch.setitem(ent._JUDGES, "normalized", judge)
    X = sampled([[("a", [-1.0]), ("b", [-1.0]), ("c", [-1.0])]])
    stats = _polygraph_stats(judge, X)
    assert NumSemSets(judge="normalized", calibrate=False).uncertainty(X).tolist() == [2.0]
    assert polygraph("estimators.num_sem_sets").NumSemSets()(stats).tolist() == [1.0]
    # lm-polygraph's own semantic classes (used by its SemanticEntropy) are greedy too
    assert stats["semantic_classes_entail"]["class_to_sample"][0] == [[0, 1], [2]]
