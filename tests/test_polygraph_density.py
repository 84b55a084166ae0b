"""Parity with lm-polygraph 0.7.0: the same statistics fed to its estimators and to knowlens's.

Agree to 1e-6: MahalanobisDistanceSeq and RelativeMahalanobisDistanceSeq (full-rank fits,
relative; as shipped lm-polygraph computes the distances in float32, which alone moves them
by up to ~2e-6, so the shipped code is held to 3e-6 and the same code computing in float64 to
1e-6), MaxTokenEntropyClaim
(one claim = the whole answer), MeanTokenEntropy, MaximumSequenceProbability, Perplexity,
Verbalized1S (on statements its regex reads) and PredictionRejectionArea (raw area, oracle).

Documented differences, tested by hand in tests/test_estimators_density.py:
- rank-deficient fits (m <= d): lm-polygraph inverts S + eps I in float64 and then uses it in
  float32 (the inverse's entries are ~1/eps), knowlens sums eigen-components in float64;
- lm-polygraph's normalised PRR uses the mean of 1,000 random shuffles as the random
  baseline, knowlens its exact expectation mean(y) (checked here to lie within the
  shuffles' Monte Carlo error);
- verbalised confidence: knowlens also reads percentages, fractions and words where the
  regex finds nothing (lm-polygraph: NaN).
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from _polygraph import polygraph
from knowlens import metrics
from knowlens._types import ActivationSet, Generation, GenerationSet
from knowlens.estimators import get_estimator
from knowlens.estimators._verbal import parse_confidence


def _acts(x: np.ndarray) -> ActivationSet:
    n, d = x.shape
    return ActivationSet(
        values=x.reshape(n, 1, 1, d).astype(np.float32),
        mask=np.ones((n, 1), bool),
        layers=[2],
        tokens="last",
        example_ids=[f"e{i}" for i in range(n)],
        positions=np.zeros((n, 1), int),
        meta={},
    )


def _features(seed: int = 0, n: int = 240, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Correlated Gaussian features, the correct answers shifted (float32, as extracted)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(float)
    mix = np.eye(d) + 0.3 * rng.normal(size=(d, d))  # well conditioned: float32 is exact enough
    x = rng.normal(size=(n, d)) @ mix + 2.0 + 1.5 * y[:, None]
    return x.astype(np.float32).astype(np.float64), y


class _Float64Torch:
    """torch, except that ``torch.float32`` is float64: lm-polygraph's Mahalanobis code casts
    its distances to ``torch.float32`` explicitly; with this it computes them in float64
    (its inverse covariance is still rounded to float32 once, by ``.float()``)."""

    float32 = torch.float64

    def __getattr__(self, name: str) -> object:
        return getattr(torch, name)


@pytest.fixture(params=["float32", "float64"])
def polygraph_md(request, monkeypatch):
    """lm-polygraph's Mahalanobis module as shipped (float32) and computing in float64, with
    the relative tolerance of each: float32 rounding alone moves its distances by ~1e-6."""
    mod = polygraph("estimators.mahalanobis_distance")
    if request.param == "float64":
        monkeypatch.setattr(mod, "torch", _Float64Torch())
        return mod, 1e-6
    return mod, 3e-6


def test_mahalanobis_matches_polygraph(polygraph_md):
    mod, rtol = polygraph_md
    x, _ = _features()
    tr, te = slice(0, 160), slice(160, None)
    est = get_estimator("mahalanobis").cls(layer=2, calibrate=False).fit(_acts(x[tr]))
    ours = est.uncertainty(_acts(x[te]))
    ref = mod.MahalanobisDistanceSeq()(
        {"embeddings_decoder": x[te], "train_embeddings_decoder": x[tr]}
    )
    np.testing.assert_allclose(ours, ref, rtol=rtol)
    assert est.jitter_ == {"fit": 1e-15} and ours.min() > 0.1


def test_relative_mahalanobis_matches_polygraph(polygraph_md):
    _, rtol = polygraph_md  # patches the distance functions the RMD module imports
    mod = polygraph("estimators.relative_mahalanobis_distance")
    x, y = _features(seed=1)
    tr, te = slice(0, 160), slice(160, None)
    est = get_estimator("relative_mahalanobis").cls(layer=2, calibrate=False)
    est.fit(_acts(x[tr]), y[tr])
    ours = est.uncertainty(_acts(x[te]))
    # foreground = correct training answers, background = all training answers
    with np.errstate(over="ignore"):  # its running min / max start at +-1e100 (float32: inf)
        ref = mod.RelativeMahalanobisDistanceSeq()(
            {
                "embeddings_decoder": x[te],
                "train_embeddings_decoder": x[tr][y[tr] == 1],
                "background_train_embeddings_decoder": x[tr],
            }
        )
    # a difference of two distances: the tolerance is relative to the larger one
    scale = np.maximum(est._distance(x[te], "foreground"), est._distance(x[te], "background"))
    assert (np.abs(ours - ref) <= rtol * scale).all()
    assert est.n_fit_ == {"foreground": int(y[tr].sum()), "background": 160}
    assert (ours < 0).any() and (ours > 0).any()  # a difference of distances, both signs


def _gens(seed: int = 0, n: int = 30) -> GenerationSet:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        k = int(rng.integers(1, 8))
        rows.append(
            Generation(
                example_id=f"g{i}",
                task="t",
                prompt=f"Q{i}?",
                answer="x" * k,
                prompt_ids=[1, 2],
                answer_ids=list(range(k)),
                token_logprobs=list(np.log(rng.uniform(0.05, 1.0, k))),
                token_entropies=list(rng.uniform(0.0, 3.0, k)),
                correct=bool(i % 2),
                grader="test",
            )
        )
    return GenerationSet(rows, {"task": "t"})


def test_token_statistics_match_polygraph():
    mp = polygraph("estimators.max_probability")
    te = polygraph("estimators.token_entropy")
    ppl = polygraph("estimators.perplexity")
    claim_te = polygraph("estimators.claim.token_entropy")
    gens = _gens()
    lls = [np.array(r.token_logprobs) for r in gens.rows]
    ents = [np.array(r.token_entropies) for r in gens.rows]
    claims = [[SimpleNamespace(aligned_token_ids=list(range(len(e))))] for e in ents]
    expected = {
        "max_sequence_prob": mp.MaximumSequenceProbability()({"greedy_log_likelihoods": lls}),
        "perplexity": ppl.Perplexity()({"greedy_log_likelihoods": lls}),
        "mean_entropy": te.MeanTokenEntropy()({"entropy": ents}),
        "max_entropy": np.array(
            [c[0] for c in claim_te.MaxTokenEntropyClaim()({"entropy": ents, "claims": claims})]
        ),
    }
    for name, ref in expected.items():
        est = get_estimator(name).cls().fit(gens)
        np.testing.assert_allclose(est.uncertainty(gens), ref, rtol=1e-12, err_msg=name)
        # uncalibrated P(correct) = exp(-u): the sequence / geometric-mean probability, ...
        raw = get_estimator(name).cls(calibrate=False).fit(gens).predict_proba(gens)
        np.testing.assert_allclose(raw, np.exp(-ref), rtol=1e-12, err_msg=name)


def test_verbalized_parse_matches_polygraph_regex():
    mod = polygraph("estimators.verbalized_1s")
    regex = r"Probability:\s*([0-9]*\.?[0-9]+)"
    said = [
        "Probability: 0.8",
        "Guess: Paris\nProbability: 0.35",
        "Probability:0.05 (fairly unsure)",
        "Probability: 1.0",
        "Probability: .5",
        "I do not know.",
        "Paris",
    ]
    ref = mod.Verbalized1S(confidence_regex=regex)({"greedy_texts": said})
    ours = np.array([np.nan if (c := parse_confidence(s)) is None else 1 - c for s in said])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # NaN where both read nothing
    assert np.isnan(ref[-2:]).all()
    # knowlens reads more than that regex (lm-polygraph: NaN for each of these)
    more = ["80%", "I'd say 70 percent", "4/5", "likely"]
    assert np.isnan(mod.Verbalized1S(confidence_regex=regex)({"greedy_texts": more})).all()
    assert [parse_confidence(s) for s in more] == [0.8, 0.7, 0.8, 0.75]
    assert re.search(regex, "Probability: 0.8")  # the regex itself is the one compared


def test_prr_matches_polygraph():
    mod = polygraph("ue_metrics.pred_rej_area")
    base = polygraph("ue_metrics.ue_metric")
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.6).astype(float)
    p = np.clip(0.3 * y + rng.random(300), 0, None)  # informative, no ties
    assert len(np.unique(p)) == len(p)
    prr = mod.PredictionRejectionArea()
    area = prr(-p, y)  # lm-polygraph: uncertainty = -confidence, target = correctness
    oracle = prr(-y, y)
    random = base.get_random_scores(prr, y)
    # knowlens's rejection-curve area equals lm-polygraph's, and so does the oracle's
    m = np.arange(1, len(y) + 1)
    ours_area = np.mean(np.cumsum(y[np.argsort(-p)]) / m)
    assert ours_area == pytest.approx(area, abs=1e-12)
    assert np.mean(np.cumsum(np.sort(y)[::-1]) / m) == pytest.approx(oracle, abs=1e-12)
    # normalised: the random baseline is the exact expectation mean(y) in knowlens
    assert metrics.prr(y, p) == pytest.approx((area - y.mean()) / (oracle - y.mean()), abs=1e-12)
    assert random == pytest.approx(y.mean(), abs=0.005)  # lm-polygraph's Monte Carlo estimate
    lp = base.normalize_metric(area, oracle, random)
    assert metrics.prr(y, p) == pytest.approx(lp, abs=0.02)
