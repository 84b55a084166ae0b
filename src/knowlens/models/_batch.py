"""Padded token batches: the one place knowlens turns token id lists into model inputs.

    ids, mask, pos = pad_batch(seqs, pad_id(tokenizer), side="left")

``side="left"`` puts every row's last token at index -1 (decoding, ``logits_to_keep``);
position ids are ``cumsum(mask) - 1``, so rotary positions equal an unpadded forward pass.
``side="right"`` keeps token i of every row at index i (teacher-forced extraction, training);
position ids are then ``0..width-1`` for every row. Padded positions are masked, so the pad id
never changes a real position's values; :func:`pad_id` picks one rule for every caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

__all__ = ["pad_batch", "pad_id", "pad_values"]


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS, else its BOS, else 0 (padding is masked)."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        v = getattr(tokenizer, attr, None)
        if v is not None:
            return int(v[0] if isinstance(v, (list, tuple)) else v)
    return 0


def pad_values(
    seqs: Sequence[Sequence[Any]],
    value: float | int,
    *,
    side: Literal["left", "right"] = "right",
    dtype: torch.dtype = torch.long,
    width: int | None = None,
) -> torch.Tensor:
    """``(len(seqs), width)`` tensor of ``seqs`` padded with ``value`` (labels, loss weights)."""
    w = max((len(s) for s in seqs), default=0) if width is None else width
    out = torch.full((len(seqs), w), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if len(s):
            row = torch.as_tensor(list(s), dtype=dtype)
            if side == "left":
                out[i, w - len(s) :] = row
            else:
                out[i, : len(s)] = row
    return out


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad: int,
    *,
    side: Literal["left", "right"] = "left",
    max_length: int | None = None,
    width: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``position_ids`` (LongTensors) of one batch.

    Rows longer than ``max_length`` keep their *last* ``max_length`` tokens (the end of a
    prompt is what the next token depends on). ``width`` pads to a fixed width instead of the
    longest row.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right'; got {side!r}")
    if max_length is not None:
        seqs = [s[-max_length:] for s in seqs]
    ids = pad_values(seqs, pad, side=side, width=width)
    mask = pad_values([[1] * len(s) for s in seqs], 0, side=side, width=ids.shape[1])
    if side == "left":
        pos = (mask.cumsum(1) - 1).clamp(min=0)
    else:
        pos = torch.arange(ids.shape[1], dtype=torch.long)[None].expand(len(seqs), -1)
    return ids, mask, pos
