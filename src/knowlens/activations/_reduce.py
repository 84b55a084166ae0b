"""Streaming reduction of hidden states: statistics without keeping the activations.

    red = PositionMoments(lambda h: h.norm(dim=-1), n_layers=len(layers), n_positions=64)
    reduce_texts(model, texts, red, tokens="all", max_positions=64)   # -> red.result()

The same worker as :func:`extract` (``extract_batch``: hooks, ``StopForward``, right padding,
explicit position ids) runs on chunks of ``batch_size`` items that write into one reusable
buffer ``(batch_size, layers, K, d)``; each chunk's ``(values, mask, positions, rows)`` goes
to ``reducer.update`` and is then overwritten, so memory is flat in the number of items.
Nothing is cached (the result depends on the reducer, not only on the inputs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from knowlens.activations._api import _check_common, items_from_texts
from knowlens.activations._extract import (
    DTYPES,
    SELECTORS,
    TEXT_SELECTORS,
    ExtractItem,
    ExtractSpec,
    check_tokens,
    extract_batch,
    resolve_layers,
    selected_positions,
)
from knowlens.errors import DataError, KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle


class Reducer(Protocol):
    """What :func:`reduce_items` feeds: ``update`` per chunk, ``result`` once at the end."""

    def update(
        self, values: np.ndarray, mask: np.ndarray, positions: np.ndarray, rows: np.ndarray
    ) -> None:
        """``values`` (b, L, K, d) is a view of a reused buffer: copy what you keep.
        ``mask``/``positions`` (b, K); ``rows`` (b,) are the items' indices in the input."""
        ...

    def result(self) -> Any: ...


class PositionMoments:
    """Running mean, variance and count of a scalar statistic per (layer, position).

    ``statistic`` maps a float tensor (b, L, K, d) to (b, L, K) (default: the L2 norm).
    Column k of the position axis is absolute token position k for ``tokens="all"``.
    Sums are float64 and the variance merges per-batch deviations; ``result()`` ->
    ``{"mean", "var" (population), "count"}``, NaN where a position has no prompt.
    """

    def __init__(
        self,
        statistic: Callable[[torch.Tensor], torch.Tensor] | None,
        *,
        n_layers: int,
        n_positions: int,
    ) -> None:
        self.statistic = statistic if statistic is not None else (lambda h: h.norm(dim=-1))
        self.total = np.zeros((n_layers, n_positions))
        self.m2 = np.zeros((n_layers, n_positions))  # sum of squared deviations (Chan et al.)
        self.count = np.zeros(n_positions, dtype=np.int64)

    def update(
        self, values: np.ndarray, mask: np.ndarray, positions: np.ndarray, rows: np.ndarray
    ) -> None:
        st = self.statistic(torch.from_numpy(values).float()).numpy()  # (b, L, K)
        k = st.shape[-1]
        if k > self.count.shape[0]:
            raise ValueError(f"{k} positions exceed the reducer's n_positions={len(self.count)}")
        mk = np.asarray(mask, dtype=bool)[:, None, :]
        st = np.where(mk, st, 0.0)  # padding may hold anything a statistic makes of zeros
        nb = mk[:, 0].sum(0)  # (k,)
        bsum = st.sum(0)
        # variance by merging per-batch deviations: sum-of-squares minus mean^2 cancels
        # catastrophically when the spread is small next to the mean
        n_old = self.count[:k].copy()
        n_new = n_old + nb
        with np.errstate(invalid="ignore", divide="ignore"):
            bmean = np.where(nb > 0, bsum / np.maximum(nb, 1), 0.0)
            old_mean = np.where(n_old > 0, self.total[:, :k] / np.maximum(n_old, 1), 0.0)
        bm2 = (np.where(mk, st - bmean, 0.0).astype(np.float64) ** 2).sum(0)
        delta = bmean - old_mean
        self.m2[:, :k] += bm2 + delta**2 * (n_old * nb / np.maximum(n_new, 1))
        self.total[:, :k] += bsum
        self.count[:k] = n_new

    def result(self) -> dict[str, np.ndarray]:
        c = np.maximum(self.count, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.count > 0, self.total / c, np.nan)
            var = np.where(self.count > 0, self.m2 / c, np.nan)
        return {"mean": mean, "var": var, "count": self.count.copy()}


def reduce_items(
    model: ModelHandle,
    items: Sequence[ExtractItem],
    reducer: Reducer,
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "all",
    dtype: str = "float32",
    max_positions: int = 512,
    batch_size: int = 8,
    progress: bool = False,
    _buffers: list[tuple[int, ...]] | None = None,
) -> Any:
    """Run ``items`` through ``extract_batch`` chunk by chunk into ``reducer``; returns
    ``reducer.result()``. ``dtype`` is the hook copy's dtype (float32 or float16, no
    ``auto``: nothing is stored). ``_buffers`` (tests) receives the buffer's shape."""
    check_tokens(tokens, SELECTORS)
    if dtype not in DTYPES:
        raise KnowlensError(
            f"reduce dtype must be float32 or float16; got '{dtype}'. Pass dtype='float32'."
        )
    _check_common(model, max_positions, batch_size)
    items = list(items)
    if not items:
        raise DataError("reduce_items got no items; pass at least one sequence.")
    resolved = resolve_layers(model, layers)
    sel = [selected_positions(it, tokens, max_positions)[0] for it in items]
    k = max(len(s) for s in sel) if tokens == "all" else 1
    spec = ExtractSpec(resolved, tokens, dtype, max_positions, k, batch_size)
    buf = np.zeros((min(batch_size, len(items)), len(resolved), k, model.d_model), DTYPES[dtype][0])
    if _buffers is not None:
        _buffers.append(buf.shape)
    # Longest first across the whole input (as extract_batch does within a call), so each
    # chunk is one forward batch of similar lengths.
    order = sorted(range(len(items)), key=lambda i: (-(max(sel[i]) + 1), i))
    from knowlens._progress import progress_bar

    with progress_bar(len(items), f"reduce {model.name} · {tokens}", progress) as adv:
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            out = buf[: len(rows)]
            res = extract_batch(model, [items[r] for r in rows], spec, out=out)
            reducer.update(out, res["mask"], res["positions"], np.asarray(rows, dtype=np.int64))
            adv(len(rows))
    return reducer.result()


def reduce_texts(
    model: ModelHandle,
    texts: Sequence[str],
    reducer: Reducer,
    *,
    layers: str | int | Sequence[int] = "all",
    tokens: str = "all",
    dtype: str = "float32",
    max_positions: int = 512,
    batch_size: int = 8,
    progress: bool = False,
) -> Any:
    """:func:`reduce_items` on raw texts (tokenised as in :func:`extract_texts`)."""
    if isinstance(texts, str):
        raise KnowlensError("texts must be a list of strings; got one string. Wrap it: [text].")
    check_tokens(tokens, TEXT_SELECTORS)
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("reduce_texts got no texts; pass a non-empty list of strings.")
    return reduce_items(
        model,
        items_from_texts(model, texts),
        reducer,
        layers=layers,
        tokens=tokens,
        dtype=dtype,
        max_positions=max_positions,
        batch_size=batch_size,
        progress=progress,
    )
