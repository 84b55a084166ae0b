"""Sample-based estimators (knowlens.estimators._sampling) against hand computations on
tiny hand-built SampleSets; the model readers (EigenScore, P(True) with samples) against a
direct forward pass of the tiny model; calibration, keys and input checks."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from knowlens._types import Generation, GenerationSet, Sample, SampledGenerations, SampleSet
from knowlens.errors import ConfigError, DataError
from knowlens.estimators import clone, fit_cached, get_estimator
from knowlens.estimators._registry import samples
from knowlens.estimators._sampling import (
    PTRUE_SAMPLING_TEMPLATE,
    EigenScore,
    LexicalSimilarity,
    MonteCarloNormalizedSequenceEntropy,
    MonteCarloSequenceEntropy,
    PTrueSampling,
    eigenscore,
    samples_key,
)
from knowlens.estimators._text import encode
from test_experiments import second_model_dir, tasks  # noqa: F401


def _ids(tok, text, lp):
    """Real token ids with the tiny tokenizer, else one placeholder id per log-prob (or per
    word of a text-only sample; an empty text has no tokens)."""
    if tok is not None:
        return tok.encode(text, add_special_tokens=False)
    return list(range(1, 1 + (len(lp) if lp is not None else len(text.split()))))


def sampled(rows, *, correct=None, meta=None, prompts=None, tok=None, fmt=None):
    """SampledGenerations from ``rows``: per example a list of (text, token_logprobs) samples.
    With ``tok`` the texts are real token ids of the tiny tokenizer (``fmt`` renders
    prompts); otherwise ids are 1..L placeholders (estimators that read only log-probs /
    texts)."""
    gens, smps = [], []
    for i, samp in enumerate(rows):
        q = prompts[i] if prompts else f"Question {i}?"
        prompt = fmt(q) if fmt else f"Q: {q}\nA:"
        p_ids = encode(tok, prompt) if tok else [5, 6, 7]
        ids = [_ids(tok, t, lp) for t, lp in samp]
        lps = [
            list(lp) if lp is not None else [-0.5] * len(x)
            for (_, lp), x in zip(samp, ids, strict=True)
        ]
        y = None if correct is None else bool(correct[i])
        gens.append(
            Generation(
                example_id=f"e{i}",
                task="hand",
                prompt=prompt,
                answer=samp[0][0] if samp else "",
                prompt_ids=p_ids,
                answer_ids=ids[0] if ids else [],
                token_logprobs=lps[0] if lps else [],
                token_entropies=[0.0] * (len(ids[0]) if ids else 0),
                correct=y,
                grader="test",
                user_turn=q,
            )
        )
        smps.append(
            Sample(
                example_id=f"e{i}",
                task="hand",
                prompt=prompt,
                user_turn=q,
                prompt_ids=p_ids,
                texts=[t for t, _ in samp],
                answer_ids=ids,
                token_logprobs=lps,
                sampling_logprobs=lps,
                token_entropies=[[0.0] * len(x) for x in ids],
                stop_reasons=["eos"] * len(samp),
                correct=[None] * len(samp),
            )
        )
    m = {"k": max((len(r) for r in rows), default=0), "temperature": 1.0, **(meta or {})}
    return SampledGenerations(GenerationSet(gens, dict(m)), SampleSet(smps, dict(m)))


# -- hand computations ------------------------------------------------------------------------
def test_mc_entropy_and_normalised_entropy_by_hand():
    X = sampled(
        [
            [("a b", [-0.5, -1.0]), ("c", [-2.0]), ("", [])],  # the empty sample is left out
            [("x y z", [-0.1, -0.2, -0.3]), ("x", [-0.4])],
        ]
    )
    u = MonteCarloSequenceEntropy(calibrate=False).uncertainty(X)
    np.testing.assert_allclose(u, [(1.5 + 2.0) / 2, (0.6 + 0.4) / 2], rtol=0, atol=1e-12)
    un = MonteCarloNormalizedSequenceEntropy(calibrate=False).uncertainty(X)
    np.testing.assert_allclose(un, [(0.75 + 2.0) / 2, (0.2 + 0.4) / 2], rtol=0, atol=1e-12)
    # uncalibrated P(correct) = exp(-u): the geometric mean of the sequence probabilities
    p = MonteCarloSequenceEntropy(calibrate=False).fit(X).predict_proba(X)
    np.testing.assert_allclose(p, np.exp(-u), rtol=1e-12)
    assert math.isclose(p[0], math.sqrt(math.exp(-1.5) * math.exp(-2.0)), rel_tol=1e-12)


def test_example_without_nonempty_samples_is_nan_with_a_warning():
    X = sampled([[("", []), ("", [])], [("a", [-1.0])]])
    with pytest.warns(UserWarning, match=re.escape("1 of 2 examples have no non-empty sample")):
        u = MonteCarloSequenceEntropy(calibrate=False).uncertainty(X)
    assert np.isnan(u[0]) and u[1] == pytest.approx(1.0)


def test_lexical_similarity_by_hand():
    X = sampled(
        [
            [("the cat sat", None), ("the cat", None), ("a dog", None)],
            [("Paris.", None), ("paris", None), ("", None)],  # tokeniser: lower case, no punct.
            [("Rome", None)],  # one sample: no pair
        ]
    )
    with pytest.warns(UserWarning, match="1 of 3 examples have fewer than 2 non-empty"):
        u = LexicalSimilarity(calibrate=False).uncertainty(X)
    # ROUGE-L("the cat sat", "the cat"): LCS 2, P = 2/2, R = 2/3, F = 2PR/(P+R) = 0.8;
    # the other two pairs share no token
    np.testing.assert_allclose(u[:2], [-0.8 / 3, -1.0], rtol=0, atol=1e-12)
    assert np.isnan(u[2])
    u1 = LexicalSimilarity(metric="rouge1", calibrate=False).uncertainty(X.subset(np.array([0])))
    # ROUGE-1 equals ROUGE-L here (unigrams "the", "cat" in order)
    np.testing.assert_allclose(u1, [-0.8 / 3], atol=1e-12)
    # uncalibrated P(correct) = the mean similarity itself
    est = LexicalSimilarity(calibrate=False).fit(X.subset(np.array([0, 1])))
    np.testing.assert_allclose(est.predict_proba(X.subset(np.array([0, 1]))), [0.8 / 3, 1.0])
    with pytest.raises(ConfigError, match="allowed rougeL, rouge1, rouge2"):
        LexicalSimilarity(metric="bleu", calibrate=False).fit(X)


def test_eigenscore_formula_by_hand():
    rng = np.random.default_rng(0)
    for k, d in ((1, 4), (3, 8), (5, 3)):
        z = rng.normal(size=(k, d))
        j = np.eye(d) - np.ones((d, d)) / d
        cov = z @ j @ z.T + 1e-3 * np.eye(k)
        want = np.linalg.slogdet(cov)[1] / k  # (1/K) log det
        assert eigenscore(z, 1e-3) == pytest.approx(want, rel=1e-10, abs=1e-10)
    # K identical embeddings: one eigenvalue |z_c|^2 + alpha, K-1 equal to alpha
    z = np.tile(rng.normal(size=(1, 6)), (4, 1))
    zc = z[0] - z[0].mean()
    want = (np.log(4 * zc @ zc + 1e-3) + 3 * np.log(1e-3)) / 4
    assert eigenscore(z, 1e-3) == pytest.approx(want, rel=1e-9)


# -- model readers on the tiny model ----------------------------------------------------------
def tiny_sampled(model, n=6, k=3, seed=0, correct=None):
    from test_estimators_model import CITIES

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        rows.append([(" " + CITIES[int(rng.integers(0, len(CITIES)))], None) for _ in range(k)])
    prompts = [f"What is the capital of {CITIES[i % 4 + 4]}?" for i in range(n)]
    return sampled(
        rows,
        correct=correct if correct is not None else [i % 2 for i in range(n)],
        prompts=prompts,
        tok=model.tokenizer,
        fmt=model.format_prompt,
        meta={"fingerprint": model.fingerprint, "task": "hand"},
    )


def _hidden(model, ids, layer):
    with torch.inference_mode():
        out = model.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer][0, -1].double().numpy()


def test_eigenscore_reads_the_middle_layer_last_token(tiny_model):
    X = tiny_sampled(tiny_model)
    est = EigenScore(model=tiny_model, calibrate=False, progress=False)
    assert est.resolved_layer() == tiny_model.n_layers // 2 == 1
    u = est.uncertainty(X)
    for i, s in enumerate(X.samples.rows):
        z = np.stack([_hidden(tiny_model, [*s.prompt_ids, *a], 1) for a in s.answer_ids])
        assert u[i] == pytest.approx(eigenscore(z, 1e-3), abs=1e-4), i
        np.testing.assert_allclose(est.embeddings(X)[i], z, rtol=1e-4, atol=1e-5)
    # uncalibrated map is sigmoid(-u) (u is a log-volume of either sign)
    p = est.fit(X).predict_proba(X)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(u)), rtol=1e-12)
    est2 = EigenScore(model=tiny_model, layer=2, calibrate=False, progress=False)
    s0 = X.samples.rows[0]
    z2 = np.stack([_hidden(tiny_model, [*s0.prompt_ids, *a], 2) for a in s0.answer_ids])
    assert est2.uncertainty(X)[0] == pytest.approx(eigenscore(z2), abs=1e-4)
    with pytest.raises(ConfigError, match=re.escape("EigenScore(layer=9): out of range")):
        EigenScore(model=tiny_model, layer=9, progress=False).uncertainty(X)


def _letter_probs(model, text):
    """Two-way softmax over the A / B letter variants after ``text``: direct forward."""
    from knowlens.estimators import label_token_ids

    tok = model.tokenizer
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([encode(tok, text)])).logits[0, -1]
    lab = label_token_ids(tok, ("A", "B"))
    per = torch.stack([torch.logsumexp(logits[ids], 0) for ids in lab])
    return torch.softmax(per.double(), 0).numpy()


def test_p_true_sampling_prompt_and_value_by_hand(tiny_model):
    X = tiny_sampled(tiny_model, n=3)
    est = PTrueSampling(model=tiny_model, calibrate=False, progress=False)
    texts = est.texts(X)
    g, s = X.gens.rows[1], X.samples.rows[1]
    body = (
        f"Question: {g.user_turn}\nHere are some brainstormed ideas: "
        + "\n".join(t.strip() for t in s.texts)
        + f"\nPossible Answer: {g.answer.strip()}\nIs the possible answer:\n (A) True\n"
        " (B) False\nThe possible answer is:"
    )
    assert body == PTRUE_SAMPLING_TEMPLATE.format(
        question=g.user_turn,
        ideas="\n".join(t.strip() for t in s.texts),
        answer=g.answer.strip(),
        first="True",
        second="False",
    )
    assert tiny_model.has_chat_template
    assert texts[1] == tiny_model.format_prompt(body) + "("
    assert (
        texts[3 + 1]
        == tiny_model.format_prompt(body.replace("(A) True\n (B) False", "(A) False\n (B) True"))
        + "("
    )
    u = est.uncertainty(X)
    for i in range(3):
        p_true = 0.5 * (
            _letter_probs(tiny_model, texts[i])[0] + _letter_probs(tiny_model, texts[3 + i])[1]
        )
        assert u[i] == pytest.approx(-math.log(p_true), abs=1e-5), i
    np.testing.assert_allclose(est.fit(X).predict_proba(X), np.exp(-u), rtol=1e-12)


# -- calibration, keys, checks ----------------------------------------------------------------
def test_calibrated_predict_proba_is_monotone_in_uncertainty():
    rng = np.random.default_rng(1)
    rows, y = [], []
    for i in range(40):
        conf = i % 2  # correct answers get more probable samples
        lp = -rng.exponential(0.3 if conf else 1.5, size=(4, 3))
        rows.append([(f"s{j}", list(lp[j])) for j in range(4)])
        y.append(conf)
    X = sampled(rows, correct=y)
    for cls in (MonteCarloSequenceEntropy, MonteCarloNormalizedSequenceEntropy):
        est = cls().fit(X)
        assert est.calibration_["a"] > 0 and not est.calibration_["slope_clipped"]
        u, p = est.uncertainty(X), est.predict_proba(X)
        order = np.argsort(u)
        assert (np.diff(p[order]) <= 1e-12).all() and p.min() < 0.5 < p.max()
        a, b = est.calibration_["a"], est.calibration_["b"]
        np.testing.assert_allclose(p, 1 / (1 + np.exp(-(a * -u + b))), rtol=1e-12)
    # an inverted relation clips the slope: constant P = training accuracy
    Xi = sampled(rows, correct=[1 - v for v in y])
    est = MonteCarloSequenceEntropy().fit(Xi)
    assert est.calibration_["slope_clipped"] and est.calibration_["a"] == 0.0
    np.testing.assert_allclose(est.predict_proba(Xi), 0.5, atol=1e-6)


def test_fit_is_keyed_by_the_samples_and_cached_once():
    rows = [[("a", [-0.1 * (i + 1)]), ("b", [-0.2])] for i in range(6)]
    X = sampled(rows, correct=[i % 2 for i in range(6)])
    other = sampled(
        [[("a", [-0.1 * (i + 1)]), ("b c", [-0.2, -0.3])] for i in range(6)],
        correct=[i % 2 for i in range(6)],
    )
    assert samples_key(X.samples) != samples_key(other.samples)
    est = MonteCarloSequenceEntropy()
    assert est.cache_key(X, X.gens) != est.cache_key(other, other.gens)
    fitted = fit_cached(est, X, X.gens)
    again = fit_cached(MonteCarloSequenceEntropy(), X, X.gens)
    assert not fitted.from_cache_ and again.from_cache_ and again.cache_key() == est.cache_key()
    np.testing.assert_allclose(again.predict_proba(X), fitted.predict_proba(X), atol=1e-12)
    # calibrate=False learns nothing: no training-data key
    assert MonteCarloSequenceEntropy(calibrate=False).fit(X).train_key_ is None
    assert clone(est).get_params() == {"calibrate": True}


def test_inputs_are_checked():
    X = sampled([[("a", [-1.0])], [("b", [-1.0])]], correct=[0, 1])
    with pytest.raises(DataError, match=r"reads sampled answers: pass SampledGenerations"):
        MonteCarloSequenceEntropy().fit(X.gens)
    swapped = SampledGenerations.__new__(SampledGenerations)  # bypass its own check
    swapped.gens, swapped.samples = X.gens, SampleSet(X.samples.rows[::-1], {})
    with pytest.raises(DataError, match="samples are not aligned to the answers"):
        MonteCarloSequenceEntropy(calibrate=False).uncertainty(swapped)
    with pytest.raises(ConfigError, match="runs a model: pass model="):
        EigenScore().fit(X)


def test_registry_entries():
    want = {
        "mc_entropy": (MonteCarloSequenceEntropy, "MC sequence entropy", False),
        "mc_normalized_entropy": (
            MonteCarloNormalizedSequenceEntropy,
            "MC normalised sequence entropy",
            False,
        ),
        "lexical_similarity": (LexicalSimilarity, "Lexical similarity (ROUGE-L)", False),
        "eigenscore": (EigenScore, "EigenScore", True),
        "p_true_sampling": (PTrueSampling, "P(True) with samples", True),
    }
    for name, (cls, label, runs_model) in want.items():
        spec = get_estimator(name)
        assert spec.cls is cls and spec.display_name == label and cls.estimator_name == name
        assert spec.inputs == samples(model=runs_model)
        assert spec.inputs.describe() == "samples" + (" + model" if runs_model else "")
        assert get_estimator(cls.__name__) is spec
    est = get_estimator("eigenscore").make(model="M", seed=3)
    assert est.model == "M" and est.progress is False and est.layer is None


# -- with knowlens.sample: registry, bench, analyses -------------------------------------------
def sampled_gens(model, gens, k=3, seed=0):
    """``gens`` with ``k`` real samples of ``model`` (knowlens.sample; 3 new tokens)."""
    import knowlens as kl

    smp = kl.sample(model, gens, k=k, seed=seed, max_new_tokens=3, progress=False)
    return SampledGenerations.of(gens, smp)


SAMPLE_ESTIMATORS = [
    "mc_entropy",
    "mc_normalized_entropy",
    "lexical_similarity",
    "eigenscore",
    "p_true_sampling",
]


def test_registry_make_fit_predict_on_real_samples(tiny_model):
    from test_estimators_model import tiny_gens

    gens = tiny_gens(tiny_model, n=8)
    X = sampled_gens(tiny_model, gens)
    assert X.samples.k == 3 and X.samples.meta["fingerprint"] == tiny_model.fingerprint
    for name in SAMPLE_ESTIMATORS:
        est = get_estimator(name).make(model=tiny_model, seed=0)
        fitted = fit_cached(est, X, gens.correct)
        p = fitted.predict_proba(X)
        assert p.shape == (8,) and ((p > 0) & (p < 1)).all(), name
        assert fitted.calibration_ is not None and fitted.calibration_["a"] >= 0, name
    # mc_entropy's value from the SampleSet by hand
    u = get_estimator("mc_entropy").make().uncertainty(X)
    want = [
        -np.mean([sum(lp) for lp, a in zip(s.token_logprobs, s.answer_ids, strict=True) if a])
        for s in X.samples.rows
    ]
    np.testing.assert_allclose(u, want, rtol=0, atol=1e-9)


def _count_samples(monkeypatch):
    import knowlens.generation as gen

    calls = []
    real = gen.sample

    def counting(model, source, **kw):
        calls.append((model.target_id, len(source), kw["k"]))
        return real(model, source, **kw)

    # the local executor calls the generation stage's sample (imported at call time)
    monkeypatch.setattr(gen, "sample", counting)
    return calls


def test_bench_samples_once_per_answers_from_the_answering_model(
    tasks,  # noqa: F811
    tiny_model_dir,
    second_model_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    import knowlens as kl
    from knowlens.experiments import RunContext
    from knowlens.experiments._common import decided, generations, load_split
    from knowlens.experiments._estimators import EstimatorBench, SamplingSettings, TrainSettings
    from knowlens.experiments.topic_calibration import Config

    calls = _count_samples(monkeypatch)
    ctx = RunContext(run_dir=tmp_path, cfg=Config(models=[str(tiny_model_dir)]), seed=0)
    a, b = ctx.load_model(str(tiny_model_dir)), ctx.load_model(str(second_model_dir))
    train = decided(generations(ctx, a, load_split(tasks[0], "train", None, 0), "train"))
    ev_b = decided(generations(ctx, b, load_split(tasks[1], "test", None, 0), "test"))
    sampling = SamplingSettings(k=3, temperature=0.7, seed=5)
    bench = EstimatorBench(ctx, TrainSettings(), 0, sampling)
    fitted = [bench.fit(n, a, train) for n in ("mc_entropy", "lexical_similarity", "eigenscore")]
    assert calls == [(a.target_id, len(train), 3)]  # one draw shared by the three
    ps = [bench.score(f, ev_b) for f in fitted]  # a judges b's answers: b's samples
    assert calls[1:] == [(b.target_id, len(ev_b), 3)]
    direct = SampledGenerations.of(
        ev_b, kl.sample(b, ev_b, k=3, temperature=0.7, seed=5, progress=False)
    )
    for f, p in zip(fitted, ps, strict=True):
        np.testing.assert_allclose(p, f.estimator.predict_proba(direct), rtol=0, atol=1e-9)
    assert fitted[2].estimator.model is a  # EigenScore reads b's samples with a's weights
    # the answering model must be one the analysis loaded (or passed)
    orphan = GenerationSet(ev_b.rows, {**ev_b.meta, "target_id": "nobody"})
    orphan.meta.pop("model_fingerprint", None)
    with pytest.raises(ConfigError, match="Samples must come from the model that answered"):
        bench.score(fitted[0], orphan)
    np.testing.assert_allclose(bench.score(fitted[0], orphan, answerer=b), ps[0], atol=1e-9)
    with pytest.raises(ConfigError, match=r"has no sampling settings; .*'sampling:' section"):
        EstimatorBench(ctx, TrainSettings(), 0).fit("mc_entropy", a, train)


def test_sample_estimators_run_in_topic_calibration_from_a_config(
    tasks,  # noqa: F811
    tiny_model,
    tiny_model_dir,
    tmp_path,
    monkeypatch,
):
    import json

    import knowlens as kl
    from knowlens import metrics
    from knowlens.experiments import run
    from knowlens.experiments._common import decided
    from knowlens.experiments._estimators import concat
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    calls = _count_samples(monkeypatch)
    cfg = {
        "name": "samp",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],
        "eval_task": tasks[1],
        "estimators": SAMPLE_ESTIMATORS,
        "sampling": {"k": 3, "temperature": 1.0, "top_p": 0.9, "seed": 1, "max_new_tokens": 4},
        "limit": 12,
        "n_bootstrap": 20,
        "device": "cpu",
        "min_n": 5,
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    t = res.tables["topic_calibration"]["topic_calibration"]
    labels = {get_estimator(n).display_name for n in SAMPLE_ESTIMATORS}
    assert set(t["estimator"]) == labels
    assert len(calls) == 2  # train and eval answers, each sampled once for all five
    assert all(c[0] == tiny_model.target_id and c[2] == 3 for c in calls)

    train = concat(
        [decided(generate(tiny_model, load_task(tasks[0], "train", 12), progress=False))]
    )
    ev = decided(generate(tiny_model, load_task(tasks[1], "test", 12), progress=False))
    kw = {"k": 3, "temperature": 1.0, "top_p": 0.9, "seed": 1, "max_new_tokens": 4}
    Xtr = SampledGenerations.of(train, kl.sample(tiny_model, train, progress=False, **kw))
    Xev = SampledGenerations.of(ev, kl.sample(tiny_model, ev, progress=False, **kw))
    p = MonteCarloSequenceEntropy().fit(Xtr, train.correct).predict_proba(Xev)
    s = res.tables["topic_calibration"]["scores"]
    got = s[s["estimator"] == "MC sequence entropy"]["p"].to_numpy()
    np.testing.assert_allclose(got, p, rtol=1e-9, atol=1e-12)
    pooled = t[(t["estimator"] == "MC sequence entropy") & (t["topic"] == "(all)")]
    assert pooled.set_index("metric").loc["auroc", "value"] == pytest.approx(
        metrics.auroc(ev.correct, p)
    )
    # a rerun with other bootstrap settings reuses the five fitted estimators
    res2 = run(res.run_dir / "config.yaml", n_bootstrap=10, progress=False)
    man = json.loads((res2.run_dir / "manifest.json").read_text())
    assert man["analyses"]["topic_calibration"]["cache"]["estimators"] == {"hits": 5, "misses": 0}


def test_sampling_section_is_validated(tiny_model_dir):
    from knowlens.experiments import parse_config

    base = {"analysis": "estimator_transfer", "models": [str(tiny_model_dir)]}
    rc = parse_config({**base, "estimators": ["mc_entropy"], "sampling": {"k": 4}})
    assert rc.analyses[0].sampling.k == 4 and rc.analyses[0].sampling.temperature == 1.0
    with pytest.raises(ConfigError, match="temperature") as e:
        parse_config({**base, "sampling": {"temperature": 0}})
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="kk"):
        parse_config({**base, "sampling": {"kk": 4}})


def test_estimator_transfer_scores_each_model_with_its_own_samples(
    tasks,  # noqa: F811
    tiny_model_dir,
    second_model_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from knowlens.experiments import run
    from knowlens.models import load_model

    calls = _count_samples(monkeypatch)
    cfg = {
        "name": "samp_tr",
        "analysis": "estimator_transfer",
        "models": [str(tiny_model_dir), str(second_model_dir)],
        "tasks": [tasks[0]],
        "estimators": ["mc_entropy", "eigenscore"],
        "sampling": {"k": 2, "seed": 3},
        "limit": 12,
        "n_bootstrap": 0,
        "device": "cpu",
        "min_n": 2,
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    t = res.tables["estimator_transfer"]["estimator_transfer"]
    # estimators x models x trained_on, per metric
    assert len(t) == 2 * 2 * 2 * t["metric"].nunique()
    assert t.loc[t["metric"] == "auroc", "value"].notna().all()
    a = load_model(tiny_model_dir, device="cpu").target_id
    b = load_model(second_model_dir, device="cpu").target_id
    # train and test answers of each model, each sampled once (from that model) for the
    # 2 estimators x 2 readers: a reader never samples another model's answers itself
    assert sorted(c[0] for c in calls) == sorted([a, a, b, b]) and all(c[2] == 2 for c in calls)
    # MC entropy reads no model: its uncertainty of b's answers is the same whoever reads,
    # so the two readers' scores differ only through their calibrations (a monotone map)
    s = res.tables["estimator_transfer"]["scores"]
    mc = s[(s["estimator"] == "MC sequence entropy") & (s["model"] == str(second_model_dir))]
    by = {k: g.set_index("example_id")["p"] for k, g in mc.groupby("trained_on")}
    pa, pb = by[str(tiny_model_dir)], by[str(second_model_dir)].loc[by[str(tiny_model_dir)].index]
    order = np.argsort(pa.to_numpy(), kind="stable")
    assert (np.diff(pb.to_numpy()[order]) >= -1e-12).all() or (np.ptp(pa) == 0)
