"""Teacher-forced hidden-state extraction: selectors, the pure batch worker, layer plans.

Token alignment of one row (right padding; position ids are 0..len-1 for every row)::

    position:  0 ........... P-1 | P ............ P+A-1 | pad ...
    tokens:    prompt_ids        | answer_ids           |
                         ^ last_prompt          ^ last
                                   [s, e) exact-answer span -> P+s (first) .. P+e-1 (exact_answer)

Each row is cut after the last position a selector needs (``last_prompt`` never runs the
answer tokens; causal attention makes earlier positions independent of later ones).

Hidden-state indices follow HF ``output_hidden_states``: 0 is the input of block 0 (the
embedding output), i in 1..n-1 the output of block i-1... i.e. ``hidden_states[i]``, and
``n = n_layers`` is HF's last entry, the output of the *final norm* (read from the norm
module, so it equals HF exactly). The pass raises ``StopForward`` right after the deepest
requested point: later blocks and the LM head never run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from knowlens.activations._hooks import HookPoint, Trace, run_until_stop
from knowlens.errors import KnowlensError, did_you_mean
from knowlens.models._batch import pad_batch, pad_id

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

SELECTORS = (
    "last_prompt",
    "last",
    "exact_answer",
    "exact_answer_first",
    "exact_answer_mean",
    "all",
)
TEXT_SELECTORS = ("last", "all")
DTYPES = {"float16": (np.float16, torch.float16), "float32": (np.float32, torch.float32)}


@dataclass(frozen=True)
class ExtractItem:
    """One sequence to run: token ids of prompt + answer and where the answer span lies.

    Attributes:
        id: example id.
        ids: prompt ids followed by answer ids.
        prompt_len: P, the number of prompt tokens.
        span: exact-answer token span ``[s, e)`` inside the answer (None if not located).
    """

    id: str
    ids: tuple[int, ...]
    prompt_len: int
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class ExtractSpec:
    """What to extract (every field is part of the cache key except ``batch_size``)."""

    layers: tuple[int, ...]
    tokens: str
    dtype: str = "float16"  # resolved: float16 | float32 (never "auto")
    max_positions: int = 512
    n_positions: int = 1  # width of the position axis (all rows padded to it)
    batch_size: int = 8


# -- validation ------------------------------------------------------------------------------
def check_tokens(tokens: str, allowed: Sequence[str] = SELECTORS) -> str:
    if tokens not in allowed:
        raise KnowlensError(did_you_mean(str(tokens), allowed, what="token selector"))
    return tokens


STORE_DTYPES = ("auto", *DTYPES)  # "auto": float16 unless the model's values exceed it


class Float16Overflow(Exception):
    """Internal: a value exceeded the float16 range while storing ``auto`` as float16."""

    def __init__(self, max_abs: float) -> None:
        super().__init__(f"max |x| = {max_abs:.4g}")
        self.max_abs = max_abs


def check_dtype(dtype: str) -> str:
    if dtype not in STORE_DTYPES:
        raise KnowlensError(
            f"Unknown storage dtype '{dtype}'. Use auto (default: float16, or float32 when the "
            "model's values exceed the float16 range), float16 (clamps to +-65504) or float32."
        )
    return dtype


def resolve_layers(model: ModelHandle, layers: str | int | Sequence[int]) -> tuple[int, ...]:
    """Hidden-state indices (sorted) from "all", an int or a list (negatives count back); an
    index named twice (e.g. 3 and -2 with 4 layers) is a one-line ``KnowlensError``."""
    n = model.n_layers
    if isinstance(layers, str):
        if layers == "all":
            return tuple(range(n + 1))
        try:
            layers = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise KnowlensError(
                f"layers must be 'all', an int or a list of ints; got '{layers}'. "
                f"Use e.g. layers='all' or layers=[0, {n // 2}, -1]."
            ) from None
    if isinstance(layers, (int, np.integer)):
        layers = [int(layers)]
    out: dict[int, int] = {}  # resolved index -> the first value that named it
    dup: tuple[int, int, int] | None = None  # (index, first value, repeated value)
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise KnowlensError(f"layers must be integers; got {layer!r}. Use e.g. layers=[0, -1].")
        idx = int(layer) + (n + 1 if layer < 0 else 0)
        if not 0 <= idx <= n:
            raise KnowlensError(
                f"Layer {layer} is out of range for {model.name}: hidden-state indices are "
                f"0..{n} (0 = embeddings, {n} = after the final norm) or -{n + 1}..-1. "
                "Pick layers in that range."
            )
        if idx in out and dup is None:
            dup = (idx, out[idx], int(layer))
        out.setdefault(idx, int(layer))
    if dup is not None:  # silently dropping one would shorten the layer axis the caller expects
        idx, first, again = dup
        named = f"{first} twice" if first == again else f"both {first} and {again}"
        raise KnowlensError(
            f"layers names hidden-state index {idx} more than once ({named}; for {model.name} "
            f"-1 = {n}, -{n + 1} = 0); list each layer once, e.g. "
            f"layers={','.join(str(v) for v in out.values())}."
        )
    if not out:
        raise KnowlensError("layers is empty; pass 'all' or at least one layer index.")
    return tuple(sorted(out))


# -- positions -------------------------------------------------------------------------------
def selected_positions(
    item: ExtractItem, tokens: str, max_positions: int
) -> tuple[list[int], bool]:
    """Absolute positions a selector reads for one item (the span for ``exact_answer_mean``)
    and whether the exact-answer span was found (exact selectors fall back to ``last``)."""
    n, p = len(item.ids), item.prompt_len
    last = n - 1
    if tokens == "last_prompt":
        return [p - 1], True
    if tokens == "last":
        return [last], True
    if tokens == "all":
        return list(range(min(n, max_positions))), True
    if item.span is None or item.span[1] <= item.span[0]:
        return [last], False
    s, e = p + item.span[0], p + item.span[1]
    if tokens == "exact_answer":
        return [e - 1], True
    if tokens == "exact_answer_first":
        return [s], True
    return list(range(s, e)), True  # exact_answer_mean


def plan_positions(
    items: Sequence[ExtractItem], tokens: str, max_positions: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``positions`` (n, K) (-1 = padding), ``mask`` (n, K), ``found`` (n,), and K."""
    sel = [selected_positions(it, tokens, max_positions) for it in items]
    k = max((len(s) for s, _ in sel), default=1) if tokens == "all" else 1
    positions = np.full((len(items), k), -1, dtype=np.int64)
    for i, (s, _) in enumerate(sel):
        if tokens == "all":
            positions[i, : len(s)] = s
        else:
            positions[i, 0] = s[-1]  # exact_answer_mean: the span's last token names the row
    found = np.array([f for _, f in sel], dtype=bool)
    return positions, positions >= 0, found, k


# -- hook points -----------------------------------------------------------------------------
_NORM_PATHS = (
    "model.norm",
    "model.language_model.norm",
    "model.model.norm",
    "base_model.model.model.norm",
    "transformer.ln_f",
    "model.decoder.final_layer_norm",
    "gpt_neox.final_layer_norm",
)


def final_norm(model: torch.nn.Module) -> torch.nn.Module | None:
    for path in _NORM_PATHS:
        obj: Any = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.Module):
            return obj
    return None


def hook_points(handle: ModelHandle, layers: Sequence[int]) -> list[HookPoint]:
    """Where each hidden-state index is read (see the module docstring)."""
    blocks, n = handle.decoder_layers(), handle.n_layers
    points = []
    for layer in layers:
        if layer == 0:
            points.append(HookPoint(blocks[0], "input"))
        elif layer < n:
            points.append(HookPoint(blocks[layer - 1], "output"))
        else:
            norm = final_norm(handle.model)
            if norm is None:
                raise KnowlensError(
                    f"Cannot find the final norm of {type(handle.model).__name__}, so layer {n} "
                    f"is unavailable; request layers 0..{n - 1}."
                )
            points.append(HookPoint(norm, "output"))
    return points


# -- the pure worker -------------------------------------------------------------------------
@torch.inference_mode()
def extract_batch(
    model: ModelHandle,
    items: Sequence[ExtractItem],
    spec: ExtractSpec,
    *,
    out: np.ndarray | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    counter: list[int] | None = None,
    stop_on_overflow: bool = False,
) -> dict[str, np.ndarray]:
    """Hidden states of ``items`` per ``spec``; pure (no cache), rows in input order.

    Args:
        model: a ``ModelHandle``.
        items: sequences to run (see ``ExtractItem``).
        spec: layers (resolved indices), selector, dtype, position width, batch size.
        out: optional preallocated array (len(items), len(layers), n_positions, d_model) of
            the spec's dtype to write into (e.g. a memmap slice); allocated if None.
        on_batch: called with (rows, tokens) after each forward batch (progress).
        counter: test hook, passed to ``Trace`` (records every hook call).
        stop_on_overflow: with float16, raise ``Float16Overflow`` after the first batch whose
            values exceed +-65504 instead of clamping them (``dtype="auto"`` then switches to
            float32).

    Returns:
        ``{"values": (n, L, K, d), "mask": (n, K) bool, "positions": (n, K) int64,
        "found": (n,) bool, "tokens": () int64 (tokens run)}``.
    """
    np_dtype, t_dtype = DTYPES[spec.dtype]
    n_l, k, d = len(spec.layers), spec.n_positions, model.d_model
    positions, _, found, _ = plan_positions(items, spec.tokens, spec.max_positions)
    if positions.shape[1] > k:
        raise ValueError(f"spec.n_positions={k} is smaller than the {positions.shape[1]} needed")
    if out is None:
        out = np.zeros((len(items), n_l, k, d), dtype=np_dtype)
    pos_full = np.full((len(items), k), -1, dtype=np.int64)
    pos_full[:, : positions.shape[1]] = positions
    mask_full = pos_full >= 0
    out_t = torch.from_numpy(out) if out.size else torch.zeros(0)

    sel = [selected_positions(it, spec.tokens, spec.max_positions)[0] for it in items]
    need = [max(s) + 1 for s in sel]  # causal: later tokens cannot change these
    order = sorted(range(len(items)), key=lambda i: (-need[i], i))
    pad = pad_id(model.tokenizer)
    dev = model.device
    points = hook_points(model, spec.layers)
    total_tokens = 0
    overflow: list[float] = []  # magnitudes beyond float16 range seen (then clamped)
    for start in range(0, len(order), spec.batch_size):
        rows = order[start : start + spec.batch_size]
        lens = [need[r] for r in rows]
        b, t = len(rows), max(lens)
        ids, am, pos = pad_batch(
            [items[r].ids[: lens[j]] for j, r in enumerate(rows)], pad, side="right"
        )
        ids, am, pos = ids.to(dev), am.to(dev), pos.to(dev)
        rows_t = torch.tensor(rows, dtype=torch.long)
        write = _writer(spec.tokens, rows, rows_t, lens, sel, t, k, out_t, t_dtype, dev)
        if t_dtype == torch.float16:
            write = _clamped(write, overflow)
        with Trace(points, write, stop_after=len(points) - 1, counter=counter):
            run_until_stop(
                functools.partial(
                    model.model, input_ids=ids, attention_mask=am, position_ids=pos, use_cache=False
                )
            )
        if stop_on_overflow and overflow:
            raise Float16Overflow(max(overflow))
        total_tokens += int(sum(lens))
        if on_batch is not None:
            on_batch(b, int(sum(lens)))
    return {
        "values": out,
        "mask": mask_full,
        "positions": pos_full,
        "found": found,
        "tokens": np.int64(total_tokens),
        "fp16_overflow_max": np.float64(max(overflow, default=0.0)),
    }


FP16_MAX = 65504.0


def _clamped(write: Callable[[int, torch.Tensor], None], seen: list[float]) -> Callable:
    """Clamp to the float16 range before casting (some models, e.g. Gemma 3, carry residual
    values near 1e5 at a few positions, which would become inf); record the magnitude."""

    def guarded(i: int, h: torch.Tensor) -> None:
        big = float(h.abs().amax()) if h.numel() else 0.0
        if big <= FP16_MAX:
            write(i, h)
            return
        seen.append(big)
        write(i, h.clamp(-FP16_MAX, FP16_MAX))

    return guarded


def _writer(
    tokens: str,
    rows: list[int],
    rows_t: torch.Tensor,
    lens: list[int],
    sel: list[list[int]],
    t: int,
    k: int,
    out_t: torch.Tensor,
    t_dtype: torch.dtype,
    dev: torch.device,
) -> Callable[[int, torch.Tensor], None]:
    """The hook body for one batch: gather the selected positions and store them (cast)."""
    b = len(rows)
    if tokens == "all":
        keep = [min(n, t, k) for n in lens]

        def write_all(i: int, h: torch.Tensor) -> None:
            # One fused copy + cast per row; every position past a row's length is zeroed
            # (``out`` may be a reused memmap holding an abandoned attempt's bytes).
            for j, r in enumerate(rows):
                out_t[r, i, : keep[j]].copy_(h[j, : keep[j]])
                if keep[j] < k:
                    out_t[r, i, keep[j] :] = 0

        return write_all
    if tokens == "exact_answer_mean":
        w = torch.zeros((b, t), dtype=torch.float32)
        for j in range(b):
            w[j, sel[rows[j]]] = 1.0 / len(sel[rows[j]])
        w = w.to(dev)

        def write_mean(i: int, h: torch.Tensor) -> None:
            m = torch.bmm(w[:, None, :], h.float())[:, 0]
            out_t[rows_t, i, 0] = m.to(device="cpu", dtype=t_dtype)

        return write_mean
    pidx = torch.tensor([sel[r][-1] for r in rows], dtype=torch.long, device=dev)
    bidx = torch.arange(b, device=dev)

    def write_point(i: int, h: torch.Tensor) -> None:
        out_t[rows_t, i, 0] = h[bidx, pidx].to(device="cpu", dtype=t_dtype)

    return write_point
