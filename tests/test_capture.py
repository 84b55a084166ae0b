"""Hidden states captured while generating: parity with teacher-forced ``extract`` for every
selector, the same cache entries both ways, resume, dtype rules, bounded memory, reuse."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import knowlens as kl
from _tasks import RecordingTask, examples
from conftest import build_tiny_llama
from knowlens._cache import cache_root
from knowlens._types import GenerationSet
from knowlens.activations import (
    SELECTORS,
    HiddenStateCapture,
    extract,
    extract_reusing,
    generate_capturing,
    generate_with_activations,
)
from knowlens.errors import KnowlensError
from knowlens.generation import decode_window, generate, shared_prefix_lengths
from knowlens.models import handle_from_objects
from knowlens.tasks import Example, GradeResult

# Measured worst max|captured - extract| / max|layer| (float32, all layers) on this file's
# models is ~3e-7 (tiny Llama, 4 layers; see the _capture docstring for the embedded
# models); 1e-6 leaves room for other thread counts / BLAS builds.
REL_TOL = 1e-6


@dataclass
class SpanTask(RecordingTask):
    """A TaskLike whose exact-answer spans sit at the start, the middle or nowhere."""

    name: str = "spans"
    max_new_tokens: int = 7

    def _grade(self, example: Example, answer: str) -> GradeResult:
        i, n = int(example.id[1:]), len(answer)
        if i % 3 == 0 or n < 2:
            return GradeResult(False, "spans", None, None)
        s = 0 if i % 3 == 1 else n // 3
        return GradeResult(i % 2 == 0, "spans", (s, max(s + 1, 2 * n // 3)), answer[s:])


def make_task(n: int = 14) -> SpanTask:
    return SpanTask(examples(n, "x"))


@pytest.fixture(scope="module")
def model(tiny_model):
    """A 4-layer tiny Llama whose EOS / newline logits are tied to tokens it picks, so rows
    stop by EOS (one with an empty answer), by newline and by length in the same batches."""
    tok = tiny_model.tokenizer
    nl = tok("\n", add_special_tokens=False)["input_ids"][0]
    m = build_tiny_llama(len(tok), seed=1, n_layers=4)
    with torch.no_grad():
        w = m.lm_head.weight
        w[2] = w[211] * 1.05
        w[nl] = w[304] * 1.05
    return handle_from_objects(m, tok, name="tiny4-stops")


def assert_parity(acts, ref):
    """Same layout as ``extract``'s; values within REL_TOL of each layer's magnitude."""
    assert acts.shape == ref.shape and acts.values.dtype == ref.values.dtype
    assert acts.layers == ref.layers and acts.tokens == ref.tokens
    assert acts.example_ids == ref.example_ids
    np.testing.assert_array_equal(acts.mask, ref.mask)
    np.testing.assert_array_equal(acts.positions, ref.positions)
    assert acts.meta["exact_answer_found"] == ref.meta["exact_answer_found"]
    assert acts.meta["cache_key"] == ref.meta["cache_key"]
    a = np.asarray(acts.values, dtype=np.float32)
    r = np.asarray(ref.values, dtype=np.float32)
    scale = np.abs(r).max(axis=(0, 2, 3), keepdims=True)
    rel = float((np.abs(a - r) / scale).max())
    assert rel < REL_TOL, rel
    return rel


def test_rows_behind_a_shared_prefix_equal_teacher_forced_extract(model):
    """Prompts behind a common header: the decoder runs the header once, the capture takes
    its positions from that forward (``all`` keeps them, the range check sees them), and the
    states still equal ``extract``'s; observing changes no number."""
    header = "Answer the question below in a few words, as briefly and plainly as you can. "
    task = SpanTask(
        [dataclasses.replace(e, question=header + e.question) for e in examples(10, "x")]
    )
    kw = dict(batch_size=3, cache=False, progress=False)
    ref_gens = generate(model, task, **kw)
    assert min(shared_prefix_lengths([g.prompt_ids for g in ref_gens])) >= 16
    gens, sets = generate_capturing(
        model, task, [("all", "all"), ("all", "exact_answer"), ("all", "last_prompt")],
        dtype="float32", **kw,
    )  # fmt: skip
    assert sets is not None
    assert gens.to_frame().equals(ref_gens.to_frame())
    for acts in sets:
        ref = extract(
            model, gens, layers="all", tokens=acts.tokens, dtype="float32", cache=False,
            progress=False,
        )  # fmt: skip
        assert acts.meta["captured_while_generating"] == len(gens)
        assert_parity(acts, ref)


def forward_counter(handle):
    """Counts forwards of the whole model (a pre-hook on the CausalLM)."""
    calls = []
    h = handle.model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls, h


def test_every_selector_equals_teacher_forced_extract(model):
    task = make_task()
    kw = dict(batch_size=3, cache=False, progress=False)
    ref_gens = generate(model, task, **kw)
    reasons = {g.stop_reason for g in ref_gens}
    assert reasons == {"eos", "newline", "length"}, reasons
    assert any(not g.answer_ids for g in ref_gens)  # `last` falls back to the prompt
    assert {g.exact_answer_tokens is None for g in ref_gens} == {True, False}
    assert any(g.exact_answer_tokens and g.exact_answer_tokens[0] > 0 for g in ref_gens)

    gens, sets = generate_capturing(
        model, task, [("all", t) for t in SELECTORS], dtype="float32", **kw
    )
    assert sets is not None and [a.tokens for a in sets] == list(SELECTORS)
    # observing changes no token or number of the generations
    assert gens.to_frame().equals(ref_gens.to_frame())
    worst = {}
    for acts in sets:
        ref = extract(
            model, gens, layers="all", tokens=acts.tokens, dtype="float32", cache=False,
            progress=False,
        )  # fmt: skip
        assert acts.meta["captured_while_generating"] == len(gens)
        assert acts.meta["teacher_forced_rows"] == 0 and acts.meta["tokens_run"] == 0
        worst[acts.tokens] = assert_parity(acts, ref)
    assert max(worst.values()) > 0  # KV-cache attention is not bit-identical (else: no test)
    # one request alone gives the same values as several sharing the pass
    _, one = generate_with_activations(
        model, task, layers=[0, 2, 4], tokens="exact_answer_mean", dtype="float32", **kw
    )
    full = sets[SELECTORS.index("exact_answer_mean")]
    np.testing.assert_array_equal(one.values, full.values[:, [0, 2, 4]])


def test_entries_are_the_ones_generate_and_extract_write(model, tmp_path, monkeypatch):
    task = make_task()
    for order in ("joint first", "separate first"):
        monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / order))
        if order == "separate first":
            g0 = generate(model, task, batch_size=4, progress=False)
            a0 = extract(model, g0, layers=[1, -1], tokens="exact_answer", progress=False)
        calls, hook = forward_counter(model)
        try:
            gens, acts = generate_with_activations(
                model, task, layers=[1, -1], tokens="exact_answer", batch_size=4, progress=False
            )
        finally:
            hook.remove()
        if order == "joint first":
            assert not gens.meta["cache_hit"] and not acts.meta["cache_hit"]
            assert acts.values.dtype == np.float16  # auto: the values fit float16
            assert acts.meta["dtype_auto"] == "float16 (no value beyond +-65504)"
            g0 = generate(model, task, batch_size=4, progress=False)
            a0 = extract(model, g0, layers=[1, -1], tokens="exact_answer", progress=False)
            assert g0.meta["cache_hit"] and a0.meta["cache_hit"]
            # the float16 values land where teacher forcing puts them (1 ulp at most)
            ref = extract(
                model, g0, layers=[1, -1], tokens="exact_answer", cache=False, progress=False
            )
            diff = np.abs(ref.values.astype(np.float32) - acts.values.astype(np.float32))
            assert (diff <= np.abs(ref.values.astype(np.float32)) * 2**-10 + 1e-7).all()
        else:
            assert gens.meta["cache_hit"] and acts.meta["cache_hit"] and not calls
        assert gens.to_frame().equals(g0.to_frame())
        assert acts.meta["cache_key"] == a0.meta["cache_key"]
        assert acts.meta["path"] == a0.meta["path"]
        np.testing.assert_array_equal(acts.values, a0.values)
        names = sorted(p.name for p in (cache_root() / "activations").iterdir())
        assert names == [acts.meta["cache_key"]]  # no spool or partial folder left


def test_kl_generate_dispatches_on_layers(model):
    task = make_task(5)
    kw = dict(cache=False, progress=False)
    assert kl.generate is kl.activations.generate
    plain = kl.generate(model, task, **kw)
    assert isinstance(plain, GenerationSet)
    assert plain.to_frame().equals(generate(model, task, **kw).to_frame())
    gens, acts = kl.generate(model, task, layers=[0, -1], tokens="last", dtype="float32", **kw)
    assert gens.to_frame().equals(plain.to_frame())
    assert acts.layers == [0, 4] and acts.tokens == "last" and acts.values.dtype == np.float32
    _, acts2 = kl.generate(model, task, layers="all", **kw)  # extract's defaults
    assert acts2.tokens == "exact_answer" and acts2.values.dtype == np.float16
    for bad, words in (
        (dict(tokens="last"), "tokens= choose which hidden states"),
        (dict(dtype="float32", max_positions=4), "dtype, max_positions="),
        (dict(layers="all", tokens="middle"), "token selector"),
        (dict(layers=[9]), "out of range"),
        (dict(layers="all", extract_batch_size=0), "extract_batch_size must be"),
        (dict(layers="all", max_positions=0), "max_positions must be"),
    ):
        with pytest.raises(KnowlensError) as e:
            kl.generate(model, task, **kw, **bad)
        assert "\n" not in str(e.value) and words in str(e.value), str(e.value)


class _StopAfterFirstBatch:
    def forward_done(self, rows, mask, prefixes=None):
        pass

    def prefix_done(self, prefixes, mask):
        pass

    def prefixes_dropped(self, prefixes):
        pass

    def rows_done(self, rows, gens):
        raise KeyboardInterrupt  # after batch 0 was recorded for resume


def test_rows_of_a_resumed_batch_are_teacher_forced(model):
    task = make_task()
    unit = decode_window(1)  # prompts per resume record
    assert unit < len(task.examples)
    with contextlib.suppress(KeyboardInterrupt):
        generate(model, task, batch_size=1, progress=False, observer=_StopAfterFirstBatch())
    gens, acts = generate_with_activations(
        model, task, layers="all", tokens="all", dtype="float32", batch_size=1, progress=False
    )
    assert gens.meta["batches_reused"] == 1
    assert acts.meta["teacher_forced_rows"] == unit and acts.meta["tokens_run"] > 0
    assert acts.meta["captured_while_generating"] == len(gens) - unit
    ref = extract(
        model, gens, layers="all", tokens="all", dtype="float32", cache=False, progress=False
    )
    assert_parity(acts, ref)
    full = generate(model, task, batch_size=1, cache=False, progress=False)
    assert gens.to_frame().equals(full.to_frame())


def _big(tiny_model):
    """The tiny Llama with embeddings ~2e5: past float16's 65504 (like Gemma 3)."""
    m = build_tiny_llama(len(tiny_model.tokenizer), seed=3)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(1e7)
    return handle_from_objects(m, tiny_model.tokenizer, name="tiny-big")


def test_auto_dtype_overflow_and_explicit_float16_as_extract(tiny_model):
    big = _big(tiny_model)
    task = make_task(6)
    kw = dict(layers=[0, 1], tokens="last", batch_size=3, progress=False)
    gens, acts = generate_with_activations(big, task, **kw)  # dtype="auto"
    assert acts.values.dtype == np.float32 and acts.meta["dtype"] == "float32"
    assert acts.meta["dtype_auto"].startswith("float32 (float16 overflow: max |x| = ")
    memo = json.loads((cache_root() / "model-ranges" / f"{big.fingerprint}.json").read_text())
    assert memo["float16_overflow_max_abs"] > 65504
    again = extract(big, gens, layers=[0, 1], tokens="last", progress=False)  # auto, remembered
    assert again.meta["cache_hit"] and again.meta["cache_key"] == acts.meta["cache_key"]
    ref = extract(
        big, gens, layers=[0, 1], tokens="last", dtype="float32", cache=False, progress=False
    )
    assert_parity(acts, ref)

    _, a16 = generate_with_activations(big, task, dtype="float16", cache=False, **kw)
    r16 = extract(
        big, gens, layers=[0, 1], tokens="last", dtype="float16", cache=False, progress=False
    )
    assert a16.values.dtype == np.float16 and np.isfinite(a16.values).all()
    assert a16.meta["fp16_overflow_max"] > 65504 and r16.meta["fp16_overflow_max"] > 65504
    assert_parity(a16, r16)


def test_states_are_kept_for_rows_in_flight_only(model, monkeypatch):
    import knowlens.activations._capture as cap

    in_flight: list[int] = []
    kept: list[tuple[int, int]] = []  # (positions kept, answer tokens + 1) per finished row
    made: list[HiddenStateCapture] = []

    class Recording(HiddenStateCapture):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

        def forward_done(self, rows, mask, prefixes=None):
            super().forward_done(rows, mask, prefixes)
            in_flight.append(len(self._pieces))

        def rows_done(self, rows, gens):
            for r, g in zip(rows, gens, strict=True):
                kept.append((sum(len(p) for p, _ in self._pieces[r]), len(g.answer_ids) + 1))
            super().rows_done(rows, gens)

    monkeypatch.setattr(cap, "HiddenStateCapture", Recording)
    generate_with_activations(
        model, make_task(), layers="all", tokens="exact_answer", batch_size=1, cache=False,
        progress=False,
    )  # fmt: skip
    (capture,) = made
    # states wait for their grading unit (a resume window) at most, then they are freed
    assert in_flight and max(in_flight) <= decode_window(1) < 14
    assert not capture._pieces and not capture._consumed
    # an exact-answer selector keeps the last prompt token and the answer, not the prompt
    assert len(kept) == 14 and all(a == b for a, b in kept), kept
    blocks = model.decoder_layers()
    assert not any(b._forward_hooks or b._forward_pre_hooks for b in blocks)  # hooks removed


def test_extract_reusing_copies_a_renamed_subset_without_a_forward(model):
    task = make_task()
    gens, sets = generate_capturing(
        model, task, [([1, 2, 4], "exact_answer"), ("all", "all")], progress=False
    )
    assert sets is not None
    keep = np.array([i % 2 == 0 for i in range(len(gens))])
    view = GenerationSet(
        [dataclasses.replace(g, example_id=f"spans/{g.example_id}") for g in gens.subset(keep)],
        {"task": "spans"},
    )
    sources = [(gens, a) for a in sets]
    calls, hook = forward_counter(model)
    try:
        got = extract_reusing(model, view, sources, layers=[4, 2], tokens="exact_answer")
        got_all = extract_reusing(model, view, sources, layers=[0, 3], tokens="all")
    finally:
        hook.remove()
    assert not calls and not got.meta["cache_hit"] and got.meta["copied_from"]
    for acts, kw in ((got, dict(layers=[2, 4], tokens="exact_answer")),
                     (got_all, dict(layers=[0, 3], tokens="all"))):  # fmt: skip
        ref = extract(model, view, cache=False, progress=False, dtype="float16", **kw)
        assert acts.example_ids[0] == "spans/q0"
        diff = np.abs(ref.values.astype(np.float32) - acts.values.astype(np.float32))
        assert (diff <= np.abs(ref.values.astype(np.float32)) * 2**-10 + 1e-7).all()
        hit = extract(model, view, progress=False, **kw)  # the very entry extract uses
        assert hit.meta["cache_hit"] and hit.meta["cache_key"] == acts.meta["cache_key"]
    # a row that was not captured: plain extract (the model runs)
    row = dataclasses.replace(gens.rows[1], answer_ids=[5, 6], exact_answer_tokens=None)
    other = GenerationSet([row], {})
    calls, hook = forward_counter(model)
    try:
        extract_reusing(model, other, sources, layers=[4], tokens="exact_answer", progress=False)
    finally:
        hook.remove()
    assert calls


class _Ctx:
    """What the analysis helpers read of a ``RunContext``."""

    def __init__(self):
        from knowlens.executors import LocalExecutor

        self.executor, self.use_cache, self.counts = LocalExecutor(), True, []

    def record_task(self, task, split):
        pass

    @contextlib.contextmanager
    def step(self, what, **kw):
        yield

    def count_cache(self, kind, hit):
        self.counts.append((kind, hit))


@pytest.mark.parametrize("sharded", [False, True], ids=["local", "sharded"])
def test_analysis_helpers_read_states_while_generating(model, sharded):
    """On the local executor and on a sharded one (blocks computed here: the Ray path's
    stages without Ray), the analyses' helpers read states while generating and copy them."""
    from knowlens.experiments._common import (
        _CAPTURED,
        activation_needs,
        activations,
        decided,
        generations,
    )

    needs = activation_needs(["logistic", "probe", "logit", "mahalanobis"], model)
    assert needs == [([4], "exact_answer"), ([4], "last")]
    ctx = _Ctx()
    if sharded:
        from test_executors import BlocksHere

        ctx.executor = BlocksHere()
    gens = decided(generations(ctx, model, make_task(), "test", capture=needs))
    assert ("executor" in gens.meta) is sharded
    assert len(_CAPTURED[id(ctx)]) == 2
    calls, hook = forward_counter(model)
    try:
        acts = activations(ctx, model, gens, layers=[4], tokens="last")
    finally:
        hook.remove()
    assert not calls and acts.meta["cache_hit"]  # the joint pass wrote this very entry
    ref = extract(model, gens, layers=[4], tokens="last", dtype="float32", cache=False)
    diff = np.abs(ref.values - acts.values.astype(np.float32))
    assert (diff <= np.abs(ref.values) * 2**-10 + 1e-7).all()
    key = id(ctx)
    del ctx
    assert key not in _CAPTURED  # dropped with the run context


@pytest.mark.real_model
@pytest.mark.slow  # converts / loads both embedded models (minutes the first time)
@pytest.mark.parametrize(("spec", "tol"), [("smollm2-135m-instruct", 2e-5), ("gemma3-270m", 2e-5)])
def test_parity_on_embedded_models(spec, tol):
    """Every selector, all layers, float32, on answers of the built-in capitals task."""
    from knowlens.models import load_model

    m = load_model(spec, device="cpu")
    task = kl.load_task("capitals", limit=12)
    gens, sets = generate_capturing(
        m, task, [("all", t) for t in SELECTORS], dtype="float32", batch_size=4, cache=False,
        progress=False,
    )  # fmt: skip
    assert sets is not None
    for acts in sets:
        ref = extract(
            m, gens, layers="all", tokens=acts.tokens, dtype="float32", cache=False,
            progress=False,
        )  # fmt: skip
        a, r = np.asarray(acts.values), np.asarray(ref.values)
        np.testing.assert_array_equal(acts.positions, ref.positions)
        scale = np.abs(r).max(axis=(0, 2, 3), keepdims=True)
        assert float((np.abs(a - r) / scale).max()) < tol, acts.tokens
