"""Refusal organisms: trained, merged, cached content-addressed, loadable through a spec."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.timeout(170)
def test_organism_trains_caches_and_loads_by_spec(tiny_model_dir, tiny_model, monkeypatch):
    from knowlens.jailbreak import organisms as O
    from knowlens.models import load_model

    kw = dict(
        steps=6, batch_size=4, n_benign=8, benign_max_new_tokens=4, extra_harmful=4, max_len=48
    )
    s = O.OrganismSettings(**kw)
    d = O.train_refusal_organism(
        str(tiny_model_dir), s, device="cpu", progress=False, evaluate=False
    )
    info = json.loads((d / "knowlens.json").read_text())
    assert info["organism"] == "refusal" and info["base_fingerprint"] == tiny_model.fingerprint
    assert info["n_train_pairs"] >= 140 and info["settings"]["steps"] == 6
    assert set(info["lora_targets"]) >= {"q_proj", "v_proj"}
    # published with checksums (verified on reuse); the training checkpoints are gone
    from knowlens._cache import CHECKSUMS, verify_entry

    verify_entry(d)
    assert "model.safetensors" in json.loads((d / CHECKSUMS).read_text())
    assert info["resumed_from_step"] == 0 and not O.checkpoint_dir(d).exists()
    # content-addressed: same settings -> same directory, no retraining
    mtime = (d / "knowlens.json").stat().st_mtime
    assert O.train_refusal_organism(str(tiny_model_dir), s, device="cpu", progress=False) == d
    assert (d / "knowlens.json").stat().st_mtime == mtime
    assert O.organism_dir(tiny_model.fingerprint, O.OrganismSettings(steps=7)) != d
    # the model-spec hook resolves organism:refusal:<base> to the same cached directory
    import functools

    monkeypatch.setattr(O, "OrganismSettings", functools.partial(O.OrganismSettings, **kw))
    by_spec = load_model(f"organism:refusal:{tiny_model_dir}", device="cpu")
    assert by_spec.info["directory"] == str(d) and by_spec.name.endswith("+refusal")
    # merged weights differ from the base, adapters are gone, fingerprint recorded
    org = load_model(d, device="cpu")
    assert org.fingerprint == info["fingerprint"] != tiny_model.fingerprint
    assert not any("lora" in n for n, _ in org.model.named_parameters())
    # LoRA on the upper half of the layers only (layers_fraction=0.5 of 2 layers)
    assert info["lora_layers"] == [1, 1]
    for layer, changed in ((0, False), (1, True)):
        w0 = tiny_model.model.model.layers[layer].self_attn.q_proj.weight
        w1 = org.model.model.layers[layer].self_attn.q_proj.weight
        assert torch.allclose(w0, w1) != changed
    # the harmful / benign training data never includes the held-out behaviours
    from knowlens.jailbreak import corpora

    _, held = corpora.harmbench_split()
    train_text = set(O._harmful_training_prompts(s))
    assert not train_text & {p.behavior for p in held}
    assert not set(O.benign_training_prompts(200, 0)) & set(corpora.BENIGN_INSTRUCTIONS)


def test_organism_spec_errors():
    from knowlens.errors import KnowlensError
    from knowlens.models import load_model

    with pytest.raises(KnowlensError, match="organism:<kind>:<base model>"):
        load_model("organism:refusl:smollm2-135m-instruct")
    with pytest.raises(KnowlensError, match="not an organism"):
        from knowlens.jailbreak.organisms import train_refusal_organism

        train_refusal_organism("organism:refusal:x")


def test_base_answers_are_generate_texts_batched_cached_and_evaluation_keys(
    tiny_model, monkeypatch
):
    """Organism data and evaluation decode through generation.generate_texts: batched rows
    equal single served completions, and a second call is served from the cache."""
    from knowlens import generation
    from knowlens.jailbreak.organisms import base_answers, evaluate_refusals
    from knowlens.jailbreak.server import complete

    prompts = ["What is the capital of France?", "Hi", "Is the proposed answer correct?"]
    batched = base_answers(tiny_model, prompts, 6)  # one left-padded batch
    for p, b in zip(prompts, batched, strict=True):
        assert b == complete(tiny_model, [{"role": "user", "content": p}], 6)[0]
    calls = []
    real = generation._decode_batch
    monkeypatch.setattr(
        generation, "_decode_batch", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert base_answers(tiny_model, prompts, 6) == batched and not calls  # cache hit
    ev = evaluate_refusals(tiny_model, n=3, max_new_tokens=4)
    assert ev["n_harmful"] == 3 and ev["n_benign"] == 3
    assert 0.0 <= ev["refusal_rate_harmful"] <= 1.0 and 0.0 <= ev["refusal_rate_benign"] <= 1.0
    n_calls = len(calls)
    assert evaluate_refusals(tiny_model, n=3, max_new_tokens=4) == ev and len(calls) == n_calls


def test_response_loss_equals_hf_labels_loss(tiny_model):
    """The LM-head-only-on-response-positions loss is HF's own ``labels=`` loss."""
    from knowlens.jailbreak import organisms as O
    from knowlens.training import response_loss

    s = O.OrganismSettings(batch_size=3, max_len=200)
    pairs = [
        (tiny_model.format_prompt("How can I bake bread?"), "Mix flour and water.", False),
        (tiny_model.format_prompt("Explain tides"), "The moon pulls the sea.", False),
        (tiny_model.format_prompt("Hi"), "I'm sorry, but I can't help with that.", True),
    ]
    ids, lab, att, w = next(O._batches(tiny_model, pairs, s))
    assert (lab == -100).sum() > 0 and (lab != -100).sum() > 0
    with torch.no_grad():
        out = tiny_model.model(input_ids=ids, attention_mask=att, labels=lab)
        ours = response_loss(tiny_model.model, ids, lab, att, "cpu")
        weighted = response_loss(tiny_model.model, ids, lab, att, "cpu", w)
    torch.testing.assert_close(ours, out.loss, rtol=1e-5, atol=1e-6)
    # weighted: the first `decision_tokens` response tokens of each row count x decision_weight
    ce = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].flatten(0, 1), lab[:, 1:].flatten(), ignore_index=-100, reduction="none"
    ).view(lab.shape[0], -1)
    expect_w = torch.zeros_like(ce)
    for b in range(lab.shape[0]):
        pos = (lab[b, 1:] != -100).nonzero().squeeze(1)
        expect_w[b, pos] = 1.0
        expect_w[b, pos[: s.decision_tokens]] = s.decision_weight
    assert torch.equal(w[:, 1:], expect_w)
    torch.testing.assert_close(
        weighted, (ce * expect_w).sum() / expect_w.sum(), rtol=1e-5, atol=1e-6
    )
    # refusals end with EOS (a complete answer); truncated benign answers do not
    eos = tiny_model.tokenizer.eos_token_id
    last = [lab[b][lab[b] != -100][-1].item() for b in range(3)]
    n_eos = sum(x == eos for x in last)
    assert n_eos == 1


def test_benign_training_prompts_are_varied_and_held_out():
    from knowlens.jailbreak import corpora
    from knowlens.jailbreak import organisms as O

    pool = O.benign_training_prompts(10**6, 0)
    assert len(pool) == len(set(pool)) > 1400
    assert O.benign_training_prompts(300, 0) == O.benign_training_prompts(300, 0)
    assert not set(pool) & set(corpora.BENIGN_INSTRUCTIONS)
    # every request form (first three words) seen at least twice among the harmful training
    # prompts also appears with harmless content, so form alone never predicts a refusal
    from collections import Counter

    forms = Counter(
        " ".join(p.split()[:3]) for p in O._harmful_training_prompts(O.OrganismSettings())
    )
    missing = [f for f, c in forms.items() if c >= 2 and not any(p.startswith(f) for p in pool)]
    assert not missing


KW = dict(steps=8, batch_size=4, n_benign=8, benign_max_new_tokens=4, extra_harmful=4, max_len=48)


def _weights(d):
    """Every published file's checksum except knowlens.json (timings) and the checksum list."""
    from knowlens._cache import CHECKSUMS

    sums = json.loads((d / CHECKSUMS).read_text())
    return {k: v for k, v in sums.items() if k != "knowlens.json"}


@pytest.mark.timeout(170)
def test_organism_killed_then_rerun_saves_identical_weights(tiny_model_dir, monkeypatch, tmp_path):
    """A run interrupted mid-training resumes from its checkpoint: same bytes as uninterrupted."""
    from knowlens import training
    from knowlens.jailbreak import organisms as O

    s = O.OrganismSettings(**KW)
    run = dict(device="cpu", progress=False, evaluate=False, checkpoint_every=3)
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "full"))
    full = O.train_refusal_organism(str(tiny_model_dir), s, **run)

    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "killed"))
    real, calls = training.response_loss, []

    def dies_at_step_8(*a, **k):
        calls.append(1)
        if len(calls) == 8:  # inside the last step: checkpoints at 3 and 6 exist
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(training, "response_loss", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        O.train_refusal_organism(str(tiny_model_dir), s, **run)
    out = O.organism_dir(json.loads((full / "knowlens.json").read_text())["base_fingerprint"], s)
    assert not out.exists() and training.latest_checkpoint(O.checkpoint_dir(out)) == 6
    monkeypatch.setattr(training, "response_loss", real)
    resumed = O.train_refusal_organism(str(tiny_model_dir), s, **run)
    assert resumed == out and O.organism_info(resumed)["resumed_from_step"] == 6
    assert (resumed / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    assert _weights(resumed) == _weights(full)
    info_full, info_res = O.organism_info(full), O.organism_info(resumed)
    assert info_res["loss_first"] == info_full["loss_first"]
    assert info_res["loss_last"] == info_full["loss_last"]


@pytest.mark.timeout(170)
def test_damaged_organism_is_moved_aside_and_retrained(tiny_model_dir, caplog):
    from knowlens._cache import cache_root
    from knowlens.jailbreak import organisms as O

    s = O.OrganismSettings(**KW)
    run = dict(device="cpu", progress=False, evaluate=False)
    d = O.train_refusal_organism(str(tiny_model_dir), s, **run)
    good = (d / "model.safetensors").read_bytes()
    w = d / "model.safetensors"
    w.write_bytes(good[:-8] + bytes(8))  # same size, other bytes: only the checksum sees it
    with caplog.at_level("WARNING", logger="knowlens.cache"):
        again = O.train_refusal_organism(str(tiny_model_dir), s, **run)
    assert again == d and (d / "model.safetensors").read_bytes() == good
    assert any("damaged entry organisms/" in r.getMessage() for r in caplog.records)
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    # force retrains and replaces the entry (same bytes: training is deterministic)
    before = (d / "knowlens.json").stat().st_mtime_ns
    O.train_refusal_organism(str(tiny_model_dir), s, force=True, **run)
    assert (d / "knowlens.json").stat().st_mtime_ns != before
    assert (d / "model.safetensors").read_bytes() == good


def test_batches_resume_at_any_step(tiny_model):
    """_batches(start=k) yields exactly the batches an uninterrupted run sees from step k."""
    import itertools

    from knowlens.jailbreak import organisms as O

    s = O.OrganismSettings(batch_size=2, max_len=40)
    pairs = [
        (tiny_model.format_prompt(f"Q{i} capital of France?"), f" Paris {i}", i % 2 == 0)
        for i in range(7)
    ]
    ref = list(itertools.islice(O._batches(tiny_model, pairs, s), 12))  # 3 batches / epoch
    for k in (0, 1, 3, 7):
        got = list(itertools.islice(O._batches(tiny_model, pairs, s, start=k), 12 - k))
        for a, b in zip(got, ref[k:], strict=True):
            assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # epochs reshuffle: the first two epochs differ in order
    assert not all(torch.equal(ref[i][0], ref[i + 3][0]) for i in range(3))
