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
import json
import logging
import math
import numbers
import os
import shutil
import time
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
GENERATION_VERSION = "2"
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
    "TokenChooser",
    "TokenSampler",
    "char_span_to_token_span",
    "compute_numerics",
    "generate",
    "generate_examples",
    "generate_texts",
    "resolve_max_new_tokens",
    "sample",
    "sample_cache_entry",
    "sample_items",
    "sample_seed",
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
    """Argmax of the raw log-probs: HF ``generate(do_sample=False)``."""

    per_prompt = 1

    def __call__(
        self, logits: torch.Tensor, logp: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logp.argmax(-1), None


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
    prefill, answer token ``t`` by the decode step after it was chosen. The stop token (EOS /
    newline) is never consumed; with an observer the decoder makes one extra forward for rows
    that stop by length, so their last answer token is seen too. Row indices are positions in
    the prompt list handed to ``_decode_batch`` (continuous batching may prefill rows mid-way)."""

    def forward_done(self, rows: Sequence[int], mask: torch.Tensor) -> None:
        """Called right after a forward. Entry ``i`` of that forward continued row ``rows[i]``;
        ``mask`` ``[len(rows), n]`` marks the forward's ``n`` new positions per entry (left
        padding 0 at a prefill; all ones, ``n = 1``, at a decode step)."""
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


@torch.inference_mode()
def _decode_batch(
    handle: Any,
    prompts: list[list[int]],
    settings: GenerationSettings,
    chooser: TokenChooser | None = None,
    observer: DecodeObserver | None = None,
) -> list[dict[str, Any]]:
    """Decode one batch of token id lists; returns per-row ids, log-probs, entropies.

    ``observer`` (greedy only) is told about every forward (``DecodeObserver``).

    ``chooser`` picks the tokens (default: greedy). With ``chooser.per_prompt = K > 1`` the
    prompts are prefilled once and their KV cache, last logits, mask and positions repeated K
    times: rows ``b*K .. b*K+K-1`` continue prompt ``b``. A chooser that returns sampling
    log-probs adds ``sampling_logprobs`` to each row."""
    chooser = _GREEDY if chooser is None else chooser
    K = chooser.per_prompt
    if observer is not None and K != 1:
        raise ValueError("a DecodeObserver needs one row per prompt (greedy decoding)")
    model, dev = handle.model, handle.device
    B, T = len(prompts) * K, settings.max_new_tokens
    ids, mask, pos = pad_batch(prompts, pad_id(handle.tokenizer), side="left")
    ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
    vocab = model.get_output_embeddings().weight.shape[0]
    newline, blank = _vocab_flags(handle.tokenizer, vocab)
    newline, blank = newline.to(dev), blank.to(dev)
    eos = torch.zeros(vocab, dtype=torch.bool, device=dev)
    eos[[i for i in _eos_ids(handle) if i < vocab]] = True

    out_tok = torch.full((B, T), -1, dtype=torch.long, device=dev)
    out_lp = torch.zeros((B, T), dtype=torch.float32, device=dev)
    out_slp: torch.Tensor | None = None  # sampling log-probs, if the chooser gives them
    out_ent = torch.zeros((B, T), dtype=torch.float32, device=dev)
    n_gen = torch.zeros(B, dtype=torch.long, device=dev)
    reason = ["length"] * B
    has_text = torch.zeros(B, dtype=torch.bool, device=dev)  # by original row
    rows = torch.arange(B, device=dev)  # original row of each live batch entry

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    kv = {cache_kwarg(model): cache}
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1, **kv
    )
    if observer is not None:
        observer.forward_done(range(len(prompts)), mask)
    last = out.logits[:, -1]
    next_pos = pos[:, -1:] + 1
    if K > 1:  # one prefill per prompt, K continuations of it
        cache.batch_repeat_interleave(K)
        last = last.repeat_interleave(K, dim=0)
        mask, next_pos = mask.repeat_interleave(K, dim=0), next_pos.repeat_interleave(K, dim=0)
    for t in range(T):
        logits = last.float()
        logp = torch.log_softmax(logits, dim=-1)
        tok, slp = chooser(logits, logp, rows)
        lp = logp.gather(1, tok[:, None])[:, 0]
        ent = -(logp.exp() * logp).sum(-1)
        is_eos = eos[tok]
        is_nl = (
            newline[tok] & has_text[rows] if settings.stop_on_newline else torch.zeros_like(is_eos)
        )
        stop = is_eos | is_nl
        keep = ~stop
        live = rows[keep]
        out_tok[live, t] = tok[keep]
        out_lp[live, t] = lp[keep]
        out_ent[live, t] = ent[keep]
        if slp is not None:
            if out_slp is None:
                out_slp = torch.zeros((B, T), dtype=torch.float32, device=dev)
            out_slp[live, t] = slp[keep]
        n_gen[live] += 1
        has_text[live] |= ~blank[tok[keep]]
        if bool(stop.any()):
            for i in torch.nonzero(stop).flatten().tolist():
                reason[int(rows[i])] = "eos" if bool(is_eos[i]) else "newline"
            if not bool(keep.any()):
                break
            # Finished rows leave the batch: fewer rows per step, same results.
            sel = torch.nonzero(keep).flatten()
            cache.batch_select_indices(sel)
            rows, tok, mask, next_pos = rows[sel], tok[sel], mask[sel], next_pos[sel]
        if t == T - 1 and observer is None:
            break  # (an observer also needs the states of the last token: one more forward)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **kv
        )
        if observer is not None:
            observer.forward_done(rows.tolist(), mask.new_ones((len(rows), 1)))
            if t == T - 1:
                break
        last = out.logits[:, -1]
        next_pos = next_pos + 1
    res = []
    tok_np, lp_np, ent_np, n_np = (
        out_tok.cpu().numpy(),
        out_lp.cpu().numpy(),
        out_ent.cpu().numpy(),
        n_gen.cpu().numpy(),
    )
    slp_np = None if out_slp is None else out_slp.cpu().numpy()
    for b in range(B):
        n = int(n_np[b])
        row = {
            "answer_ids": tok_np[b, :n].tolist(),
            "token_logprobs": lp_np[b, :n].tolist(),
            "token_entropies": ent_np[b, :n].tolist(),
            "stop_reason": reason[b],
        }
        if slp_np is not None:
            row["sampling_logprobs"] = slp_np[b, :n].tolist()
        res.append(row)
    return res


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
        on_batch: called with the number of rows finished after each batch (progress).
        resume: finished batches of an earlier, interrupted run of the same plan (reused),
            and where each newly finished batch is recorded.
        observer: sees every forward (hidden states while generating, ``DecodeObserver``);
            each batch is graded as soon as it is decoded and handed to ``rows_done``. Rows of
            a batch reused from ``resume`` had no forward: they are not handed over.
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
    # Longest first: similar lengths share a batch (less padding), peak memory shows early.
    order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
    rows: list[Generation | None] = [None] * len(ids)
    for b, start in enumerate(range(0, len(order), settings.batch_size)):
        chunk = order[start : start + settings.batch_size]
        batch_ids, batch_prompts = [str(examples[i].id) for i in chunk], [ids[i] for i in chunk]
        got = resume.get(b, batch_ids, batch_prompts) if resume is not None else None
        watch = None if observer is None or got is not None else _Renumbered(observer, chunk)
        if got is None:
            got = _decode_batch(model, batch_prompts, settings, observer=watch)
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

    def forward_done(self, rows: Sequence[int], mask: torch.Tensor) -> None:
        self.observer.forward_done([self.index[r] for r in rows], mask)

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
            model, examples, prompt_fn, grade_fn, settings, meta, resume, progress
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
) -> GenerationSet:
    t0 = time.perf_counter()
    with progress_bar(len(examples), f"generate {model.name} · {settings.task}", progress) as adv:
        rows = generate_examples(
            model, examples, prompt_fn, grade_fn, settings, on_batch=adv, resume=resume
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

    Returns:
        ``GenerationSet`` with rows in task order; ``meta`` names model, task and settings.
    """
    examples = list(getattr(task, "examples", None) or [])
    name = str(getattr(task, "name", "task"))
    if not examples:
        raise DataError(
            f"Task '{name}' has no examples; check its split/limit (e.g. load_task('{name}', limit=50))."
        )
    settings = GenerationSettings(
        max_new_tokens=resolve_max_new_tokens(max_new_tokens, task),
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        task=name,
    )
    version = str(getattr(task, "version", "0"))
    split = getattr(task, "split", None)
    return _run_cached(
        model,
        examples,
        task.prompt,
        task.grade,
        settings,
        {"task": name, "task_version": version, "split": split},
        {"task": name, "task_version": version, "split": split, "n": len(examples)},
        cache=cache,
        progress=progress,
    )


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
    carries them to the decoder. Batches are formed as ``generate_examples`` forms them
    (longest prompt first); sample j of item i is seeded ``sample_seed(seed, i.id, j)``."""
    K = settings.k
    empty = next((it.id for it in items if not it.prompt_ids), None)
    if empty is not None:
        raise DataError(f"Example '{empty}' has an empty prompt; give every example a question.")
    check_context(model, items, [len(it.prompt_ids) for it in items], decode.max_new_tokens)
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].prompt_ids), i))
    decoded: list[list[dict[str, Any]]] = [[] for _ in items]
    for b, start in enumerate(range(0, len(order), decode.batch_size)):
        chunk = order[start : start + decode.batch_size]
        batch_ids = [items[i].id for i in chunk]
        batch_prompts = [list(items[i].prompt_ids) for i in chunk]
        got = resume.get(b, batch_ids, batch_prompts) if resume is not None else None
        if got is None:
            seeds = [sample_seed(settings.seed, i, j) for i in batch_ids for j in range(K)]
            chooser = TokenSampler(seeds, K, settings.temperature, settings.top_p)
            got = _decode_batch(model, batch_prompts, decode, chooser)
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
    examples = list(getattr(task, "examples", None) or [])[:limit]
    name = str(getattr(task, "name", "task"))
    if not examples:
        raise DataError(
            f"Task '{name}' has no examples; check its split/limit (e.g. load_task('{name}', limit=50))."
        )
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
    parts = {
        "task": name,
        "task_version": str(getattr(task, "version", "0")),
        "split": getattr(task, "split", None),
    }
    return items, task.grade, resolved, decode, parts


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
    settings.validate()  # before any model or task is loaded
    _check_limit(limit)
    settings = replace(settings, temperature=float(temperature), top_p=float(top_p), seed=int(seed))
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
    return _run_sample_cached(
        model,
        items,
        grade_fn,
        resolved,
        decode,
        parts,
        {**parts, **extra, "n": len(items)},
        cache=cache,
        progress=progress,
    )
