"""One padding helper (models/_batch.py): its values, and that no other module pads by hand."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from knowlens.models._batch import pad_batch, pad_id, pad_values

SRC = Path(__file__).resolve().parents[1] / "src" / "knowlens"


def test_left_and_right_padding_values():
    ids, mask, pos = pad_batch([[5, 6, 7], [8]], 0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]
    ids, mask, pos = pad_batch([[5, 6, 7], [8]], 9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pos.tolist() == [[0, 1, 2], [0, 1, 2]]
    ids, mask, _ = pad_batch([[1, 2, 3, 4], [5]], 0, max_length=2)
    assert ids.tolist() == [[3, 4], [0, 5]]  # the end of a long row is kept
    assert pad_values([[1.5], []], 0.0, dtype=torch.float32, width=2).tolist() == [
        [1.5, 0.0],
        [0.0, 0.0],
    ]


def test_pad_id_rule():
    class Tok:
        pad_token_id = None
        eos_token_id = (7, 8)
        bos_token_id = 1

    assert pad_id(Tok()) == 7
    Tok.pad_token_id = 3
    assert pad_id(Tok()) == 3


def test_padded_rows_equal_unpadded_forward_both_sides():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    seqs = [[3, 4, 5, 6, 7], [9, 10]]
    with torch.no_grad():
        alone = [model(torch.tensor([s])).logits[0] for s in seqs]
        for side in ("left", "right"):
            ids, mask, pos = pad_batch(seqs, 0, side=side)
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            for i, s in enumerate(seqs):
                rows = out[i, -len(s) :] if side == "left" else out[i, : len(s)]
                torch.testing.assert_close(rows, alone[i], atol=1e-5, rtol=1e-5)


def test_no_other_module_pads_by_hand():
    # A hand-written pad loop needs a pad id: only the helper may read it from a tokenizer.
    offenders = []
    for f in SRC.rglob("*.py"):
        rel = f.relative_to(SRC).as_posix()
        if rel in ("models/_batch.py", "models/_load.py"):  # _load sets a missing pad token
            continue
        text = f.read_text()
        if re.search(r"pad_token_id|def \w*pad\w*\(", text):
            offenders.append(rel)
    assert offenders == []
