"""Sampled generation (`knowlens.sample`): equality with HF sampling, seeding, shared prefill,
log-probs, grading, cache / damage / resume, SampleSet I/O and alignment, bad input."""

from __future__ import annotations

import logging
import math
import re
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
import torch

from _tasks import QUESTIONS, RecordingTask, examples
from conftest import build_tiny_llama
from knowlens import generation
from knowlens._cache import cache_root, entry_dir, verify_entry
from knowlens._types import Sample, SampledGenerations, SampleSet
from knowlens.errors import DataError, KnowlensError
from knowlens.generation import (
    GenerationSettings,
    TokenSampler,
    _decode_batch,
    generate,
    sample,
    sample_seed,
    top_p_filter,
)
from knowlens.models import handle_from_objects
from knowlens.tasks import Example, GradeResult

EOS = 2


class TinyTask(RecordingTask):
    """'correct' when the answer contains the gold string; records (id, answer) graded."""

    def record(self, example: Example, answer: str) -> tuple[str, str]:
        return example.id, answer

    def _grade(self, example: Example, answer: str) -> GradeResult:
        gold = example.answers[0]
        at = answer.find(gold)
        return GradeResult(at >= 0, "contains", (at, at + len(gold)) if at >= 0 else None, None)


def make_task(n: int = len(QUESTIONS), gold: str = "e") -> TinyTask:
    return TinyTask(examples(n, gold))


@pytest.fixture(scope="module")
def eos_model(tiny_model):
    """The tiny model made peaky (its logits, std ~0.1, scaled by 40) with EOS boosted where
    token 43 would win: samples end at different lengths, so rows leave the batch at
    different steps."""
    model = build_tiny_llama(len(tiny_model.tokenizer))
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
        model.lm_head.weight[EOS] = model.lm_head.weight[43] * 1.05
    return handle_from_objects(model, tiny_model.tokenizer, name="tiny-eos")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def count_batches(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Wrap the decoder: record each call's prompt count; raise KeyboardInterrupt (a kill) at
    call ``fail_at``. Windows (the resume unit) are one batch here, so 7 prompts at
    batch_size=2 are 4 records."""
    real, calls = generation._decode_batch, []
    monkeypatch.setattr(generation, "_WINDOW_BATCHES", 1)

    def wrapped(handle, prompts, settings, chooser=None, **kw):
        calls.append(len(prompts))
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        return real(handle, prompts, settings, chooser, **kw)

    monkeypatch.setattr(generation, "_decode_batch", wrapped)
    return calls


# -- the sampler is HF's sampler ---------------------------------------------------------------
def hf_sample(handle, prompt_ids, seed, temperature, top_p, max_new):
    """HF generate(do_sample=True) on one prompt after torch.manual_seed(seed); only the
    temperature and top-p warpers (top_k=0, the model's generation_config not used)."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new,
        eos_token_id=EOS,
        pad_token_id=handle.tokenizer.pad_token_id,
    )
    ids = torch.tensor([prompt_ids])
    torch.manual_seed(seed)
    out = handle.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        generation_config=cfg,
        output_scores=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    toks = out.sequences[0, len(prompt_ids) :].tolist()
    n = toks.index(EOS) if EOS in toks else len(toks)
    steps = zip(out.logits, out.scores, toks, strict=True)
    raw = [torch.log_softmax(x[0].float(), -1)[t].item() for x, _, t in steps]
    steps = zip(out.logits, out.scores, toks, strict=True)
    used = [torch.log_softmax(y[0], -1)[t].item() for _, y, t in steps]
    return toks[:n], raw[:n], used[:n]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.5, 0.5), (1.0, 0.3)])
def test_one_prompt_k1_is_token_identical_to_hf_sampling(eos_model, temperature, top_p):
    """Row seed s == torch.manual_seed(s) before HF generate(do_sample=True): same tokens, and
    our raw / sampling log-probs are HF's output_logits / output_scores at those tokens."""
    task = make_task()
    settings = GenerationSettings(max_new_tokens=12, stop_on_newline=False)
    n_eos = 0
    for j, ex in enumerate(task.examples):
        prompt = eos_model.format_prompt(ex.question)
        ids = generation._encode(eos_model, prompt, True)
        seed = sample_seed(3, ex.id, j)
        chooser = TokenSampler([seed], 1, temperature, top_p)
        row = _decode_batch(eos_model, [ids], settings, chooser)[0]
        toks, raw, used = hf_sample(eos_model, ids, seed, temperature, top_p, 12)
        assert row["answer_ids"] == toks, ex.id
        assert row["token_logprobs"] == pytest.approx(raw, abs=1e-6)
        assert row["sampling_logprobs"] == pytest.approx(used, abs=1e-6)
        n_eos += row["stop_reason"] == "eos"
    assert 0 < n_eos < len(task.examples)  # EOS stops at HF's step, and length stops


def test_top_p_filter_equals_hf_warper():
    from transformers.generation.logits_process import TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 300, generator=g) * 3
    scores[0, :] = 0.0  # all tied
    scores[1, 5] = 50.0  # one token holds ~all the mass: always kept alone
    for p in (0.05, 0.3, 0.9, 0.999):
        ours = top_p_filter(scores.clone(), p)
        ref = TopPLogitsWarper(p)(None, scores.clone())
        assert torch.equal(ours, ref)
        kept = torch.isfinite(ours)
        assert bool(kept.any(-1).all())  # at least one token per row
        mass = torch.where(kept, scores.softmax(-1), 0).sum(-1)
        assert bool((mass >= p - 1e-6).all())  # the kept set holds >= top_p
    assert torch.isfinite(top_p_filter(scores, 0.3)[1]).sum() == 1


# -- seeding -----------------------------------------------------------------------------------
def _ids(ss: SampleSet) -> list[list[list[int]]]:
    return [s.answer_ids for s in ss]


def test_same_seed_same_samples_across_runs_and_batch_sizes(eos_model):
    task = make_task()
    kw: dict[str, Any] = dict(k=4, temperature=1.2, top_p=0.9, seed=7)
    kw.update(cache=False, progress=False)
    runs = {bs: sample(eos_model, task, batch_size=bs, **kw) for bs in (1, 3, 16)}
    again = sample(eos_model, task, batch_size=3, **kw)
    pd.testing.assert_frame_equal(again.to_frame(), runs[3].to_frame(), check_exact=True)
    assert _ids(runs[1]) == _ids(runs[3]) == _ids(runs[16])
    for a, b in zip(runs[1], runs[16], strict=True):
        assert a.texts == b.texts
        for x, y in zip(a.sampling_logprobs, b.sampling_logprobs, strict=True):
            assert x == pytest.approx(y, abs=1e-4)
    ss = runs[3]
    assert ss.example_ids == [ex.id for ex in task.examples] and ss.k == 4
    assert {r for s in ss for r in s.stop_reasons} == {"eos", "length"}
    # sample j of example e is the row seeded sample_seed(seed, e, j), decoded alone
    settings = GenerationSettings(max_new_tokens=8, stop_on_newline=True)
    for s in ss.rows[:3]:
        for j in (0, 3):
            alone = TokenSampler([sample_seed(7, s.example_id, j)], 1, 1.2, 0.9)
            row = _decode_batch(eos_model, [s.prompt_ids], settings, alone)[0]
            assert row["answer_ids"] == s.answer_ids[j]


def test_different_seeds_differ_and_samples_of_a_prompt_differ(tiny_model):
    task = make_task()
    a = sample(tiny_model, task, k=5, seed=0, cache=False, progress=False)
    b = sample(tiny_model, task, k=5, seed=1, cache=False, progress=False)
    differ = sum(x.answer_ids != y.answer_ids for x, y in zip(a, b, strict=True))
    assert differ == len(task.examples)
    for s in a:  # T=1 on a random model: the 5 samples of one prompt are not one answer
        assert len({tuple(i) for i in s.answer_ids}) > 1
    assert sample_seed(0, "q1", 0) != sample_seed(0, "q1", 1) != sample_seed(1, "q1", 0)
    assert sample_seed(0, "q1", 0) == sample_seed(0, "q1", 0) < 2**63


# -- one prefill per prompt --------------------------------------------------------------------
def test_k_samples_of_a_prompt_share_one_prefill(tiny_model):
    """Forward calls: one prefill per batch with one row per *prompt*, then decode steps over
    up to batch * k rows; the prefill tokens equal those of greedy generation."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))

    handle = tiny_model.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        task = make_task()
        ss = sample(tiny_model, task, k=6, batch_size=4, cache=False, progress=False)
        sampled = list(shapes)
        shapes.clear()
        generate(tiny_model, task, batch_size=4, cache=False, progress=False)
        greedy = list(shapes)
    finally:
        handle.remove()
    prefills = [s for s in sampled if s[1] > 1]
    assert [b for b, _ in prefills] == [4, 3]  # 7 prompts, batch 4: two prefills, no repeats
    assert prefills == [s for s in greedy if s[1] > 1]  # the same prefill as greedy decoding
    steps = [s for s in sampled if s[1] == 1]
    assert max(b for b, _ in steps) == 4 * 6  # decode steps run every sample of the batch
    assert len(steps) == 2 * (8 - 1)  # no row stops early here: 7 steps after each prefill
    assert all(len(s.texts) == 6 for s in ss)


# -- log-probs ---------------------------------------------------------------------------------
def test_raw_and_sampling_logprobs(eos_model):
    task = make_task()
    plain = sample(eos_model, task, k=3, seed=2, cache=False, progress=False)
    for s in plain:  # T=1, top_p=1: the distribution sampled from is the raw one
        assert s.sampling_logprobs == s.token_logprobs
    t, p = 0.6, 0.7
    warm = sample(eos_model, task, k=3, temperature=t, top_p=p, seed=2, cache=False)
    checked = 0
    for s in warm:
        for ids, raw, used, ent in zip(
            s.answer_ids, s.token_logprobs, s.sampling_logprobs, s.token_entropies, strict=True
        ):
            if not ids:
                continue
            full = torch.tensor([s.prompt_ids + ids])
            with torch.no_grad():
                logits = eos_model.model(full).logits[0].float()
            steps = logits[len(s.prompt_ids) - 1 : len(s.prompt_ids) - 1 + len(ids)]
            tok = torch.tensor(ids)[:, None]
            logp = torch.log_softmax(steps, -1)
            want_raw = logp.gather(1, tok)[:, 0]
            want_used = torch.log_softmax(top_p_filter(steps / t, p), -1).gather(1, tok)[:, 0]
            torch.testing.assert_close(torch.tensor(raw), want_raw, atol=1e-4, rtol=0)
            torch.testing.assert_close(torch.tensor(used), want_used, atol=1e-4, rtol=0)
            torch.testing.assert_close(
                torch.tensor(ent), -(logp.exp() * logp).sum(-1), atol=1e-4, rtol=0
            )
            assert all(math.isfinite(u) and u <= 0 for u in used)  # always a kept token
            checked += len(ids)
    assert checked > 20


# -- grading -----------------------------------------------------------------------------------
def test_samples_are_graded_by_the_task_grader(tiny_model):
    task = make_task(5)
    ss = sample(tiny_model, task, k=4, seed=0, cache=False, progress=False)
    assert len(task.graded) == 5 * 4
    for s in ss:
        assert s.correct == [("e" in t) for t in s.texts] and s.gold == ["e"]
        assert s.texts == [
            tiny_model.tokenizer.decode(i, skip_special_tokens=True) for i in s.answer_ids
        ]
        assert s.task == "tiny" and s.user_turn in QUESTIONS
    assert {c for s in ss for c in s.correct} == {True, False}


def test_samples_of_a_generation_set(tiny_model, caplog):
    """A GenerationSet source: its prompts and settings; graded by task=, or by the task its
    meta names (a registered task); a task that cannot be loaded leaves them ungraded."""
    from knowlens.tasks import load_task

    cap = load_task("capitals", limit=4)
    gens = generate(tiny_model, cap, max_new_tokens=5, stop_on_newline=False, progress=False)
    ss = sample(tiny_model, gens, k=3, progress=False)
    assert ss.example_ids == gens.example_ids and ss.meta["source"] == "generations"
    assert ss.meta["max_new_tokens"] == 5 and ss.meta["stop_on_newline"] is False
    by_id = {ex.id: ex for ex in cap.examples}
    for s, g in zip(ss, gens, strict=True):
        assert s.prompt_ids == g.prompt_ids and s.prompt == g.prompt and s.gold == g.gold
        assert s.correct == [cap.grade(by_id[s.example_id], t).correct for t in s.texts]
        assert all(len(i) <= 5 for i in s.answer_ids)
    # the same prompts from the task itself: the same entry
    direct = sample(tiny_model, cap, k=3, max_new_tokens=5, stop_on_newline=False)
    assert direct.meta["cache_hit"] is True and direct.meta["cache_key"] == ss.meta["cache_key"]

    task = make_task(3)
    tiny_gens = generate(tiny_model, task, progress=False)
    with caplog.at_level(logging.WARNING, logger="knowlens.generation"):
        ungraded = sample(tiny_model, tiny_gens, k=2, cache=False, progress=False)
    assert all(s.correct == [None, None] for s in ungraded)
    assert any("ungraded" in r.getMessage() and "'tiny'" in r.getMessage() for r in caplog.records)
    graded = sample(tiny_model, tiny_gens, k=2, task=task, cache=False, progress=False)
    assert [s.correct for s in graded] == [[("e" in t) for t in s.texts] for s in graded]
    assert [s.answer_ids for s in graded] == [s.answer_ids for s in ungraded]


# -- cache -------------------------------------------------------------------------------------
def test_cache_hit_and_key_changes(tiny_model, monkeypatch):
    task = make_task(4)
    task.max_new_tokens = 4
    calls = count_batches(monkeypatch)
    first = sample(tiny_model, task, k=3, batch_size=2, progress=False)
    assert first.meta["cache_hit"] is False and len(calls) == 2
    entry = entry_dir("samples", first.meta["cache_key"])
    verify_entry(entry)  # published with checksums
    task.graded.clear()
    again = sample(tiny_model, task, k=3, batch_size=2, progress=False)
    assert again.meta["cache_hit"] is True and len(calls) == 2 and task.graded == []
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame(), check_exact=True)
    m = again.meta
    assert (m["k"], m["temperature"], m["top_p"], m["seed"], m["max_new_tokens"]) == (
        3,
        1.0,
        1.0,
        0,
        4,
    )
    assert m["fingerprint"] == m["model_fingerprint"] == tiny_model.fingerprint
    assert m["task"] == "tiny" and m["n"] == 4
    keys = {first.meta["cache_key"]}
    changes: list[dict[str, Any]] = [
        dict(k=2),
        dict(seed=1),
        dict(temperature=0.9),
        dict(top_p=0.8),
        dict(max_new_tokens=3),
        dict(batch_size=1),
        dict(stop_on_newline=False),
    ]
    for change in changes:
        other = sample(tiny_model, task, **{"k": 3, "batch_size": 2, **change}, progress=False)
        assert other.meta["cache_hit"] is False, change
        keys.add(other.meta["cache_key"])
    assert len(keys) == 8


def test_damaged_entry_is_moved_aside_and_recomputed(tiny_model, caplog):
    task = make_task(4)
    first = sample(tiny_model, task, k=2, progress=False)
    entry = entry_dir("samples", first.meta["cache_key"])
    pq = entry / "samples.parquet"
    pq.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])
    task.graded.clear()
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        again = sample(tiny_model, task, k=2, progress=False)
    warned = [r.getMessage() for r in caplog.records if r.name == "knowlens.cache"]
    assert len(warned) == 1 and "damaged entry" in warned[0]
    assert again.meta["cache_hit"] is False and len(task.graded) == 8  # recomputed
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame(), check_exact=True)
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    verify_entry(entry)
    assert sample(tiny_model, task, k=2, progress=False).meta["cache_hit"] is True


def test_a_killed_run_resumes_from_finished_batches(tiny_model, tmp_path, monkeypatch):
    kw: dict[str, Any] = dict(k=3, batch_size=2, temperature=1.3, seed=5, progress=False)
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "other-cache"))
    ref = sample(tiny_model, make_task(), **kw)
    ref_bytes = (entry_dir("samples", ref.meta["cache_key"]) / "samples.parquet").read_bytes()
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "kl-cache"))

    calls = count_batches(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        sample(tiny_model, make_task(), **kw)
    (partial,) = list((cache_root() / "samples").iterdir())
    assert partial.name.startswith(".partial-")
    assert sorted(p.name for p in partial.iterdir()) == ["00000.json", "00001.json"]

    calls = count_batches(monkeypatch)
    ss = sample(tiny_model, make_task(), **kw)
    assert calls == [2, 1] and ss.meta["batches_reused"] == 2  # only batches 2 and 3 ran
    pd.testing.assert_frame_equal(ss.to_frame(), ref.to_frame(), check_exact=True)
    entry = entry_dir("samples", ss.meta["cache_key"])
    assert (entry / "samples.parquet").read_bytes() == ref_bytes  # byte-identical
    assert not partial.exists()


def test_a_damaged_resume_record_is_recomputed(tiny_model, monkeypatch):
    kw: dict[str, Any] = dict(k=2, batch_size=3, progress=False)
    count_batches(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        sample(tiny_model, make_task(), **kw)
    (partial,) = list((cache_root() / "samples").iterdir())
    import json

    rec = json.loads((partial / "00000.json").read_text())
    assert len(rec["rows"]) == 3 * 2  # k rows per example
    rec["rows"][0]["sampling_logprobs"][0] += 1.0  # forged, old digest
    (partial / "00000.json").write_text(json.dumps(rec))
    calls = count_batches(monkeypatch)
    ss = sample(tiny_model, make_task(), **kw)
    assert len(calls) == 2 and ss.meta["batches_reused"] == 1
    fresh = sample(tiny_model, make_task(), **{**kw, "cache": False})
    pd.testing.assert_frame_equal(ss.to_frame(), fresh.to_frame(), check_exact=True)


# -- SampleSet ---------------------------------------------------------------------------------
def _hand_made() -> SampleSet:
    row = Sample(
        example_id="a",
        task="t",
        prompt="p",
        user_turn=None,
        prompt_ids=[5, 6],
        texts=["", "x y"],
        answer_ids=[[], [7, 8]],
        token_logprobs=[[], [-0.1, -2.5]],
        sampling_logprobs=[[], [-0.05, -1.25]],
        token_entropies=[[], [0.3, 1.7]],
        stop_reasons=["eos", "length"],
        correct=[None, True],
        gold=["x"],
    )
    return SampleSet([row], {"k": 2, "cache_key": "abc"})


def test_sample_set_save_load_roundtrip(tiny_model, tmp_path):
    ss = sample(tiny_model, make_task(4), k=3, cache=False, progress=False)
    ss.save(tmp_path / "s")
    back = SampleSet.load(tmp_path / "s")
    pd.testing.assert_frame_equal(back.to_frame(), ss.to_frame(), check_exact=True)
    assert back.rows == ss.rows and back.meta["cache_key"] == ss.meta["cache_key"]
    hand = _hand_made()
    hand.save(tmp_path / "h")
    back = SampleSet.load(tmp_path / "h")
    assert back.rows == hand.rows and back.k == 2  # empty answers, None grades, None turn
    assert type(back.rows[0].answer_ids[1][0]) is int
    assert type(back.rows[0].token_logprobs[1][0]) is float
    (tmp_path / "h" / "samples.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError) as e:
        SampleSet.load(tmp_path / "h")
    assert "sample again" in one_line(e) and str(tmp_path / "h") in str(e.value)


def test_align_subset_and_sampled_generations(tiny_model):
    task = make_task(5)
    gens = generate(tiny_model, task, progress=False)
    ss = sample(tiny_model, task, k=2, progress=False)
    rev = gens.subset(list(reversed(gens.example_ids))[:3])
    aligned = ss.align(rev)
    assert aligned.example_ids == rev.example_ids == ["q4", "q3", "q2"]
    assert aligned.meta == ss.meta and aligned.k == 2
    with pytest.raises(DataError) as e:
        ss.subset(["q0", "q1"]).align(gens)
    msg = one_line(e)
    assert "3 example id(s)" in msg and "'q2'" in msg and "kl.sample(model, gens" in msg
    other = sample(tiny_model, make_task(5, gold="x"), k=2, cache=False, progress=False)
    other.rows[1].prompt_ids = other.rows[1].prompt_ids[:-1]
    with pytest.raises(DataError, match="'q1' was sampled from another prompt"):
        other.align(gens)
    assert ss.subset(np.array([True, False, True, False, False])).example_ids == ["q0", "q2"]
    assert ss.subset(np.array([4, 0])).example_ids == ["q4", "q0"]
    with pytest.raises(DataError, match="'nope'"):
        ss.subset(["nope"])

    with pytest.raises(DataError) as e:
        SampledGenerations(gens, ss.subset(list(reversed(ss.example_ids))))
    assert "SampledGenerations.of" in one_line(e)
    x = SampledGenerations.of(rev, ss)
    assert len(x) == 3 and x.example_ids == rev.example_ids
    np.testing.assert_array_equal(x.correct, rev.correct)
    sub = x.subset(np.array([2, 0]))
    assert sub.example_ids == ["q2", "q4"] == sub.samples.example_ids


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,names",
    [
        (dict(k=0), ("k must be a positive integer", "0")),
        (dict(k=2.5), ("k must be", "2.5")),
        (dict(k=True), ("k must be", "True")),
        (dict(temperature=0), ("temperature must be", "kl.generate")),
        (dict(temperature=-1.0), ("temperature must be", "-1.0")),
        (dict(temperature=float("nan")), ("temperature must be", "nan")),
        (dict(temperature=float("inf")), ("temperature must be", "inf")),
        (dict(temperature="1"), ("temperature must be", "'1'")),
        (dict(top_p=0.0), ("top_p must be a number in (0, 1]", "0.0")),
        (dict(top_p=1.5), ("top_p must be", "1.5")),
        (dict(top_p=float("nan")), ("top_p must be", "nan")),
        (dict(seed="x"), ("seed must be an integer", "'x'")),
        (dict(seed=1.5), ("seed must be an integer", "1.5")),
        (dict(batch_size=0), ("batch_size must be a positive integer", "0")),
        (dict(max_new_tokens=0), ("max_new_tokens must be a positive integer", "0")),
        (dict(stop_on_newline="yes"), ("stop_on_newline must be", "'yes'")),
        (dict(limit=0), ("limit must be a positive integer", "0")),
        (dict(split="train"), ("split='train'", "drop split=")),
        (dict(task="tiny"), ("task= grades the samples of a GenerationSet",)),
    ],
)
def test_bad_input_is_one_line(tiny_model, monkeypatch, kw: dict[str, Any], names):
    calls = count_batches(monkeypatch)
    with pytest.raises(KnowlensError) as e:
        sample(tiny_model, make_task(2), progress=False, **kw)
    msg = one_line(e)
    for n in names:
        assert n in msg, msg
    assert calls == []  # nothing decoded


def test_bad_sources_and_models_are_one_line(tiny_model):
    cases = [
        (KnowlensError, lambda: sample(tiny_model, 42), "source must be a Task"),
        (DataError, lambda: sample(tiny_model, make_task(0)), "has no examples"),
        (
            KnowlensError,
            lambda: sample(cast(Any, object()), make_task(2)),
            "must be a knowlens ModelHandle",
        ),
        (KnowlensError, lambda: sample(tiny_model, "capitls"), "capitals"),
    ]
    for kind, call, text in cases:
        with pytest.raises(kind) as e:
            call()
        assert text in one_line(e)
    empty = generate(tiny_model, make_task(2), cache=False, progress=False).subset([])
    with pytest.raises(DataError, match="no rows"):
        sample(tiny_model, empty)


def test_sampling_raises_no_warnings(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ss = sample(tiny_model, make_task(3), k=2, temperature=0.8, top_p=0.9, progress=False)
    assert len(ss) == 3 and ss.k == 2


# -- README ------------------------------------------------------------------------------------
def test_readme_sampling_snippet_runs(tiny_model, monkeypatch, capsys):
    """The README's sampling block runs as written, on the tiny model in place of SmolLM2."""
    import knowlens as kl

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Sampled answers", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found is not None
    code = found.group(1)
    assert "kl.sample(" in code
    specs: list[str] = []

    def fake_load_model(spec, **kw):
        specs.append(spec)
        return tiny_model

    monkeypatch.setattr(kl, "load_model", fake_load_model)
    exec(compile(code, "README.md", "exec"), {})
    assert specs == ["smollm2-135m-instruct"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and printed[-1] == "True"
