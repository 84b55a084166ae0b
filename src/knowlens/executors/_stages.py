"""`generate` / `sample` / `extract` with an ``executor=``: local, or sharded blocks on Ray.

``executor="local"`` (the default) calls ``knowlens.generation.generate`` / ``sample`` /
``knowlens.activations.extract`` unchanged. Any other executor cuts the work into blocks that
reproduce the local path's batches exactly, so the merged result is the same table and the
same bytes:

* generation sorts prompts longest first, ties by input order, and decodes them in windows of
  ``generation.decode_window(batch_size)`` (continuous batching inside a window); blocks are
  consecutive runs of that order, a multiple of the window long, and ``generate_examples``
  re-sorts each block into the same windows;
* sampling cuts ``sample_items``' order (the same rule) the same way; each sample's RNG is
  seeded by (seed, example id, sample index), not by its batch or worker;
* extraction sorts each local shard's rows by the tokens they need, longest first, and runs
  ``batch_size`` rows per forward; blocks are cut from each shard's order the same way.

The merged result is written into the *same* cache entry (same key, same files) as the local
path's, so ``kl.generate`` / ``kl.sample`` / ``kl.extract`` reuse it, and vice versa. The
key includes the executor's numerics (``Executor.numerics``: CPU thread count of the workers,
or the accelerator type), as the local key includes this process's, because CPU results
depend on the thread count. Entries are read back verified, like the local path's.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from knowlens._cache import atomic_write_json, quarantine, stable_hash, verified_entry
from knowlens._types import ActivationSet, Generation, GenerationSet, SampleSet
from knowlens.errors import DataError, KnowlensError
from knowlens.executors._core import Block, Executor, LocalExecutor, Stage, run_stage
from knowlens.executors._select import resolve_executor

if TYPE_CHECKING:
    from knowlens.models import ModelHandle
    from knowlens.tasks import TaskLike

DEFAULT_BLOCKS_PER_WORKER = 4  # several blocks per replica: balance, and little lost on a fault


def _block_size(requested: int | None, n: int, batch_size: int, workers: int) -> int:
    """Rows per block: a multiple of ``batch_size`` (so blocks never split a local batch)."""
    if requested is not None:
        if requested < 1:
            raise KnowlensError(f"block_size must be >= 1; got {requested}.")
        return max(batch_size, -(-requested // batch_size) * batch_size)
    target = -(-n // max(1, workers * DEFAULT_BLOCKS_PER_WORKER))
    return max(batch_size, -(-target // batch_size) * batch_size)


def _workers_hint(executor: Executor) -> int:
    return executor.planned_workers()


def _cut(order: list[int], size: int) -> list[list[int]]:
    return [order[s : s + size] for s in range(0, len(order), size)]


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr))
    return buf.getvalue()


# -- tables of rows (generation, sampling) ----------------------------------------------------
class _RowStage(Stage):
    """A stage whose blocks are rows of a ``GenerationSet`` / ``SampleSet`` (one parquet shard
    per block), merged back into the task's order and saved as that set (the local files)."""

    set_cls: Any = GenerationSet
    table = "generations.parquet"
    meta: dict[str, Any]

    def _tokens(self, rows: list[Any]) -> int:
        raise NotImplementedError

    def _shard(self, rows: list[Any]) -> dict[str, bytes]:
        buf = io.BytesIO()
        self.set_cls(rows).to_frame().to_parquet(buf, index=False)
        return {
            self.table: buf.getvalue(),
            "info.json": json.dumps({"tokens": self._tokens(rows), "rows": len(rows)}).encode(),
        }

    def _rows(self, shard_dirs: list[Path]) -> list[Any]:
        import pandas as pd

        frames = [pd.read_parquet(d / self.table) for d in shard_dirs]
        by_id = {r.example_id: r for r in self.set_cls.from_frame(pd.concat(frames)).rows}
        return [by_id[i] for i in self.item_ids()]  # task order, as the local path returns

    def _meta(self, rows: list[Any], run: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.meta,
            "seconds": run["seconds"],
            "n_answer_tokens": self._tokens(rows),
            "executor": run,
        }

    def cached(self) -> Any | None:
        # As the local path reads it: checksums verified, then parsed; damaged -> moved aside.
        entry = verified_entry(self.kind, self.key)
        if entry is None:
            return None
        try:
            return self.load(entry, cache_hit=True)
        except DataError as e:  # intact bytes that still do not parse (foreign writer)
            quarantine(entry, str(e))
            return None

    def merge(
        self, shard_dirs: list[Path], blocks: list[Block], out: Path, run: dict[str, Any]
    ) -> None:
        rows = self._rows(shard_dirs)
        self.set_cls(rows, self._meta(rows, run)).save(out)

    def merge_in_memory(
        self, shard_dirs: list[Path], blocks: list[Block], run: dict[str, Any]
    ) -> Any:
        rows = self._rows(shard_dirs)
        out = self.set_cls(rows, self._meta(rows, run))
        out.meta["cache_hit"] = False
        return out

    def load(self, entry: Path, *, cache_hit: bool) -> Any:
        out = self.set_cls.load(entry)
        out.meta["cache_hit"] = cache_hit
        return out


# -- generation --------------------------------------------------------------------------------
_CAPTURE_INFO = "capture.json"


@dataclass(frozen=True)
class _CapturePlan:
    """What every generation block keeps while it decodes: the local capture's requests and
    spool layout (``tag`` names both; a shard made under another plan is not read)."""

    requests: tuple[Any, ...]  # activations.CaptureRequest
    layout: Any  # activations.SpoolLayout
    d_model: int

    @property
    def tag(self) -> str:
        return stable_hash([[asdict(r) for r in self.requests], asdict(self.layout)], length=16)


@dataclass
class _Captured:
    """The driver's view of the blocks' captures, as ``activations.assemble`` reads it."""

    spools: list[np.ndarray]
    captured: np.ndarray
    max_abs: float = 0.0
    seconds: float = 0.0


class GenerationStage(_RowStage):
    """Greedy generation of a task's examples, one shard (parquet) per block."""

    kind = "generations"

    def __init__(
        self,
        model: ModelHandle,
        examples: list[Any],
        prompt_fn: Any,
        grade_fn: Any,
        settings: Any,
        key: str,
        meta: dict[str, Any],
        block_size: int,
    ) -> None:
        from knowlens.generation import _encode, check_context

        self.examples = examples
        self.prompt_fn, self.grade_fn, self.settings = prompt_fn, grade_fn, settings
        self.key, self.meta, self.block_size = key, meta, block_size
        self.numerics = meta["numerics"]
        self.capture: _CapturePlan | None = None  # set by _generation_stage when capturing
        self.spool_dir: Path | None = None  # driver side: where merge gathers the captures
        self.captured: _Captured | None = None
        templated = settings.use_chat_template and model.has_chat_template
        # The local path's batch order: prompt token length, longest first, ties by index.
        lens = [
            len(
                _encode(
                    model,
                    model.format_prompt(
                        prompt_fn(ex), use_chat_template=settings.use_chat_template
                    ),
                    templated,
                )
            )
            for ex in examples
        ]
        check_context(model, examples, lens, settings.max_new_tokens)  # before any worker runs
        self.prompt_lens = lens
        self._order = sorted(range(len(examples)), key=lambda i: (-lens[i], i))

    def item_ids(self) -> list[str]:
        return [str(ex.id) for ex in self.examples]

    def schedule(self) -> list[int]:
        return self._order

    def _tokens(self, rows: list[Generation]) -> int:
        return int(sum(len(r.answer_ids) for r in rows))

    def compute(self, model: ModelHandle, block: Block) -> dict[str, bytes]:
        from knowlens.generation import generate_examples

        examples = [self.examples[i] for i in block.items]
        args = (model, examples, self.prompt_fn, self.grade_fn, self.settings)
        plan = self.capture
        if plan is None:
            return self._shard(generate_examples(*args))
        # Hidden states read while this block decodes (the local capture, on the block's rows)
        from knowlens.activations import HiddenStateCapture

        layout = plan.layout
        outs = layout.open(len(examples), int(model.d_model), None)
        lens = [self.prompt_lens[i] for i in block.items]
        cap = HiddenStateCapture(model, plan.requests, lens, outs, track_range=layout.track_range)
        with cap.hooks():
            rows = generate_examples(*args, observer=cap)
        files = self._shard(rows)
        for j, out in enumerate(outs):
            files[f"capture-{j}.npy"] = _npy_bytes(out)
        files[_CAPTURE_INFO] = json.dumps(
            {
                "plan": plan.tag,
                "captured": cap.captured.tolist(),
                "max_abs": cap.max_abs,
                "seconds": cap.seconds,
            }
        ).encode()
        return files

    def merge(
        self, shard_dirs: list[Path], blocks: list[Block], out: Path, run: dict[str, Any]
    ) -> None:
        self._gather(shard_dirs, blocks)
        super().merge(shard_dirs, blocks, out, run)

    def merge_in_memory(
        self, shard_dirs: list[Path], blocks: list[Block], run: dict[str, Any]
    ) -> Any:
        self._gather(shard_dirs, blocks)
        return super().merge_in_memory(shard_dirs, blocks, run)

    def _gather(self, shard_dirs: list[Path], blocks: list[Block]) -> None:
        """The blocks' captured rows in task order (``captured``), before the shards go.
        A shard decoded without this capture plan (a plain run's, another selector's) adds
        none: its rows are teacher-forced by ``assemble``, as a resumed local window's."""
        plan = self.capture
        if plan is None:
            return
        n = len(self.examples)
        spools = plan.layout.open(n, plan.d_model, self.spool_dir)  # bounded memory
        got = _Captured(spools, np.zeros(n, dtype=bool))
        for d, b in zip(shard_dirs, blocks, strict=True):
            info_path = d / _CAPTURE_INFO
            if not info_path.exists():
                continue
            info = json.loads(info_path.read_text())
            if info.get("plan") != plan.tag:
                continue
            for j, spool in enumerate(spools):
                spool[b.items] = np.load(d / f"capture-{j}.npy")
            got.captured[b.items] = np.asarray(info["captured"], dtype=bool)
            got.max_abs = max(got.max_abs, float(info["max_abs"]))
            got.seconds += float(info["seconds"])
        self.captured = got


def _strip_captures(stage: GenerationStage) -> None:
    """Drop the captured states from the stage's shards once their entries are published
    (they are the activation entries' bytes a second time; the shards stay, verified, as the
    generation entry's repair copy)."""
    from knowlens._cache import entry_lock, write_checksums
    from knowlens.executors._core import shard_root

    root = shard_root(stage)
    with entry_lock(stage.kind, stage.key):
        for d in root.iterdir() if root.is_dir() else []:
            extra = [*d.glob("capture-*.npy"), *d.glob(_CAPTURE_INFO)]
            if not extra:
                continue
            for f in extra:
                f.unlink()
            write_checksums(d)


def _generation_stage(
    model: ModelHandle,
    task: TaskLike,
    ex: Executor,
    *,
    max_new_tokens: int | None,
    batch_size: int,
    use_chat_template: bool,
    stop_on_newline: bool,
    block_size: int | None,
    capture: Any = None,
) -> GenerationStage:
    """The sharded greedy decode of ``task``: the local path's key and meta (so either path
    reuses the other's entry) and blocks of whole decode windows (the local numbers).
    ``capture``: ``(requests, dtype)`` to read hidden states while decoding."""
    from knowlens.generation import decode_window, generation_cache_entry, greedy_plan

    examples, settings, parts = greedy_plan(
        task,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        use_chat_template=use_chat_template,
        stop_on_newline=stop_on_newline,
    )
    settings.validate()
    rendered = [
        model.format_prompt(task.prompt(e), use_chat_template=use_chat_template) for e in examples
    ]
    key, meta = generation_cache_entry(
        model,
        examples,
        rendered,
        settings,
        parts,
        {**parts, "n": len(examples)},
        numerics=ex.numerics(model),  # the workers' threads / device, not the driver's
    )
    window = decode_window(batch_size)  # blocks of whole windows: the local numbers
    size = _block_size(block_size, len(examples), window, _workers_hint(ex))
    stage = GenerationStage(model, examples, task.prompt, task.grade, settings, key, meta, size)
    if capture is not None:
        from knowlens.activations import spool_layout

        reqs, dtype = capture
        layout = spool_layout(model, reqs, stage.prompt_lens, settings.max_new_tokens, dtype)
        stage.capture = _CapturePlan(tuple(reqs), layout, int(model.d_model))
    return stage


@overload
def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    executor: str | Executor | None = None,
    layers: None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 16,
    use_chat_template: bool = True,
    stop_on_newline: bool = True,
    cache: bool = True,
    progress: bool = True,
    block_size: int | None = None,
) -> GenerationSet: ...


@overload
def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    executor: str | Executor | None = None,
    layers: str | int | list[int],
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
    block_size: int | None = None,
) -> tuple[GenerationSet, ActivationSet]: ...


def generate(
    model: ModelHandle,
    task: TaskLike,
    *,
    executor: str | Executor | None = None,
    layers: str | int | list[int] | None = None,
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
    block_size: int | None = None,
) -> GenerationSet | tuple[GenerationSet, ActivationSet]:
    """``knowlens.generate`` on any executor; the same rows whichever runs it.

    Args:
        executor: ``"local"`` / ``None`` (this process), ``"ray"`` (a local Ray instance, or the
            one already initialised), or an ``Executor`` from ``get_executor``.
        layers, tokens, dtype, max_positions, extract_batch_size, shard_size: as in
            ``knowlens.generate``: with ``layers`` the hidden states are read while
            generating and ``(gens, acts)`` is returned (:func:`generate_capturing`).
        block_size: examples per block (rounded up to a multiple of
            ``generation.decode_window(batch_size)``, the decoder's resume window; default:
            about four blocks per worker).
        Others: as in ``knowlens.generation.generate``.
    """
    from knowlens.activations import capture_options
    from knowlens.generation import generate as local_generate

    opts = capture_options(layers, tokens, dtype, max_positions, extract_batch_size, shard_size)
    if opts is not None:
        gens, sets = generate_capturing(
            model,
            task,
            [(opts.pop("layers"), opts.pop("tokens"))],
            executor=executor,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            stop_on_newline=stop_on_newline,
            cache=cache,
            progress=progress,
            block_size=block_size,
            **opts,
        )
        assert sets is not None  # extract_on_hit
        return gens, sets[0]
    ex = resolve_executor(executor)
    owned = not isinstance(executor, Executor)
    try:
        if isinstance(ex, LocalExecutor):
            return local_generate(
                model,
                task,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                use_chat_template=use_chat_template,
                stop_on_newline=stop_on_newline,
                cache=cache,
                progress=progress,
            )
        stage = _generation_stage(
            model,
            task,
            ex,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            stop_on_newline=stop_on_newline,
            block_size=block_size,
        )
        gens, _ = run_stage(
            stage,
            model,
            ex,
            progress=progress,
            description=f"generate {model.name} · {stage.settings.task} [{ex.name}]",
            cache=cache,
        )
        return gens
    finally:
        if owned:
            ex.close()


def generate_capturing(
    model: ModelHandle,
    task: TaskLike,
    requests: Any,
    *,
    executor: str | Executor | None = None,
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
    block_size: int | None = None,
) -> tuple[GenerationSet, list[ActivationSet] | None]:
    """``knowlens.activations.generate_capturing`` on any executor: the answers and one
    activation set per ``(layers, tokens)`` request from the same forward passes.

    Each block (whole decode windows, as :func:`generate`) keeps its rows' requested states
    while it decodes and ships them in its shard; the driver gathers them in task order and
    publishes exactly the entry ``extract(..., executor=)`` would write (the workers'
    numerics in its key), so either reuses the other's. Rows of shards decoded without this
    capture (a plain or an earlier run's, resumed) are teacher-forced here, as a resumed
    local window's. When the generation entry already exists nothing is decoded: with
    ``extract_on_hit`` the sets come from :func:`extract` on the executor, else None."""
    from knowlens.activations import capture_requests, finish_capture
    from knowlens.activations import generate_capturing as local_capturing

    ex = resolve_executor(executor)
    owned = not isinstance(executor, Executor)
    try:
        if isinstance(ex, LocalExecutor):
            return local_capturing(
                model,
                task,
                requests,
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
                extract_on_hit=extract_on_hit,
            )
        reqs = capture_requests(model, requests, max_positions, dtype, extract_batch_size)
        stage = _generation_stage(
            model,
            task,
            ex,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            use_chat_template=use_chat_template,
            stop_on_newline=stop_on_newline,
            block_size=block_size,
            capture=(reqs, dtype),
        )
        from knowlens.activations import new_spool_dir

        spool_dir = new_spool_dir() if cache else None
        stage.spool_dir = spool_dir
        try:
            gens, _ = run_stage(
                stage,
                model,
                ex,
                progress=progress,
                description=f"generate {model.name} · {stage.settings.task} [{ex.name}]",
                cache=cache,
            )
            got = stage.captured  # None: the generation entry was there, nothing decoded

            def on_executor(*a: Any, **k: Any) -> ActivationSet:
                return extract(*a, executor=ex, **k)

            sets = finish_capture(
                model,
                gens,
                reqs,
                got.spools if got is not None else [],
                got,
                extract_fn=on_executor,
                extract_on_hit=extract_on_hit,
                dtype=dtype,
                max_positions=max_positions,
                extract_batch_size=extract_batch_size,
                shard_size=shard_size,
                cache=cache,
                progress=progress,
                numerics=ex.numerics(model),
            )
            if cache and got is not None:
                _strip_captures(stage)
            return gens, sets
        finally:
            stage.captured = None  # the memmaps, before their folder goes
            if spool_dir is not None:
                shutil.rmtree(spool_dir, ignore_errors=True)
    finally:
        if owned:
            ex.close()


# -- sampling ----------------------------------------------------------------------------------
class SampleStage(_RowStage):
    """``k`` seeded samples per example (``generation.sample_items``), one parquet per block.

    Each block decodes the local path's batches (blocks are runs of its order, a multiple of
    ``batch_size`` long) and sample ``j`` of example ``e`` is seeded by ``(seed, e, j)``
    alone, so the rows are the local rows whichever worker draws them."""

    kind = "samples"
    set_cls = SampleSet
    table = "samples.parquet"

    def __init__(
        self,
        model: ModelHandle,
        items: list[Any],
        grade_fn: Any,
        settings: Any,
        decode: Any,
        key: str,
        meta: dict[str, Any],
        block_size: int,
    ) -> None:
        from knowlens.generation import check_context

        self.items, self.grade_fn, self.settings, self.decode = items, grade_fn, settings, decode
        self.key, self.meta, self.block_size = key, meta, block_size
        self.numerics = meta["numerics"]
        empty = next((it.id for it in items if not it.prompt_ids), None)
        if empty is not None:  # sample_items' own checks, before any worker runs
            raise DataError(
                f"Example '{empty}' has an empty prompt; give every example a question."
            )
        lens = [len(it.prompt_ids) for it in items]
        check_context(model, items, lens, decode.max_new_tokens)
        # sample_items' batch order: prompt tokens, longest first, ties by index.
        self._order = sorted(range(len(items)), key=lambda i: (-lens[i], i))

    def item_ids(self) -> list[str]:
        return [str(it.id) for it in self.items]

    def schedule(self) -> list[int]:
        return self._order

    def _tokens(self, rows: list[Any]) -> int:
        return int(sum(len(a) for r in rows for a in r.answer_ids))

    def compute(self, model: ModelHandle, block: Block) -> dict[str, bytes]:
        from knowlens.generation import sample_items

        items = [self.items[i] for i in block.items]
        return self._shard(sample_items(model, items, self.grade_fn, self.settings, self.decode))


def sample(
    model: ModelHandle | str,
    source: Any,
    *,
    executor: str | Executor | None = None,
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
    block_size: int | None = None,
) -> SampleSet:
    """``knowlens.sample`` on any executor; the same samples whichever runs it.

    >>> with get_executor("ray", num_workers=4) as ex:
    ...     samples = sample(model, gens, k=10, temperature=1.0, seed=0, executor=ex)

    Args:
        executor: ``"local"`` / ``None``, ``"ray"`` or an ``Executor`` (see :func:`generate`).
        block_size: examples per block (rounded up to a multiple of
            ``generation.decode_window(batch_size)``, the decoder's resume window; default:
            about four blocks per worker).
        Others: as in ``knowlens.generation.sample``. The merged ``SampleSet`` is stored in
        the local path's entry (same key and files), so either path reuses the other's.
    """
    from knowlens.generation import SampleSettings, decode_window, sample_cache_entry, sample_plan
    from knowlens.generation import sample as local_sample

    ex = resolve_executor(executor)
    owned = not isinstance(executor, Executor)
    try:
        if isinstance(ex, LocalExecutor):
            return local_sample(
                model,
                source,
                k=k,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                stop_on_newline=stop_on_newline,
                limit=limit,
                split=split,
                task=task,
                cache=cache,
                progress=progress,
            )
        settings = SampleSettings(
            k=k,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            stop_on_newline=stop_on_newline,
        )
        handle, items, grade_fn, resolved, decode, parts, meta = sample_plan(
            model, source, settings, limit, split, task
        )
        # The local path's own key + meta, so either path reuses the other's entry.
        key, meta = sample_cache_entry(
            handle, items, resolved, decode, parts, meta, numerics=ex.numerics(handle)
        )
        window = decode_window(resolved.batch_size)  # whole windows, as for generate
        size = _block_size(block_size, len(items), window, _workers_hint(ex))
        stage = SampleStage(handle, items, grade_fn, resolved, decode, key, meta, size)
        smp, _ = run_stage(
            stage,
            handle,
            ex,
            progress=progress,
            description=f"sample {handle.name} · {decode.task} · k={resolved.k} [{ex.name}]",
            cache=cache,
        )
        return smp
    finally:
        if owned:
            ex.close()


# -- extraction --------------------------------------------------------------------------------
class ExtractionStage(Stage):
    """Hidden states of teacher-forced generations, one ``values.npy`` shard per block."""

    kind = "activations"

    def __init__(
        self,
        items: list[Any],
        spec: Any,
        shards: list[tuple[int, int]],
        key: str,
        manifest: dict[str, Any],
        mask: np.ndarray,
        positions: np.ndarray,
        block_size: int,
    ) -> None:
        from knowlens.activations._extract import selected_positions

        self.items, self.spec, self.key, self.block_size = items, spec, key, block_size
        self.manifest = manifest
        self.numerics = manifest["numerics"]
        self.mask, self.positions = mask, positions
        # The local path's forward batches: per local shard, rows by tokens needed, longest
        # first, ties by index (knowlens.activations.extract_batch).
        need = [max(selected_positions(it, spec.tokens, spec.max_positions)[0]) + 1 for it in items]
        self._groups = [sorted(range(s, e), key=lambda i: (-need[i], i)) for s, e in shards]

    def item_ids(self) -> list[str]:
        return [it.id for it in self.items]

    def blocks(self) -> list[Block]:
        ids = self.item_ids()
        out: list[Block] = []
        for group in self._groups:
            for idx in _cut(group, self.block_size):
                b = len(out)
                h = stable_hash([self.key, [ids[i] for i in idx]], length=12)
                out.append(Block(b, idx, f"{b:05d}-{h}"))
        return out

    def compute(self, model: ModelHandle, block: Block) -> dict[str, bytes]:
        from knowlens.activations import extract_batch

        res = extract_batch(model, [self.items[i] for i in block.items], self.spec)
        return {
            "values.npy": _npy_bytes(res["values"]),
            "info.json": json.dumps(
                {"tokens": int(res["tokens"]), "rows": len(block.items)}
            ).encode(),
        }

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["shape"])

    def _fill(self, values: np.ndarray, shard_dirs: list[Path], blocks: list[Block]) -> int:
        tokens = 0
        for d, b in zip(shard_dirs, blocks, strict=True):
            values[b.items] = np.load(d / "values.npy")
            tokens += self.shard_tokens_at(d)
        return tokens

    def _manifest(self, run: dict[str, Any], tokens: int) -> dict[str, Any]:
        return {
            **self.manifest,
            "seconds": run["seconds"],
            "tokens_run": tokens,
            "shards": run["blocks"],
            "shards_reused": run["reused"],
            "executor": run,
        }

    def merge(
        self, shard_dirs: list[Path], blocks: list[Block], out: Path, run: dict[str, Any]
    ) -> None:
        from knowlens.activations._extract import DTYPES

        # The local store's layout (values / mask / positions .npy + manifest.json), so
        # knowlens.extract finds this entry; values are filled through a memmap (flat memory).
        values = np.lib.format.open_memmap(
            out / "values.npy", mode="w+", dtype=DTYPES[self.spec.dtype][0], shape=self.shape
        )
        tokens = self._fill(values, shard_dirs, blocks)
        values.flush()
        del values
        np.save(out / "mask.npy", self.mask)
        np.save(out / "positions.npy", self.positions)
        atomic_write_json(out / "manifest.json", self._manifest(run, tokens))

    def merge_in_memory(
        self, shard_dirs: list[Path], blocks: list[Block], run: dict[str, Any]
    ) -> ActivationSet:
        from knowlens.activations._extract import DTYPES

        values = np.zeros(self.shape, dtype=DTYPES[self.spec.dtype][0])
        tokens = self._fill(values, shard_dirs, blocks)
        from knowlens.activations._api import _result

        return _result(
            values,
            self.mask,
            self.positions,
            self._manifest(run, tokens),
            cache_hit=False,
            path=None,
        )

    def _store(self) -> Any:
        from knowlens.activations._extract import DTYPES
        from knowlens.activations._store import ShardStore

        return ShardStore(self.key, self.shape, DTYPES[self.spec.dtype][0])

    def cached(self) -> ActivationSet | None:
        # Checksums verified as knowlens.extract does (a damaged entry is quarantined).
        hit = self._store().cached()
        return None if hit is None else self._result(hit, cache_hit=True)

    def load(self, entry: Path, *, cache_hit: bool) -> ActivationSet:
        # Just merged and checksummed by this process: sizes suffice (later loads hash).
        return self._result(self._store().load(deep=False), cache_hit=cache_hit)

    def _result(self, loaded: tuple[Any, ...], *, cache_hit: bool) -> ActivationSet:
        from knowlens.activations._api import _result

        values, mask, positions, manifest = loaded
        path = str(self._store().final)
        return _result(values, mask, positions, manifest, cache_hit=cache_hit, path=path)


def extract(
    model: ModelHandle,
    gens: GenerationSet | list[Generation],
    *,
    executor: str | Executor | None = None,
    layers: str | int | list[int] = "all",
    tokens: str = "exact_answer",
    dtype: str = "auto",
    max_positions: int = 512,
    batch_size: int = 8,
    cache: bool = True,
    progress: bool = True,
    shard_size: int | None = None,
    block_size: int | None = None,
) -> ActivationSet:
    """``knowlens.extract`` on any executor; byte-identical arrays whichever runs it.

    Args:
        executor: ``"local"`` / ``None``, ``"ray"`` or an ``Executor`` (see :func:`generate`).
        block_size: rows per block (rounded up to a multiple of ``batch_size``).
        Others: as in ``knowlens.activations.extract``.
    """
    from knowlens.activations import _api

    ex = resolve_executor(executor)
    owned = not isinstance(executor, Executor)
    try:
        if isinstance(ex, LocalExecutor):
            return _api.extract(
                model,
                gens,
                layers=layers,
                tokens=tokens,
                dtype=dtype,
                max_positions=max_positions,
                batch_size=batch_size,
                cache=cache,
                progress=progress,
                shard_size=shard_size,
            )
        rows = _api.check_extract_inputs(model, gens, tokens, dtype, max_positions, batch_size)
        gmeta = dict(gens.meta) if isinstance(gens, GenerationSet) else {}
        items = _api.items_from_generations(rows)
        # The local path's own plan: same key, shape, manifest and shard boundaries, so the
        # arrays are byte-identical and either path reuses the other's cache entry.
        plan = _api.plan_extraction(
            model,
            items,
            layers=layers,
            tokens=tokens,
            dtype=dtype,
            max_positions=max_positions,
            batch_size=batch_size,
            shard_size=shard_size,
            meta={"generations_key": gmeta.get("cache_key"), "task": gmeta.get("task")},
            numerics=ex.numerics(model),  # the workers' threads / device, not the driver's
        )
        spec, key, manifest, shards = plan.spec, plan.key, plan.manifest, plan.shards
        mask, positions = plan.mask, plan.positions
        size = _block_size(block_size, len(items), batch_size, _workers_hint(ex))
        stage = ExtractionStage(items, spec, shards, key, manifest, mask, positions, size)
        acts, _ = run_stage(
            stage,
            model,
            ex,
            progress=progress,
            description=f"extract {model.name} · {tokens} [{ex.name}]",
            cache=cache,
        )
        if _api.auto_float16_overflowed(model, plan, acts):
            # Workers clamp float16 without reporting it: "auto" reruns in float32 (remembered).
            return extract(
                model,
                gens,
                executor=ex,
                layers=layers,
                tokens=tokens,
                dtype=dtype,
                max_positions=max_positions,
                batch_size=batch_size,
                cache=cache,
                progress=progress,
                shard_size=shard_size,
                block_size=block_size,
            )
        return acts
    finally:
        if owned:
            ex.close()


__all__ = [
    "ExtractionStage",
    "GenerationStage",
    "SampleStage",
    "extract",
    "generate",
    "generate_capturing",
    "sample",
]
