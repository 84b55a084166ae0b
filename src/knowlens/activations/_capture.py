"""Hidden states captured while generating: the answers and their activations in one pass.

    gens, acts = kl.generate(model, task, layers="all", tokens="exact_answer")
    gens = kl.generate(model, task)                  # no layers: generation only, as before

The decoder tells a ``DecodeObserver`` about every forward (``generation.DecodeObserver``):
each prompt token is consumed by its prefill, answer token ``t`` by the decode step after it
was chosen (a length-capped row's last token by one extra forward). ``HiddenStateCapture``
reads those forwards through the same hook points as ``extract`` (``Trace`` on
``hook_points``: block inputs / outputs, the final norm for ``n_layers``), keeps per row only
the positions a selector can still need (``last_prompt``: the last prompt token; ``last`` and
the exact-answer selectors: the last prompt token and the answer; ``all``: the first
``max_positions``; a prompt prefix that the decoder shares between rows comes from that
prefix's own forward, ``prefix_done``), and once ``generate_examples`` has graded the row
(so its exact-answer span is known) selects with ``extract``'s own ``selected_positions``,
writes the row to a spool and frees its states. Memory holds the rows in flight only; the
spool is a memmap under the cache (an array with ``cache=False``).

When the decode is done the spool becomes exactly the entry ``extract`` would write for these
generations: same ``plan_extraction`` (key, shape, shards, manifest), same ``ShardStore``
publish, same dtype rules (``auto``: float16 unless a hooked value exceeds +-65504, checked over
every consumed position as ``extract`` checks its batches; then float32 and the model is
remembered; explicit ``float16`` clamps and records ``fp16_overflow_max``). Either path reuses
the other's entries: an existing generation entry means no decode, so ``extract`` runs (a cache
hit if it ran before); rows reused from a resume record had no forward and are teacher-forced
by ``extract_batch``.

Parity with a separate teacher-forced ``extract`` (float32 storage; KV-cached incremental
attention over left-padded batches, shared prompt prefixes run apart, is not bit-identical
to one right-padded full pass). Measured by ``benchmarks/generate_extract.py --parity`` on
24 ``capitals`` answers as max |captured - extract| divided by the largest |value| of that
layer, worst layer of ``layers="all"`` (tests hold tiny < 1e-6, embedded < 2e-5)::

    selector              tiny Llama (4 layers)   SmolLM2-135M   Gemma 3 270M
    last_prompt           1.5e-7                  8.4e-7         1.5e-6
    last                  1.7e-7                  1.4e-6         9.3e-7
    exact_answer          1.7e-7                  2.7e-6         8.3e-7
    exact_answer_first    2.0e-7                  1.1e-6         1.8e-6
    exact_answer_mean     1.9e-7                  1.1e-6         9.4e-7
    all                   2.0e-7                  3.8e-6         1.6e-6

In float16 storage (``auto``'s usual choice) the paths differ by at most 1 ulp, where a value
sits on a rounding boundary.

``extract_reusing`` builds the entry of another view of captured rows (a subset, rows renamed
by ``concat``) by copying them, so analyses that pass the joint path's output on do not run
the model again.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, overload

import numpy as np
import torch

from knowlens._cache import _tmp_name, cache_root, entry_lock
from knowlens._types import ActivationSet, GenerationSet
from knowlens.activations._api import (
    ExtractionPlan,
    _check_common,
    _result,
    _warn_overflow,
    check_extract_inputs,
    extract,
    items_from_generations,
    plan_extraction,
    remember_float16_overflow,
    resolve_dtype,
)
from knowlens.activations._extract import (
    DTYPES,
    FP16_MAX,
    SELECTORS,
    ExtractItem,
    ExtractSpec,
    Float16Overflow,
    check_dtype,
    check_tokens,
    extract_batch,
    hook_points,
    plan_positions,
    resolve_layers,
    selected_positions,
)
from knowlens.activations._hooks import Trace
from knowlens.activations._store import ShardStore
from knowlens.errors import KnowlensError

if TYPE_CHECKING:
    from knowlens._types import Generation
    from knowlens.models import ModelHandle
    from knowlens.tasks import TaskLike

__all__ = [
    "CaptureRequest",
    "HiddenStateCapture",
    "SpoolLayout",
    "assemble",
    "capture_options",
    "capture_requests",
    "extract_reusing",
    "finish_capture",
    "generate",
    "generate_capturing",
    "generate_with_activations",
    "new_spool_dir",
    "spool_layout",
]

Layers: TypeAlias = str | int | Sequence[int]
_ANSWER_SELECTORS = frozenset(SELECTORS) - {"last_prompt", "all"}
_CHUNK_BYTES = 64 * 2**20  # spool -> entry copies move about this much at a time


@dataclass(frozen=True)
class CaptureRequest:
    """One ``extract`` to answer from the decode: resolved layers, selector, ``all``'s cap."""

    layers: tuple[int, ...]
    tokens: str
    max_positions: int = 512


class HiddenStateCapture:
    """A ``DecodeObserver`` that keeps the requested hidden states of every decoded row.

    Args:
        model: the ``ModelHandle`` that decodes.
        requests: what to keep (several selectors / layer sets share one decode).
        prompt_lens: prompt tokens of row ``r`` (the decoder's row numbers).
        outputs: one array per request, ``(rows, len(layers), K, d_model)``, written at
            ``rows_done`` (positions past a row's own count stay as they are: zeros).
        track_range: keep the largest |value| of every hooked tensor (``max_abs``) over the
            consumed positions, as ``extract`` checks its batches for float16.

    Use ``with capture.hooks(): generate(..., observer=capture)``; ``captured[r]`` tells
    which rows were handed over (a resumed batch's rows were not decoded).
    """

    def __init__(
        self,
        model: ModelHandle,
        requests: Sequence[CaptureRequest],
        prompt_lens: Sequence[int],
        outputs: Sequence[np.ndarray],
        *,
        track_range: bool = False,
    ) -> None:
        self.requests, self.outputs = list(requests), list(outputs)
        self.prompt_lens = [int(p) for p in prompt_lens]
        union = sorted({layer for r in self.requests for layer in r.layers})
        self.points = hook_points(model, union)
        col = {layer: j for j, layer in enumerate(union)}
        self._cols: list[list[int] | None] = [
            None if list(r.layers) == union else [col[layer] for layer in r.layers]
            for r in self.requests
        ]  # None: all of them, no gather
        self._all_below = max((r.max_positions for r in requests if r.tokens == "all"), default=0)
        self._answer = any(r.tokens in _ANSWER_SELECTORS for r in requests)
        self._last_prompt = any(r.tokens == "last_prompt" for r in requests)
        self._buf: list[torch.Tensor | None] = [None] * len(self.points)
        # kept positions of shared prompt prefixes (``all`` requests), by prefix tokens
        self._prefix: dict[tuple[int, ...], tuple[np.ndarray, torch.Tensor]] = {}
        self._consumed: dict[int, int] = {}
        self._pieces: dict[int, list[tuple[np.ndarray, torch.Tensor]]] = {}
        self._track = track_range
        self._max: torch.Tensor | None = None
        self.captured = np.zeros(len(self.prompt_lens), dtype=bool)
        self.seconds = 0.0  # spent in the observer's own calls (the capture's overhead)

    # -- hooks ------------------------------------------------------------------------------
    def hooks(self) -> Trace:
        """The hooks to hold installed around the decode (always removed on exit)."""
        return Trace(self.points, self._on_output)

    def _on_output(self, i: int, h: torch.Tensor) -> None:
        # Read at forward_done, right after this forward returns: HF blocks and norms return
        # fresh tensors (the parity tests would see an in-place change). A forward that no
        # forward_done follows (e.g. a judge model call while grading) is overwritten.
        self._buf[i] = h

    @property
    def max_abs(self) -> float:
        return 0.0 if self._max is None else float(self._max)

    def _keep(self, row: int, pos: np.ndarray) -> np.ndarray:
        p = self.prompt_lens[row]
        keep = pos < self._all_below
        if self._answer:
            keep |= pos >= p - 1
        elif self._last_prompt:
            keep |= pos == p - 1
        return keep

    # -- DecodeObserver ---------------------------------------------------------------------
    def _states(self, rows: int, width: int) -> list[torch.Tensor]:
        hs, self._buf = self._buf, [None] * len(self.points)
        if any(h is None or tuple(h.shape[:2]) != (rows, width) for h in hs):
            raise RuntimeError(
                "HiddenStateCapture: a forward_done without matching hook outputs; install "
                "the hooks around the decode (`with capture.hooks(): ...`)"
            )
        return [h for h in hs if h is not None]

    def _track_range(self, states: list[torch.Tensor], m: torch.Tensor) -> None:
        if self._track:  # max |x| per position first: no full-size temporaries
            dense = bool(m.all())
            peaks = []
            for h in states:
                a = torch.maximum(h.amax(-1), -h.amin(-1))
                peaks.append(a.amax() if dense else a[m].amax())
            peak = torch.stack(peaks).amax().float()
            self._max = peak if self._max is None else torch.maximum(self._max, peak)

    @staticmethod
    def _gather(states: list[torch.Tensor], flat: list[int]) -> torch.Tensor:
        """``(k, layers, d)`` states at flat ``entry * width + column`` indices."""
        at = torch.tensor(flat, device=states[0].device)
        # index_select beats advanced indexing on CPU
        return torch.stack([h.reshape(-1, h.shape[-1]).index_select(0, at) for h in states], 1)

    def prefix_done(self, prefixes: Sequence[tuple[int, ...]], mask: torch.Tensor) -> None:
        """A shared prefix's positions are the same in every row that starts with it: its
        range is tracked once, and the first positions an ``all`` request keeps are held for
        those rows until ``prefixes_dropped``."""
        t0 = time.perf_counter()
        width = int(mask.shape[1])
        states = self._states(len(prefixes), width)
        m = mask.to(torch.bool)
        self._track_range(states, m)
        if self._all_below:
            m_np = m.cpu().numpy()
            for j, key in enumerate(prefixes):
                where = np.flatnonzero(m_np[j])[: self._all_below]
                self._prefix[key] = (
                    np.arange(len(where)),
                    self._gather(states, (j * width + where).tolist()),
                )
        self.seconds += time.perf_counter() - t0

    def prefixes_dropped(self, prefixes: Sequence[tuple[int, ...]]) -> None:
        for key in prefixes:
            self._prefix.pop(key, None)

    def forward_done(
        self,
        rows: Sequence[int],
        mask: torch.Tensor,
        prefixes: Sequence[tuple[int, ...]] | None = None,
    ) -> None:
        t0 = time.perf_counter()
        rows = [int(r) for r in rows]
        states = self._states(len(rows), int(mask.shape[1]))
        m = mask.to(torch.bool)
        self._track_range(states, m)
        m_np = m.cpu().numpy()
        ents: list[int] = []
        cols: list[int] = []
        owners: list[tuple[int, np.ndarray]] = []
        for i, r in enumerate(rows):
            where = np.flatnonzero(m_np[i])
            start = self._consumed.get(r, 0)
            if r not in self._consumed and prefixes is not None and prefixes[i]:
                start = len(prefixes[i])  # fed by the prefix's forward (prefix_done)
                if prefixes[i] in self._prefix:
                    self._pieces.setdefault(r, []).append(self._prefix[prefixes[i]])
            if r not in self._consumed and start + len(where) != self.prompt_lens[r]:
                raise RuntimeError(
                    f"HiddenStateCapture: row {r}'s first forward fed {len(where)} tokens after "
                    f"a shared prefix of {start}, its prompt has {self.prompt_lens[r]} (the "
                    "decoder must prefill whole prompts)"
                )
            pos = start + np.arange(len(where))
            self._consumed[r] = start + len(where)
            keep = self._keep(r, pos)
            if keep.any():
                ents.extend([i] * int(keep.sum()))
                cols.extend(where[keep].tolist())
                owners.append((r, pos[keep]))
        if owners:
            width = int(mask.shape[1])
            kept = self._gather(states, [e * width + c for e, c in zip(ents, cols, strict=True)])
            at = 0
            for r, pos in owners:  # views of one small tensor per forward, no copies
                self._pieces.setdefault(r, []).append((pos, kept[at : at + len(pos)]))
                at += len(pos)
        self.seconds += time.perf_counter() - t0

    def rows_done(self, rows: Sequence[int], gens: Sequence[Generation]) -> None:
        t0 = time.perf_counter()
        for r, g in zip(rows, gens, strict=True):
            r = int(r)
            pieces = self._pieces.pop(r, [])
            consumed = self._consumed.pop(r, 0)
            item = items_from_generations([g])[0]
            if consumed != len(item.ids) or not pieces:
                raise RuntimeError(
                    f"HiddenStateCapture: row {r} ({g.example_id}) consumed {consumed} tokens, "
                    f"its prompt + answer has {len(item.ids)}"
                )
            pos = np.concatenate([p for p, _ in pieces])
            states = torch.cat([t for _, t in pieces])  # (kept positions, union layers, d)
            for j, req in enumerate(self.requests):
                self._write(j, r, item, req, pos, states)
            self.captured[r] = True
        self.seconds += time.perf_counter() - t0

    def _write(
        self,
        j: int,
        r: int,
        item: ExtractItem,
        req: CaptureRequest,
        pos: np.ndarray,
        states: torch.Tensor,
    ) -> None:
        sel, _ = selected_positions(item, req.tokens, req.max_positions)
        idx = np.searchsorted(pos, sel)
        if (idx >= len(pos)).any() or (pos[np.minimum(idx, len(pos) - 1)] != sel).any():
            raise RuntimeError(f"HiddenStateCapture: row {r} lacks positions {sel}")
        h = states.index_select(0, torch.as_tensor(idx, device=states.device))  # (s, L, d)
        if self._cols[j] is not None:
            h = h[:, self._cols[j]]
        if req.tokens == "exact_answer_mean":  # extract's weighted sum in float32
            w = torch.full((1, len(sel)), 1.0 / len(sel), device=h.device)
            h = (w @ h.float().flatten(1)).view(1, *h.shape[1:])
        elif req.tokens != "all":
            h = h[-1:]
        out = self.outputs[j]
        v = h.transpose(0, 1)  # (L, positions, d)
        if out.dtype == np.float16:
            v = v.float().clamp(-FP16_MAX, FP16_MAX)
        out[r, :, : v.shape[1]] = v.to(device="cpu", dtype=DTYPES[out.dtype.name][1]).numpy()


# -- publishing an entry exactly as extract does ----------------------------------------------
def _publish(
    model: ModelHandle,
    plan: ExtractionPlan,
    fill: Callable[[np.ndarray], None],
    extras: dict[str, Any],
    *,
    cache: bool,
    watch: bool,
) -> ActivationSet | None:
    """``fill`` the plan's values and publish them as ``extract``'s entry (or return the
    verified entry that is already there). None: a clamped float16 entry exists and
    ``auto`` must not be served it (the caller switches to float32, as ``extract`` does)."""
    manifest = {**plan.manifest, **extras}
    np_dtype = DTYPES[plan.spec.dtype][0]
    if not cache:
        values = np.zeros(plan.shape, dtype=np_dtype)
        fill(values)
        return _result(values, plan.mask, plan.positions, manifest, cache_hit=False, path=None)
    with entry_lock("activations", plan.key):
        store = ShardStore(plan.key, plan.shape, np_dtype, plan.plan_hash)
        hit = store.cached()
        if hit is not None:
            values, mask_, pos_, man = hit
            if watch and float(man.get("fp16_overflow_max") or 0.0) > 0:
                return None
            store.discard()
            return _result(values, mask_, pos_, man, cache_hit=True, path=str(store.final))
        mm, _ = store.open()  # every row is written below: no shard record is needed
        fill(mm)
        del mm  # no msync: finish() checksums the values, and every load verifies them
        manifest.update(shards=len(plan.shards), shards_reused=0)
        store.finish(plan.mask, plan.positions, manifest)
        values, mask_, pos_, man = store.load(deep=False)
    return _result(values, mask_, pos_, man, cache_hit=False, path=str(store.final))


def _copy_rows(target: np.ndarray, source: np.ndarray) -> None:
    """``target[:] = source[:, :, :K]`` (cast) a bounded number of rows at a time."""
    n, k = target.shape[0], target.shape[2]
    step = max(1, _CHUNK_BYTES // max(1, source[:1].nbytes))
    for s in range(0, n, step):
        target[s : s + step] = source[s : s + step, :, :k]


def assemble(
    model: ModelHandle,
    gens: GenerationSet,
    req: CaptureRequest,
    spool: np.ndarray,
    capture: Any,
    *,
    dtype: str,
    extract_batch_size: int,
    shard_size: int | None,
    cache: bool,
    progress: bool,
    numerics: dict[str, Any] | None = None,
) -> ActivationSet:
    """The captured rows of one request (+ teacher-forced rows a resume skipped) as the entry
    ``extract(model, gens, ...)`` writes; ``numerics``: of the processes that decoded
    (default this one's), part of the key as in ``plan_extraction``. ``capture`` needs only
    ``captured``, ``max_abs`` and ``seconds`` (a sharded run passes its blocks' totals)."""
    t0 = time.perf_counter()
    items = items_from_generations(gens.rows)
    missing = np.flatnonzero(~capture.captured)
    gmeta = {"generations_key": gens.meta.get("cache_key"), "task": gens.meta.get("task")}
    resolved, note = resolve_dtype(model, dtype)
    watch = dtype == "auto" and resolved == "float16"
    big = capture.max_abs
    forced: dict[str, dict[str, Any]] = {}

    def force(dt: str, stop: bool) -> dict[str, Any]:
        sub = [items[int(i)] for i in missing]
        k = plan_positions(sub, req.tokens, req.max_positions)[3]
        spec = ExtractSpec(req.layers, req.tokens, dt, req.max_positions, k, extract_batch_size)
        return extract_batch(model, sub, spec, stop_on_overflow=stop)

    final = resolved
    if watch:
        over = big > FP16_MAX
        if not over and len(missing):
            try:
                forced["float16"] = force("float16", True)
            except Float16Overflow as e:
                over, big = True, max(big, e.max_abs)
        if over:
            remember_float16_overflow(model, big)
            final, note = "float32", f"float32 (float16 overflow: max |x| = {big:.4g})"
    while True:
        plan = plan_extraction(
            model,
            items,
            layers=req.layers,
            tokens=req.tokens,
            dtype=final,
            max_positions=req.max_positions,
            batch_size=extract_batch_size,
            shard_size=shard_size,
            meta={**gmeta, **({"dtype_auto": note} if note else {})},
            numerics=numerics,
        )
        if len(missing) and final not in forced:
            forced[final] = force(final, False)
        clamped = 0.0
        if final == "float16" and not watch:  # explicit float16: clamped, recorded, warned
            clamped = big if big > FP16_MAX else 0.0
            clamped = max(clamped, float(forced.get("float16", {}).get("fp16_overflow_max", 0)))

        def fill(target: np.ndarray, final: str = final) -> None:
            _copy_rows(target, spool)
            if len(missing):
                got = forced[final]["values"]
                target[missing] = 0
                target[missing, :, : got.shape[2]] = got

        extras = {
            "seconds": round(time.perf_counter() - t0 + capture.seconds, 3),
            "tokens_run": int(forced[final]["tokens"]) if len(missing) else 0,
            "fp16_overflow_max": _warn_overflow(clamped, model),
            "captured_while_generating": int(len(items) - len(missing)),
            "teacher_forced_rows": len(missing),
        }
        out = _publish(model, plan, fill, extras, cache=cache, watch=watch and final == "float16")
        if out is not None:
            return out
        # an earlier explicit float16 run clamped these values: auto stores float32 (as extract)
        remember_float16_overflow(model, FP16_MAX)
        final, note = "float32", f"float32 (float16 overflow: max |x| >= {FP16_MAX:g})"


# -- front ends --------------------------------------------------------------------------------
def capture_requests(
    model: ModelHandle,
    wanted: Sequence[tuple[Layers, str]],
    max_positions: int,
    dtype: str = "auto",
    extract_batch_size: int = 8,
) -> list[CaptureRequest]:
    """The distinct, resolved requests of ``(layers, tokens)`` pairs, after ``extract``'s
    checks of the selectors, ``dtype``, ``max_positions`` and its batch size."""
    check_dtype(dtype)
    b = extract_batch_size
    if isinstance(b, bool) or not isinstance(b, int) or b < 1:
        raise KnowlensError(
            f"extract_batch_size must be a positive integer; got {b!r}. Pass e.g. "
            "extract_batch_size=8 (extract's batch_size, part of the activations' cache key)."
        )
    _check_common(model, max_positions, b)
    out: list[CaptureRequest] = []
    for layers, tokens in wanted:
        check_tokens(tokens, SELECTORS)
        req = CaptureRequest(resolve_layers(model, layers), tokens, max_positions)
        if req not in out:
            out.append(req)
    if not out:
        raise KnowlensError("capture needs at least one (layers, tokens) request; pass layers=.")
    return out


@dataclass(frozen=True)
class SpoolLayout:
    """How the captured rows of a decode are held until it is graded: the working dtype
    (``auto`` keeps float32 until the whole pass shows the values fit float16, so no second
    pass), whether the value range is tracked for that decision, and ``(layers, K)`` per
    request (K: 1, or ``all``'s positions up to ``max_positions``)."""

    work: str
    track_range: bool
    widths: tuple[tuple[int, int], ...]

    def shapes(self, n: int, d_model: int) -> list[tuple[int, int, int, int]]:
        return [(n, nl, k, d_model) for nl, k in self.widths]

    def open(self, n: int, d_model: int, directory: Path | None) -> list[np.ndarray]:
        """Zeroed spools for ``n`` rows, one per request: memmaps ``<j>.npy`` in
        ``directory`` (bounded memory), or arrays when it is None."""
        dt = DTYPES[self.work][0]
        return [
            np.lib.format.open_memmap(directory / f"{j}.npy", mode="w+", dtype=dt, shape=shape)
            if directory is not None
            else np.zeros(shape, dtype=dt)
            for j, shape in enumerate(self.shapes(n, d_model))
        ]


def new_spool_dir() -> Path:
    """A fresh temporary folder for capture spools under the cache (removed by the caller;
    a killed run's is cleaned as any ``.tmp-*`` entry)."""
    d = cache_root() / "activations" / _tmp_name("capture")
    d.mkdir(parents=True)
    return d


def spool_layout(
    model: ModelHandle,
    reqs: Sequence[CaptureRequest],
    prompt_lens: Sequence[int],
    answer_cap: int,
    dtype: str,
) -> SpoolLayout:
    """The ``SpoolLayout`` of ``reqs`` for prompts of ``prompt_lens`` tokens (all of the
    task's rows: a sharded run's blocks use the same K as one local spool)."""
    resolved, _ = resolve_dtype(model, dtype)
    work = "float32" if dtype == "auto" or resolved == "float32" else "float16"
    longest = max(prompt_lens, default=0) + answer_cap
    widths = tuple(
        (len(r.layers), min(r.max_positions, longest) if r.tokens == "all" else 1) for r in reqs
    )
    return SpoolLayout(work, resolved == "float16", widths)


def generate_capturing(
    model: ModelHandle,
    task: TaskLike,
    requests: Sequence[tuple[Layers, str]],
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    dtype: str = "auto",
    max_positions: int = 512,
    extract_batch_size: int = 8,
    shard_size: int | None = None,
    cache: bool = True,
    progress: bool = True,
    extract_on_hit: bool = True,
) -> tuple[GenerationSet, list[ActivationSet] | None]:
    """``generate`` plus one ``extract`` per ``(layers, tokens)`` request from the same pass.

    Returns the generations and the activation sets in request order (duplicates merged).
    When the generation entry already exists nothing is decoded: with ``extract_on_hit`` the
    sets come from ``extract`` (cache hits if they exist), else None (the caller extracts
    what it needs)."""
    from knowlens.generation import _encode, resolve_max_new_tokens
    from knowlens.generation import generate as generate_answers

    reqs = capture_requests(model, requests, max_positions, dtype, extract_batch_size)
    gen_kw: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        cache=cache,
        progress=progress,
    )
    examples = list(getattr(task, "examples", None) or [])
    if not examples or not hasattr(model, "format_prompt"):
        return generate_answers(model, task, **gen_kw), None  # raises its one-line error
    templated = use_chat_template and model.has_chat_template
    prompt_lens = [
        len(
            _encode(
                model, model.format_prompt(task.prompt(ex), use_chat_template=use_chat_template),
                templated,
            )
        )
        for ex in examples
    ]  # fmt: skip
    layout = spool_layout(
        model, reqs, prompt_lens, resolve_max_new_tokens(max_new_tokens, task), dtype
    )
    spool_dir = new_spool_dir() if cache else None
    try:
        spools = layout.open(len(examples), model.d_model, spool_dir)
        capture = HiddenStateCapture(
            model, reqs, prompt_lens, spools, track_range=layout.track_range
        )
        with capture.hooks():
            gens = generate_answers(model, task, **gen_kw, observer=capture)
        sets = finish_capture(
            model,
            gens,
            reqs,
            spools,
            None if gens.meta.get("cache_hit") else capture,
            extract_fn=extract,
            extract_on_hit=extract_on_hit,
            dtype=dtype,
            max_positions=max_positions,
            extract_batch_size=extract_batch_size,
            shard_size=shard_size,
            cache=cache,
            progress=progress,
        )
        return gens, sets
    finally:
        spools = []
        if spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)


def finish_capture(
    model: ModelHandle,
    gens: GenerationSet,
    reqs: Sequence[CaptureRequest],
    spools: Sequence[np.ndarray],
    capture: Any,
    *,
    extract_fn: Callable[..., ActivationSet],
    extract_on_hit: bool,
    dtype: str,
    max_positions: int,
    extract_batch_size: int,
    shard_size: int | None,
    cache: bool,
    progress: bool,
    numerics: dict[str, Any] | None = None,
) -> list[ActivationSet] | None:
    """The activation sets of a capturing decode, one per request: ``assemble``d from the
    spools, or (``capture`` None: the generation entry existed, nothing was decoded) from
    ``extract_fn`` when ``extract_on_hit``, else None."""
    if capture is None:
        if not extract_on_hit:
            return None
        return [
            extract_fn(
                model,
                gens,
                layers=list(r.layers),
                tokens=r.tokens,
                dtype=dtype,
                max_positions=max_positions,
                batch_size=extract_batch_size,
                cache=cache,
                progress=progress,
                shard_size=shard_size,
            )
            for r in reqs
        ]
    return [
        assemble(
            model,
            gens,
            r,
            spools[j],
            capture,
            dtype=dtype,
            extract_batch_size=extract_batch_size,
            shard_size=shard_size,
            cache=cache,
            progress=progress,
            numerics=numerics,
        )
        for j, r in enumerate(reqs)
    ]


def generate_with_activations(
    model: ModelHandle,
    task: TaskLike,
    *,
    layers: Layers = "all",
    tokens: str = "exact_answer",
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    dtype: str = "auto",
    max_positions: int = 512,
    extract_batch_size: int = 8,
    shard_size: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> tuple[GenerationSet, ActivationSet]:
    """Greedy answers and their hidden states from the same forward passes.

    >>> gens, acts = generate_with_activations(model, task, layers=[8, -1], tokens="last")

    Arguments as ``knowlens.generate`` (decoding, ``batch_size`` rows per decode batch) and
    ``knowlens.extract`` (``layers``, ``tokens``, ``dtype``, ``max_positions``,
    ``shard_size``; ``extract_batch_size`` is extract's ``batch_size``, which its cache key
    names). Returns what ``generate(model, task, ...)`` and then ``extract(model, gens, ...)``
    return, from the same cache entries; the values equal the teacher-forced ones within the
    tolerances in this module's docstring.
    """
    gens, sets = generate_capturing(
        model,
        task,
        [(layers, tokens)],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        dtype=dtype,
        max_positions=max_positions,
        extract_batch_size=extract_batch_size,
        shard_size=shard_size,
        cache=cache,
        progress=progress,
    )
    assert sets is not None  # extract_on_hit
    return gens, sets[0]


@overload
def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    layers: None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    cache: bool = True,
    progress: bool = True,
) -> GenerationSet: ...


@overload
def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    layers: Layers,
    tokens: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    dtype: str | None = None,
    max_positions: int | None = None,
    extract_batch_size: int | None = None,
    shard_size: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> tuple[GenerationSet, ActivationSet]: ...


def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    layers: Layers | None = None,
    tokens: str | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    dtype: str | None = None,
    max_positions: int | None = None,
    extract_batch_size: int | None = None,
    shard_size: int | None = None,
    cache: bool = True,
    progress: bool = True,
) -> GenerationSet | tuple[GenerationSet, ActivationSet]:
    """``knowlens.generate``: greedy answers, and with ``layers=`` their hidden states too.

    >>> gens = kl.generate(model, task)
    >>> gens, acts = kl.generate(model, task, layers="all", tokens="exact_answer")

    Without ``layers`` this is ``knowlens.generation.generate``. With it, the hidden states
    are read while generating (``generate_with_activations``; ``tokens`` default
    ``exact_answer``, ``dtype`` ``auto``, ``max_positions`` 512, ``extract_batch_size`` 8 as
    in ``extract``) and ``(GenerationSet, ActivationSet)`` is returned.
    """
    from knowlens.generation import generate as generate_answers

    gen_kw: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
        cache=cache,
        progress=progress,
    )
    opts = capture_options(layers, tokens, dtype, max_positions, extract_batch_size, shard_size)
    if opts is None:
        return generate_answers(model, task, **gen_kw)
    return generate_with_activations(model, task, **opts, **gen_kw)


def capture_options(
    layers: Layers | None,
    tokens: str | None,
    dtype: str | None,
    max_positions: int | None,
    extract_batch_size: int | None,
    shard_size: int | None,
) -> dict[str, Any] | None:
    """``generate(..., layers=...)``'s extract arguments with ``extract``'s defaults
    (``tokens`` exact_answer, ``dtype`` auto, ``max_positions`` 512, batch 8); None without
    ``layers`` (generation only), where any of the others is a one-line error."""
    if layers is None:
        given = {
            "tokens": tokens,
            "dtype": dtype,
            "max_positions": max_positions,
            "extract_batch_size": extract_batch_size,
            "shard_size": shard_size,
        }
        named = [k for k, v in given.items() if v is not None]
        if named:
            raise KnowlensError(
                f"generate: {', '.join(named)}= choose which hidden states to keep, but no "
                "layers= was given; pass layers='all' (or e.g. layers=[8, -1]) to get "
                f"(gens, acts), or drop {named[0]}=."
            )
        return None
    return {
        "layers": layers,
        "tokens": "exact_answer" if tokens is None else tokens,
        "dtype": "auto" if dtype is None else dtype,
        "max_positions": 512 if max_positions is None else max_positions,
        "extract_batch_size": 8 if extract_batch_size is None else extract_batch_size,
        "shard_size": shard_size,
    }


# -- other views of captured rows -------------------------------------------------------------
def extract_reusing(
    model: ModelHandle,
    gens: GenerationSet | Sequence[Generation],
    sources: Sequence[tuple[GenerationSet, ActivationSet]],
    *,
    layers: Layers = "all",
    tokens: str = "exact_answer",
    dtype: str = "auto",
    max_positions: int = 512,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
    shard_size: int | None = None,
    numerics: dict[str, Any] | None = None,
    fallback: Callable[[], ActivationSet] | None = None,
) -> ActivationSet:
    """``extract(model, gens, ...)``, with rows copied from ``sources`` (generations and the
    activation sets captured for them) instead of run again when every row of ``gens`` is
    among them (matched by content: token ids, prompt length, exact-answer span, so subsets
    and renamed rows match) at the same model, numerics, selector, stored dtype and a
    superset of the layers; otherwise plain ``extract`` (or ``fallback()``: e.g. the run's
    executor's extract). The entry is ``extract``'s; ``numerics`` as in ``plan_extraction``
    (default this process's; a sharded run's are its workers')."""
    from knowlens.generation import compute_numerics

    kw: dict[str, Any] = dict(
        layers=layers,
        tokens=tokens,
        dtype=dtype,
        max_positions=max_positions,
        batch_size=batch_size,
        cache=cache,
        progress=progress,
        shard_size=shard_size,
    )
    rows = check_extract_inputs(model, gens, tokens, dtype, max_positions, batch_size)
    layer_idx = resolve_layers(model, layers)
    resolved, note = resolve_dtype(model, dtype)
    if numerics is None:
        numerics = compute_numerics(model.device)
    rerun = fallback if fallback is not None else (lambda: extract(model, gens, **kw))
    index: dict[tuple[Any, ...], tuple[ActivationSet, list[int], int]] = {}
    used: list[ActivationSet] = []
    for src_gens, acts in sources:
        ok = (
            acts.meta.get("model_fingerprint") == model.fingerprint
            and acts.meta.get("numerics") == numerics
            and acts.tokens == tokens
            and acts.values.dtype == DTYPES[resolved][0]
            and (tokens != "all" or acts.meta.get("max_positions") == max_positions)
            and set(layer_idx) <= set(acts.layers)
            and len(src_gens) == len(acts)
        )
        if not ok:
            continue
        cols = [acts.layers.index(layer) for layer in layer_idx]
        for j, it in enumerate(items_from_generations(src_gens)):
            index.setdefault((it.ids, it.prompt_len, it.span), (acts, cols, j))
    items = items_from_generations(rows)
    found = [index.get((it.ids, it.prompt_len, it.span)) for it in items]
    if not found or any(f is None for f in found):
        return rerun()
    t0 = time.perf_counter()
    meta = dict(gens.meta) if isinstance(gens, GenerationSet) else {}
    gmeta = {"generations_key": meta.get("cache_key"), "task": meta.get("task")}
    plan = plan_extraction(
        model,
        items,
        layers=layer_idx,
        tokens=tokens,
        dtype=resolved,
        max_positions=max_positions,
        batch_size=batch_size,
        shard_size=shard_size,
        meta={**gmeta, **({"dtype_auto": note} if note else {})},
        numerics=numerics,
    )
    for f in found:
        if f is not None and not any(f[0] is u for u in used):
            used.append(f[0])

    def fill(target: np.ndarray) -> None:
        k = target.shape[2]
        for i, f in enumerate(found):
            assert f is not None
            acts, cols, j = f
            got = np.asarray(acts.values[j])[cols][:, :k]
            target[i] = 0
            target[i, :, : got.shape[1]] = got

    clamped = max(float(u.meta.get("fp16_overflow_max") or 0.0) for u in used)
    extras = {
        "seconds": round(time.perf_counter() - t0, 3),
        "tokens_run": 0,
        "fp16_overflow_max": clamped,
        "copied_from": [u.meta.get("cache_key") for u in used],
    }
    watch = dtype == "auto" and resolved == "float16"
    out = _publish(model, plan, fill, extras, cache=cache, watch=watch)
    return out if out is not None else rerun()
