"""Estimators that run a model, on the tiny random Llama (tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knowlens._types import Generation, GenerationSet
from knowlens.errors import ConfigError, KnowlensError
from knowlens.estimators import (
    LogisticProbe,
    LoRAProbe,
    LoRAPrompt,
    MLPProbe,
    PTrue,
    ZeroShotClassifier,
    fit_cached,
    label_token_ids,
    load,
    retokenize,
)
from knowlens.estimators._query import ZSC_TEMPLATE
from knowlens.estimators._text import encode, user_turn

CITIES = ["Paris", "Berlin", "Rome", "Lyon", "France", "Germany", "Italy", "42"]


def tiny_gens(model, n=12, seed=0, preamble=""):
    """Chat-templated prompts + answers tokenised exactly like the generation stage would."""
    rng = np.random.default_rng(seed)
    tok = model.tokenizer
    rows = []
    for i in range(n):
        q = f"{preamble}What is the capital of {CITIES[i % 4 + 4]}?"
        ans = " " + CITIES[int(rng.integers(0, 4))]
        prompt = model.format_prompt(q)
        ans_ids = tok.encode(ans, add_special_tokens=False)
        rows.append(
            Generation(
                example_id=f"e{i}",
                task="tiny",
                prompt=prompt,
                answer=ans,
                prompt_ids=encode(tok, prompt),
                answer_ids=ans_ids,
                token_logprobs=list(-rng.exponential(1, len(ans_ids))),
                token_entropies=list(rng.exponential(1, len(ans_ids))),
                correct=bool(i % 2),
                grader="test",
                exact_answer=ans.strip(),
                exact_answer_chars=(1, len(ans)),
                exact_answer_tokens=(0, len(ans_ids)),
            )
        )
    return GenerationSet(rows, {"fingerprint": model.fingerprint, "task": "tiny"})


def _snapshot(model):
    return {k: v.clone() for k, v in model.model.state_dict().items()}


def _assert_untouched(model, before):
    after = model.model.state_dict()
    assert set(after) == set(before), "adapter parameters were left on the shared model"
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert not any("lora" in n for n, _ in model.model.named_modules())


def test_zero_shot_classifier_matches_manual_softmax(tiny_model):
    gens = tiny_gens(tiny_model, n=5)
    zsc = ZeroShotClassifier(model=tiny_model, batch_size=2, progress=False).fit(gens)
    p = zsc.predict_proba(gens)
    assert p.shape == (5,) and ((p > 0) & (p < 1)).all()
    # by hand, one unpadded example at a time
    tok = tiny_model.tokenizer
    (i_ids, ii_ids) = label_token_ids(tok, ("i", "ii"))
    for k in (0, 3):
        g = gens[k]
        q = ZSC_TEMPLATE.format(
            question=f"What is the capital of {CITIES[k % 4 + 4]}?", answer=g.answer.strip()
        )
        ids = torch.tensor([encode(tok, tiny_model.format_prompt(q))])
        with torch.no_grad():
            logits = tiny_model.model(ids).logits[0, -1]
        a = torch.logsumexp(logits[i_ids], 0)
        b = torch.logsumexp(logits[ii_ids], 0)
        assert p[k] == pytest.approx(torch.softmax(torch.stack([a, b]), 0)[1].item(), abs=1e-5)


def test_ptrue_averages_both_orders(tiny_model):
    gens = tiny_gens(tiny_model, n=4)
    pt = PTrue(model=tiny_model, progress=False).fit(gens)
    p = pt.predict_proba(gens)
    assert p.shape == (4,) and ((p > 0) & (p < 1)).all()
    texts = pt._texts(gens, None, False)
    assert "(A) True\n (B) False" in texts[0] and texts[0].endswith("<|assistant|>(")
    assert "(A) False\n (B) True" in pt._texts(gens, None, True)[0]


def test_label_tokens_and_errors(tiny_model):
    assert label_token_ids(tiny_model.tokenizer, ("i", "ii")) == [[79], [337]]
    with pytest.raises(KnowlensError, match="no distinct single-token"):
        label_token_ids(tiny_model.tokenizer, ("qqqzz", "ii"))
    with pytest.raises(ConfigError, match="needs model"):
        ZeroShotClassifier().fit()
    with pytest.raises(ConfigError, match="match no module"):
        LoRAProbe(model=tiny_model, target_modules=("nope",), steps=1, progress=False).fit(
            tiny_gens(tiny_model, n=4)
        )


@pytest.mark.parametrize("cls", [LoRAProbe, LoRAPrompt])
def test_lora_estimators_learn_roundtrip_and_leave_model_clean(cls, tiny_model, tmp_path):
    gens = tiny_gens(tiny_model, n=8)
    before = _snapshot(tiny_model)
    # 40 steps: length-bucketed batches learn as fast, but 30 left the LoRA + Prompt
    # check at 0.81 (plain batches: 0.78), on the edge of the 0.8 bar
    est = cls(model=tiny_model, steps=40, batch_size=4, lr=3e-3, progress=False, seed=1)
    est.fit(gens)
    _assert_untouched(tiny_model, before)
    hist = np.array(est.loss_history_)
    assert len(hist) == 40
    assert hist[-6:].mean() < 0.8 * hist[:6].mean(), hist
    p = est.predict_proba(gens)
    _assert_untouched(tiny_model, before)
    assert p.shape == (8,) and ((p >= 0) & (p <= 1)).all()
    again = load(est.save(tmp_path / "est"), model=tiny_model)
    np.testing.assert_allclose(again.predict_proba(gens), p, rtol=0, atol=1e-6)
    assert again.cache_key() == est.cache_key()
    # an identical fit is served from the one estimator cache (fit_cached; fit never caches)
    kw = dict(model=tiny_model, steps=40, batch_size=4, lr=3e-3, progress=False, seed=1)
    first = fit_cached(cls(**kw), gens)
    assert not first.from_cache_ and first.cache_key() == est.cache_key()
    np.testing.assert_allclose(first.predict_proba(gens), p, rtol=0, atol=1e-6)
    cached = fit_cached(cls(**kw), gens)
    assert cached.from_cache_
    np.testing.assert_allclose(cached.predict_proba(gens), p, atol=1e-6)


def test_lora_resumes_from_checkpoint(tiny_model, monkeypatch, tmp_path):
    gens = tiny_gens(tiny_model, n=8)
    kw = dict(model=tiny_model, steps=6, checkpoint_every=2, lr=3e-3, progress=False)
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "a"))
    full = LoRAPrompt(**kw).fit(gens)

    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "b"))
    calls = {"n": 0}
    real_loss = LoRAPrompt._loss

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(self, *a, **k)

    monkeypatch.setattr(LoRAPrompt, "_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        LoRAPrompt(**kw).fit(gens)
    assert not any("lora" in n for n, _ in tiny_model.model.named_modules())
    monkeypatch.setattr(LoRAPrompt, "_loss", real_loss)
    resumed = LoRAPrompt(**kw).fit(gens)
    assert resumed.resumed_from_ == 2
    np.testing.assert_allclose(resumed.loss_history_, full.loss_history_, rtol=1e-5)
    np.testing.assert_allclose(resumed.predict_proba(gens), full.predict_proba(gens), atol=1e-6)


def test_lora_cache_entries_are_verified_and_damaged_ones_refitted(tiny_model, caplog):
    """A LoRA fit is published with checksums (fit_cached) and its training checkpoints are
    gone; a damaged entry is reported in one line, moved aside and refitted (same result)."""
    import json

    from knowlens._cache import CHECKSUMS, cache_root, entry_dir, verify_entry

    gens = tiny_gens(tiny_model, n=8)
    kw = dict(model=tiny_model, steps=4, checkpoint_every=2, lr=3e-3, progress=False)
    first = fit_cached(LoRAProbe(**kw), gens)
    entry = entry_dir("estimators", first.cache_key())
    verify_entry(entry)
    assert {"estimator.json", "weights.safetensors"} <= set(
        json.loads((entry / CHECKSUMS).read_text())
    )
    assert not entry_dir("estimator-checkpoints", first.cache_key()).exists()
    w = entry / "weights.safetensors"
    raw = bytearray(w.read_bytes())
    raw[-1] ^= 0xFF  # same size, other bytes
    w.write_bytes(bytes(raw))
    with caplog.at_level("WARNING", logger="knowlens.cache"):
        again = fit_cached(LoRAProbe(**kw), gens)
    assert not again.from_cache_
    msgs = [r.getMessage() for r in caplog.records if "damaged entry estimators/" in r.getMessage()]
    assert len(msgs) == 1 and "\n" not in msgs[0]
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    np.testing.assert_array_equal(again.predict_proba(gens), first.predict_proba(gens))
    assert again.loss_history_ == first.loss_history_
    assert fit_cached(LoRAProbe(**kw), gens).from_cache_  # the refit entry is intact again


def test_lora_resume_skips_a_damaged_checkpoint(tiny_model, monkeypatch, tmp_path, caplog):
    from knowlens._cache import entry_dir

    gens = tiny_gens(tiny_model, n=8)
    kw = dict(model=tiny_model, steps=6, checkpoint_every=2, lr=3e-3, progress=False)
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "a"))
    full = LoRAProbe(**kw).fit(gens)
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "b"))
    real_loss, calls = LoRAProbe._loss, {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # inside the last step: checkpoints at 2 and 4 exist
            raise KeyboardInterrupt
        return real_loss(self, *a, **k)

    monkeypatch.setattr(LoRAProbe, "_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        LoRAProbe(**kw).fit(gens)
    monkeypatch.setattr(LoRAProbe, "_loss", real_loss)
    root = entry_dir("estimator-checkpoints", full.cache_key())
    assert sorted(p.name for p in root.glob("step-*")) == ["step-0000002", "step-0000004"]
    state = root / "step-0000004" / "state.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    with caplog.at_level("WARNING", logger="knowlens.training"):
        resumed = LoRAProbe(**kw).fit(gens)
    assert resumed.resumed_from_ == 2 and "step-0000004" in caplog.text
    assert resumed.loss_history_ == full.loss_history_
    np.testing.assert_array_equal(resumed.predict_proba(gens), full.predict_proba(gens))


def test_cross_model_retokenize(tiny_model):
    """Answers of a 'model B' with another chat template, re-read by the tiny model."""
    gens = tiny_gens(tiny_model, n=3)
    other = GenerationSet(
        [
            Generation(
                **{
                    **g.__dict__,
                    "prompt": f"<|im_start|>user\nWhat is the capital of {CITIES[i % 4 + 4]}?"
                    "<|im_end|>\n<|im_start|>assistant\n",
                    "prompt_ids": [0, 1],
                }
            )
            for i, g in enumerate(gens.rows)
        ],
        {"fingerprint": "model-b"},
    )
    rt = retokenize(other, tiny_model)
    assert rt.meta["answers_from"] == "model-b"
    for g, orig in zip(rt.rows, gens.rows, strict=True):
        assert g.prompt == orig.prompt and g.prompt_ids == orig.prompt_ids
        assert g.user_turn == user_turn(orig.prompt)  # the question it was re-asked
        assert g.answer_ids == orig.answer_ids
        assert g.exact_answer_tokens == (0, len(g.answer_ids))
        assert g.correct == orig.correct
    # same model -> unchanged object
    assert retokenize(gens, tiny_model) is gens
    # a ZSC of the tiny model scores B's answers exactly like its own
    zsc = ZeroShotClassifier(model=tiny_model, progress=False).fit()
    np.testing.assert_allclose(zsc.predict_proba(other), zsc.predict_proba(gens))


def test_lora_prompt_answer_span_and_js_term(tiny_model):
    from knowlens.estimators._lora import lora_attached

    gens = tiny_gens(tiny_model, n=4)
    est = LoRAPrompt(model=tiny_model, progress=False)
    items = est._prepare(gens, None)
    tok = tiny_model.tokenizer
    for (ids, s, e), g in zip(items, gens.rows, strict=True):
        assert tok.decode(ids[s:e]).strip() == g.answer.strip()
    y = torch.tensor([int(g.correct) for g in gens.rows])
    with lora_attached(tiny_model, **est._lora_kwargs()) as pm:
        # fresh adapters (lora_B = 0) leave the model unchanged: the JS term is exactly 0
        assert est._loss(pm, None, items, y).item() == pytest.approx(
            LoRAPrompt(model=tiny_model, js_weight=0.0)._loss(pm, None, items, y).item(),
            abs=1e-6,
        )
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
        assert est._loss(pm, None, items, y).item() > (
            LoRAPrompt(model=tiny_model, js_weight=0.0)._loss(pm, None, items, y).item() + 1e-4
        )


@pytest.mark.parametrize("cls", [LoRAProbe, LoRAPrompt])
def test_lora_passes_run_a_shared_prefix_once_with_the_plain_losses_and_gradients(
    cls, tiny_model, monkeypatch
):
    """A training batch runs its rows' common prefix once with gradients
    (prefix_once_forward), a validation / scoring pass through SharedPrefixes; loss, scores
    and the adapters' gradients equal those of plain padded batches."""
    from knowlens import generation
    from knowlens.estimators._lora import lora_attached

    preamble = "Answer in one word, the way an atlas would, with no explanation at all. " * 2
    gens = tiny_gens(tiny_model, n=8, preamble=preamble)
    est = cls(model=tiny_model, dropout=0.0, progress=False)  # no dropout: equal gradients
    items = est._prepare(gens, None)
    y = torch.tensor([int(g.correct) for g in gens.rows])
    torch.manual_seed(0)
    head = est._make_head()
    once = []
    real_once = generation.prefix_once_forward
    monkeypatch.setattr(
        generation,
        "prefix_once_forward",
        lambda *a, **k: once.append(real_once(*a, **k)) or once[-1],
    )

    def loss_and_grads(pm):
        pm.zero_grad(set_to_none=True)
        if head is not None:
            head.zero_grad(set_to_none=True)
        loss, p = est._loss_and_scores(pm, head, items, y)
        loss.backward()
        grads = {n: q.grad.clone() for n, q in pm.named_parameters() if q.requires_grad}
        return loss.item(), p, grads

    with lora_attached(tiny_model, **est._lora_kwargs(), train=True) as pm:
        with torch.no_grad():
            for n, q in pm.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(q, std=0.5)  # adapters that change the prefix
        loss, p, grads = loss_and_grads(pm)
        assert once and once[-1] is not None  # the training batch shared its prefix
        with monkeypatch.context() as m:
            m.setattr(generation, "_MIN_SHARED", 1 << 30)  # nothing shared: plain batches
            ref_loss, ref_p, ref_grads = loss_and_grads(pm)
            assert once[-1] is None
            pm.eval()
            with torch.no_grad():
                ev_loss, ev_p = est._loss_and_scores(pm, head, items, y)
        with torch.no_grad():
            shared = est._shared(items)
            got_loss, got_p = est._loss_and_scores(pm, head, items, y, shared, range(len(items)))
    assert loss == pytest.approx(ref_loss, abs=1e-5) and ref_loss > 0
    np.testing.assert_allclose(p.numpy(), ref_p.numpy(), rtol=0, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for n, g in ref_grads.items():
        scale = float(g.abs().max())
        assert scale > 0, n
        np.testing.assert_allclose(grads[n].numpy(), g.numpy(), rtol=0, atol=1e-4 * scale)
    total = sum(len(est._ids(it)) for it in items)
    assert shared.prefixes_run >= 1 and shared.fed < total - 7 * 20, (shared.fed, total)
    assert got_loss.item() == pytest.approx(ev_loss.item(), abs=1e-5)
    np.testing.assert_allclose(got_p.numpy(), ev_p.numpy(), rtol=0, atol=1e-5)
    assert ev_p.std() > 0


class _ParityTask:
    """A TaskLike whose labels alternate regardless of the (random) model's answers."""

    name = "parity"
    version = "1"
    max_new_tokens = 4

    def __init__(self, n):
        from knowlens.tasks import Example

        self.examples = [
            Example(id=f"p{i}", question=f"What is the capital of {CITIES[i % 8]}?", answers=("x",))
            for i in range(n)
        ]

    def prompt(self, ex):
        return ex.question

    def grade(self, ex, answer):
        from knowlens.tasks import GradeResult

        ok = int(ex.id[1:]) % 2 == 0
        return GradeResult(correct=ok, grader="parity", span=(0, len(answer)) if answer else None)


def test_generate_extract_estimators_integration(tiny_model):
    """generate -> extract -> probes / baselines / zero-shot on the tiny model, end to end."""
    import knowlens as kl

    gens = kl.generate(tiny_model, _ParityTask(16), progress=False)
    assert len(gens) == 16 and gens.accuracy == 0.5
    acts = kl.extract(tiny_model, gens, layers="all", tokens="last", progress=False)
    for est in (LogisticProbe(layer=-1), MLPProbe(layer=-1, epochs=5)):
        p = est.fit(acts, gens).predict_proba(acts)
        assert p.shape == (16,) and np.isfinite(p).all()
    base = kl.estimators.LogitBaseline(span="answer").fit(gens)
    p = base.predict_proba(gens)
    lp = np.array([np.mean(g.token_logprobs) if g.token_logprobs else -np.inf for g in gens])
    np.testing.assert_allclose(p, np.exp(lp))
    zsc = ZeroShotClassifier(model=tiny_model, progress=False).fit(gens)
    assert zsc.predict_proba(gens).shape == (16,)
    # the same answers re-read by the same model through the cross-model path
    other = GenerationSet(gens.rows, {"target_id": "someone-else"})
    rt = retokenize(other, tiny_model)
    acts_rt = kl.extract(tiny_model, rt, layers="all", tokens="last", progress=False)
    assert acts_rt.shape == acts.shape
