"""knowlens.training: resumable loop (bit-identical after a kill), damaged checkpoints, the
response-only loss, LoRA attach / merge / unload."""

from __future__ import annotations

import copy
import json
import logging
import random

import numpy as np
import pytest
import torch

from knowlens._cache import verify_entry
from knowlens.errors import ConfigError, KnowlensError
from knowlens.training import (
    ParamGroup,
    latest_checkpoint,
    lora_attached,
    response_loss,
    train_loop,
    trainable_parameters,
)

STEPS, EVERY = 12, 3


class Killed(BaseException):
    """Stands in for SIGKILL inside the loop (not an Exception: nothing may catch it)."""


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(16, 1)
    )


def batches(start: int):
    """Batch of step i is a pure function of i, as train_loop's factory contract asks."""
    for i in range(start, STEPS):
        g = np.random.default_rng(i)
        x = torch.from_numpy(g.normal(size=(5, 4)).astype(np.float32))
        yield x, x.sum(1, keepdim=True)


def loss_fn(model, batch):
    # draws from every RNG the loop checkpoints: torch (dropout), python and numpy globals
    x, y = batch
    noise = 1 + 0.01 * random.random() + 0.01 * float(np.random.rand())
    return noise * torch.nn.functional.mse_loss(model(x), y)


def run(ckpt=None, *, kill_at=None, seed=123, step_seed=None, **kw):
    """A 'process': seed the globals, build the model, train. ``kill_at``: die inside that
    (1-based) step's loss, after the previous steps' checkpoints were written."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    model = toy_model()
    model.train()
    calls = {"n": 0}

    def loss(m, b):
        calls["n"] += 1
        if kill_at is not None and calls["n"] == kill_at:
            raise Killed
        return loss_fn(m, b)

    head = dict(list(model.named_parameters())[2:])
    body = dict(list(model.named_parameters())[:2])
    res = train_loop(
        model,
        loss,
        batches,
        groups=[ParamGroup(body, 0.05), ParamGroup(head, 0.02)],
        steps=STEPS,
        lr_lambda=lambda i: min(1.0, (i + 1) / 4) * max(0.05, 1 - i / STEPS),
        weight_decay=0.01,
        clip_grad_norm=0.5,
        step_seed=step_seed,
        checkpoint_dir=ckpt,
        checkpoint_every=EVERY,
        **kw,
    )
    return model, res


def assert_same(a, b):
    (ma, ra), (mb, rb) = a, b
    for (n, p), (_, q) in zip(ma.state_dict().items(), mb.state_dict().items(), strict=True):
        assert torch.equal(p, q), n
    assert ra.history == rb.history  # exact floats


@pytest.fixture(scope="module")
def reference():
    return run(None)


@pytest.mark.parametrize("kill_at", random.Random(7).sample(range(EVERY + 1, STEPS + 1), 3))
def test_resume_after_kill_is_bit_identical(reference, tmp_path, kill_at):
    with pytest.raises(Killed):
        run(tmp_path, kill_at=kill_at)
    done = (kill_at - 1) // EVERY * EVERY
    assert latest_checkpoint(tmp_path) == done
    # the rerun starts from other global seeds: the checkpoint's RNG states must win
    resumed = run(tmp_path, seed=999)
    assert resumed[1].resumed_from == done
    assert_same(resumed, reference)
    assert len(resumed[1].history) == STEPS
    # the final checkpoint marks the run finished: a rerun trains nothing and agrees
    again = run(tmp_path, seed=5)
    assert again[1].resumed_from == STEPS
    assert_same(again, reference)


def test_resume_with_step_seeds_and_before_first_checkpoint(tmp_path):
    ref = run(None, step_seed=lambda i: 1000 + i)
    with pytest.raises(Killed):
        run(tmp_path / "a", kill_at=8, step_seed=lambda i: 1000 + i)
    assert_same(run(tmp_path / "a", seed=1, step_seed=lambda i: 1000 + i), ref)
    # killed before any checkpoint: a fresh start (the caller's own seeding applies)
    with pytest.raises(Killed):
        run(tmp_path / "b", kill_at=2)
    assert latest_checkpoint(tmp_path / "b") == 0
    assert_same(run(tmp_path / "b"), run(None))


def test_damaged_checkpoints_are_skipped_with_a_warning(reference, tmp_path, caplog):
    with pytest.raises(Killed):
        run(tmp_path, kill_at=11)  # checkpoints 6 and 9 kept (keep_checkpoints=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-0000006", "step-0000009"]
    newest = tmp_path / "step-0000009" / "state.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING, logger="knowlens.training"), pytest.raises(Killed):
        run(tmp_path, seed=42, kill_at=6)  # resumes at 6, dies again inside step 12
    assert "step-0000009" in caplog.text and "skipping damaged checkpoint" in caplog.text
    assert "state.safetensors has 100 bytes" in caplog.text
    # the damaged 9 was dropped; the rerun wrote an intact 9 and died before 12's checkpoint
    assert latest_checkpoint(tmp_path) == 9
    verify_entry(tmp_path / "step-0000009")
    # same size, other bytes (only the checksum sees it), in both remaining checkpoints
    for d in tmp_path.glob("step-*"):
        f = d / "state.safetensors"
        b = bytearray(f.read_bytes())
        b[-1] ^= 0xFF
        f.write_bytes(bytes(b))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="knowlens.training"):
        fresh = run(tmp_path)
    assert fresh[1].resumed_from == 0 and len(fresh[1].checkpoints_skipped) == 2
    assert caplog.text.count("does not match its checksum") == 2
    for rec in caplog.records:
        assert "\n" not in rec.getMessage()
    assert_same(fresh, reference)


def test_checkpoint_of_another_run_is_not_used(tmp_path, caplog):
    with pytest.raises(Killed):
        run(tmp_path, kill_at=5)
    prog = tmp_path / "step-0000003" / "progress.json"
    rec = json.loads(prog.read_text())
    assert rec["step"] == 3 and len(rec["history"]) == 3 and rec["lrs"][0] > 0
    # a loop over other parameters (another run's folder) refuses it and starts at 0
    model = toy_model()
    with caplog.at_level(logging.WARNING, logger="knowlens.training"):
        res = train_loop(
            model,
            loss_fn,
            batches,
            groups=[ParamGroup(trainable_parameters(model, "other."), 0.01)],
            steps=STEPS,
            checkpoint_dir=tmp_path,
            checkpoint_every=0,
        )
    assert res.resumed_from == 0 and "parameter names differ" in caplog.text


def test_lr_schedule_and_clipping_match_torch(tmp_path):
    """lr = initial x lr_lambda(step) is torch's LambdaLR; clipping is clip_grad_norm_."""
    lam = lambda i: min(1.0, (i + 1) / 4) * max(0.05, 1 - i / STEPS)  # noqa: E731
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = toy_model().train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)  # weight decay 0.01 (default)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    hist = []
    for b in batches(0):
        loss = loss_fn(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        hist.append(float(loss.detach()))
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    ours = toy_model().train()
    res = train_loop(
        ours,
        loss_fn,
        batches,
        groups=[ParamGroup(dict(ours.named_parameters()), 0.05)],
        steps=STEPS,
        lr_lambda=lam,
        weight_decay=0.01,
        clip_grad_norm=0.5,
    )
    assert res.history == hist
    for p, q in zip(model.parameters(), ours.parameters(), strict=True):
        assert torch.equal(p, q)


def test_loop_input_errors():
    model = toy_model()
    groups = [ParamGroup(dict(model.named_parameters()), 0.01)]
    with pytest.raises(ConfigError, match="steps must be an integer >= 1; got 0"):
        train_loop(model, loss_fn, batches, groups=groups, steps=0)
    with pytest.raises(KnowlensError, match="batch iterator ended at step 2 of 5"):
        train_loop(model, loss_fn, lambda s: iter(list(batches(s))[:2]), groups=groups, steps=5)
    with pytest.raises(KnowlensError, match="no parameters"):
        train_loop(model, loss_fn, batches, groups=[ParamGroup({}, 0.1)], steps=1)


def test_response_loss_equals_hf_labels_loss(tiny_model):
    tok = tiny_model.tokenizer
    rows = []
    for q, a in (("What is the capital of France?", " Paris."), ("Hi", " I cannot help.")):
        p = tok(tiny_model.format_prompt(q), add_special_tokens=False)["input_ids"]
        r = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((p + r, [-100] * len(p) + r))
    T = max(len(x) for x, _ in rows)
    ids = torch.full((2, T), tok.pad_token_id)
    lab = torch.full((2, T), -100)
    att = torch.zeros((2, T), dtype=torch.long)
    for b, (x, y) in enumerate(rows):
        ids[b, : len(x)], lab[b, : len(y)], att[b, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    with torch.no_grad():
        hf = tiny_model.model(input_ids=ids, attention_mask=att, labels=lab).loss
        ours = response_loss(tiny_model.model, ids, lab, att, "cpu")
        ones = response_loss(tiny_model.model, ids, lab, att, "cpu", torch.ones(2, T))
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ones, hf, rtol=1e-5, atol=1e-6)
    assert ours.item() > 1.0  # a random model: a real cross-entropy, not a degenerate 0


def test_lora_attached_merges_on_success_and_unloads_on_error(tiny_model):
    model = copy.deepcopy(tiny_model.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    kw = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj"], layers_to_transform=[1])
    with (
        pytest.raises(RuntimeError, match="boom"),
        lora_attached(model, **kw, train=True, merge=True) as pm,
    ):
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p)
        raise RuntimeError("boom")
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not model.training
    with lora_attached(model, **kw, merge=True) as pm:
        names = [n for n, p in pm.named_parameters() if p.requires_grad]
        assert names and all("layers.1.self_attn.q_proj.lora_" in n for n in names)
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p)
        with torch.no_grad():
            x = torch.tensor([[5, 6, 7]])
            expect = pm(input_ids=x).logits
    after = model.state_dict()
    assert set(after) == set(before)
    assert torch.equal(
        after["model.layers.0.self_attn.q_proj.weight"],
        before["model.layers.0.self_attn.q_proj.weight"],
    )
    assert not torch.equal(
        after["model.layers.1.self_attn.q_proj.weight"],
        before["model.layers.1.self_attn.q_proj.weight"],
    )
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=x).logits, expect, rtol=1e-5, atol=1e-5)
    with (
        pytest.raises(ConfigError, match="match no module"),
        lora_attached(model, **{**kw, "target_modules": ["nope"]}),
    ):
        pass


def test_response_loss_runs_a_shared_prefix_once_with_the_plain_loss_and_gradients(
    tiny_model, monkeypatch
):
    """``response_loss(handle=)``: rows that open alike (a system turn) run the opening once;
    the loss and every adapter gradient equal the plain right-padded batch's."""
    import knowlens.generation as G

    tok = tiny_model.tokenizer
    system = "Answer the user in one short sentence and refuse anything harmful. "
    rows = []
    for q, a in (
        ("What is the capital of France?", " Paris."),
        ("Hi", " I cannot help with that request."),
        ("Name a colour", " Blue"),
    ):
        p = tok(tiny_model.format_prompt(system + q), add_special_tokens=False)["input_ids"]
        r = tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((p + r, [-100] * len(p) + r))
    B, T = len(rows), max(len(x) for x, _ in rows)
    ids = torch.full((B, T), tok.pad_token_id)
    lab = torch.full((B, T), -100)
    att = torch.zeros((B, T), dtype=torch.long)
    for b, (x, y) in enumerate(rows):
        ids[b, : len(x)], lab[b, : len(y)], att[b, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    w = torch.rand(B, T, generator=torch.Generator().manual_seed(0)) + 0.5
    calls = []
    real = G.prefix_once_forward

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(G, "prefix_once_forward", spy)

    def loss_and_grads(pm, **kw):
        pm.zero_grad()
        loss = response_loss(pm, ids, lab, att, "cpu", w, **kw)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in trainable_parameters(pm).items()}

    kw = dict(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], init_seed=1)
    with lora_attached(tiny_model, **kw, train=True) as pm:
        with torch.no_grad():  # lora_B starts at 0: give the adapters something to say
            for p in trainable_parameters(pm).values():
                p.normal_(0, 0.05)
        plain, g_plain = loss_and_grads(pm)
        assert not calls
        shared, g_shared = loss_and_grads(pm, handle=tiny_model)
        assert calls == [True]  # the shared forward ran ...
        P = G._common(rows[0][0], rows[1][0])
        assert P >= G._MIN_SHARED  # ... over a real common opening
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-6)
    assert plain.item() > 1.0
    top = max(g.abs().max().item() for g in g_plain.values())
    assert top > 0
    for n, g in g_plain.items():
        torch.testing.assert_close(g_shared[n], g, rtol=1e-4, atol=1e-4 * top, msg=n)
    # a row without response tokens, or nothing shared: the plain batch (no shared forward)
    calls.clear()
    with torch.no_grad():
        lab0 = lab.clone()
        lab0[0] = -100
        response_loss(tiny_model.model, ids, lab0, att, "cpu", handle=tiny_model)
        short = ids[:, P - 4 :].clone()
        response_loss(
            tiny_model.model, short, lab[:, P - 4 :], att[:, P - 4 :], "cpu", handle=tiny_model
        )
    assert calls == [False]  # only the second call asked, and got None (4 shared tokens)
