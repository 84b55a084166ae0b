"""Batched greedy generation with token statistics and grading.

    gens = generate(model, task)                      # GenerationSet, rows in task order
    gens.accuracy, gens[0].answer, gens[0].token_logprobs
    outs = generate_texts(model, ["Tell me a joke."], max_new_tokens=32)

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
import numbers
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from knowlens._types import Generation, GenerationSet
from knowlens.errors import DataError, KnowlensError
from knowlens.models._batch import pad_batch, pad_id

# 2: batch_size is part of the key (log-probs differ by ~1e-6 between batch sizes), entries
# carry checksums. The later ``user_turn`` column needs no bump: entries without it load with
# ``user_turn=None`` and ``estimators.user_turn`` recovers the same text from the prompt.
GENERATION_VERSION = "2"
_log = logging.getLogger("knowlens.generation")

__all__ = [
    "GENERATION_VERSION",
    "Generation",
    "GenerationSet",
    "GenerationSettings",
    "char_span_to_token_span",
    "compute_numerics",
    "generate",
    "generate_examples",
    "generate_texts",
    "resolve_max_new_tokens",
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


def context_limit(model: Any) -> tuple[int, str] | None:
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
    model: Any, examples: Sequence[Any], prompt_lens: Sequence[int], max_new_tokens: int
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
    resumed run gives the same bytes as an uninterrupted one.
    """

    def __init__(self, directory: Path, key: str) -> None:
        self.dir, self.key, self.reused = Path(directory), key, 0
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
                and len(rows) == len(ids)
                and all(isinstance(r, dict) and set(r) == _ROW_KEYS for r in rows)
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


# -- the decoding loop -----------------------------------------------------------------------
def _encode(handle: Any, text: str, templated: bool) -> list[int]:
    # A chat template already writes its own BOS / special tokens; plain text gets the
    # tokenizer's usual specials (e.g. Gemma's <bos>).
    return list(handle.tokenizer(text, add_special_tokens=not templated)["input_ids"])


@functools.cache
def _cache_kwarg_of(cls: type) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def cache_kwarg(model: Any) -> str:
    """The KV-cache keyword of ``model.forward``: transformers >= 5.2x calls it ``cache``
    (``past_key_values`` warns and goes away in 5.40), older releases ``past_key_values``."""
    return _cache_kwarg_of(type(model))


@torch.inference_mode()
def _decode_batch(
    handle: Any, prompts: list[list[int]], settings: GenerationSettings
) -> list[dict[str, Any]]:
    """Greedy-decode one batch of token id lists; returns per-row ids, log-probs, entropies."""
    model, dev = handle.model, handle.device
    B, T = len(prompts), settings.max_new_tokens
    ids, mask, pos = pad_batch(prompts, pad_id(handle.tokenizer), side="left")
    ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
    vocab = model.get_output_embeddings().weight.shape[0]
    newline, blank = _vocab_flags(handle.tokenizer, vocab)
    newline, blank = newline.to(dev), blank.to(dev)
    eos = torch.zeros(vocab, dtype=torch.bool, device=dev)
    eos[[i for i in _eos_ids(handle) if i < vocab]] = True

    out_tok = torch.full((B, T), -1, dtype=torch.long, device=dev)
    out_lp = torch.zeros((B, T), dtype=torch.float32, device=dev)
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
    next_pos = pos[:, -1:] + 1
    for t in range(T):
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        tok = logp.argmax(-1)
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
        if t == T - 1:
            break
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **kv
        )
        next_pos = next_pos + 1
    res = []
    tok_np, lp_np, ent_np, n_np = (
        out_tok.cpu().numpy(),
        out_lp.cpu().numpy(),
        out_ent.cpu().numpy(),
        n_gen.cpu().numpy(),
    )
    for b in range(B):
        n = int(n_np[b])
        res.append(
            {
                "answer_ids": tok_np[b, :n].tolist(),
                "token_logprobs": lp_np[b, :n].tolist(),
                "token_entropies": ent_np[b, :n].tolist(),
                "stop_reason": reason[b],
            }
        )
    return res


# -- the pure worker -------------------------------------------------------------------------
def generate_examples(
    model: Any,
    examples: Sequence[Any],
    prompt_fn: Callable[[Any], str],
    grade_fn: Callable[[Any, str], Any] | None,
    settings: GenerationSettings,
    *,
    on_batch: Callable[[int], None] | None = None,
    resume: BatchRecords | None = None,
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
    decoded: list[dict[str, Any] | None] = [None] * len(ids)
    for b, start in enumerate(range(0, len(order), settings.batch_size)):
        chunk = order[start : start + settings.batch_size]
        batch_ids, batch_prompts = [str(examples[i].id) for i in chunk], [ids[i] for i in chunk]
        got = resume.get(b, batch_ids, batch_prompts) if resume is not None else None
        if got is None:
            got = _decode_batch(model, batch_prompts, settings)
            if resume is not None:
                resume.put(b, batch_ids, batch_prompts, got)
        for i, r in zip(chunk, got, strict=True):
            decoded[i] = r
        if on_batch is not None:
            on_batch(len(chunk))

    tok = model.tokenizer
    answers = tok.batch_decode([d["answer_ids"] for d in decoded], skip_special_tokens=True)
    rows = []
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
        rows.append(
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
    return rows


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
    model: Any,
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
    if not cache:
        gs = _compute(model, examples, prompt_fn, grade_fn, settings, meta, None, progress)
        gs.meta["cache_hit"] = False
        return gs
    # One writer per entry across processes: an identical concurrent run waits, then reads.
    with entry_lock("generations", key):
        entry = verified_entry("generations", key)  # damaged -> warned, moved aside, None
        if entry is not None:
            try:
                gs = GenerationSet.load(entry)
            except DataError as e:  # intact bytes that still do not parse (foreign writer)
                quarantine(entry, str(e))
            else:
                gs.meta["cache_hit"] = True
                return gs
        resume = BatchRecords(entry_dir("generations", f".partial-{key}"), key)
        gs = _compute(model, examples, prompt_fn, grade_fn, settings, meta, resume, progress)
        with atomic_dir(entry_dir("generations", key)) as tmp:  # checksums written too
            gs.save(tmp)
        resume.discard()
    gs.meta["cache_hit"] = False
    return gs


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
    model: Any,
    task: Any,
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
    model: Any,
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
