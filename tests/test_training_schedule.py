"""Length-bucketed batches (``training.batch_schedule``) for the LoRA estimators: less padding,
deterministic and resumable; scoring in length order equals one-at-a-time scoring."""

from __future__ import annotations

import numpy as np
import pytest

from knowlens._types import Generation, GenerationSet
from knowlens.errors import KnowlensError
from knowlens.estimators import LoRAProbe, LoRAPrompt
from knowlens.estimators._text import encode
from knowlens.training import batch_schedule, unfilled_fraction
from test_estimators_model import tiny_gens


def plain_reference(n, batch_size, steps, seed):
    """The LoRA estimators' schedule before bucketing (shuffled epochs cut into batches)."""
    rng = np.random.default_rng(seed)
    bs = min(batch_size, n)
    order = np.concatenate([rng.permutation(n) for _ in range(steps * bs // n + 1)])
    return [order[i * bs : (i + 1) * bs] for i in range(steps)]


def test_plain_schedule_is_unchanged():
    for n, bs, steps, seed in [(10, 4, 7, 0), (3, 4, 5, 2), (64, 4, 60, 9)]:
        got = batch_schedule(n, bs, steps, seed)
        want = plain_reference(n, bs, steps, seed)
        assert len(got) == steps and all(
            np.array_equal(a, b) for a, b in zip(got, want, strict=True)
        )
        lengths = list(range(n))
        again = batch_schedule(n, bs, steps, seed, lengths=lengths, window=1)
        assert all(np.array_equal(a, b) for a, b in zip(again, want, strict=True))


def test_bucketed_schedule_pads_little_and_is_deterministic():
    lengths = np.random.default_rng(0).integers(20, 200, 100)
    plain = batch_schedule(100, 4, 75, 3)
    a = batch_schedule(100, 4, 75, 3, lengths=lengths)
    b = batch_schedule(100, 4, 75, 3, lengths=lengths)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))  # same seed, same batches
    assert all(len(x) == 4 for x in a)
    # 75 x 4 = 3 epochs: every row three times, as without bucketing
    assert np.array_equal(np.bincount(np.concatenate(a), minlength=100), np.full(100, 3))
    # a run shorter than a window trains on the plain schedule's rows, not the longest ones
    for steps in (3, 12, 31):
        plain_rows = np.sort(np.concatenate(batch_schedule(100, 4, steps, 3)))
        bucket_rows = np.sort(np.concatenate(batch_schedule(100, 4, steps, 3, lengths=lengths)))
        assert np.array_equal(plain_rows, bucket_rows)
    p_plain, p_bucket = unfilled_fraction(lengths, plain), unfilled_fraction(lengths, a)
    assert p_plain > 0.25 and p_bucket < 0.08, (p_plain, p_bucket)
    # another seed shuffles differently
    c = batch_schedule(100, 4, 75, 4, lengths=lengths)
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert unfilled_fraction([3, 1, 2], [[0, 1], [2]]) == pytest.approx(1 - 6 / 8)
    with pytest.raises(KnowlensError, match="got 2 lengths for 3 rows"):
        batch_schedule(3, 2, 2, 0, lengths=[1, 2])


def varied_gens(model, n=12):
    """Questions of very different lengths (the padding bucketing removes)."""
    tok = model.tokenizer
    rows = []
    for i in range(n):
        q = "What is the capital of France? " * (1 + (i * 5) % 7)
        prompt = model.format_prompt(q.strip())
        ans = " Paris" if i % 2 else " Rome"
        rows.append(
            Generation(
                example_id=f"v{i}",
                task="tiny",
                prompt=prompt,
                answer=ans,
                prompt_ids=encode(tok, prompt),
                answer_ids=tok.encode(ans, add_special_tokens=False),
                token_logprobs=[],
                token_entropies=[],
                correct=bool(i % 2),
                grader="test",
                exact_answer=ans.strip(),
                exact_answer_chars=(1, len(ans)),
                exact_answer_tokens=(0, 1),
            )
        )
    return GenerationSet(rows, {"fingerprint": model.fingerprint, "task": "tiny"})


@pytest.mark.parametrize("cls", [LoRAProbe, LoRAPrompt])
def test_lora_fits_pad_less_and_score_as_one_at_a_time(cls, tiny_model, tmp_path):
    gens = varied_gens(tiny_model)
    # all answers train (no validation split): the padding compared is of the same rows
    kw = dict(
        model=tiny_model,
        steps=9,
        batch_size=4,
        lr=3e-3,
        validation_fraction=0,
        progress=False,
        cache=False,
    )
    bucketed = cls(**kw).fit(gens)
    plain = cls(**kw, length_window=1).fit(gens)
    assert plain.train_padding_ > 0.2 and bucketed.train_padding_ < 0.5 * plain.train_padding_
    assert bucketed.cache_key() != plain.cache_key()  # other batches, another fit
    # deterministic: the same fit again gives the same numbers, bit for bit
    again = cls(**kw).fit(gens)
    assert again.loss_history_ == bucketed.loss_history_
    # scoring in length-sorted batches (order restored) = each answer alone, unpadded
    p = bucketed.predict_proba(gens)
    alone = bucketed.predict_proba(gens, batch_size=1)
    np.testing.assert_allclose(p, alone, rtol=0, atol=1e-5)
    # and the saved fit keeps its padding share
    loaded = cls.load(bucketed.save(tmp_path / "est"), model=tiny_model)
    assert loaded.train_padding_ == bucketed.train_padding_


def test_small_sets_still_learn_with_buckets(tiny_model):
    """All rows in one window: batches are fixed by length, their order is shuffled."""
    gens = tiny_gens(tiny_model, n=8)
    est = LoRAProbe(model=tiny_model, steps=40, lr=3e-3, progress=False, cache=False, seed=1)
    hist = np.array(est.fit(gens).loss_history_)
    assert hist[-6:].mean() < 0.8 * hist[:6].mean()
