"""Batched greedy generation: equality with one-at-a-time HF generate, statistics, cache."""

from __future__ import annotations

import pytest
import torch

from _tasks import QUESTIONS, RecordingTask, examples
from conftest import build_tiny_llama
from knowlens._cache import cache_root
from knowlens.errors import DataError, KnowlensError
from knowlens.generation import (
    GenerationSettings,
    char_span_to_token_span,
    generate,
    generate_examples,
    generate_texts,
)
from knowlens.models import handle_from_objects
from knowlens.tasks import Example, GradeResult


class TinyTask(RecordingTask):
    """'correct' when the answer contains the gold string; span = first match, or (for a
    non-empty wrong answer) its first two characters."""

    def _grade(self, example: Example, answer: str) -> GradeResult:
        gold = example.answers[0]
        at = answer.find(gold)
        if at >= 0:
            return GradeResult(True, "contains", (at, at + len(gold)), gold)
        span = (0, min(2, len(answer))) if answer else None
        return GradeResult(False, "contains", span, answer[:2] or None)


def make_task(n: int = len(QUESTIONS), gold: str = "e") -> TinyTask:
    return TinyTask(examples(n, gold, topic="t"))


@pytest.fixture(scope="module")
def eos_model(tiny_model):
    """The tiny model with an EOS logit boosted wherever token 43 would win, so some rows stop
    early on EOS while others run to the length limit (exercises batch pruning)."""
    model = build_tiny_llama(len(tiny_model.tokenizer))
    with torch.no_grad():
        w = model.lm_head.weight
        w[2] = w[43] * 1.05
    return handle_from_objects(model, tiny_model.tokenizer, name="tiny-eos")


def hf_greedy(handle, prompt_ids: list[int], max_new: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    out = handle.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        do_sample=False,
        pad_token_id=handle.tokenizer.pad_token_id,
    )[0, len(prompt_ids) :].tolist()
    return out[: out.index(2)] if 2 in out else out


def test_batched_equals_one_at_a_time_hf_generate(eos_model):
    task = make_task()
    gens = generate(
        eos_model, task, batch_size=3, stop_on_newline=False, cache=False, progress=False
    )
    assert gens.example_ids == [ex.id for ex in task.examples]  # task order restored
    reasons = {g.stop_reason for g in gens}
    assert reasons == {"eos", "length"}, reasons  # both kinds of row exist in a batch
    for g in gens:
        ref = hf_greedy(eos_model, g.prompt_ids, task.max_new_tokens)
        assert g.answer_ids == ref, g.example_id
        assert len(g.token_logprobs) == len(g.token_entropies) == len(g.answer_ids)
        assert g.stop_reason == ("eos" if len(ref) < task.max_new_tokens else "length")
        # the chat template was applied and tokenised without extra special tokens
        assert g.prompt.startswith("<|user|>") and g.prompt.endswith("<|assistant|>")
        assert g.prompt_ids == eos_model.tokenizer(g.prompt, add_special_tokens=False)["input_ids"]


def test_logprobs_and_entropies_match_a_direct_forward(eos_model):
    gens = generate(eos_model, make_task(), batch_size=4, cache=False, progress=False)
    for g in gens:
        if not g.answer_ids:
            continue
        ids = torch.tensor([g.prompt_ids + g.answer_ids])
        with torch.no_grad():
            logp = torch.log_softmax(eos_model.model(ids).logits[0].float(), -1)
        p = len(g.prompt_ids)
        steps = logp[p - 1 : p - 1 + len(g.answer_ids)]
        want_lp = steps.gather(1, torch.tensor(g.answer_ids)[:, None])[:, 0]
        want_ent = -(steps.exp() * steps).sum(-1)
        torch.testing.assert_close(torch.tensor(g.token_logprobs), want_lp, atol=1e-4, rtol=0)
        torch.testing.assert_close(torch.tensor(g.token_entropies), want_ent, atol=1e-4, rtol=0)
        # greedy: every generated token is the argmax of its step
        assert g.answer_ids == steps.argmax(-1).tolist()


def test_batch_size_and_order_do_not_change_results(eos_model):
    task = make_task()
    a = generate(eos_model, task, batch_size=1, cache=False, progress=False)
    b = generate(eos_model, task, batch_size=16, cache=False, progress=False)
    assert [g.answer_ids for g in a] == [g.answer_ids for g in b]
    for x, y in zip(a, b, strict=True):
        assert x.token_logprobs == pytest.approx(y.token_logprobs, abs=1e-4)


def test_grading_fields_and_exact_answer_token_span(tiny_model):
    task = make_task()
    gens = generate(tiny_model, task, cache=False, progress=False)
    tok = tiny_model.tokenizer
    assert sorted(task.graded) == sorted(ex.id for ex in task.examples)
    for g in gens:
        assert g.task == "tiny" and g.gold == ["e"] and g.topic == "t" and g.grader == "contains"
        assert g.answer == tok.decode(g.answer_ids, skip_special_tokens=True)
        assert g.correct == ("e" in g.answer)
        if g.exact_answer_chars is None:
            assert g.exact_answer_tokens is None
            continue
        cs, ce = g.exact_answer_chars
        assert g.exact_answer == g.answer[cs:ce]
        s, e = g.exact_answer_tokens
        before = len(tok.decode(g.answer_ids[:s], skip_special_tokens=True))
        through = len(tok.decode(g.answer_ids[:e], skip_special_tokens=True))
        assert before <= cs and through >= ce  # the tokens cover the span ...
        assert len(tok.decode(g.answer_ids[: s + 1], skip_special_tokens=True)) > cs
        assert len(tok.decode(g.answer_ids[: e - 1], skip_special_tokens=True)) < ce  # ... tightly
    assert any(g.exact_answer_tokens for g in gens)


def test_char_span_to_token_span_on_real_text(tiny_model):
    tok = tiny_model.tokenizer
    text = "The capital of France is Paris."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    at = text.index("Paris")
    s, e = char_span_to_token_span(tok, ids, (at, at + 5))
    assert "Paris" in tok.decode(ids[s:e])
    assert "Paris" not in tok.decode(ids[s + 1 : e]) and "Paris" not in tok.decode(ids[s : e - 1])
    assert char_span_to_token_span(tok, ids, None) is None
    assert char_span_to_token_span(tok, ids, (3, 3)) is None
    assert char_span_to_token_span(tok, ids, (500, 510)) is None


def test_stop_on_newline(tiny_model):
    """Boost the newline token: rows stop at it once they have text, and the answer is the
    same tokens as decoding without the newline stop, cut before that token."""
    tok = tiny_model.tokenizer
    nl = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(nl) == 1
    model = build_tiny_llama(len(tok))
    with torch.no_grad():
        model.lm_head.weight[nl[0]] = model.lm_head.weight[7] * 1.05
    h = handle_from_objects(model, tok, name="tiny-nl")
    task = make_task()
    on = generate(h, task, stop_on_newline=True, cache=False, progress=False)
    off = generate(h, task, stop_on_newline=False, cache=False, progress=False)
    assert "newline" in {g.stop_reason for g in on}
    for a, b in zip(on, off, strict=True):
        if a.stop_reason == "newline":
            n = len(a.answer_ids)
            assert b.answer_ids[:n] == a.answer_ids and b.answer_ids[n] == nl[0]
            assert a.answer.strip() and "\n" not in a.answer.strip()
        else:
            assert a.answer_ids == b.answer_ids


def test_generate_cache_reuse_and_key_changes(tiny_model):
    task = make_task(4)
    first = generate(tiny_model, task, progress=False)
    assert first.meta["cache_hit"] is False
    assert (cache_root() / "generations" / first.meta["cache_key"] / "generations.parquet").exists()
    task.graded.clear()
    again = generate(tiny_model, task, progress=False)
    assert again.meta["cache_hit"] is True and task.graded == []  # nothing recomputed
    assert again.to_frame().equals(first.to_frame())
    assert again.meta["model_fingerprint"] == tiny_model.fingerprint
    assert again.meta["task"] == "tiny" and again.meta["n"] == 4
    # batch size, decoding settings and task version are all part of the key
    other = generate(tiny_model, task, batch_size=2, progress=False)
    assert other.meta["cache_hit"] is False and other.meta["cache_key"] != first.meta["cache_key"]
    assert generate(tiny_model, task, batch_size=2, progress=False).meta["cache_hit"] is True
    assert generate(tiny_model, task, max_new_tokens=3, progress=False).meta["cache_hit"] is False
    task.version = "2"
    assert generate(tiny_model, task, progress=False).meta["cache_hit"] is False


def test_cached_numbers_do_not_depend_on_the_cache_history(eos_model):
    """Log-probs differ by ~1e-6 between batch sizes, so each batch size has its own entry:
    whatever ran first, a run returns exactly what an uncached run of its config returns."""
    import pandas as pd

    task = make_task()
    fresh = {
        bs: generate(eos_model, task, batch_size=bs, cache=False, progress=False) for bs in (1, 16)
    }
    for bs in (1, 16, 1, 16):  # interleaved: the second round is served from the cache
        got = generate(eos_model, task, batch_size=bs, progress=False)
        pd.testing.assert_frame_equal(got.to_frame(), fresh[bs].to_frame(), check_exact=True)
        assert got.meta["settings"]["batch_size"] == bs


def test_generate_texts_ungraded(tiny_model):
    outs = generate_texts(
        tiny_model,
        ["Hi", "What is the capital of France?"],
        max_new_tokens=5,
        cache=False,
        progress=False,
    )
    assert outs.example_ids == ["0", "1"]
    assert all(g.correct is None and g.grader == "none" for g in outs)
    assert all(len(g.answer_ids) <= 5 for g in outs)
    import numpy as np

    assert np.isnan(outs.correct).all()


def test_generate_examples_is_the_pure_worker(tiny_model):
    task = make_task(3)
    settings = GenerationSettings(max_new_tokens=4, batch_size=2, task="tiny")
    rows = generate_examples(tiny_model, task.examples, task.prompt, task.grade, settings)
    ref = generate(tiny_model, task, max_new_tokens=4, cache=False, progress=False)
    assert [r.answer_ids for r in rows] == [g.answer_ids for g in ref]
    assert not (cache_root() / "generations").exists()


def test_bad_input_is_one_line(tiny_model):
    cases = [
        (DataError, lambda: generate(tiny_model, make_task(0), progress=False)),
        (KnowlensError, lambda: generate(tiny_model, make_task(2), max_new_tokens=-1)),
        (KnowlensError, lambda: generate(tiny_model, make_task(2), batch_size=0)),
        (KnowlensError, lambda: generate_texts(tiny_model, "just one string")),
        (DataError, lambda: generate_texts(tiny_model, [])),
        (KnowlensError, lambda: generate_texts(tiny_model, ["a", "b"], ids=["x", "x"])),
    ]
    for kind, call in cases:
        with pytest.raises(kind) as e:
            call()
        assert "\n" not in str(e.value) and len(str(e.value)) > 20


def test_rows_record_the_user_turn_and_it_survives_the_cache(tiny_model):
    """Each row keeps prompt_fn(example) (before the chat template); it is saved and loaded with
    the entry, and equals what parsing the templated prompt recovers, so questions for query
    estimators are unchanged. An entry written before the column loads with user_turn=None."""
    import pandas as pd

    from knowlens._types import GenerationSet
    from knowlens.estimators import user_turn

    task = make_task()
    first = generate(tiny_model, task, progress=False)
    assert [g.user_turn for g in first] == QUESTIONS
    assert all(g.prompt != g.user_turn for g in first)  # templated: the field is not the prompt
    assert [user_turn(g.prompt) for g in first] == QUESTIONS  # the template parser agrees
    again = generate(tiny_model, task, progress=False)
    assert again.meta["cache_hit"] is True and [g.user_turn for g in again] == QUESTIONS
    plain = generate(tiny_model, task, use_chat_template=False, cache=False, progress=False)
    assert [g.user_turn for g in plain] == [g.prompt for g in plain] == QUESTIONS
    texts = generate_texts(tiny_model, ["Hi", "Berlin"], max_new_tokens=2, cache=False)
    assert [g.user_turn for g in texts] == ["Hi", "Berlin"]

    entry = cache_root() / "generations" / first.meta["cache_key"]
    df = pd.read_parquet(entry / "generations.parquet")
    assert list(df["user_turn"]) == QUESTIONS
    old = GenerationSet.from_frame(df.drop(columns=["user_turn"]))
    assert [g.user_turn for g in old] == [None] * len(QUESTIONS)
    assert [user_turn(g) for g in old] == QUESTIONS  # old rows: recovered from the prompt
    # a merged frame where one shard predates the column (NaN there) -> None, not nan
    mixed = GenerationSet.from_frame(pd.concat([df.iloc[:2].drop(columns=["user_turn"]), df[2:]]))
    assert [g.user_turn for g in mixed] == [None, None, *QUESTIONS[2:]]
