"""knowlens's sample estimators against lm-polygraph 0.7.0's classes fed the same statistics.

Equal to 1e-6: MonteCarloSequenceEntropy, MonteCarloNormalizedSequenceEntropy,
LexicalSimilarity (rougeL / rouge1 / rouge2), EigenScore (also its embedding: knowlens's
teacher-forced middle-layer last-token state equals lm-polygraph's
``get_embeddings_from_output`` of a generate() run). PTrueSampling differs in definition
(lm-polygraph: -log p("True") over the vocabulary, one option order, samples joined by ", ";
knowlens: letter softmax, order reversal, one sample per line): the test checks that the
two agree as the same function of P(True), and test_estimators_sampling.py checks knowlens's
value by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _polygraph import polygraph
from knowlens.estimators._sampling import (
    EigenScore,
    LexicalSimilarity,
    MonteCarloNormalizedSequenceEntropy,
    MonteCarloSequenceEntropy,
    PTrueSampling,
    eigenscore,
)
from test_estimators_sampling import sampled, tiny_sampled

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _random_sampled(seed=0, n=12):
    rng = np.random.default_rng(seed)
    words = ["paris", "berlin", "the", "capital", "is", "rome", "city", "of", "france"]
    rows = []
    for _ in range(n):
        k = int(rng.integers(2, 6))
        samp = []
        for _ in range(k):
            m = int(rng.integers(1, 6))
            text = " ".join(rng.choice(words, m))
            samp.append((text, list(-rng.exponential(0.8, m))))
        rows.append(samp)
    return sampled(rows)


def _stats(X):
    """lm-polygraph's sampler statistics of the same samples."""
    rows = X.samples.rows
    return {
        "sample_log_probs": [[float(np.sum(lp)) for lp in r.token_logprobs] for r in rows],
        "sample_tokens": [r.answer_ids for r in rows],
        "sample_texts": [r.texts for r in rows],
    }


def test_mc_entropies_match_polygraph():
    X = _random_sampled()
    st = _stats(X)
    mc = polygraph("estimators.monte_carlo_sequence_entropy").MonteCarloSequenceEntropy()
    mcn = polygraph(
        "estimators.monte_carlo_normalized_sequence_entropy"
    ).MonteCarloNormalizedSequenceEntropy()
    np.testing.assert_allclose(
        MonteCarloSequenceEntropy(calibrate=False).uncertainty(X), mc(st), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        MonteCarloNormalizedSequenceEntropy(calibrate=False).uncertainty(X),
        mcn(st),
        rtol=0,
        atol=1e-6,
    )


def test_lexical_similarity_matches_polygraph():
    X = _random_sampled(seed=3)
    LS = polygraph("estimators.lexical_similarity").LexicalSimilarity
    for metric in ("rougeL", "rouge1", "rouge2"):
        want = LS(metric=metric)(_stats(X))
        got = LexicalSimilarity(metric=metric, calibrate=False).uncertainty(X)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=metric)
        assert (got <= 0).all() and (got >= -1).all()


def test_eigenscore_matches_polygraph_on_the_same_embeddings(tiny_model):
    ES = polygraph("estimators.eigenscore").EigenScore
    rng = np.random.default_rng(0)
    embs = [rng.normal(size=(k, 16)) for k in (2, 3, 5, 1)]
    np.testing.assert_allclose(
        [eigenscore(z, 1e-3) for z in embs], ES(alpha=1e-3)({"sample_embeddings": embs}), atol=1e-6
    )
    X = tiny_sampled(tiny_model)
    est = EigenScore(model=tiny_model, calibrate=False, progress=False)
    embs = est.embeddings(X)
    np.testing.assert_allclose(
        est.uncertainty(X), ES()({"sample_embeddings": embs}), rtol=0, atol=1e-6
    )


def test_eigenscore_embedding_is_polygraphs_generation_embedding(tiny_model):
    """lm-polygraph takes, from generate(output_hidden_states=True), the middle layer at the
    last step: the position of the last token fed to the model. For a sample that ended
    with a stop token (not fed, not in knowlens's answer ids) that is knowlens's last answer
    token: here the last generated token plays the stop token."""
    emb = polygraph("stat_calculators.embeddings")
    tok = tiny_model.tokenizer
    prompt = tiny_model.format_prompt("What is the capital of France?")
    from knowlens.estimators._text import encode

    p_ids = encode(tok, prompt)
    torch.manual_seed(0)
    with torch.inference_mode():
        out = tiny_model.model.generate(
            input_ids=torch.tensor([p_ids]),
            attention_mask=torch.ones(1, len(p_ids), dtype=torch.long),
            do_sample=True,
            max_new_tokens=6,
            min_new_tokens=6,
            output_hidden_states=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    layer = tiny_model.n_layers // 2
    _, tok_emb = emb.get_embeddings_from_output(
        out, {"input_ids": torch.tensor([p_ids])}, "CausalLM", level="token", hidden_layer=layer
    )
    want = tok_emb[0, -1].double().numpy()
    answer = out.sequences[0, len(p_ids) : -1].tolist()  # last token = the "stop" token
    X = sampled(
        [[(tok.decode(answer), None)]],
        tok=tok,
        fmt=lambda q: prompt,
        prompts=["q"],
        meta={"fingerprint": tiny_model.fingerprint},
    )
    X.samples.rows[0].answer_ids[0] = answer  # exactly the generated ids
    got = EigenScore(model=tiny_model, calibrate=False, progress=False).embeddings(X)[0][0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_p_true_sampling_agrees_with_polygraph_as_a_function_of_p_true(tiny_model):
    X = tiny_sampled(tiny_model, n=4)
    est = PTrueSampling(model=tiny_model, calibrate=False, progress=False)
    p = est.p_true(X)
    PT = polygraph("estimators.p_true_sampling").PTrueSampling
    np.testing.assert_allclose(
        est.uncertainty(X), PT()({"p_true_sampling": np.log(p)}), rtol=0, atol=1e-6
    )
