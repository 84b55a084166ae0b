"""Batched greedy and sampled generation with token statistics and grading.

    gens = generate(model, task)                      # GenerationSet, rows in task order
    gens.accuracy, gens[0].answer, gens[0].token_logprobs
    outs = generate_texts(model, ["Tell me a joke."], max_new_tokens=32)
    samples = sample(model, gens, k=10, temperature=1.0, top_p=0.95, seed=0)   # SampleSet

Greedy and sampled answers come from the same loop (``_decode_batch``); only the token
chooser differs (``Greedy`` / ``TokenSampler``). Sampling prefills each prompt once and
repeats its KV cache k times; see ``sample``.

How a batch is decoded (one KV-cached loop, no ``model.generate``)::

    left padding        p p P P P P | a1 a2 a3 ...      position ids = cumsum(mask) - 1
                        p P P P P P | b1 b2 <eos>       finished rows leave the batch
    step 0: one forward over the prompts, logits of the last position only
    step t: one forward over the new token of every unfinished row

A prefix that several prompts share (a chat template's system turn, a few-shot block) is run
once and its keys / values copied into each row that starts with it; the prefill feeds only
the rest of each prompt (``shared_prefix_lengths``; tokens unchanged, log-probs move by ulps).

Decoding is pure greedy (argmax of the raw logits; the model's generation_config processors
such as repetition penalties are deliberately not applied), so it equals HF
``generate(do_sample=False)`` token for token. A row stops at an EOS id (tokenizer + model
generation config), at a token containing a newline once the answer has non-blank text
(``stop_on_newline``), or at ``max_new_tokens``; the stop token itself is not part of the
answer. The log-probability and entropy (nats) of every generated token come from the same
logits. Batches are formed from prompts sorted by length (less padding) and rows are
returned in the input order.

The exact-answer token span is found by decode-prefix alignment: token k covers the
characters ``[len(decode(ids[:k])), len(decode(ids[:k+1])))`` of the answer, which is exact
for the *generated* ids (re-tokenising the answer with offsets can give different ids).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import numbers
import os
import shutil
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import xxhash

from knowlens._cache import (
    atomic_dir,
    atomic_write_bytes,
    clean_stale_tmp,
    entry_dir,
    entry_lock,
    quarantine,
    stable_hash,
    verified_entry,
)
from knowlens._progress import progress_bar
from knowlens._types import Generation, GenerationSet, Sample, SampleSet
from knowlens.errors import DataError, KnowlensError
from knowlens.models._batch import pad_batch, pad_id

if TYPE_CHECKING:
    from knowlens.models import ModelHandle
    from knowlens.tasks import TaskLike

# 2: batch_size is part of the key (log-probs differ by ~1e-6 between batch sizes), entries
# carry checksums. The later ``user_turn`` column needs no bump: entries without it load with
# ``user_turn=None`` and ``estimators.user_turn`` recovers the same text from the prompt.
# 3: continuous batching in windows of decode_window(batch_size) prompts (other batch
# compositions and paddings move log-probs by ulps; tokens are unchanged).
# 4: shared prompt prefixes run once (``shared_prefix_lengths``; ulps again).
GENERATION_VERSION = "4"
_log = logging.getLogger("knowlens.generation")

__all__ = [
    "GENERATION_VERSION",
    "SAMPLE_VERSION",
    "Generation",
    "GenerationSet",
    "GenerationSettings",
    "Greedy",
    "Sample",
    "SampleSet",
    "SampleSettings",
    "SharedPrefixes",
    "TokenChooser",
    "TokenSampler",
    "char_span_to_token_span",
    "compute_numerics",
    "decode_window",
    "generate",
    "generate_examples",
    "generate_texts",
    "greedy_plan",
    "prefix_once_forward",
    "resolve_max_new_tokens",
    "sample",
    "sample_cache_entry",
    "sample_items",
    "sample_plan",
    "sample_seed",
    "shared_prefix_lengths",
    "top_p_filter",
]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (all part of the cache key)."""

    max_new_tokens: int = 32
    batch_size: int = 16
    use_chat_template: bool = True
    stop_on_newline: bool = True
    task: str = "texts"

    def validate(self) -> None:
        _check_positive_int("max_new_tokens", self.max_new_tokens, "max_new_tokens=32")
        if (
            not isinstance(self.batch_size, int)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise KnowlensError(
                f"batch_size must be a positive integer; got {self.batch_size!r}. "
                "Pass e.g. batch_size=16."
            )


def _check_positive_int(what: str, value: Any, example: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise KnowlensError(
            f"{what} must be a positive integer; got {value!r}. Pass e.g. {example}."
        )


def resolve_max_new_tokens(max_new_tokens: Any, task: Any) -> int:
    """``max_new_tokens`` if given (a positive int: 0, negatives, floats and strings are errors,
    never "use the default"), else the task's ``max_new_tokens`` (32 if it declares none)."""
    if max_new_tokens is None:
        value = getattr(task, "max_new_tokens", None)
        value = 32 if value is None else value
        who = f"task '{getattr(task, 'name', 'task')}' max_new_tokens"
    else:
        value, who = max_new_tokens, "max_new_tokens"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # numpy ints from configs / dataframes
    _check_positive_int(who, value, "max_new_tokens=32")
    return value


def context_limit(model: ModelHandle) -> tuple[int, str] | None:
    """(tokens, where it came from) of the model's context window, or None if it declares none:
    the config's position limit, else the tokenizer's ``model_max_length`` when it is a real
    number (HF sets ~1e30 for "unknown")."""
    cfg = getattr(model.model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        n = getattr(cfg, attr, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n, f"config {attr}"
    n = getattr(model.tokenizer, "model_max_length", None)
    if isinstance(n, int) and 0 < n < 10_000_000:
        return n, "tokenizer model_max_length"
    return None


def check_context(
    model: ModelHandle, examples: Sequence[Any], prompt_lens: Sequence[int], max_new_tokens: int
) -> None:
    """Raise before any forward pass if a prompt + ``max_new_tokens`` exceeds the context: past
    it a model silently produces garbage (e.g. the answer 'A:' to a 9,642-token prompt)."""
    limit = context_limit(model)
    if limit is None:
        return
    n, source = limit
    over = [i for i, p in enumerate(prompt_lens) if p + max_new_tokens > n]
    if not over:
        return
    i = max(over, key=lambda j: prompt_lens[j])
    p = prompt_lens[i]
    room = f"max_new_tokens <= {n - p}, " if n - p >= 1 else ""
    raise KnowlensError(
        f"Example '{examples[i].id}' has a {p}-token prompt + max_new_tokens={max_new_tokens} = "
        f"{p + max_new_tokens} tokens, beyond the {n}-token context of model "
        f"'{getattr(model, 'name', 'model')}' ({source}); {len(over)} of {len(prompt_lens)} "
        f"examples are too long. Fix: a shorter prompt (fewer shots, shorter context), "
        f"{room}or a model with a longer context."
    )


# -- resumable batches -------------------------------------------------------------------------
_ROW_KEYS = {"answer_ids", "token_logprobs", "token_entropies", "stop_reason"}


def _rows_digest(rows: list[dict[str, Any]]) -> str:
    return xxhash.xxh3_128(json.dumps(rows, sort_keys=True).encode()).hexdigest()


class BatchRecords:
    """Finished batches of a cached run, so a killed run resumes where it stopped.

    ``directory`` (``cache_root()/generations/.partial-<key>/``) holds one atomically written
    ``<batch>.json`` per finished batch: its decoded rows, a digest of them and the plan hash
    (cache key + the batch's example ids + prompt token ids). A record whose plan or digest
    does not match is discarded and the batch recomputed; JSON floats round-trip exactly, so a
    resumed run gives the same bytes as an uninterrupted one. ``row_keys`` / ``rows_per_item``:
    the keys of one decoded row and rows per example (sampling: k rows with sampling log-probs).
    """

    def __init__(
        self,
        directory: Path,
        key: str,
        *,
        row_keys: frozenset[str] | set[str] = frozenset(_ROW_KEYS),
        rows_per_item: int = 1,
    ) -> None:
        self.dir, self.key, self.reused = Path(directory), key, 0
        self.row_keys, self.rows_per_item = set(row_keys), rows_per_item
        clean_stale_tmp(self.dir)  # a record cut off mid-write by a kill

    def _plan(self, ids: list[str], prompt_ids: list[list[int]]) -> str:
        return stable_hash([self.key, ids, prompt_ids], length=32)

    def get(
        self, batch: int, ids: list[str], prompt_ids: list[list[int]]
    ) -> list[dict[str, Any]] | None:
        path = self.dir / f"{batch:05d}.json"
        if not path.exists():
            return None
        same_plan = intact = False
        try:
            rec = json.loads(path.read_text())
            same_plan = rec["plan"] == self._plan(ids, prompt_ids)
            rows = rec["rows"]
            intact = (
                rec["digest"] == _rows_digest(rows)
                and len(rows) == len(ids) * self.rows_per_item
                and all(isinstance(r, dict) and set(r) == self.row_keys for r in rows)
            )
        except (OSError, ValueError, KeyError, TypeError):
            same_plan = True  # unreadable, not merely another plan
        if not (same_plan and intact):
            if same_plan:
                _log.warning("knowlens: discarding a damaged resume record %s", path)
            path.unlink(missing_ok=True)
            return None
        self.reused += 1
        return rows

    def put(
        self,
        batch: int,
        ids: list[str],
        prompt_ids: list[list[int]],
        rows: list[dict[str, Any]],
    ) -> None:
        rec = {"plan": self._plan(ids, prompt_ids), "batch": batch, "ids": ids, "rows": rows}
        rec["digest"] = _rows_digest(rows)
        atomic_write_bytes(self.dir / f"{batch:05d}.json", json.dumps(rec).encode())

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# -- token helpers ---------------------------------------------------------------------------
_VOCAB_FLAGS: dict[int, tuple[Any, torch.Tensor, torch.Tensor]] = {}


def _vocab_flags(tokenizer: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token id: does its text contain a newline / is it blank (whitespace only)?"""
    hit = _VOCAB_FLAGS.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer and len(hit[1]) == size:
        return hit[1], hit[2]
    n = min(size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
    newline = torch.zeros(size, dtype=torch.bool)
    blank = torch.zeros(size, dtype=torch.bool)
    newline[:n] = torch.tensor(["\n" in t for t in texts])
    blank[:n] = torch.tensor([t.strip() == "" for t in texts])
    _VOCAB_FLAGS[id(tokenizer)] = (tokenizer, newline, blank)
    return newline, blank


def _eos_ids(handle: Any) -> list[int]:
    ids: set[int] = set()
    for src in (
        handle.tokenizer.eos_token_id,
        getattr(handle.model.generation_config, "eos_token_id", None),
    ):
        if src is None:
            continue
        ids.update([int(s) for s in src] if isinstance(src, (list, tuple)) else [int(src)])
    return sorted(ids)


def char_span_to_token_span(
    tokenizer: Any, ids: Sequence[int], span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Token range ``[s, e)`` of ``ids`` covering the character span ``span`` of their decoding.

    Uses decode-prefix alignment (token k ends at ``len(decode(ids[:k+1]))``), exact for any id
    sequence. Returns None if the span is missing or empty or lies outside the text.
    """
    if span is None or not ids:
        return None
    cs, ce = int(span[0]), int(span[1])
    if ce <= cs:
        return None
    prefixes = tokenizer.batch_decode(
        [list(ids[: k + 1]) for k in range(len(ids))], skip_special_tokens=True
    )
    ends = np.maximum.accumulate(np.array([len(p) for p in prefixes]))
    starts = np.concatenate([[0], ends[:-1]])
    covering = np.flatnonzero((ends > cs) & (starts < ce))
    if len(covering) == 0:
        return None
    return int(covering[0]), int(covering[-1]) + 1


# -- choosing the next token -------------------------------------------------------------------
class TokenChooser(Protocol):
    """Picks each live row's next token from its float32 logits; ``_decode_batch`` runs the
    loop around it. ``per_prompt`` rows are decoded for every prompt (after one shared
    prefill). Returns the tokens and, for a sampler, their log-probs under the distribution
    sampled from (None: the raw distribution is the one chosen from)."""

    per_prompt: int

    def __call__(
        self, logits: torch.Tensor, logp: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class Greedy:
    """Argmax of the raw logits, as HF ``generate(do_sample=False)`` takes it."""

    per_prompt = 1

    def __call__(
        self, logits: torch.Tensor, logp: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logits.argmax(-1), None


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering exactly as HF's ``TopPLogitsWarper``: keep the smallest set of most
    probable tokens whose probabilities sum to >= ``top_p`` (always at least one); the rest
    get -inf. The same ops in the same order, so the kept set is bit-identical to HF's."""
    sorted_logits, sorted_idx = torch.sort(scores, descending=False)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cum <= (1 - top_p)
    remove[..., -1:] = False
    remove = remove.scatter(1, sorted_idx, remove)
    return scores.masked_fill(remove, -float("inf"))


def sample_seed(seed: int, example_id: str, index: int) -> int:
    """The RNG seed of sample ``index`` of one example: a 63-bit hash of (seed, example id,
    index), so a sample depends on neither its batch nor whether the run was resumed."""
    raw = json.dumps([int(seed), str(example_id), int(index)]).encode()
    return xxhash.xxh3_64_intdigest(raw) & ((1 << 63) - 1)


class TokenSampler:
    """Samples from softmax(logits / temperature) after top-p filtering, one
    ``torch.Generator`` per row seeded with ``seeds[row]`` (``sample_seed``).

    Each row draws with ``torch.multinomial(probs[row:row+1], 1, generator=...)``, the call HF
    ``generate(do_sample=True)`` makes on its one-row batch, after HF's processors in HF's
    order (temperature, then top-p), so for one prompt and K=1 a row seeded s gives HF's tokens
    after ``torch.manual_seed(s)``. Rows are ``prompt * per_prompt + j``."""

    def __init__(self, seeds: Sequence[int], per_prompt: int, temperature: float, top_p: float):
        self.seeds, self.per_prompt = [int(s) for s in seeds], int(per_prompt)
        self.temperature, self.top_p = float(temperature), float(top_p)
        self._gens: list[torch.Generator] | None = None

    def __call__(
        self, logits: torch.Tensor, logp: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._gens is None:
            self._gens = [torch.Generator(logits.device).manual_seed(s) for s in self.seeds]
        scores = logits / self.temperature if self.temperature != 1.0 else logits
        if self.top_p < 1.0:  # HF adds no top-p warper at 1.0 either
            scores = top_p_filter(scores, self.top_p)
        probs = torch.softmax(scores, dim=-1)
        tok = torch.cat(
            [
                torch.multinomial(probs[i : i + 1], 1, generator=self._gens[r])[0]
                for i, r in enumerate(rows.tolist())
            ]
        )
        # T=1, top_p=1: scores is logits, so this equals logp exactly
        slp = torch.log_softmax(scores, dim=-1).gather(1, tok[:, None])[:, 0]
        return tok, slp


_GREEDY = Greedy()


class DecodeObserver(Protocol):
    """Sees every model forward of a greedy decode, so hidden states can be captured while
    generating (the activations stage installs its hooks and reads them in these calls).

    Every prompt and answer token of a row is consumed by exactly one forward: the prompt by a
    prefill (or its shared prefix by that prefix's forward, ``prefix_done``, and the rest by
    its prefill), answer token ``t`` by the decode step after it was chosen. The stop token
    (EOS / newline) is never consumed; with an observer the decoder makes one extra forward for rows
    that stop by length, so their last answer token is seen too. Row indices are positions in
    the prompt list handed to ``_decode_batch`` (continuous batching may prefill rows mid-way)."""

    def forward_done(
        self,
        rows: Sequence[int],
        mask: torch.Tensor,
        prefixes: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        """Called right after a forward. Entry ``i`` of that forward continued row ``rows[i]``;
        ``mask`` ``[len(rows), n]`` marks the forward's ``n`` new positions per entry (left
        padding 0 at a prefill; all ones, ``n = 1``, at a decode step). At a prefill,
        ``prefixes[i]`` are the leading prompt tokens of entry ``i`` that a shared prefix's
        own forward fed (``prefix_done``; () if none); the mask covers the rest."""
        ...

    def prefix_done(self, prefixes: Sequence[tuple[int, ...]], mask: torch.Tensor) -> None:
        """Called right after the forward of shared prompt prefixes (entry ``j`` fed
        ``prefixes[j]``, left-padded; ``mask`` marks its tokens). Rows that start with one
        of them get its keys / values, and it stays usable until ``prefixes_dropped``."""
        ...

    def prefixes_dropped(self, prefixes: Sequence[tuple[int, ...]]) -> None:
        """No later prefill starts from these prefixes (a rerun would ``prefix_done`` again)."""
        ...

    def rows_done(self, rows: Sequence[int], gens: Sequence[Generation]) -> None:
        """Called by ``generate_examples`` once rows are decoded and graded (``gens[i]`` is row
        ``rows[i]``): their exact-answer positions are known and their states can be reduced
        to the requested positions and released."""
        ...


# -- the decoding loop -----------------------------------------------------------------------
def _encode(handle: Any, text: str, templated: bool) -> list[int]:
    # A chat template already writes its own BOS / special tokens; plain text gets the
    # tokenizer's usual specials (e.g. Gemma's <bos>).
    return list(handle.tokenizer(text, add_special_tokens=not templated)["input_ids"])


@functools.cache
def _cache_kwarg_of(cls: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The KV-cache keyword of ``model.forward``: transformers >= 5.2x calls it ``cache``
    (``past_key_values`` warns and goes away in 5.40), older releases ``past_key_values``."""
    cls: Any = type(model)
    return _cache_kwarg_of(cls)


# Continuous batching: ``_decode_batch`` runs a window of prompts through ``slots`` rows; when
# rows finish, waiting prompts take their slots (their prefill is merged into the running KV
# cache). The resume unit of a cached run is one window of ``decode_window(batch_size)``
# prompts: a window's numbers depend only on its prompts and the slot count, so an interrupted
# run resumes to the same bytes and another executor's blocks must be whole windows.
_WINDOW_BATCHES = 8
_REASONS = ("length", "eos", "newline")


def decode_window(batch_size: int) -> int:
    """Prompts per resume unit (``BatchRecords`` record) of a run with ``batch_size``."""
    return _WINDOW_BATCHES * batch_size


@functools.cache
def _slot_cache_classes() -> tuple[Any, Any]:
    """(``SlotLayer``, ``Cache``): built on first use, so importing this module does not import
    transformers."""
    from transformers.cache_utils import Cache, DynamicLayer

    class SlotLayer(DynamicLayer):
        """One layer's keys / values in a preallocated ``[rows, heads, capacity, dim]`` buffer.

        A forward writes its new columns in place and attends to views of the used columns
        (``DynamicLayer`` concatenates, copying the whole cache at every decode step). Every
        layer is a full-attention layer, also for sliding-window models: HF's sliding-window
        mask is built from column indices, which equal token distances because every row's
        tokens are contiguous and right-aligned, so the window is applied by the mask."""

        def __init__(self, headroom: int) -> None:
            super().__init__()
            self.headroom, self.n = headroom, 0
            self.kbuf: torch.Tensor | None = None
            self.vbuf: torch.Tensor | None = None

        def set(self, kbuf: torch.Tensor, vbuf: torch.Tensor, n: int) -> None:
            self.kbuf, self.vbuf, self.n = kbuf, vbuf, n
            self.device, self.is_initialized = kbuf.device, True
            self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device, self.is_initialized = key_states.device, True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            q, n = key_states.shape[-2], self.n
            if self.kbuf is None or self.vbuf is None or n + q > self.kbuf.shape[-2]:
                b, h, _, dk = key_states.shape
                kb = key_states.new_empty((b, h, n + q + self.headroom, dk))
                vb = value_states.new_empty((b, h, n + q + self.headroom, value_states.shape[-1]))
                if self.kbuf is not None and self.vbuf is not None and n:
                    kb[:, :, :n], vb[:, :, :n] = self.kbuf[:, :, :n], self.vbuf[:, :, :n]
                self.kbuf, self.vbuf = kb, vb
            self.kbuf[:, :, n : n + q] = key_states
            self.vbuf[:, :, n : n + q] = value_states
            self.set(self.kbuf, self.vbuf, n + q)
            return self.kbuf[:, :, : n + q], self.vbuf[:, :, : n + q]

        def get_seq_length(self) -> int:
            return int(self.n)

    return SlotLayer, Cache


def _decoder_layers(model: Any) -> int:
    """Number of KV-cache layers; only (sliding-window) attention layers can be merged."""
    cfg: Any = model.config
    cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    types: list[str] = list(getattr(cfg, "layer_types", None) or [])
    odd = sorted(set(types) - _MERGEABLE)
    if odd or getattr(cfg, "num_kv_shared_layers", None):
        raise KnowlensError(
            f"knowlens' decoder supports attention and sliding-window attention layers; model "
            f"'{getattr(cfg, 'model_type', '?')}' has {odd or 'shared KV layers'}. "
            "Use a decoder-only transformer (e.g. Llama, Gemma 3)."
        )
    return int(cfg.num_hidden_layers)


_MERGEABLE = {"full_attention", "sliding_attention"}


def _sliding_window(model: Any) -> int | None:
    """The sliding window of a model with sliding-window layers (None: every layer is full)."""
    cfg: Any = model.config
    cfg = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    window = getattr(cfg, "sliding_window", None)
    types = list(getattr(cfg, "layer_types", None) or [])
    if window is None or (types and "sliding_attention" not in types):
        return None
    return int(window)


# Shared prompt prefixes. Prompts of one decode often begin alike (a chat template's system
# turn, a few-shot block, a jailbreak template): a token's keys and values depend only on the
# tokens before it, so a prefix several prompts share is run once and its columns are copied
# into every row that starts with it; the prefill then feeds each row's own tokens only.
# A shorter prefix would not pay for its own forward (each reads every weight once).
_MIN_SHARED = 16
# Prefix columns kept for prompts still waiting (least recently used dropped first).
_PREFIX_BUDGET = 512 * 2**20


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def shared_prefix_lengths(
    prompts: Sequence[Sequence[int]], minimum: int | None = None
) -> list[int]:
    """Per prompt, how many of its leading tokens another prompt of ``prompts`` shares (the
    longest such prefix: its common prefix with a neighbour in sorted order; a repeated prompt
    shares all of itself), at most its length - 1 so that its prefill still feeds a token;
    0 where that is under ``minimum`` tokens (default ``_MIN_SHARED``)."""
    minimum = _MIN_SHARED if minimum is None else minimum
    counts = Counter(tuple(p) for p in prompts)
    distinct = sorted(counts)
    common = [_common(a, b) for a, b in itertools.pairwise(distinct)]
    best: dict[tuple[int, ...], int] = {}
    for i, s in enumerate(distinct):
        n = max(common[i - 1] if i else 0, common[i] if i < len(common) else 0)
        n = min(len(s) if counts[s] > 1 else n, len(s) - 1)
        best[s] = n if n >= minimum else 0
    return [best[tuple(p)] for p in prompts]


class SharedPrefixes:
    """Forwards over token sequences whose shared prefixes run once (``shared_prefix_lengths``;
    ``cap[i]``: sequence ``i`` keeps at least its tokens from ``cap[i]`` on for its own
    forward, e.g. positions whose states are read). The decoder's prefills and the query
    readers use it alike.

    ``forward(idx)`` runs sequences ``idx`` together: the prefixes they need and this object
    does not hold yet run first (one batched, left-padded forward), each row gets its
    prefix's keys / values right-aligned in the first ``P`` columns of new ``SlotLayer``
    buffers, and the forward feeds the rest of each sequence, left-padded after the prefix
    (masked columns between the two; positions are explicit). A prefix is kept while a
    sequence not yet run starts with it (least recently used dropped beyond
    ``_PREFIX_BUDGET`` bytes, run again if needed). Sliding-window layers measure their
    window in columns, so a group whose rows would span more columns than the window
    (``headroom``: columns still to come, the answer) is fed whole. ``observer`` (a
    ``DecodeObserver``) is told about prefix forwards and drops."""

    def __init__(
        self,
        handle: Any,
        seqs: Sequence[Sequence[int]],
        *,
        cap: Sequence[int] | None = None,
        observer: DecodeObserver | None = None,
    ) -> None:
        self.model, self.dev, self.observer = handle.model, handle.device, observer
        self.seqs = [list(q) for q in seqs]
        self.pad, self.kv = pad_id(handle.tokenizer), cache_kwarg(self.model)
        try:
            self.n_layers: int | None = _decoder_layers(self.model)
        except KnowlensError:  # not a layout the KV buffers support: plain forwards
            if observer is not None:
                raise
            self.n_layers = None
        self.SlotLayer, self.Cache = _slot_cache_classes()
        self.window = _sliding_window(self.model)
        lengths = shared_prefix_lengths(self.seqs) if self.n_layers else [0] * len(self.seqs)
        if cap is not None:
            lengths = [min(b, int(c)) for b, c in zip(lengths, cap, strict=True)]
            lengths = [b if b >= _MIN_SHARED else 0 for b in lengths]
        self.lengths = lengths
        self.waiting_on = Counter(
            tuple(q[:b]) for q, b in zip(self.seqs, lengths, strict=True) if b
        )
        self.kv_of: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, ...]]] = OrderedDict()
        self.fed = 0  # tokens the forwards fed (a shared prefix once)
        self.prefixes_run = 0  # prefix sequences run (a dropped one again)

    def forward(
        self, idx: Sequence[int], *, headroom: int = 0, **kwargs: Any
    ) -> tuple[Any, torch.Tensor, torch.Tensor, list[Any], torch.Tensor]:
        """One forward over sequences ``idx`` (their shared prefixes held or run first).
        Returns the model output, the fed tokens' ``mask`` ``[rows, S]`` and ``pos``, the
        KV-cache layers (``P + S`` columns used, ``headroom`` free) and the attention mask of
        all ``P + S + headroom`` columns; ``kwargs`` go to the model (default
        ``logits_to_keep=1``)."""
        shared = [self.lengths[i] for i in idx]
        keys = [tuple(self.seqs[i][:b]) for i, b in zip(idx, shared, strict=True)]
        for key, b in zip(keys, shared, strict=True):
            if b:
                self.waiting_on[key] -= 1
        rest = [len(self.seqs[i]) - b for i, b in zip(idx, shared, strict=True)]
        P = max(shared, default=0)
        if P and self.window is not None and P + max(rest) + headroom > self.window:
            shared, keys, P = [0] * len(idx), [()] * len(idx), 0
        ids, mask, pos = (
            t.to(self.dev)
            for t in pad_batch(
                [self.seqs[i][b:] for i, b in zip(idx, shared, strict=True)], self.pad
            )
        )
        R, S = ids.shape
        full = torch.ones((R, P + S + headroom), dtype=mask.dtype, device=self.dev)
        full[:, P : P + S] = mask
        kwargs.setdefault("logits_to_keep", 1)
        self.fed += int(mask.sum())
        if self.n_layers is None:  # a reader of a model the decoder does not support
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kwargs
            )
            return out, mask, pos, [], full
        layers = [self.SlotLayer(headroom) for _ in range(self.n_layers)]
        if P:
            pos = pos + torch.tensor(shared, device=self.dev)[:, None]
            full[:, :P] = 0
            for r, b in enumerate(shared):
                full[r, P - b : P] = 1
            self._place(layers, keys, P, P + S + headroom)
        out = self.model(
            input_ids=ids,
            attention_mask=full[:, : P + S],
            position_ids=pos,
            use_cache=True,
            **kwargs,
            **{self.kv: self.Cache(layers=layers)},
        )
        if self.observer is not None:
            self.observer.forward_done(list(idx), mask, keys)
        self._drop()
        return out, mask, pos, layers, full

    def _place(self, layers: list[Any], keys: list[tuple[int, ...]], P: int, capacity: int) -> None:
        """Write the prefixes ``keys`` (one per row, () for none) into new ``layers`` of
        ``capacity`` columns, right-aligned in the first ``P``; prefixes not held yet are run
        first, together, in one forward."""
        need = sorted({k for k in keys if k and k not in self.kv_of}, key=len, reverse=True)
        if need:
            ids, mask, pos = (t.to(self.dev) for t in pad_batch(need, self.pad))
            own = [self.SlotLayer(0) for _ in range(self.n_layers or 0)]
            self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{self.kv: self.Cache(layers=own)},
            )
            if self.observer is not None:
                self.observer.prefix_done(need, mask)
            self.fed += int(mask.sum())
            self.prefixes_run += len(need)
            W = ids.shape[1]
            for j, k in enumerate(need):
                self.kv_of[k] = [
                    (lay.kbuf[j : j + 1, :, W - len(k) : W].clone(),
                     lay.vbuf[j : j + 1, :, W - len(k) : W].clone())
                    for lay in own
                ]  # fmt: skip
        rows_of: dict[tuple[int, ...], list[int]] = {}
        for r, k in enumerate(keys):
            if k:
                rows_of.setdefault(k, []).append(r)
                self.kv_of.move_to_end(k)
        for i, layer in enumerate(layers):
            k0, v0 = self.kv_of[next(iter(rows_of))][i]
            kb = k0.new_zeros((len(keys), k0.shape[1], capacity, k0.shape[3]))
            vb = v0.new_zeros((len(keys), v0.shape[1], capacity, v0.shape[3]))
            for k, rows in rows_of.items():
                at = torch.tensor(rows, device=self.dev)
                kp, vp = self.kv_of[k][i]
                kb[at, :, P - len(k) : P] = kp
                vb[at, :, P - len(k) : P] = vp
            layer.set(kb, vb, P)

    def _drop(self) -> None:
        """Forget prefixes no sequence still to run starts with, then the least recently used
        ones beyond ``_PREFIX_BUDGET`` bytes (a sequence whose prefix was dropped runs it
        again)."""
        gone = [k for k in self.kv_of if self.waiting_on[k] <= 0]
        for k in gone:
            del self.kv_of[k]
        size = sum(t.nbytes for kv in self.kv_of.values() for pair in kv for t in pair)
        while self.kv_of and size > _PREFIX_BUDGET:
            k, kv = self.kv_of.popitem(last=False)
            size -= sum(t.nbytes for pair in kv for t in pair)
            gone.append(k)
        if gone and self.observer is not None:
            self.observer.prefixes_dropped(gone)


def prefix_once_forward(
    handle: Any, seqs: Sequence[Sequence[int]], keep_from: Sequence[int], **kwargs: Any
) -> tuple[Any, int] | None:
    """One forward over a batch whose rows' common prefix runs once, gradients flowing
    through it: the training counterpart of ``SharedPrefixes`` (whose held prefixes suit
    passes without gradients), e.g. a chat template's system turn in a LoRA step.

    The prefix (the tokens all of ``seqs`` start with, ending before every row's
    ``keep_from`` and its last token) runs as one row into the model's own cache, which is
    repeated for every row; the rest of each row follows, left-padded after it, so row
    tokens ``t`` sit in column ``width - len + t`` of the outputs, as in a plain
    left-padded batch. The rows' gradients through the prefix add up in its one pass (a
    LoRA dropout mask on prefix tokens is then shared by the batch's rows). Returns
    ``(output, width)``, or None where a plain batch is the forward to run: one row, a
    common prefix under ``_MIN_SHARED`` tokens, a sliding window narrower than a row, a
    model whose layers the decoder does not know. ``kwargs`` go to the rows' forward."""
    if len(seqs) < 2:
        return None
    first = list(seqs[0])
    P = min(min(int(k) for k in keep_from), min(len(q) for q in seqs) - 1)
    for q in seqs[1:]:
        P = _common(first[:P], q)
    if P < _MIN_SHARED:
        return None
    model, dev = handle.model, handle.device
    try:
        _decoder_layers(model)
    except KnowlensError:
        return None
    window = _sliding_window(model)
    if window is not None and max(len(q) for q in seqs) > window:  # columns: the longest row
        return None
    kv = cache_kwarg(model)
    pre = model(input_ids=torch.tensor([first[:P]], device=dev), use_cache=True, logits_to_keep=1)
    cache = getattr(pre, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(len(seqs))
    rest = [list(q)[P:] for q in seqs]
    ids, mask, pos = (t.to(dev) for t in pad_batch(rest, pad_id(handle.tokenizer)))
    full = torch.cat([torch.ones((len(seqs), P), dtype=mask.dtype, device=dev), mask], 1)
    out = model(
        input_ids=ids,
        attention_mask=full,
        position_ids=pos + P,
        use_cache=True,
        **kwargs,
        **{kv: cache},
    )
    return out, int(ids.shape[1])


@dataclass
class _Rows:
    """Rows decoding together: their KV cache (``layers``, one ``SlotLayer`` per model layer,
    ``n`` columns used, right-aligned) and ``mask`` (``[cache rows, capacity]``, ones beyond
    ``n``), and per entry the row it continues and the position and token it consumes next.
    ``src`` maps entries to cache rows (k samples of one prefilled prompt); None: the same."""

    layers: list[Any]
    mask: torch.Tensor
    n: int
    pos: torch.Tensor
    tok: torch.Tensor
    rows: list[int]
    src: list[int] | None = None

    def cache_rows(self, entries: Sequence[int]) -> list[int]:
        return list(entries) if self.src is None else [self.src[e] for e in entries]

    def width(self, cache_rows: list[int]) -> int:
        """Columns from the first one any of ``cache_rows`` attends to, to the end."""
        seen = self.mask[cache_rows, : self.n].any(0)
        return self.n - int(seen.to(torch.uint8).argmax())


class _Decoder:
    """The state of one ``_decode_batch`` call: outputs per row, the chooser and the loop."""

    def __init__(
        self,
        handle: Any,
        prompts: list[list[int]],
        settings: GenerationSettings,
        chooser: TokenChooser,
        observer: DecodeObserver | None,
        slots: int,
    ) -> None:
        self.model, self.dev = handle.model, handle.device
        self.prompts, self.chooser, self.observer = prompts, chooser, observer
        self.K, self.T, self.slots = chooser.per_prompt, settings.max_new_tokens, slots
        self.stop_on_newline = settings.stop_on_newline
        self.pad, self.kv = pad_id(handle.tokenizer), cache_kwarg(self.model)
        self.n_layers = _decoder_layers(self.model)
        self.SlotLayer, self.Cache = _slot_cache_classes()
        vocab = self.model.get_output_embeddings().weight.shape[0]
        newline, blank = _vocab_flags(handle.tokenizer, vocab)
        self.newline, self.blank = newline.to(self.dev), blank.to(self.dev)
        self.eos = torch.zeros(vocab, dtype=torch.bool, device=self.dev)
        self.eos[[i for i in _eos_ids(handle) if i < vocab]] = True
        B, T, dev = len(prompts) * self.K, self.T, self.dev
        self.out_tok = torch.zeros((B, T), dtype=torch.long, device=dev)
        self.out_lp = torch.zeros((B, T), dtype=torch.float32, device=dev)
        self.out_ent = torch.zeros((B, T), dtype=torch.float32, device=dev)
        self.out_slp: torch.Tensor | None = None  # sampling log-probs, if the chooser gives them
        self.n_gen = torch.zeros(B, dtype=torch.long, device=dev)
        self.has_text = torch.zeros(B, dtype=torch.bool, device=dev)
        self.reason = torch.zeros(B, dtype=torch.long, device=dev)  # index into _REASONS
        self.last_tokens: list[_Rows] = []  # length-capped rows whose last token is unconsumed
        self.prefixes = SharedPrefixes(handle, prompts, observer=observer)

    def _forward(self, rows: _Rows) -> torch.Tensor:
        """One decode step of ``rows`` (each consumes its pending token); their logits."""
        cache = self.Cache(layers=rows.layers)
        out = self.model(
            input_ids=rows.tok[:, None],
            attention_mask=rows.mask[:, : rows.n + 1],
            position_ids=rows.pos,
            use_cache=True,
            **{self.kv: cache},
        )
        rows.n, rows.pos = rows.n + 1, rows.pos + 1
        if self.observer is not None:
            self.observer.forward_done(list(rows.rows), torch.ones_like(rows.pos))
        return out.logits[:, -1]

    def choose(self, last: torch.Tensor, rows: list[int]) -> tuple[torch.Tensor, list[int]]:
        """Next tokens of ``rows`` from their logits, recorded with their statistics, and per
        row 0 (continues), 1 (stopped: EOS / newline, not recorded) or 2 (its T-th token: done).
        One host sync."""
        rows_t = torch.tensor(rows, device=self.dev)
        logits = last.float()
        logp = torch.log_softmax(logits, dim=-1)
        tok, slp = self.chooser(logits, logp, rows_t)
        t = self.n_gen[rows_t]  # every row's own step
        self.out_tok[rows_t, t] = tok  # a stop token is written too, then cut by n_gen
        self.out_lp[rows_t, t] = logp.gather(1, tok[:, None])[:, 0]
        self.out_ent[rows_t, t] = -(logp.exp() * logp).sum(-1)
        if slp is not None:
            if self.out_slp is None:
                self.out_slp = torch.zeros_like(self.out_lp)
            self.out_slp[rows_t, t] = slp
        is_eos = self.eos[tok]
        stop = (
            is_eos | (self.newline[tok] & self.has_text[rows_t]) if self.stop_on_newline else is_eos
        )
        self.reason[rows_t] = torch.where(stop, 2 - is_eos.long(), 0)
        ok = ~stop
        n = t + ok.long()
        self.n_gen[rows_t] = n
        self.has_text[rows_t] |= ok & ~self.blank[tok]
        code = stop.long() + 2 * (ok & (n >= self.T)).long()
        return tok, code.tolist()

    def settle(self, state: _Rows, codes: list[int]) -> list[int]:
        """Entries of ``state`` that continue. Length-capped rows leave now whether or not an
        observer watches, so the schedule (and every number) is the same; for an observer
        their last token is consumed later, by a forward of such rows only."""
        capped = [e for e, c in enumerate(codes) if c == 2]
        if capped and self.observer is not None:
            self.last_tokens.append(self.assemble([(state, capped)]))
            if sum(len(r.rows) for r in self.last_tokens) >= self.slots:
                self.flush()
        return [e for e, c in enumerate(codes) if c == 0]

    def flush(self) -> None:
        if self.last_tokens:
            rows = self.assemble([(r, list(range(len(r.rows)))) for r in self.last_tokens])
            self.last_tokens = []
            self._forward(rows)

    def prefill(self, idx: list[int]) -> tuple[_Rows, list[int]]:
        """Prefill prompts ``idx`` together (left-padded; similar lengths, as the waiting list
        is sorted) and choose their first tokens; the rows and the entries that continue.
        Shared prompt prefixes come from ``SharedPrefixes`` (run once per window)."""
        out, _, pos, layers, full = self.prefixes.forward(idx, headroom=self.T)
        P_S = full.shape[1] - self.T  # prefix columns + the fed width
        last, K = out.logits[:, -1], self.K
        src = [b for b in range(len(idx)) for _ in range(K)]
        nxt = pos[:, -1:] + 1
        if K > 1:  # one prefill per prompt, K continuations of it
            last, nxt = last[src], nxt[src]
        rows = [i * K + j for i in idx for j in range(K)]
        tok, codes = self.choose(last, rows)
        group = _Rows(layers, full, P_S, nxt, tok, rows, src if K > 1 else None)
        return group, self.settle(group, codes)

    def assemble(self, parts: list[tuple[_Rows, list[int]]]) -> _Rows:
        """New rows from ``parts`` (rows, entries kept), in order: keys / values right-aligned,
        the shorter ones left-padded with masked zeros, leading columns masked in every row
        trimmed (so the cache never grows beyond the longest live row), ``T`` columns free."""
        parts = [(st, ent) for st, ent in parts if ent]
        srcs = [st.cache_rows(ent) for st, ent in parts]
        widths = [st.width(src) for (st, _), src in zip(parts, srcs, strict=True)]
        W, R = max(widths), sum(len(s) for s in srcs)
        cap = W + self.T
        mask = torch.ones((R, cap), dtype=parts[0][0].mask.dtype, device=self.dev)
        mask[:, :W] = 0
        bounds = np.cumsum([0] + [len(s) for s in srcs]).tolist()
        spans = list(zip(parts, srcs, widths, bounds[:-1], bounds[1:], strict=True))
        for (st, _), src, w, r0, r1 in spans:
            mask[r0:r1, W - w : W] = st.mask[src, st.n - w : st.n]
        layers = []
        for i in range(self.n_layers):
            k0, v0 = parts[0][0].layers[i].kbuf, parts[0][0].layers[i].vbuf
            kb = k0.new_empty((R, k0.shape[1], cap, k0.shape[3]))
            vb = v0.new_empty((R, v0.shape[1], cap, v0.shape[3]))
            kb[:, :, :W], vb[:, :, :W] = 0, 0  # masked, and finite: 0-weight columns add 0
            for (st, _), src, w, r0, r1 in spans:
                kb[r0:r1, :, W - w : W] = st.layers[i].kbuf[src, :, st.n - w : st.n]
                vb[r0:r1, :, W - w : W] = st.layers[i].vbuf[src, :, st.n - w : st.n]
            layer = self.SlotLayer(self.T)
            layer.set(kb, vb, W)
            layers.append(layer)
        ent_t = [torch.tensor(ent, device=self.dev) for _, ent in parts]
        pieces = list(zip(parts, ent_t, strict=True))
        return _Rows(
            layers,
            mask,
            W,
            torch.cat([st.pos[e] for (st, _), e in pieces]),
            torch.cat([st.tok[e] for (st, _), e in pieces]),
            [st.rows[e] for st, ent in parts for e in ent],
        )

    def fill(self, state: _Rows, dead: list[int], groups: list[tuple[_Rows, list[int]]]) -> bool:
        """Write the newcomers of ``groups`` into the finished entries ``dead`` of ``state`` in
        place (no copy of the running cache); False (nothing written) if they do not fit."""
        srcs = [g.cache_rows(ent) for g, ent in groups]
        widths = [g.width(src) for (g, _), src in zip(groups, srcs, strict=True)]
        if sum(len(s) for s in srcs) > len(dead) or max(widths) > state.n:
            return False
        n, at = state.n, 0
        for (g, ent), src, w in zip(groups, srcs, widths, strict=True):
            dst = dead[at : at + len(ent)]
            at += len(ent)
            dst_t, ent_t = torch.tensor(dst, device=self.dev), torch.tensor(ent, device=self.dev)
            state.mask[dst_t, :n] = 0
            state.mask[dst_t, n - w : n] = g.mask[src, g.n - w : g.n]
            for mine, theirs in zip(state.layers, g.layers, strict=True):
                mine.kbuf[dst_t, :, n - w : n] = theirs.kbuf[src, :, g.n - w : g.n]
                mine.vbuf[dst_t, :, n - w : n] = theirs.vbuf[src, :, g.n - w : g.n]
            state.pos[dst_t], state.tok[dst_t] = g.pos[ent_t], g.tok[ent_t]
            for d, e in zip(dst, ent, strict=True):
                state.rows[d] = g.rows[e]
        return True

    def place(
        self, state: _Rows | None, keep: list[int], groups: list[tuple[_Rows, list[int]]]
    ) -> _Rows | None:
        """The rows of the next step: ``state``'s entries ``keep`` and the newcomers."""
        groups = [(g, ent) for g, ent in groups if ent]
        if state is not None and not keep:
            state = None
        if state is not None and groups:
            dead = sorted(set(range(len(state.rows))) - set(keep))
            if self.fill(state, dead, groups):
                keep = sorted(set(keep) | set(dead[: sum(len(e) for _, e in groups)]))
                groups = []
        if state is None and len(groups) == 1 and groups[0][0].src is None:
            g, ent = groups[0]
            if len(ent) == len(g.rows):
                return g  # a prefill whose rows all continue: used as it is
        if state is not None and len(keep) == len(state.rows) and not groups:
            return state
        parts = ([(state, keep)] if state is not None else []) + groups
        return self.assemble(parts) if parts else None

    def run(self) -> list[dict[str, Any]]:
        waiting = list(range(len(self.prompts)))[::-1]  # pop() = the next in list order
        state: _Rows | None = None
        keep: list[int] = []
        # Newcomers are prefilled together once a quarter of the slots is free (or all the
        # rest fit): each prefill forward reads every weight once, like a decode step, so
        # one per finished row would cost more than the few steps a slot waits.
        group = max(1, self.slots // self.K // 4)
        while True:
            groups, running = [], len(keep)
            while waiting:
                n = min((self.slots - running) // self.K, len(waiting))
                if n == 0 or (running and n < min(group, len(waiting))):
                    break
                groups.append(self.prefill([waiting.pop() for _ in range(n)]))
                running += len(groups[-1][1])  # rows that stopped at once free their slots
            state = self.place(state, keep, groups)
            if state is None:
                break
            if state.n + 1 > state.mask.shape[1]:  # capacity reached: trim and re-allocate
                state = self.assemble([(state, list(range(len(state.rows))))])
            tok, codes = self.choose(self._forward(state), state.rows)
            state.tok = tok
            keep = self.settle(state, codes)
        self.flush()
        _log.debug(
            "prefills fed %d of %d prompt tokens (shared prefixes run once)",
            self.prefixes.fed,
            sum(map(len, self.prompts)),
        )
        return self.results()

    def results(self) -> list[dict[str, Any]]:
        tok, lp = self.out_tok.cpu().numpy(), self.out_lp.cpu().numpy()
        ent = self.out_ent.cpu().numpy()
        n_gen, reason = self.n_gen.cpu().tolist(), self.reason.cpu().tolist()
        slp = None if self.out_slp is None else self.out_slp.cpu().numpy()
        res = []
        for b, n in enumerate(n_gen):
            row = {
                "answer_ids": tok[b, :n].tolist(),
                "token_logprobs": lp[b, :n].tolist(),
                "token_entropies": ent[b, :n].tolist(),
                "stop_reason": _REASONS[reason[b]],
            }
            if slp is not None:
                row["sampling_logprobs"] = slp[b, :n].tolist()
            res.append(row)
        return res


@torch.inference_mode()
def _decode_batch(
    handle: Any,
    prompts: list[list[int]],
    settings: GenerationSettings,
    chooser: TokenChooser | None = None,
    observer: DecodeObserver | None = None,
    *,
    slots: int | None = None,
) -> list[dict[str, Any]]:
    """Decode token id lists; returns per-row ids, log-probs, entropies and stop reason.

    Continuous batching: at most ``slots`` rows decode together (None: all prompts at once).
    Prompts are admitted in list order (pass them longest first, so that prompts prefilled
    together have similar lengths); once a quarter of the slots is free (or every waiting
    prompt fits), the next waiting prompts are prefilled together and take the finished rows'
    slots (written into their KV cache rows in place, or merged: left-padded with masked
    zeros to a common width; columns masked in every row are trimmed). Prefixes several
    prompts share run once (``SharedPrefixes``). Each row keeps explicit positions, so its
    tokens equal one-at-a-time greedy decoding; the result is a deterministic function of
    ``prompts``, ``settings``, the chooser and ``slots``.

    ``chooser`` picks the tokens (default: greedy). With ``chooser.per_prompt = K > 1`` a
    prompt is admitted when K slots are free, prefilled once and continued by K rows: rows
    ``b*K .. b*K+K-1`` continue prompt ``b``. A chooser that returns sampling log-probs adds
    ``sampling_logprobs`` to each row. ``observer`` (greedy only) is told about every forward
    (``DecodeObserver``)."""
    chooser = _GREEDY if chooser is None else chooser
    K = chooser.per_prompt
    if observer is not None and K != 1:
        raise ValueError("a DecodeObserver needs one row per prompt (greedy decoding)")
    slots = len(prompts) * K if slots is None else slots
    if slots < K:
        raise ValueError(f"slots={slots} cannot hold the {K} rows of one prompt")
    if not prompts:
        return []
    return _Decoder(handle, prompts, settings, chooser, observer, slots).run()


# -- the pure worker -------------------------------------------------------------------------
def generate_examples(
    model: ModelHandle,
    examples: Sequence[Any],
    prompt_fn: Callable[[Any], str],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: GenerationSettings,
    *,
    on_batch: Callable[[int], None] | None = None,
    resume: BatchRecords | None = None,
    observer: DecodeObserver | None = None,
) -> list[Generation]:
    """Generate (and grade) answers for ``examples``; pure: no cache, rows in input order.

    Args:
        model: a ``ModelHandle``.
        examples: ``knowlens.tasks.Example``-like objects (``id``, ``answers``, ``topic``).
        prompt_fn: example -> user-turn text (the chat template is applied here).
        grade_fn: (example, answer) -> ``GradeResult``, or None for ungraded text.
        settings: decoding settings.
        on_batch: called with the number of rows finished after each window (progress).
        resume: finished windows of an earlier, interrupted run of the same plan (reused),
            and where each newly finished window is recorded.
        observer: sees every forward (hidden states while generating, ``DecodeObserver``);
            each window is graded as soon as it is decoded and handed to ``rows_done``. Rows
            of a window reused from ``resume`` had no forward: they are not handed over.

    Prompts are sorted longest first and cut into windows of ``decode_window(batch_size)``
    (the resume unit); each window is decoded continuously through ``batch_size`` rows (a
    finished row's slot takes the next prompt), so the rows are a deterministic function of
    the examples and settings, whichever windows were resumed.
    """
    settings.validate()
    templated = settings.use_chat_template and model.has_chat_template
    turns = [prompt_fn(ex) for ex in examples]  # kept on each row: no template parsing later
    prompts = [model.format_prompt(t, use_chat_template=settings.use_chat_template) for t in turns]
    ids = [_encode(model, p, templated) for p in prompts]
    if any(len(i) == 0 for i in ids):
        bad = next(ex.id for ex, i in zip(examples, ids, strict=True) if not i)
        raise DataError(f"Example '{bad}' has an empty prompt; give every example a question.")
    check_context(model, examples, [len(i) for i in ids], settings.max_new_tokens)
    # Longest first: prompts prefilled together have similar lengths (less padding), a slot is
    # refilled with a prompt no longer than the running rows, peak memory shows early.
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    rows: list[Generation | None] = [None] * len(ids)
    window = decode_window(settings.batch_size)
    for b, start in enumerate(range(0, len(order), window)):
        chunk = order[start : start + window]
        batch_ids, batch_prompts = [str(examples[i].id) for i in chunk], [ids[i] for i in chunk]
        got = resume.get(b, batch_ids, batch_prompts) if resume is not None else None
        watch = None if observer is None or got is not None else _Renumbered(observer, chunk)
        if got is None:
            got = _decode_batch(
                model, batch_prompts, settings, observer=watch, slots=settings.batch_size
            )
            if resume is not None:
                resume.put(b, batch_ids, batch_prompts, got)
        built = _graded_rows(
            model, [examples[i] for i in chunk], [turns[i] for i in chunk],
            [prompts[i] for i in chunk], batch_prompts, got, grade_fn, settings,
        )  # fmt: skip
        for i, g in zip(chunk, built, strict=True):
            rows[i] = g
        if watch is not None:
            watch.observer.rows_done(chunk, built)
        if on_batch is not None:
            on_batch(len(chunk))
    return [g for g in rows if g is not None]  # every row is decoded by now


class _Renumbered:
    """Maps a batch's row numbers to the caller's example indices for the observer."""

    def __init__(self, observer: DecodeObserver, index: Sequence[int]) -> None:
        self.observer, self.index = observer, list(index)

    def forward_done(
        self,
        rows: Sequence[int],
        mask: torch.Tensor,
        prefixes: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        self.observer.forward_done([self.index[r] for r in rows], mask, prefixes)

    def prefix_done(self, prefixes: Sequence[tuple[int, ...]], mask: torch.Tensor) -> None:
        self.observer.prefix_done(prefixes, mask)

    def prefixes_dropped(self, prefixes: Sequence[tuple[int, ...]]) -> None:
        self.observer.prefixes_dropped(prefixes)

    def rows_done(self, rows: Sequence[int], gens: Sequence[Generation]) -> None:
        self.observer.rows_done([self.index[r] for r in rows], gens)


def _graded_rows(
    model: ModelHandle,
    examples: Sequence[Any],
    turns: Sequence[str],
    prompts: Sequence[str],
    ids: Sequence[list[int]],
    decoded: Sequence[dict[str, Any]],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: GenerationSettings,
) -> list[Generation]:
    """Decoded rows -> graded ``Generation`` rows (answer text, exact-answer span)."""
    tok = model.tokenizer
    answers = tok.batch_decode([d["answer_ids"] for d in decoded], skip_special_tokens=True)
    out = []
    for ex, turn, prompt, pids, d, answer in zip(
        examples, turns, prompts, ids, decoded, answers, strict=True
    ):
        correct, grader, chars, exact, span_tok = None, "none", None, None, None
        if grade_fn is not None:
            g = grade_fn(ex, answer)
            correct, grader = g.correct, g.grader
            if g.span is not None and g.span[1] > g.span[0]:
                chars = (int(g.span[0]), int(g.span[1]))
                exact = answer[chars[0] : chars[1]]
                span_tok = char_span_to_token_span(tok, d["answer_ids"], chars)
        out.append(
            Generation(
                example_id=str(ex.id),
                task=settings.task,
                prompt=prompt,
                answer=answer,
                prompt_ids=pids,
                answer_ids=d["answer_ids"],
                token_logprobs=d["token_logprobs"],
                token_entropies=d["token_entropies"],
                correct=correct,
                grader=grader,
                gold=[str(a) for a in getattr(ex, "answers", ())],
                exact_answer=exact,
                exact_answer_chars=chars,
                exact_answer_tokens=span_tok,
                topic=getattr(ex, "topic", None),
                stop_reason=d["stop_reason"],
                user_turn=turn,
            )
        )
    return out


# -- cached front ends -----------------------------------------------------------------------
def compute_numerics(device: Any, threads: int | None = None) -> dict[str, Any]:
    """What a result's numbers depend on besides its inputs (part of generation and activation
    keys). On CPU the intra-op thread count: torch splits reductions by it, so float32 results
    move by ~1 ulp between 1 and 2 threads (log-probs ~5e-7, hidden states ~4e-7). On an
    accelerator the device type only (its kernels do not depend on CPU threads).
    ``threads``: of the process that computes (default: this one's)."""
    kind = torch.device(device).type
    if kind != "cpu":
        return {"device": kind}
    n = torch.get_num_threads() if threads is None else threads
    return {"device": "cpu", "threads": int(n)}


def generation_cache_entry(
    model: ModelHandle,
    examples: Sequence[Any],
    rendered: Sequence[str],
    settings: GenerationSettings,
    key_parts: dict[str, Any],
    meta: dict[str, Any],
    *,
    numerics: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Cache key and ``GenerationSet.meta`` of a generation run; the one definition that the
    local path and the Ray executor share, so each reuses the other's entries. ``numerics``:
    ``compute_numerics`` of whoever decodes (default: this process on the model's device)."""
    numerics = compute_numerics(model.device) if numerics is None else dict(numerics)
    key = stable_hash(
        {
            **key_parts,
            "model": model.target_id,
            "example_ids": [str(ex.id) for ex in examples],
            "prompts": stable_hash(list(rendered), length=32),
            # batch_size included: padding changes the kernels' reductions, so log-probs differ
            # by ~1e-6 between batch sizes; a cached number must not depend on which ran first.
            "settings": asdict(settings),
            "numerics": numerics,  # likewise the CPU thread count (see compute_numerics)
            "code": GENERATION_VERSION,
        }
    )
    full_meta = {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "target_id": model.target_id,
        "settings": asdict(settings),
        "numerics": numerics,
        "cache_key": key,
        "code_version": GENERATION_VERSION,
        **meta,
    }
    return key, full_meta


def _run_cached(
    model: Any,
    examples: Sequence[Any],
    prompt_fn: Callable[[Any], str],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: GenerationSettings,
    key_parts: dict[str, Any],
    meta: dict[str, Any],
    *,
    cache: bool,
    progress: bool,
    observer: DecodeObserver | None = None,
) -> GenerationSet:
    if not all(hasattr(model, a) for a in ("format_prompt", "tokenizer", "target_id")):
        raise KnowlensError(
            f"model must be a knowlens ModelHandle; got {type(model).__name__} ({model!r:.60}). "
            "Load it with knowlens.load_model(...) or wrap it with handle_from_objects(model, tok)."
        )
    rendered = [
        model.format_prompt(prompt_fn(ex), use_chat_template=settings.use_chat_template)
        for ex in examples
    ]
    key, meta = generation_cache_entry(model, examples, rendered, settings, key_parts, meta)
    return _cached(
        "generations",
        key,
        GenerationSet.load,
        lambda resume: _compute(
            model, examples, prompt_fn, grade_fn, settings, meta, resume, progress, observer
        ),
        lambda: BatchRecords(entry_dir("generations", f".partial-{key}"), key),
        cache=cache,
    )


def _cached(
    kind: str,
    key: str,
    load: Callable[[Path], Any],
    compute: Callable[[BatchRecords | None], Any],
    records: Callable[[], BatchRecords],
    *,
    cache: bool,
) -> Any:
    """The cache protocol of generations and samples: one writer per entry across processes
    (an identical concurrent run waits, then reads), verified reads (a damaged entry is
    warned about, moved aside and recomputed), per-batch resume, atomic checksummed publish.
    ``meta["cache_hit"]`` of the result says whether it was read."""
    if not cache:
        out = compute(None)
        out.meta["cache_hit"] = False
        return out
    with entry_lock(kind, key):
        entry = verified_entry(kind, key)  # damaged -> warned, moved aside, None
        if entry is not None:
            try:
                out = load(entry)
            except DataError as e:  # intact bytes that still do not parse (foreign writer)
                quarantine(entry, str(e))
            else:
                out.meta["cache_hit"] = True
                return out
        resume = records()
        out = compute(resume)
        with atomic_dir(entry_dir(kind, key)) as tmp:  # checksums written too
            out.save(tmp)
        resume.discard()
    out.meta["cache_hit"] = False
    return out


def _compute(
    model: Any,
    examples: Sequence[Any],
    prompt_fn: Callable[[Any], str],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: GenerationSettings,
    meta: dict[str, Any],
    resume: BatchRecords | None,
    progress: bool,
    observer: DecodeObserver | None = None,
) -> GenerationSet:
    t0 = time.perf_counter()
    with progress_bar(len(examples), f"generate {model.name} · {settings.task}", progress) as adv:
        rows = generate_examples(
            model,
            examples,
            prompt_fn,
            grade_fn,
            settings,
            on_batch=adv,
            resume=resume,
            observer=observer,
        )
    meta["seconds"] = round(time.perf_counter() - t0, 3)
    meta["n_answer_tokens"] = int(sum(len(r.answer_ids) for r in rows))
    meta["batches_reused"] = resume.reused if resume is not None else 0
    if meta["batches_reused"]:
        _log.info("generation resumed: %d finished batches reused", meta["batches_reused"])
    return GenerationSet(rows, meta)


def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    cache: bool = True,
    progress: bool = True,
    observer: DecodeObserver | None = None,
) -> GenerationSet:
    """Greedy answers of ``model`` to every example of ``task``, graded by ``task.grade``.

    >>> gens = generate(load_model("smollm2-135m-instruct"), load_task("capitals", limit=20))
    >>> gens.accuracy, gens[0].answer, gens[0].exact_answer_tokens

    Args:
        model: a ``ModelHandle``.
        task: a ``knowlens.tasks.Task`` (anything with ``name``, ``version``, ``examples``,
            ``max_new_tokens``, ``prompt`` and ``grade``).
        max_new_tokens: answer length cap, a positive int (None: the task's
            ``max_new_tokens``). Prompt + cap beyond the model's context is an error.
        batch_size: rows decoded together (part of the cache key: it moves log-probs ~1e-6).
        use_chat_template: wrap the prompt in the model's chat template when it has one.
        stop_on_newline: end the answer at the first newline after non-blank text.
        cache: reuse / store the result under a content-addressed key (verified on read,
            locked against identical concurrent runs, resumed per batch after a kill).
        progress: show a progress bar.
        observer: sees every forward of the decode (``DecodeObserver``; hidden states while
            generating: ``knowlens.generate(..., layers=...)``). Not called on a cache hit;
            batches reused from a resume record are not handed over.

    Returns:
        ``GenerationSet`` with rows in task order; ``meta`` names model, task and settings.
    """
    examples, settings, parts = greedy_plan(
        task,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
    )
    return _run_cached(
        model,
        examples,
        task.prompt,
        task.grade,
        settings,
        parts,
        {**parts, "n": len(examples)},
        cache=cache,
        progress=progress,
        observer=observer,
    )


def greedy_plan(
    task: TaskLike,
    *,
    max_new_tokens: int | None,
    batch_size: int,
    use_chat_template: bool,
    stop_on_newline: bool,
) -> tuple[list[Any], GenerationSettings, dict[str, Any]]:
    """``(examples, settings, key parts)`` of a greedy decode of ``task``, as every executor
    keys it; a task without examples is a one-line error."""
    examples, name = _task_examples(task)
    settings = GenerationSettings(
        max_new_tokens=resolve_max_new_tokens(max_new_tokens, task),
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        task=name,
    )
    return examples, settings, _task_key_parts(task, name)


def _task_examples(task: TaskLike, limit: int | None = None) -> tuple[list[Any], str]:
    """``(examples[:limit], name)``; a task without examples is a one-line error."""
    examples = list(getattr(task, "examples", None) or [])[:limit]
    name = str(getattr(task, "name", "task"))
    if not examples:
        raise DataError(
            f"Task '{name}' has no examples; check its split/limit (e.g. load_task('{name}', limit=50))."
        )
    return examples, name


def _task_key_parts(task: TaskLike, name: str) -> dict[str, Any]:
    """The task's part of a generation cache key (greedy and sampled decodes alike)."""
    version = str(getattr(task, "version", "0"))
    return {"task": name, "task_version": version, "split": getattr(task, "split", None)}


@dataclass(frozen=True)
class _TextExample:
    id: str
    text: str
    answers: tuple[str, ...] = ()
    topic: str | None = None


def generate_texts(
    model: ModelHandle,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = False,
    ids: Sequence[str] | None = None,
    cache: bool = True,
    progress: bool = True,
) -> GenerationSet:
    """Greedy responses to free-form user turns (no grading: ``correct=None``, ``grader="none"``).

    >>> outs = generate_texts(model, ["How do I bake bread?"], max_new_tokens=48)
    >>> outs[0].answer

    ``ids`` names the rows (default ``"0"``, ``"1"``, ...).
    """
    if isinstance(prompts, str):
        raise KnowlensError("prompts must be a list of strings; got one string. Wrap it: [prompt].")
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise DataError("generate_texts got no prompts; pass a non-empty list of strings.")
    ids = [str(i) for i in (ids if ids is not None else range(len(prompts)))]
    if len(ids) != len(prompts) or len(set(ids)) != len(ids):
        raise KnowlensError(
            f"ids must be {len(prompts)} unique strings, one per prompt; got {len(ids)} "
            f"({len(set(ids))} unique). Pass ids=None to number the prompts."
        )
    examples = [_TextExample(i, p) for i, p in zip(ids, prompts, strict=True)]
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        task="texts",
    )
    return _run_cached(
        model,
        examples,
        lambda ex: ex.text,
        None,
        settings,
        {"task": "texts"},
        {"task": "texts", "n": len(examples)},
        cache=cache,
        progress=progress,
    )


# -- sampling --------------------------------------------------------------------------------
# Code version of sample entries (the decoder's own version is in the key too).
SAMPLE_VERSION = "1"
_SAMPLE_ROW_KEYS = frozenset({*_ROW_KEYS, "sampling_logprobs"})


@dataclass(frozen=True)
class SampleSettings:
    """Sampling settings (all part of the cache key once resolved).

    ``batch_size`` counts prompts: each is prefilled once and decoded as ``k`` rows, so a
    forward runs up to ``batch_size * k`` sequences. ``max_new_tokens`` / ``stop_on_newline``
    None: the greedy answers' settings (a ``GenerationSet`` source), else the task's
    ``max_new_tokens`` and ``True``, as ``generate`` does."""

    k: int = 5
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int | None = None
    batch_size: int = 16
    stop_on_newline: bool | None = None

    def validate(self) -> None:
        _check_positive_int("k", self.k, "k=5")
        t = self.temperature
        if (
            isinstance(t, bool)
            or not isinstance(t, numbers.Real)
            or not math.isfinite(float(t))
            or t <= 0
        ):
            raise KnowlensError(
                f"temperature must be a finite number > 0; got {t!r}. Pass e.g. temperature=1.0 "
                "(for greedy answers use kl.generate)."
            )
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < float(p) <= 1:
            raise KnowlensError(
                f"top_p must be a number in (0, 1]; got {p!r}. Pass e.g. top_p=0.95 "
                "(1.0: no nucleus filtering)."
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise KnowlensError(f"seed must be an integer; got {self.seed!r}. Pass e.g. seed=0.")
        if self.max_new_tokens is not None:
            resolve_max_new_tokens(self.max_new_tokens, None)
        _check_positive_int("batch_size", self.batch_size, "batch_size=16")
        if self.stop_on_newline is not None and not isinstance(self.stop_on_newline, bool):
            raise KnowlensError(
                f"stop_on_newline must be True, False or None; got {self.stop_on_newline!r}. "
                "Pass e.g. stop_on_newline=True (None: as the greedy answers / generate)."
            )


@dataclass(frozen=True)
class _SampleItem:
    """One prompt to sample: its tokens, and the task example that grades its samples."""

    id: str
    prompt: str
    user_turn: str | None
    prompt_ids: list[int]
    gold: list[str]
    example: Any = None  # None: ungraded


def sample_items(
    model: Any,
    items: Sequence[_SampleItem],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: SampleSettings,
    decode: GenerationSettings,
    *,
    on_batch: Callable[[int], None] | None = None,
    resume: BatchRecords | None = None,
) -> list[Sample]:
    """Draw ``settings.k`` samples per item (and grade them); pure: no cache, input order.

    ``settings`` must be resolved (``max_new_tokens`` / ``stop_on_newline`` set); ``decode``
    carries them to the decoder. Windows are formed as ``generate_examples`` forms them
    (longest prompt first, ``decode_window(batch_size)`` prompts, decoded continuously through
    ``batch_size * k`` rows: a prompt is admitted when its k rows are free); sample j of item i
    is seeded ``sample_seed(seed, i.id, j)``, so samples do not depend on the batching."""
    K = settings.k
    empty = next((it.id for it in items if not it.prompt_ids), None)
    if empty is not None:
        raise DataError(f"Example '{empty}' has an empty prompt; give every example a question.")
    check_context(model, items, [len(it.prompt_ids) for it in items], decode.max_new_tokens)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].prompt_ids), i))
    decoded: list[list[dict[str, Any]]] = [[] for _ in items]
    window = decode_window(decode.batch_size)
    for b, start in enumerate(range(0, len(order), window)):
        chunk = order[start : start + window]
        batch_ids = [items[i].id for i in chunk]
        batch_prompts = [list(items[i].prompt_ids) for i in chunk]
        got = resume.get(b, batch_ids, batch_prompts) if resume is not None else None
        if got is None:
            seeds = [sample_seed(settings.seed, i, j) for i in batch_ids for j in range(K)]
            chooser = TokenSampler(seeds, K, settings.temperature, settings.top_p)
            got = _decode_batch(model, batch_prompts, decode, chooser, slots=decode.batch_size * K)
            if resume is not None:
                resume.put(b, batch_ids, batch_prompts, got)
        for n, i in enumerate(chunk):
            decoded[i] = got[n * K : (n + 1) * K]
        if on_batch is not None:
            on_batch(len(chunk))

    flat = [d["answer_ids"] for ds in decoded for d in ds]
    texts = model.tokenizer.batch_decode(flat, skip_special_tokens=True)
    rows = []
    for n, (it, ds) in enumerate(zip(items, decoded, strict=True)):
        answers = texts[n * K : (n + 1) * K]
        correct: list[bool | None] = [None] * K
        if grade_fn is not None and it.example is not None:
            correct = [grade_fn(it.example, a).correct for a in answers]
        rows.append(
            Sample(
                example_id=it.id,
                task=decode.task,
                prompt=it.prompt,
                user_turn=it.user_turn,
                prompt_ids=list(it.prompt_ids),
                texts=list(answers),
                answer_ids=[d["answer_ids"] for d in ds],
                token_logprobs=[d["token_logprobs"] for d in ds],
                sampling_logprobs=[d["sampling_logprobs"] for d in ds],
                token_entropies=[d["token_entropies"] for d in ds],
                stop_reasons=[d["stop_reason"] for d in ds],
                correct=correct,
                gold=list(it.gold),
            )
        )
    return rows


def _check_handle(model: Any) -> None:
    if not all(hasattr(model, a) for a in ("format_prompt", "tokenizer", "target_id")):
        raise KnowlensError(
            f"model must be a knowlens ModelHandle; got {type(model).__name__} ({model!r:.60}). "
            "Load it with knowlens.load_model(...) or wrap it with handle_from_objects(model, tok)."
        )


def sample_cache_entry(
    model: Any,
    items: Sequence[_SampleItem],
    settings: SampleSettings,
    decode: GenerationSettings,
    key_parts: dict[str, Any],
    meta: dict[str, Any],
    *,
    numerics: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Cache key and ``SampleSet.meta`` of a sampling run (``settings`` resolved). The key
    names the prompt tokens, not where they came from, so ``sample(model, task)`` and
    ``sample(model, generate(model, task))`` share an entry."""
    numerics = compute_numerics(model.device) if numerics is None else dict(numerics)
    s = asdict(settings)
    key = stable_hash(
        {
            **key_parts,
            "kind": "samples",
            "model": model.target_id,
            "example_ids": [it.id for it in items],
            "prompt_ids": stable_hash([list(it.prompt_ids) for it in items], length=32),
            "prompts": stable_hash([it.prompt for it in items], length=32),
            "settings": s,  # batch_size too: padding moves log-probs ~1e-6 (as for generate)
            "use_chat_template": decode.use_chat_template,
            "numerics": numerics,
            "code": [SAMPLE_VERSION, GENERATION_VERSION],
        }
    )
    fp = model.fingerprint
    full_meta = {
        "model": model.name,
        "model_fingerprint": fp,
        "fingerprint": fp,  # the contract's name; model_fingerprint as in GenerationSet.meta
        "target_id": model.target_id,
        **s,
        "settings": {**s, "use_chat_template": decode.use_chat_template},
        "numerics": numerics,
        "cache_key": key,
        "code_version": SAMPLE_VERSION,
        **meta,
    }
    return key, full_meta


def _run_sample_cached(
    model: Any,
    items: list[_SampleItem],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: SampleSettings,
    decode: GenerationSettings,
    key_parts: dict[str, Any],
    meta: dict[str, Any],
    *,
    cache: bool,
    progress: bool,
) -> SampleSet:
    key, meta = sample_cache_entry(model, items, settings, decode, key_parts, meta)

    def compute(resume: BatchRecords | None) -> SampleSet:
        t0 = time.perf_counter()
        what = f"sample {model.name} · {decode.task} · k={settings.k}"
        with progress_bar(len(items), what, progress) as adv:
            rows = sample_items(
                model, items, grade_fn, settings, decode, on_batch=adv, resume=resume
            )
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        meta["n_answer_tokens"] = int(sum(len(a) for r in rows for a in r.answer_ids))
        meta["batches_reused"] = resume.reused if resume is not None else 0
        return SampleSet(rows, meta)

    records = functools.partial(
        BatchRecords,
        entry_dir("samples", f".partial-{key}"),
        key,
        row_keys=_SAMPLE_ROW_KEYS,
        rows_per_item=settings.k,
    )
    ss: SampleSet = _cached("samples", key, SampleSet.load, compute, records, cache=cache)
    return ss


def _check_limit(limit: Any) -> None:
    if limit is not None:
        _check_positive_int("limit", limit, "limit=50 (None: all examples)")


def _task_plan(
    model: Any, task: Any, settings: SampleSettings, limit: int | None
) -> tuple[list[_SampleItem], Any, SampleSettings, GenerationSettings, dict[str, Any]]:
    examples, name = _task_examples(task, limit)
    resolved = replace(
        settings,
        max_new_tokens=resolve_max_new_tokens(settings.max_new_tokens, task),
        stop_on_newline=True if settings.stop_on_newline is None else settings.stop_on_newline,
    )
    decode = _decode_settings(resolved, use_chat_template=True, task=name)
    templated = model.has_chat_template
    items = []
    for ex in examples:
        turn = task.prompt(ex)
        prompt = model.format_prompt(turn, use_chat_template=True)
        gold = [str(a) for a in getattr(ex, "answers", ())]
        items.append(
            _SampleItem(str(ex.id), prompt, turn, _encode(model, prompt, templated), gold, ex)
        )
    return items, task.grade, resolved, decode, _task_key_parts(task, name)


def _decode_settings(
    s: SampleSettings, *, use_chat_template: bool, task: str
) -> GenerationSettings:
    assert s.max_new_tokens is not None and s.stop_on_newline is not None  # resolved
    return GenerationSettings(
        max_new_tokens=s.max_new_tokens,
        batch_size=s.batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=s.stop_on_newline,
        task=task,
    )


_GRADING_TASKS: dict[tuple[str, str], Any] = {}


def _grading_task(meta: dict[str, Any], name: str | None) -> Any:
    """The task that grades samples of a ``GenerationSet``: loaded by the name and split in
    ``gens.meta`` (its version hashes the loaded subset, so examples are matched by id and
    gold answers instead); None (ungraded, with a warning) if it does not load."""
    if name in (None, "texts", "serve"):
        return None  # free-form texts have no grader
    from knowlens.tasks import load_task

    at = (str(name), str(meta.get("split") or "test"))
    try:
        if at not in _GRADING_TASKS:  # every call needs it (the key says "graded"): load once
            _GRADING_TASKS[at] = load_task(at[0], split=at[1])
        return _GRADING_TASKS[at]
    except KnowlensError as e:
        _log.warning("knowlens: samples of task '%s' are ungraded (pass task=): %s", name, e)
        return None


def _generations_plan(
    model: Any,
    gens: GenerationSet,
    settings: SampleSettings,
    limit: int | None,
    task: Any,
) -> tuple[list[_SampleItem], Any, SampleSettings, GenerationSettings, dict[str, Any]]:
    rows = list(gens.rows)[:limit]
    if not rows:
        raise DataError("sample got a GenerationSet with no rows; generate some answers first.")
    meta = dict(gens.meta)
    gset: dict[str, Any] = meta.get("settings") or {}
    gset = gset if isinstance(gset, dict) else {}
    names = sorted({r.task for r in rows})
    name = meta.get("task") or (names[0] if len(names) == 1 else None)
    max_new = settings.max_new_tokens
    if max_new is None:
        max_new = gset.get("max_new_tokens")
    if max_new is None:
        if task is None:
            raise KnowlensError(
                "sample: these answers do not record max_new_tokens (no gens.meta['settings']); "
                "pass max_new_tokens=, e.g. max_new_tokens=32."
            )
        max_new = resolve_max_new_tokens(None, task)
    stop = settings.stop_on_newline
    if stop is None:
        stop = bool(gset.get("stop_on_newline", True))  # generate's default
    resolved = replace(
        settings, max_new_tokens=resolve_max_new_tokens(max_new, None), stop_on_newline=stop
    )
    use_template = bool(gset.get("use_chat_template", True))
    decode = _decode_settings(resolved, use_chat_template=use_template, task=str(name or "texts"))
    grader = task if task is not None else _grading_task(meta, name)
    by_id = {str(ex.id): ex for ex in getattr(grader, "examples", None) or []}
    # an example graded against other gold answers than its greedy answer's would mislead
    by_id = {
        r.example_id: by_id[r.example_id]
        for r in rows
        if r.example_id in by_id
        and [str(a) for a in getattr(by_id[r.example_id], "answers", ())] == list(r.gold)
    }
    if grader is not None:
        lost = [r.example_id for r in rows if r.example_id not in by_id]
        if lost:
            _log.warning(
                "knowlens: %d of %d sampled examples are not in task '%s' with the answers' "
                "gold (e.g. '%s'): their samples are ungraded (pass task=)",
                len(lost),
                len(rows),
                getattr(grader, "name", name),
                lost[0],
            )
    items = [
        _SampleItem(
            r.example_id,
            r.prompt,
            r.user_turn,
            list(r.prompt_ids),
            list(r.gold),
            by_id.get(r.example_id),
        )
        for r in rows
    ]
    parts = {
        "task": decode.task,
        "task_version": str(meta.get("task_version", getattr(grader, "version", "0"))),
        "split": meta.get("split"),
    }
    grade_fn = grader.grade if grader is not None and by_id else None
    return items, grade_fn, resolved, decode, parts


def sample_plan(
    model: Any,
    source: Any,
    settings: SampleSettings,
    limit: int | None,
    split: str | None,
    task: Any,
) -> tuple[Any, list[Any], Any, Any, Any, dict[str, Any], dict[str, Any]]:
    """``sample``'s checks and plan, shared with the executors' sample stage so both key the
    same entry: (model handle, items, grade_fn, resolved settings, decode settings, key parts,
    meta). ``model`` / ``source`` may be specs (loaded here, after the cheap checks)."""
    settings.validate()  # before any model or task is loaded
    _check_limit(limit)
    settings = replace(
        settings,
        temperature=float(settings.temperature),
        top_p=float(settings.top_p),
        seed=int(settings.seed),
    )
    if split is not None and not isinstance(split, str):
        raise KnowlensError(f"split must be a split name; got {split!r}. Pass e.g. split='test'.")
    if isinstance(source, (str, os.PathLike)):
        from knowlens.tasks import load_task

        source = load_task(os.fspath(source), split=split or "test", limit=limit)
    is_gens = isinstance(source, GenerationSet)
    if not is_gens and not all(hasattr(source, a) for a in ("examples", "prompt", "grade")):
        raise KnowlensError(
            f"sample: source must be a Task, a task name or a GenerationSet; got "
            f"{type(source).__name__}. Pass e.g. kl.load_task('capitals', limit=32)."
        )
    have = source.meta.get("split") if is_gens else getattr(source, "split", None)
    if split is not None and have != split:
        raise KnowlensError(
            f"sample: split='{split}' was given, but the {'answers are' if is_gens else 'task is'} "
            f"of split {have!r}; drop split= or pass the task name with split='{split}'."
        )
    if task is not None and not is_gens:
        raise KnowlensError(
            "sample: task= grades the samples of a GenerationSet; with a task source drop task=."
        )
    if isinstance(model, (str, os.PathLike)):
        from knowlens.models import load_model

        model = load_model(model)
    _check_handle(model)
    if is_gens:
        items, grade_fn, resolved, decode, parts = _generations_plan(
            model, source, settings, limit, task
        )
        extra = {"source": "generations", "generations_key": source.meta.get("cache_key")}
    else:
        items, grade_fn, resolved, decode, parts = _task_plan(model, source, settings, limit)
        extra = {"source": "task"}
    parts = {**parts, "graded": grade_fn is not None}
    return model, items, grade_fn, resolved, decode, parts, {**parts, **extra, "n": len(items)}


def sample(
    model: ModelHandle | str,
    source: Any,
    *,
    k: int = 5,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    stop_on_newline: bool | None = None,
    limit: int | None = None,
    split: str | None = None,
    task: Any = None,
    cache: bool = True,
    progress: bool = True,
) -> SampleSet:
    """``k`` sampled answers per example, beside ``generate``'s greedy ones.

    >>> gens = kl.generate(model, kl.load_task("capitals", limit=32))
    >>> samples = kl.sample(model, gens, k=10, temperature=1.0, top_p=0.95, seed=0)
    >>> samples[0].texts, samples[0].correct, samples.align(gens)

    Args:
        model: a ``ModelHandle`` or a model spec for ``load_model``.
        source: a ``Task``, a task name (loaded with ``split`` / ``limit``) or a
            ``GenerationSet`` (its rows' exact prompt tokens, its decoding settings; samples
            graded by ``task`` or by the task named in ``gens.meta`` when it loads at the
            same version, else ``correct=None`` with a warning).
        k: samples per example (they share one prefill of the prompt).
        temperature: > 0; the logits are divided by it (greedy: use ``generate``).
        top_p: nucleus filtering as HF's ``TopPLogitsWarper``, in (0, 1] (1: none).
        seed: sample j of example e uses ``torch.Generator`` seeded
            ``sample_seed(seed, e, j)``: the same sample whatever the batch or a resume.
        max_new_tokens, stop_on_newline: None -> the answers' settings (``GenerationSet``) or
            the task's ``max_new_tokens`` and True.
        batch_size: prompts per batch (each decoded as ``k`` rows); part of the cache key.
        limit: the first ``limit`` examples / rows.
        split: with a task name, the split to load (default "test"); with a Task or a
            GenerationSet it must be theirs.
        task: with a ``GenerationSet``, the task whose grader grades the samples.
        cache: reuse / store under a content-addressed key (verified, locked, resumable).
        progress: show a progress bar.

    Returns:
        ``SampleSet`` in source order; ``meta`` names model, task, settings and cache key.
    """
    settings = SampleSettings(
        k=k,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_on_newline=stop_on_newline,
    )
    model, items, grade_fn, resolved, decode, parts, meta = sample_plan(
        model, source, settings, limit, split, task
    )
    return _run_sample_cached(
        model, items, grade_fn, resolved, decode, parts, meta, cache=cache, progress=progress
    )
