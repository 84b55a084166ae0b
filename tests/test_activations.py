"""Activation extraction: parity with HF hidden states, early stop, cache, resume, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import build_tiny_llama
from knowlens._types import Generation, GenerationSet
from knowlens.activations import (
    SELECTORS,
    ExtractSpec,
    extract,
    extract_batch,
    extract_texts,
    items_from_generations,
)
from knowlens.activations._store import ShardStore
from knowlens.errors import DataError, KnowlensError
from knowlens.generation import generate_texts
from knowlens.models import handle_from_objects

PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "Q: Which country is Lyon in? A: France. Q: 12 plus 30?",
    "Sure",
    "The quick brown fox jumps over the lazy dog",
    "Is the proposed answer correct?",
    "Berlin",
]
SPANS = [(1, 4), None, (0, 1), (2, 6), (5, 6), (0, 6), None]


@pytest.fixture(scope="module")
def model4(tiny_model):
    """A 4-layer tiny Llama (so 'later layers' exist) sharing the tiny tokenizer."""
    m = build_tiny_llama(len(tiny_model.tokenizer), seed=1, n_layers=4)
    return handle_from_objects(m, tiny_model.tokenizer, name="tiny4")


@pytest.fixture(scope="module")
def gens(model4) -> GenerationSet:
    """Generations of mixed prompt and answer lengths, with hand-set exact-answer spans
    (two rows without one)."""
    gs = generate_texts(model4, PROMPTS, max_new_tokens=6, cache=False, progress=False)
    rows = [dataclasses.replace(g, exact_answer_tokens=s) for g, s in zip(gs, SPANS, strict=True)]
    # one row with an empty answer: `last` then falls back to the last prompt token
    rows[3] = dataclasses.replace(rows[3], answer_ids=[], exact_answer_tokens=None)
    return GenerationSet(rows, gs.meta)


def hf_states(handle, ids: list[int]) -> torch.Tensor:
    """(n_layers + 1, T, d) from HF ``output_hidden_states`` on one unpadded sequence."""
    with torch.no_grad():
        out = handle.model(torch.tensor([ids]), output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0].float()


def expected_positions(g: Generation, tokens: str) -> list[int]:
    p, a = len(g.prompt_ids), len(g.answer_ids)
    last = p + a - 1
    span = g.exact_answer_tokens
    return {
        "last_prompt": [p - 1],
        "last": [last],
        "exact_answer": [p + span[1] - 1] if span else [last],
        "exact_answer_first": [p + span[0]] if span else [last],
        "exact_answer_mean": list(range(p + span[0], p + span[1])) if span else [last],
        "all": list(range(p + a)),
    }[tokens]


@pytest.mark.parametrize("tokens", SELECTORS)
def test_parity_with_hf_hidden_states_every_selector(model4, gens, tokens):
    acts = extract(
        model4, gens, layers="all", tokens=tokens, dtype="float32", batch_size=3, progress=False
    )
    n = model4.n_layers
    assert acts.layers == list(range(n + 1)) and acts.values.dtype == np.float32
    assert acts.example_ids == gens.example_ids
    width = max(len(g.prompt_ids) + len(g.answer_ids) for g in gens) if tokens == "all" else 1
    assert acts.shape == (len(gens), n + 1, width, model4.d_model)
    for i, g in enumerate(gens):
        ref = hf_states(model4, g.prompt_ids + g.answer_ids)
        want = expected_positions(g, tokens)
        got = torch.from_numpy(np.array(acts.values[i]))
        if tokens == "exact_answer_mean":
            torch.testing.assert_close(got[:, 0], ref[:, want].mean(1), atol=1e-5, rtol=0)
            assert acts.positions[i, 0] == want[-1]
            continue
        k = len(want)
        assert acts.positions[i, :k].tolist() == want and (acts.positions[i, k:] == -1).all()
        assert acts.mask[i, :k].all() and not acts.mask[i, k:].any()
        torch.testing.assert_close(got[:, :k], ref[:, want], atol=1e-5, rtol=0)
        assert (got[:, k:] == 0).all()  # padding is zeros, not pad-token states
    found = acts.meta["exact_answer_found"]
    assert found == (
        [s is not None for s in SPANS[:3]] + [False] + [True, True, False]
        if tokens.startswith("exact")
        else [True] * len(gens)
    )


def test_last_layer_is_after_the_final_norm(model4, gens):
    g = gens[0]
    raw = []
    hook = model4.decoder_layers()[-1].register_forward_hook(lambda m, a, o: raw.append(o))
    try:
        acts = extract(model4, [g], layers=[-1, -2], tokens="last", dtype="float32", progress=False)
    finally:
        hook.remove()
    assert acts.layers == [model4.n_layers - 1, model4.n_layers]
    ref = hf_states(model4, g.prompt_ids + g.answer_ids)[:, -1]
    got = torch.from_numpy(np.array(acts.values[0, :, 0]))
    torch.testing.assert_close(got, ref[-2:], atol=1e-5, rtol=0)
    last_block = raw[0][0, len(g.prompt_ids) + len(g.answer_ids) - 1]
    torch.testing.assert_close(model4.model.model.norm(last_block), got[1], atol=1e-5, rtol=0)
    assert (last_block - got[1]).abs().max() > 0.1  # really the normed, not the raw, stream


def test_extract_texts_parity_and_max_positions(model4):
    texts = PROMPTS[:5]
    last = extract_texts(model4, texts, layers=[0, 2, 4], dtype="float32", progress=False)
    full = extract_texts(
        model4,
        texts,
        layers=[0, 2, 4],
        tokens="all",
        max_positions=5,
        dtype="float32",
        batch_size=2,
        progress=False,
    )
    assert full.shape == (5, 3, 5, model4.d_model)
    for i, t in enumerate(texts):
        ids = model4.tokenizer(t)["input_ids"]
        ref = hf_states(model4, ids)[[0, 2, 4]]
        torch.testing.assert_close(
            torch.from_numpy(np.array(last.values[i, :, 0])), ref[:, -1], atol=1e-5, rtol=0
        )
        k = min(5, len(ids))
        torch.testing.assert_close(
            torch.from_numpy(np.array(full.values[i, :, :k])), ref[:, :k], atol=1e-5, rtol=0
        )
        assert full.mask[i].sum() == k
    feats = last.features(2)
    np.testing.assert_allclose(feats, np.asarray(last.values[:, 1, 0]), rtol=0, atol=0)


def test_float16_storage_default(model4, gens):
    a16 = extract(model4, gens, layers=[1, 3], tokens="last", progress=False)
    a32 = extract(model4, gens, layers=[1, 3], tokens="last", dtype="float32", progress=False)
    assert a16.values.dtype == np.float16 and a16.meta["dtype"] == "float16"
    assert a16.meta["dtype_auto"] == "float16 (no value beyond +-65504)"  # default "auto"
    assert "dtype_auto" not in a32.meta
    # auto shares the explicit float16 entry (the key holds the resolved dtype)
    explicit = extract(model4, gens, layers=[1, 3], tokens="last", dtype="float16", progress=False)
    assert explicit.meta["cache_hit"] and explicit.meta["cache_key"] == a16.meta["cache_key"]
    np.testing.assert_allclose(np.asarray(a16.values, np.float32), a32.values, rtol=2e-3, atol=2e-3)


class Counter:
    """Counts calls of each decoder block, the final norm and the LM head."""

    def __init__(self, handle):
        self.calls: dict[str, int] = {}
        mods = {f"block{i}": b for i, b in enumerate(handle.decoder_layers())}
        mods["norm"] = handle.model.model.norm
        mods["lm_head"] = handle.model.lm_head
        self.handles = [m.register_forward_hook(self._hook(k)) for k, m in mods.items()]

    def _hook(self, name):
        def hook(*_):
            self.calls[name] = self.calls.get(name, 0) + 1

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_early_stop_skips_later_layers_and_lm_head(model4, gens):
    def n_hooks():
        return [len(b._forward_hooks) + len(b._forward_pre_hooks) for b in model4.decoder_layers()]

    before = n_hooks()  # (HF itself may keep hooks installed for output recording)
    with Counter(model4) as c:
        extract(
            model4, gens, layers=[0, 2], tokens="last", batch_size=4, cache=False, progress=False
        )
    assert c.calls == {"block0": 2, "block1": 2}  # 2 batches; blocks 2, 3, norm, head skipped
    with Counter(model4) as c:
        extract(model4, gens, layers=[0], tokens="last", batch_size=7, cache=False, progress=False)
    assert c.calls == {}  # layer 0 is the input of block 0: no block runs
    with Counter(model4) as c:
        extract(model4, gens, layers=[-1], tokens="last", batch_size=7, cache=False, progress=False)
    assert c.calls == {"block0": 1, "block1": 1, "block2": 1, "block3": 1, "norm": 1}
    assert n_hooks() == before  # hooks are always removed, also after StopForward


def test_cache_reuse_and_key_changes(model4, gens):
    first = extract(model4, gens, layers=[1, 2], tokens="exact_answer", progress=False)
    assert first.meta["cache_hit"] is False and isinstance(first.values, np.memmap)
    assert not first.values.flags.writeable
    with Counter(model4) as c:
        again = extract(model4, gens, layers=[1, 2], tokens="exact_answer", progress=False)
    assert c.calls == {} and again.meta["cache_hit"] is True  # no forward pass at all
    np.testing.assert_array_equal(again.values, first.values)
    changes = [
        dict(layers=[1, 3]),
        dict(tokens="exact_answer_first"),
        dict(dtype="float32"),
    ]
    for change in changes:
        kw = dict(layers=[1, 2], tokens="exact_answer") | change
        with Counter(model4) as c:
            out = extract(model4, gens, progress=False, **kw)
        assert out.meta["cache_hit"] is False and c.calls, change
    # changed inputs (one answer token) and a changed model recompute too
    rows = list(gens)
    rows[0] = dataclasses.replace(rows[0], answer_ids=rows[0].answer_ids[:-1])
    assert (
        extract(model4, rows, layers=[1, 2], tokens="exact_answer", progress=False).meta[
            "cache_hit"
        ]
        is False
    )
    other = handle_from_objects(
        build_tiny_llama(len(model4.tokenizer), seed=2, n_layers=4), model4.tokenizer
    )
    out = extract(other, gens, layers=[1, 2], tokens="exact_answer", progress=False)
    assert out.meta["cache_hit"] is False
    assert out.meta["cache_key"] != first.meta["cache_key"]


_SHARDED = dict(layers="all", tokens="all", shard_size=2, batch_size=2, progress=False)


def _kill_after_two_shards(model4, gens, monkeypatch) -> list[list[int]]:
    """Run a sharded extraction that is killed while its third shard is being recorded;
    the row ranges of the two recorded shards."""
    original = ShardStore.mark_done
    recorded: list[list[int]] = []

    def crash_after_two(self, mm, shard, info):
        if len(recorded) == 2:
            raise KeyboardInterrupt
        recorded.append(list(info["rows"]))
        original(self, mm, shard, info)

    monkeypatch.setattr(ShardStore, "mark_done", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(model4, gens, **_SHARDED)
    monkeypatch.setattr(ShardStore, "mark_done", original)
    return recorded


def test_killed_run_resumes_reusing_finished_shards(model4, gens, monkeypatch):
    kw = _SHARDED
    reference = extract(model4, gens, cache=False, **kw)
    _kill_after_two_shards(model4, gens, monkeypatch)
    with Counter(model4) as c:
        resumed = extract(model4, gens, **kw)
    assert resumed.meta["shards"] == 4 and resumed.meta["shards_reused"] == 2
    assert c.calls["block0"] == 2  # only the two unfinished shards (one batch each) ran
    np.testing.assert_array_equal(np.asarray(resumed.values), reference.values)
    np.testing.assert_array_equal(resumed.mask, reference.mask)
    np.testing.assert_array_equal(resumed.positions, reference.positions)
    assert not list(
        resumed.meta["path"]
        and __import__("pathlib").Path(resumed.meta["path"]).parent.glob(".partial-*")
    )


def test_recorded_rows_lost_at_a_crash_are_recomputed(model4, gens, monkeypatch):
    """Shards are written without msync: rows a crash kept from the disk (zeros here) fail
    their record's hash on resume and only that shard is recomputed."""
    from knowlens._cache import cache_root

    kw = _SHARDED
    reference = extract(model4, gens, cache=False, **kw)
    recorded = _kill_after_two_shards(model4, gens, monkeypatch)
    (partial,) = (cache_root() / "activations").glob(".partial-*/values.npy")
    mm = np.load(partial, mmap_mode="r+")
    s, e = recorded[1]
    mm[s:e] = 0  # the second recorded shard's rows never reached the disk
    mm.flush()
    del mm
    with Counter(model4) as c:
        resumed = extract(model4, gens, **kw)
    assert resumed.meta["shards_reused"] == 1
    assert c.calls["block0"] == 3  # the zeroed shard and the two unfinished ones
    np.testing.assert_array_equal(np.asarray(resumed.values), reference.values)


def test_extract_batch_is_the_pure_worker(model4, gens):
    items = items_from_generations(gens)
    spec = ExtractSpec(layers=(0, 2), tokens="last_prompt", dtype="float32", batch_size=3)
    res = extract_batch(model4, items, spec)
    assert res["values"].shape == (len(items), 2, 1, model4.d_model)
    assert res["positions"][:, 0].tolist() == [len(g.prompt_ids) - 1 for g in gens]
    assert int(res["tokens"]) == sum(len(g.prompt_ids) for g in gens)  # answers never ran
    ref = extract(
        model4,
        gens,
        layers=[0, 2],
        tokens="last_prompt",
        dtype="float32",
        batch_size=3,
        cache=False,
        progress=False,
    )
    np.testing.assert_array_equal(res["values"], ref.values)


def test_bad_input_is_one_line(model4, gens):
    cases = [
        (KnowlensError, "out of range", lambda: extract(model4, gens, layers=[5])),
        (KnowlensError, "out of range", lambda: extract(model4, gens, layers=[-6])),
        (
            KnowlensError,
            "Did you mean: exact_answer",
            lambda: extract(model4, gens, tokens="exact"),
        ),
        (KnowlensError, "float16", lambda: extract(model4, gens, dtype="int8")),
        (KnowlensError, "layers", lambda: extract(model4, gens, layers="some")),
        # 3 and -2 are both index 3 of 0..4: a silently shorter layer axis is refused
        (KnowlensError, "index 3 more than once", lambda: extract(model4, gens, layers="3,3,-5")),
        (
            KnowlensError,
            "(both 3 and -2; for tiny4 -1 = 4, -5 = 0); list each layer once, e.g. layers=1,3.",
            lambda: extract(model4, gens, layers=[1, 3, -2]),
        ),
        (DataError, "no generations", lambda: extract(model4, GenerationSet([]))),
        (KnowlensError, "extract_texts", lambda: extract(model4, ["a text"])),
        (
            KnowlensError,
            "token selector",
            lambda: extract_texts(model4, ["x"], tokens="exact_answer"),
        ),
        (KnowlensError, "one string", lambda: extract_texts(model4, "x")),
        (DataError, "no texts", lambda: extract_texts(model4, [])),
        (KnowlensError, "max_positions", lambda: extract_texts(model4, ["x"], max_positions=0)),
    ]
    for kind, words, call in cases:
        with pytest.raises(kind) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and words in msg, msg


@pytest.mark.real_model
def test_parity_on_real_smollm2():
    from knowlens.models import load_model

    m = load_model("smollm2-135m-instruct", device="cpu")
    texts = ["The capital of France is Paris.", "Hi!", "Water boils at 100 degrees Celsius at sea"]
    acts = extract_texts(
        m, texts, layers="all", tokens="all", dtype="float32", cache=False, progress=False
    )
    assert acts.shape[1] == 31
    worst = 0.0
    for i, t in enumerate(texts):
        ids = m.tokenizer(t)["input_ids"]
        ref = hf_states(m, ids)
        got = torch.from_numpy(np.array(acts.values[i, :, : len(ids)]))
        scale = ref.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1.0)
        worst = max(worst, float(((got - ref).abs() / scale).max()))
        torch.testing.assert_close(got, ref, atol=1e-5 * float(scale.max()), rtol=1e-5)
    assert worst < 1e-5


def test_float16_overflow_is_clamped_and_recorded(tiny_model, caplog):
    """Residual values beyond the float16 range (Gemma 3 reaches ~8e4) must not become inf."""
    m = build_tiny_llama(len(tiny_model.tokenizer), seed=3)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(1e7)  # embeddings ~ 2e5
    h = handle_from_objects(m, tiny_model.tokenizer, name="tiny-big")
    a16 = extract_texts(
        h, ["Hi there", "Paris"], layers=[0], tokens="all", dtype="float16", progress=False
    )
    a32 = extract_texts(
        h, ["Hi there", "Paris"], layers=[0], tokens="all", dtype="float32", progress=False
    )
    v16, v32 = np.asarray(a16.values, np.float32), np.asarray(a32.values)
    assert np.isfinite(v16).all() and np.abs(v32).max() > 65504
    np.testing.assert_array_equal(v16, np.clip(v32, -65504, 65504).astype(np.float16))
    assert a16.meta["fp16_overflow_max"] == pytest.approx(np.abs(v32).max(), rel=1e-6)
    assert a32.meta["fp16_overflow_max"] == 0.0
    assert "exceed the float16 range" in caplog.text


@pytest.mark.real_model
def test_parity_on_real_gemma3_large_residuals():
    """Gemma 3 (base, <bos> added, scaled embeddings) with residual values near 1e5: exact
    up to fp32 rounding relative to each layer's magnitude."""
    from knowlens.models import load_model

    m = load_model("gemma3-270m", device="cpu")
    texts = ["The capital of France is Paris.", "Hi"]
    acts = extract_texts(
        m, texts, layers=[0, 1, 9, -1], tokens="all", dtype="float32", cache=False, progress=False
    )
    assert acts.layers == [0, 1, 9, 18]
    for i, t in enumerate(texts):
        ids = m.tokenizer(t)["input_ids"]
        assert ids[0] == m.tokenizer.bos_token_id
        ref = hf_states(m, ids)[[0, 1, 9, 18]]
        got = torch.from_numpy(np.array(acts.values[i, :, : len(ids)]))
        scale = ref.abs().amax(dim=(1, 2), keepdim=True)
        # fp32 rounding: batched (padded) vs one-at-a-time forwards measured up to 1.3e-6 of
        # the layer's magnitude (~11 ulps) on a freshly converted Gemma 3 cache
        assert float(((got - ref).abs() / scale).max()) < 5e-6


def _big_model(tiny_model, seed: int = 3):
    """The tiny Llama with embeddings scaled to ~2e5: past float16's 65504 (like Gemma 3)."""
    m = build_tiny_llama(len(tiny_model.tokenizer), seed=seed)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(1e7)
    return handle_from_objects(m, tiny_model.tokenizer, name="tiny-big")


def test_auto_dtype_switches_to_float32_on_overflow_and_remembers(tiny_model, monkeypatch):
    from knowlens._cache import cache_root

    h = _big_model(tiny_model, seed=4)
    texts, kw = ["Hi there", "Paris", "The capital"], dict(tokens="all", progress=False)
    ref = extract_texts(h, texts, layers=[0, 1], dtype="float32", cache=False, **kw)
    assert np.abs(ref.values).max() > 65504
    auto = extract_texts(h, texts, layers=[0, 1], shard_size=1, **kw)  # default dtype="auto"
    assert auto.values.dtype == np.float32 and auto.meta["dtype"] == "float32"
    assert auto.meta["dtype_auto"].startswith("float32 (float16 overflow: max |x| = ")
    assert auto.meta["fp16_overflow_max"] == 0.0 and not auto.meta["cache_hit"]
    np.testing.assert_array_equal(np.asarray(auto.values), ref.values)  # nothing clamped
    # the abandoned float16 attempt left no partial folder or entry behind
    acts_dir = cache_root() / "activations"
    assert sorted(p.name for p in acts_dir.iterdir()) == [auto.meta["cache_key"]]
    memo = json.loads((cache_root() / "model-ranges" / f"{h.fingerprint}.json").read_text())
    # the float16 pass stopped after its first overflowing batch (shard 0 = row 0)
    first = float(np.abs(ref.values[0]).max())
    assert memo["float16_overflow_max_abs"] == pytest.approx(first, rel=1e-6)
    assert auto.meta["dtype_auto"] == f"float32 (float16 overflow: max |x| = {first:.4g})"

    # Remembered across processes: a new auto run goes straight to float32 (no float16 pass).
    from knowlens.activations import _api

    _api._OVERFLOWS.clear()  # as in a fresh process
    calls: list[str] = []
    orig = _api.extract_batch

    def counting(model, items, spec, **k):
        calls.append(spec.dtype)
        return orig(model, items, spec, **k)

    monkeypatch.setattr(_api, "extract_batch", counting)
    again = extract_texts(h, texts, layers=[1], **kw)
    assert calls == ["float32"] and again.meta["dtype"] == "float32"
    assert again.meta["dtype_auto"].endswith(", remembered)")
    np.testing.assert_array_equal(np.asarray(again.values), ref.values[:, 1:])

    # An explicit float16 entry that was clamped is never served to auto.
    h2 = _big_model(tiny_model, seed=5)
    clamped = extract_texts(h2, texts, layers=[0], dtype="float16", **kw)
    assert clamped.meta["fp16_overflow_max"] > 65504
    _api._OVERFLOWS.clear()
    (cache_root() / "model-ranges" / f"{h2.fingerprint}.json").unlink()
    a2 = extract_texts(h2, texts, layers=[0], **kw)
    assert a2.values.dtype == np.float32 and a2.meta["dtype_auto"].startswith("float32 (float16")


# -- streaming reduction (issue 12) ------------------------------------------------------------
def _full_moments(model, texts, layers, max_positions, fn):
    """Per (layer, position) mean / variance / count of ``fn`` from a full extraction."""
    acts = extract_texts(
        model,
        texts,
        layers=layers,
        tokens="all",
        max_positions=max_positions,
        dtype="float32",
        cache=False,
        progress=False,
    )
    st = fn(torch.from_numpy(np.array(acts.values))).numpy().astype(np.float64)  # (n, L, K)
    m = np.asarray(acts.mask)[:, None, :]
    count = m[:, 0].sum(0)
    mean = (st * m).sum(0) / count
    var = (((st - mean) ** 2) * m).sum(0) / count
    return mean, var, count


@pytest.mark.parametrize(
    ("layers", "fn"),
    [
        ("all", None),
        ([0, 3, -1], lambda h: h[..., :5].sum(-1)),  # a signed statistic (projection-like)
    ],
)
def test_reduce_texts_equals_full_extraction_statistics(model4, layers, fn):
    from knowlens.activations import PositionMoments, reduce_texts, resolve_layers

    texts = PROMPTS * 3  # 21 texts: several chunks, a ragged last one
    n_l = len(resolve_layers(model4, layers))
    red = PositionMoments(fn, n_layers=n_l, n_positions=8)
    res = reduce_texts(model4, texts, red, layers=layers, max_positions=8, batch_size=4)
    mean, var, count = _full_moments(
        model4, texts, layers, 8, fn if fn is not None else (lambda h: h.norm(dim=-1))
    )
    np.testing.assert_array_equal(res["count"], count)
    assert count[0] == 21 and count[-1] < 21  # short texts drop out of later positions
    np.testing.assert_allclose(res["mean"], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res["var"], var, rtol=1e-4, atol=1e-6)


def test_reduce_buffer_and_peak_memory_flat_in_number_of_texts(model4):
    import tracemalloc

    from knowlens.activations import PositionMoments, items_from_texts, reduce_items

    text = "The quick brown fox jumps over the lazy dog"

    def peak(fn) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    def reduce(n: int, buffers: list) -> dict:
        red = PositionMoments(None, n_layers=5, n_positions=16)
        items = items_from_texts(model4, [text] * n)
        return reduce_items(model4, items, red, max_positions=16, batch_size=4, _buffers=buffers)

    def full(n: int) -> None:
        extract_texts(
            model4,
            [text] * n,
            tokens="all",
            max_positions=16,
            dtype="float32",
            batch_size=4,
            cache=False,
            progress=False,
        )

    shapes: list = []
    reduce(4, shapes)  # warm-up: first calls import and cache lazily
    full(4)
    red_peak = {n: peak(lambda n=n: reduce(n, shapes)) for n in (4, 64)}
    full_peak = {n: peak(lambda n=n: full(n)) for n in (4, 64)}
    assert shapes[0] == shapes[-1] == (4, 5, shapes[0][2], model4.d_model)  # one batch buffer
    assert reduce(64, [])["count"][0] == 64
    array = 64 * 5 * shapes[0][2] * model4.d_model * 4  # bytes of the full float32 array
    # the measurement sees the arrays (a full extraction grows by about one array) ...
    assert full_peak[64] - full_peak[4] > array / 2, (full_peak, array)
    # ... and 16x the texts grows the reducer's peak only by the token ids, not the states
    assert red_peak[64] - red_peak[4] < array / 4, (red_peak, array)


def test_reduce_bad_input_is_one_line(model4):
    from knowlens.activations import PositionMoments, reduce_texts

    red = PositionMoments(None, n_layers=5, n_positions=4)
    with pytest.raises(KnowlensError, match="one string"):
        reduce_texts(model4, "hi", red)
    with pytest.raises(KnowlensError, match="token selector"):
        reduce_texts(model4, ["hi"], red, tokens="exact_answer")
    with pytest.raises(KnowlensError, match="float32 or float16"):
        reduce_texts(model4, ["hi"], red, dtype="auto")
    with pytest.raises(DataError, match="no texts"):
        reduce_texts(model4, [], red)
