"""`extract` (graded generations) and `extract_texts` (raw texts): cached, sharded, resumable."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowlens._cache import atomic_write_json, cache_root, entry_lock, stable_hash
from knowlens._types import ActivationSet, Generation, GenerationSet
from knowlens.activations._extract import (
    DTYPES,
    FP16_MAX,
    SELECTORS,
    TEXT_SELECTORS,
    ExtractItem,
    ExtractSpec,
    Float16Overflow,
    check_dtype,
    check_tokens,
    extract_batch,
    plan_positions,
    resolve_layers,
)
from knowlens.activations._store import ShardStore
from knowlens.errors import DataError, KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

ACTIVATIONS_VERSION = "1"
SHARD_BYTES = 256 * 2**20  # rows per shard are chosen so one shard holds about this much
_log = logging.getLogger(__name__)


def items_from_generations(gens: GenerationSet | Sequence[Generation]) -> list[ExtractItem]:
    """Prompt + answer ids of each generation, with its exact-answer token span."""
    return [
        ExtractItem(
            id=str(g.example_id),
            ids=tuple(int(i) for i in (*g.prompt_ids, *g.answer_ids)),
            prompt_len=len(g.prompt_ids),
            span=None if (sp := g.exact_answer_tokens) is None else (int(sp[0]), int(sp[1])),
        )
        for g in gens
    ]


def items_from_texts(
    model: ModelHandle, texts: Sequence[str], ids: Sequence[str] | None = None
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
    model: ModelHandle,
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


def _check_common(model: ModelHandle, max_positions: int, batch_size: int) -> None:
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
    ``plan_hash`` names the exact plan (key, shape, dtype, shards, spec incl. ``batch_size``):
    a resumed run reuses partial shards only under the same hash.
    """

    spec: ExtractSpec
    key: str
    shape: tuple[int, int, int, int]
    manifest: dict[str, Any]
    shards: list[tuple[int, int]]  # [start, end) row ranges, in order
    positions: np.ndarray
    mask: np.ndarray
    plan_hash: str = ""


# -- dtype="auto": float16 unless this model's values exceed its range ------------------------
_OVERFLOWS: dict[str, float] = {}  # fingerprint -> max |x| seen beyond float16 (this process)


def _ranges_file(model: ModelHandle) -> Path | None:
    try:
        return cache_root() / "model-ranges" / f"{model.fingerprint}.json"
    except KnowlensError:  # an unwritable cache only matters to runs that use it
        return None


def known_float16_overflow(model: ModelHandle) -> float | None:
    """Largest |value| beyond float16 seen for this model (in this process, or remembered in
    ``cache_root()/model-ranges/<fingerprint>.json``), or None if none is known."""
    if model.fingerprint in _OVERFLOWS:
        return _OVERFLOWS[model.fingerprint]
    path = _ranges_file(model)
    if path is None or not path.exists():
        return None
    try:
        big = float(json.loads(path.read_text())["float16_overflow_max_abs"])
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None  # unreadable: auto tries float16 again and rewrites it on overflow
    _OVERFLOWS[model.fingerprint] = big
    return big


def remember_float16_overflow(model: ModelHandle, max_abs: float) -> None:
    """Record that this model's hidden states exceed float16 (later ``auto`` runs use float32)."""
    big = max(float(max_abs), known_float16_overflow(model) or 0.0)
    _OVERFLOWS[model.fingerprint] = big
    path = _ranges_file(model)
    if path is not None:
        with contextlib.suppress(OSError):
            atomic_write_json(
                path,
                {
                    "model": model.name,
                    "model_fingerprint": model.fingerprint,
                    "float16_overflow_max_abs": big,
                },
            )


def resolve_dtype(model: ModelHandle, dtype: str) -> tuple[str, str | None]:
    """The storage dtype to use and, for ``auto``, why (recorded as ``dtype_auto``)."""
    if dtype != "auto":
        return dtype, None
    big = known_float16_overflow(model)
    if big is not None:  # (a clamped result only tells that |x| reached the float16 max)
        seen = f"= {big:.4g}" if big > FP16_MAX else f">= {FP16_MAX:g}"
        return "float32", f"float32 (float16 overflow: max |x| {seen}, remembered)"
    return "float16", f"float16 (no value beyond +-{FP16_MAX:g})"


def plan_extraction(
    model: ModelHandle,
    items: list[ExtractItem],
    *,
    layers: str | int | Sequence[int],
    tokens: str,
    dtype: str,
    max_positions: int,
    batch_size: int,
    shard_size: int | None = None,
    meta: dict[str, Any] | None = None,
    numerics: dict[str, Any] | None = None,
) -> ExtractionPlan:
    """Resolve layers, positions and the dtype (``auto`` -> float16 / float32), the
    content-addressed key (of the resolved dtype), the manifest, the shards and their hash.
    ``numerics``: ``compute_numerics`` of whoever runs the forwards (default: this process)."""
    from knowlens.generation import compute_numerics

    meta = dict(meta or {})
    numerics = compute_numerics(model.device) if numerics is None else dict(numerics)
    dtype, note = resolve_dtype(model, dtype)
    if note is not None:
        meta["dtype_auto"] = note
    layer_idx = resolve_layers(model, layers)
    positions, mask, found, k = plan_positions(items, tokens, max_positions)
    spec = ExtractSpec(layer_idx, tokens, dtype, max_positions, k, batch_size)
    itemsize = np.dtype(DTYPES[dtype][0]).itemsize
    per_example = max(1, len(layer_idx) * k * model.d_model * itemsize)
    rows = shard_size or max(batch_size, (SHARD_BYTES // per_example) // batch_size * batch_size)
    shards = [(s, min(s + rows, len(items))) for s in range(0, len(items), rows)]
    key = stable_hash(
        {
            "model": model.fingerprint,
            "inputs": stable_hash([[it.id, it.ids, it.prompt_len, it.span] for it in items], 32),
            "tokens": tokens,
            "layers": list(layer_idx),
            "dtype": dtype,
            "max_positions": max_positions if tokens == "all" else None,
            # float32 hidden states differ by ~4e-7 between CPU thread counts (and float16
            # storage can round such a difference either way): part of the key.
            "numerics": numerics,
            # Batches are sorted by length inside each shard: batch size and shard rows fix
            # which sequences share a padded forward, and padding moves values by ~1e-7.
            "batching": {"batch_size": batch_size, "shard_rows": rows},
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
        "numerics": numerics,
        "code_version": ACTIVATIONS_VERSION,
        "exact_answer_found": found.tolist(),
        "example_ids": [it.id for it in items],
        **meta,
    }
    plan_hash = stable_hash(
        {"key": key, "shape": shape, "dtype": dtype, "shards": shards, "spec": asdict(spec)}, 32
    )
    return ExtractionPlan(spec, key, shape, manifest, shards, positions, mask, plan_hash)


def run_extraction(
    model: ModelHandle,
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
    """Shared body of ``extract`` / ``extract_texts`` (items already validated).

    ``auto`` stores float16 unless a value exceeds its range: then the float16 attempt is
    dropped, the model is remembered as overflowing, and the extraction reruns in float32.
    """
    kw: dict[str, Any] = dict(
        layers=layers,
        tokens=tokens,
        max_positions=max_positions,
        batch_size=batch_size,
        shard_size=shard_size,
    )
    resolved, note = resolve_dtype(model, dtype)
    while True:
        plan = plan_extraction(
            model,
            items,
            dtype=resolved,
            meta={**meta, **({"dtype_auto": note} if note else {})},
            **kw,
        )
        watch = dtype == "auto" and resolved == "float16"
        try:
            if not cache:
                return _run_in_memory(model, items, plan, progress, counter, watch)
            # One writer per entry across processes; the others wait, then get a verified hit.
            with entry_lock("activations", plan.key):
                return _run_cached(model, items, plan, progress, counter, watch)
        except Float16Overflow as e:
            remember_float16_overflow(model, e.max_abs)
            _log.info(
                "%s: hidden-state values up to %.4g exceed float16; dtype='auto' stores float32.",
                model.name,
                e.max_abs,
            )
            resolved, note = "float32", f"float32 (float16 overflow: max |x| = {e.max_abs:.4g})"


def _run_in_memory(
    model: ModelHandle,
    items: list[ExtractItem],
    plan: ExtractionPlan,
    progress: bool,
    counter: list[int] | None,
    watch: bool,
) -> ActivationSet:
    from knowlens._progress import progress_bar

    spec, manifest = plan.spec, dict(plan.manifest)
    t0, n_tokens, overflow = time.perf_counter(), 0, 0.0
    # Same shards (hence the same batches and bit-identical numbers) as a cached run.
    values = np.zeros(plan.shape, dtype=DTYPES[spec.dtype][0])
    with progress_bar(len(items), f"extract {model.name} · {spec.tokens}", progress) as adv:
        for s, e in plan.shards:
            res = extract_batch(
                model,
                items[s:e],
                spec,
                out=values[s:e],
                on_batch=lambda b, _t: adv(b),
                counter=counter,
                stop_on_overflow=watch,
            )
            n_tokens += int(res["tokens"])
            overflow = max(overflow, float(res["fp16_overflow_max"]))
    manifest.update(
        seconds=round(time.perf_counter() - t0, 3),
        tokens_run=n_tokens,
        fp16_overflow_max=_warn_overflow(overflow, model),
    )
    return _result(values, plan.mask, plan.positions, manifest, cache_hit=False, path=None)


def _run_cached(
    model: ModelHandle,
    items: list[ExtractItem],
    plan: ExtractionPlan,
    progress: bool,
    counter: list[int] | None,
    watch: bool,
) -> ActivationSet:
    """Reuse the verified entry, or compute the shards that lack a trusted record and
    publish. The caller holds the entry's lock."""
    from knowlens._progress import progress_bar

    spec, shards, manifest = plan.spec, plan.shards, dict(plan.manifest)
    store = ShardStore(plan.key, plan.shape, DTYPES[spec.dtype][0], plan.plan_hash)
    hit = store.cached()  # checksums verified; a damaged entry is quarantined (one warning)
    if hit is not None:
        values, mask_, pos_, man = hit
        if watch and float(man.get("fp16_overflow_max") or 0.0) > 0:
            raise Float16Overflow(float(man["fp16_overflow_max"]))  # a clamped float16 entry
        store.discard()  # a leftover partial of an entry that is already complete
        return _result(values, mask_, pos_, man, cache_hit=True, path=str(store.final))

    t0 = time.perf_counter()
    mm, records = store.open()  # a partial folder of another plan is reset here
    done = store.trusted(mm, records, shards)  # row range and data hash checked
    reused = len(done)
    try:
        with progress_bar(len(items), f"extract {model.name} · {spec.tokens}", progress) as adv:
            adv(sum(e - s for i, (s, e) in enumerate(shards) if i in done))
            for i, (s, e) in enumerate(shards):
                if i in done:
                    continue
                res = extract_batch(
                    model,
                    items[s:e],
                    spec,
                    out=mm[s:e],
                    on_batch=lambda b, _t: adv(b),
                    counter=counter,
                    stop_on_overflow=watch,
                )
                info = {
                    "rows": [s, e],
                    "tokens": int(res["tokens"]),
                    "fp16_overflow_max": float(res["fp16_overflow_max"]),
                }
                store.mark_done(mm, i, info)
                done[i] = info
    except Float16Overflow:
        del mm
        store.discard()  # float16 rows of an abandoned attempt: never resumed
        raise
    del mm
    overflow = max(float(r.get("fp16_overflow_max", 0.0)) for r in done.values())
    manifest.update(
        seconds=round(time.perf_counter() - t0, 3),
        tokens_run=sum(int(r.get("tokens", 0)) for r in done.values()),
        fp16_overflow_max=_warn_overflow(overflow, model),
        shards=len(shards),
        shards_reused=reused,
    )
    store.finish(plan.mask, plan.positions, manifest)
    # Just written and checksummed by this process: sizes suffice (later loads verify deeply).
    values, mask_, pos_, man = store.load(deep=False)
    return _result(values, mask_, pos_, man, cache_hit=False, path=str(store.final))


def auto_float16_overflowed(model: ModelHandle, plan: ExtractionPlan, acts: ActivationSet) -> bool:
    """For executors whose workers clamp without reporting it: True if an ``auto`` float16
    result saturated (|x| = 65504); the model is then remembered as overflowing and the entry
    removed, so the caller reruns (in float32). An explicit float16 result only warns."""
    if plan.spec.dtype != "float16":
        return False
    big = float(np.abs(np.asarray(acts.values, dtype=np.float32)).max(initial=0.0))
    if big < FP16_MAX:
        return False
    if "dtype_auto" not in plan.manifest:
        _warn_overflow(big, model)
        return False
    remember_float16_overflow(model, big)
    if acts.meta.get("path"):
        shutil.rmtree(acts.meta["path"], ignore_errors=True)
    return True


def _warn_overflow(overflow: float, model: ModelHandle) -> float:
    if overflow > 0:
        remember_float16_overflow(model, overflow)
        _log.warning(
            "%s: hidden-state values up to %.3g exceed the float16 range and were clamped to "
            "+-65504; pass dtype='float32' (or 'auto') to keep them exactly.",
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
    model: ModelHandle,
    gens: GenerationSet | Sequence[Generation],
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "exact_answer",
    dtype: str = "auto",
    max_positions: int = 512,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
    shard_size: int | None = None,
) -> ActivationSet:
    """Hidden states of graded generations, teacher-forced over prompt + answer.

    >>> acts = extract(model, gens, layers=[8, 16, -1], tokens="exact_answer")
    >>> acts.values.shape          # (n_examples, 3, 1, d_model), read-only memmap
    >>> X = acts.features(16)      # (n_examples, d_model) float32

    Args:
        model: the ``ModelHandle`` that produced ``gens``.
        gens: a ``GenerationSet`` (or list of ``Generation``).
        layers: "all", an index or a list; HF ``hidden_states`` indexing (0 = embeddings,
            ``n_layers`` = after the final norm), negatives count back from ``n_layers``.
        tokens: selector, one of ``SELECTORS``. Exact-answer selectors fall back to the last
            answer token where no span was located (``meta["exact_answer_found"]``).
        dtype: storage dtype: ``auto`` (default: float16, or float32 when the model's values
            exceed the float16 range; recorded as ``meta["dtype_auto"]``), ``float16``
            (clamps to +-65504 with a warning) or ``float32``.
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
    model: ModelHandle,
    texts: Sequence[str],
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "last",
    dtype: str = "auto",
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
