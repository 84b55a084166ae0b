"""`extract` (graded generations) and `extract_texts` (raw texts): cached, sharded, resumable."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from knowlens._cache import stable_hash
from knowlens._types import ActivationSet, Generation, GenerationSet
from knowlens.activations._extract import (
    DTYPES,
    SELECTORS,
    TEXT_SELECTORS,
    ExtractItem,
    ExtractSpec,
    check_dtype,
    check_tokens,
    extract_batch,
    plan_positions,
    resolve_layers,
)
from knowlens.activations._store import ShardStore
from knowlens.errors import DataError, KnowlensError

ACTIVATIONS_VERSION = "1"
SHARD_BYTES = 256 * 2**20  # rows per shard are chosen so one shard holds about this much


def items_from_generations(gens: GenerationSet | Sequence[Generation]) -> list[ExtractItem]:
    """Prompt + answer ids of each generation, with its exact-answer token span."""
    return [
        ExtractItem(
            id=str(g.example_id),
            ids=tuple(int(i) for i in (*g.prompt_ids, *g.answer_ids)),
            prompt_len=len(g.prompt_ids),
            span=None if g.exact_answer_tokens is None else tuple(g.exact_answer_tokens),
        )
        for g in gens
    ]


def items_from_texts(
    model: Any, texts: Sequence[str], ids: Sequence[str] | None = None
) -> list[ExtractItem]:
    """Token ids of raw texts (the tokenizer's usual special tokens, no chat template)."""
    enc = model.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    names = [str(i) for i in (ids if ids is not None else range(len(texts)))]
    out = []
    for name, text, e in zip(names, texts, enc, strict=True):
        if not e:
            raise DataError(f"Text {name} ({text!r}) has no tokens; pass non-empty texts.")
        out.append(ExtractItem(id=name, ids=tuple(int(i) for i in e), prompt_len=len(e)))
    return out


def check_extract_inputs(
    model: Any,
    gens: GenerationSet | Sequence[Generation],
    tokens: str,
    dtype: str,
    max_positions: int,
    batch_size: int,
) -> list[Generation]:
    """``extract``'s argument checks (shared with the Ray stage); returns the rows."""
    check_tokens(tokens, SELECTORS)
    check_dtype(dtype)
    _check_common(model, max_positions, batch_size)
    rows = list(gens.rows if isinstance(gens, GenerationSet) else gens)
    if not rows:
        raise DataError("extract got no generations; run generate() on a non-empty task first.")
    if not all(isinstance(r, Generation) for r in rows):
        raise KnowlensError(
            "extract expects a GenerationSet from knowlens.generate(); for raw strings use "
            "extract_texts(model, texts)."
        )
    return rows


def _check_common(model: Any, max_positions: int, batch_size: int) -> None:
    for name, v in (("max_positions", max_positions), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise KnowlensError(
                f"{name} must be a positive integer; got {v!r}. Pass e.g. {name}=8."
            )
    if not hasattr(model, "decoder_layers"):
        raise KnowlensError(
            f"model must be a knowlens ModelHandle; got {type(model).__name__}. "
            "Load it with knowlens.load_model(...) or wrap it with handle_from_objects(model, tok)."
        )


@dataclass
class ExtractionPlan:
    """Everything fixed before any forward pass: spec, cache key, shape, shard boundaries.

    Executors that compute shards elsewhere use it to stay byte-identical with ``extract``.
    """

    spec: ExtractSpec
    key: str
    shape: tuple[int, int, int, int]
    manifest: dict[str, Any]
    shards: list[tuple[int, int]]  # [start, end) row ranges, in order
    positions: np.ndarray
    mask: np.ndarray


def plan_extraction(
    model: Any,
    items: list[ExtractItem],
    *,
    layers: str | int | Sequence[int],
    tokens: str,
    dtype: str,
    max_positions: int,
    batch_size: int,
    shard_size: int | None = None,
    meta: dict[str, Any] | None = None,
) -> ExtractionPlan:
    """Resolve layers and positions, the content-addressed key, the manifest and shards."""
    layer_idx = resolve_layers(model, layers)
    positions, mask, found, k = plan_positions(items, tokens, max_positions)
    spec = ExtractSpec(layer_idx, tokens, dtype, max_positions, k, batch_size)
    key = stable_hash(
        {
            "model": model.fingerprint,
            "inputs": stable_hash([[it.id, it.ids, it.prompt_len, it.span] for it in items], 32),
            "tokens": tokens,
            "layers": list(layer_idx),
            "dtype": dtype,
            "max_positions": max_positions if tokens == "all" else None,
            "code": ACTIVATIONS_VERSION,
        }
    )
    shape = (len(items), len(layer_idx), k, model.d_model)
    manifest = {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "cache_key": key,
        "tokens": tokens,
        "layers": list(layer_idx),
        "dtype": dtype,
        "max_positions": max_positions,
        "shape": list(shape),
        "code_version": ACTIVATIONS_VERSION,
        "exact_answer_found": found.tolist(),
        "example_ids": [it.id for it in items],
        **(meta or {}),
    }
    itemsize = np.dtype(DTYPES[dtype][0]).itemsize
    per_example = max(1, len(layer_idx) * k * model.d_model * itemsize)
    rows = shard_size or max(batch_size, (SHARD_BYTES // per_example) // batch_size * batch_size)
    shards = [(s, min(s + rows, len(items))) for s in range(0, len(items), rows)]
    return ExtractionPlan(spec, key, shape, manifest, shards, positions, mask)


def run_extraction(
    model: Any,
    items: list[ExtractItem],
    *,
    layers: str | int | Sequence[int],
    tokens: str,
    dtype: str,
    max_positions: int,
    batch_size: int,
    cache: bool,
    progress: bool,
    meta: dict[str, Any],
    shard_size: int | None = None,
    counter: list[int] | None = None,
) -> ActivationSet:
    """Shared body of ``extract`` / ``extract_texts`` (items already validated)."""
    from knowlens.generation import progress_bar

    plan = plan_extraction(
        model,
        items,
        layers=layers,
        tokens=tokens,
        dtype=dtype,
        max_positions=max_positions,
        batch_size=batch_size,
        shard_size=shard_size,
        meta=meta,
    )
    spec, key, shape, manifest, shards = (
        plan.spec,
        plan.key,
        plan.shape,
        plan.manifest,
        plan.shards,
    )
    positions, mask, np_dtype = plan.positions, plan.mask, DTYPES[dtype][0]
    store = ShardStore(key, shape, np_dtype)
    if cache and store.complete():
        values, mask_, pos_, man = store.load()
        return _result(values, mask_, pos_, man, cache_hit=True, path=str(store.final))

    t0, n_tokens, overflow = time.perf_counter(), 0, 0.0
    if not cache:
        # Same shards (hence the same batches and bit-identical numbers) as a cached run.
        values = np.zeros(shape, dtype=np_dtype)
        with progress_bar(len(items), f"extract {model.name} · {tokens}", progress) as adv:
            for s, e in shards:
                res = extract_batch(
                    model,
                    items[s:e],
                    spec,
                    out=values[s:e],
                    on_batch=lambda b, _t: adv(b),
                    counter=counter,
                )
                n_tokens += int(res["tokens"])
                overflow = max(overflow, float(res["fp16_overflow_max"]))
        manifest.update(
            seconds=round(time.perf_counter() - t0, 3),
            tokens_run=n_tokens,
            fp16_overflow_max=_warn_overflow(overflow, model),
        )
        return _result(values, mask, positions, manifest, cache_hit=False, path=None)

    mm = store.open()
    todo = [(i, s, e) for i, (s, e) in enumerate(shards) if store.done(i) is None]
    reused = len(shards) - len(todo)
    n_tokens = sum(int(store.done(i)["tokens"]) for i in range(len(shards)) if store.done(i))
    with progress_bar(len(items), f"extract {model.name} · {tokens}", progress) as adv:
        adv(sum(shards[i][1] - shards[i][0] for i in range(len(shards)) if store.done(i)))
        for i, s, e in todo:
            res = extract_batch(
                model,
                items[s:e],
                spec,
                out=mm[s:e],
                on_batch=lambda b, _t: adv(b),
                counter=counter,
            )
            n_tokens += int(res["tokens"])
            info = {
                "rows": [s, e],
                "tokens": int(res["tokens"]),
                "fp16_overflow_max": float(res["fp16_overflow_max"]),
            }
            store.mark_done(mm, i, info)
    del mm
    overflow = max(float(store.done(i).get("fp16_overflow_max", 0.0)) for i in range(len(shards)))
    manifest.update(
        seconds=round(time.perf_counter() - t0, 3),
        tokens_run=n_tokens,
        fp16_overflow_max=_warn_overflow(overflow, model),
        shards=len(shards),
        shards_reused=reused,
    )
    store.finish(mask, positions, manifest)
    values, mask_, pos_, man = store.load()
    return _result(values, mask_, pos_, man, cache_hit=False, path=str(store.final))


def _warn_overflow(overflow: float, model: Any) -> float:
    if overflow > 0:
        logging.getLogger(__name__).warning(
            "%s: hidden-state values up to %.3g exceed the float16 range and were clamped to "
            "+-65504; pass dtype='float32' to keep them exactly.",
            model.name,
            overflow,
        )
    return overflow


def _result(
    values: np.ndarray,
    mask: np.ndarray,
    positions: np.ndarray,
    manifest: dict[str, Any],
    *,
    cache_hit: bool,
    path: str | None,
) -> ActivationSet:
    meta = {k: v for k, v in manifest.items() if k != "example_ids"}
    meta.update(cache_hit=cache_hit, path=path)
    return ActivationSet(
        values=values,
        mask=mask.astype(bool),
        layers=list(manifest["layers"]),
        tokens=manifest["tokens"],
        example_ids=list(manifest["example_ids"]),
        positions=positions,
        meta=meta,
    )


def extract(
    model: Any,
    gens: GenerationSet | Sequence[Generation],
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "exact_answer",
    dtype: str = "float16",
    max_positions: int = 512,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
    shard_size: int | None = None,
) -> ActivationSet:
    """Hidden states of graded generations, teacher-forced over prompt + answer.

    >>> acts = extract(model, gens, layers=[8, 16, -1], tokens="exact_answer")
    >>> acts.values.shape          # (n_examples, 3, 1, d_model), float16 read-only memmap
    >>> X = acts.features(16)      # (n_examples, d_model) float32

    Args:
        model: the ``ModelHandle`` that produced ``gens``.
        gens: a ``GenerationSet`` (or list of ``Generation``).
        layers: "all", an index or a list; HF ``hidden_states`` indexing (0 = embeddings,
            ``n_layers`` = after the final norm), negatives count back from ``n_layers``.
        tokens: selector, one of ``SELECTORS``. Exact-answer selectors fall back to the last
            answer token where no span was located (``meta["exact_answer_found"]``).
        dtype: storage dtype, float16 (default) or float32.
        max_positions: cap on positions kept by ``all``.
        batch_size: sequences per forward pass.
        cache: store in / reuse from the content-addressed cache (resumable shards).
        progress: show a progress bar.
        shard_size: examples per shard (default: about 256 MiB of activations).

    Returns:
        ``ActivationSet`` with ``values[example, layer, position, hidden]``.
    """
    rows = check_extract_inputs(model, gens, tokens, dtype, max_positions, batch_size)
    meta = dict(gens.meta) if isinstance(gens, GenerationSet) else {}
    gmeta = {"generations_key": meta.get("cache_key"), "task": meta.get("task")}
    return run_extraction(
        model,
        items_from_generations(rows),
        layers=layers,
        tokens=tokens,
        dtype=dtype,
        max_positions=max_positions,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
        meta=gmeta,
        shard_size=shard_size,
    )


def extract_texts(
    model: Any,
    texts: Sequence[str],
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "last",
    dtype: str = "float16",
    max_positions: int = 512,
    batch_size: int = 8,
    ids: Sequence[str] | None = None,
    cache: bool = True,
    progress: bool = True,
    shard_size: int | None = None,
) -> ActivationSet:
    """Hidden states of raw texts (tokenised with the tokenizer's special tokens, no template).

    >>> acts = extract_texts(model, ["Paris is in France."], layers="all", tokens="all")

    ``tokens`` is ``last`` (the last token) or ``all`` (up to ``max_positions``); other
    arguments as in :func:`extract`. ``ids`` names the rows (default "0", "1", ...).
    """
    if isinstance(texts, str):
        raise KnowlensError("texts must be a list of strings; got one string. Wrap it: [text].")
    check_tokens(tokens, TEXT_SELECTORS)
    check_dtype(dtype)
    _check_common(model, max_positions, batch_size)
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("extract_texts got no texts; pass a non-empty list of strings.")
    if ids is not None and len(ids) != len(texts):
        raise KnowlensError(f"ids must have one entry per text ({len(texts)}); got {len(ids)}.")
    return run_extraction(
        model,
        items_from_texts(model, texts, ids),
        layers=layers,
        tokens=tokens,
        dtype=dtype,
        max_positions=max_positions,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
        meta={"source": "texts"},
        shard_size=shard_size,
    )
