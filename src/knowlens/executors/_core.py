"""Sharded execution shared by every executor (no Ray import here).

A *stage* (generation or extraction) cuts its items into deterministic blocks. Each block is
computed by a pure worker on one model replica and stored as one shard::

    cache_root()/shards/<kind>/<stage key>/<block index>-<hash of block item ids>/

Shards are written with ``atomic_dir`` (with checksums): a block is either complete on disk
or absent, so a killed worker or driver loses at most the blocks in flight, a retried block
that already landed is discarded instead of duplicated, and a rerun computes only the missing
blocks. A shard is reused only if its checksums verify (a damaged one is reported in one
line, moved to ``cache_root()/.damaged/`` and recomputed). When every shard is intact the
stage merges them in item order (restoring the example order) into
``cache_root()/<kind>/<stage key>/`` (published with ``atomic_dir``: checksummed) plus a
``manifest.json`` naming the shards, the executor and the cluster it ran on. The
compute-or-reuse of that entry holds ``entry_lock(kind, key)``, the lock the local path
takes, so a local and a sharded run of the same thing at once compute it once.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowlens._cache import (
    DamagedEntryError,
    atomic_dir,
    cache_root,
    entry_lock,
    quarantine,
    stable_hash,
    verify_entry,
)
from knowlens.errors import KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "SHARDS_VERSION",
    "Block",
    "BlockDone",
    "Executor",
    "LocalExecutor",
    "ModelSpec",
    "RunStats",
    "Stage",
    "check_numerics",
    "intact_shard",
    "new_marker",
    "run_stage",
    "shard_root",
    "stamp",
    "write_shard",
]

SHARDS_VERSION = "1"


# -- model shipping ----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker rebuilds the driver's model: load by spec, then check the fingerprint.

    ``payload`` carries the model + tokenizer objects themselves for in-memory handles
    (``handle_from_objects``) that cannot be reloaded from a path, hub id or embedded name.
    """

    source: str
    name: str
    fingerprint: str
    system_prompt: str | None
    dtype: str
    directory: str | None = None
    payload: Any = None

    @classmethod
    def from_handle(cls, handle: ModelHandle) -> ModelSpec:
        dtype = str(handle.dtype).replace("torch.", "")
        loadable = bool(handle.info.get("directory") or handle.info.get("embedded"))
        if not loadable and handle.source:
            src = Path(str(handle.source)).expanduser()
            loadable = src.exists() or ("/" in str(handle.source) and not src.is_absolute())
        payload = None if loadable else (handle.model, handle.tokenizer)
        return cls(
            source=str(handle.source),
            name=handle.name,
            fingerprint=handle.fingerprint,
            system_prompt=handle.system_prompt,
            dtype=dtype,
            directory=handle.info.get("directory"),
            payload=payload,
        )

    def load(self, device: str = "cpu") -> ModelHandle:
        """A ``ModelHandle`` equal (same fingerprint) to the driver's, on ``device``."""
        from knowlens.models import handle_from_objects, load_model

        if self.payload is not None:
            model, tok = self.payload
            handle = handle_from_objects(
                model.to(device), tok, name=self.name, system_prompt=self.system_prompt
            )
        else:
            # The driver's converted directory when this node sees it (no GGUF re-conversion),
            # else the original spec (embedded name, hub id, path present on every node).
            local = self.directory
            if local is not None and not (Path(local) / "config.json").exists():
                local = None
            handle = load_model(
                local or self.source,
                device=device,
                dtype=self.dtype,
                system_prompt=self.system_prompt,
                name=self.name,
            )
        if handle.fingerprint != self.fingerprint:
            raise KnowlensError(
                f"Model '{self.source}' on this worker has fingerprint {handle.fingerprint}, the "
                f"driver's has {self.fingerprint}; give every node the same model files."
            )
        return handle


# -- stages --------------------------------------------------------------------------------
@dataclass
class Block:
    """One unit of work: a contiguous slice of the stage's schedule order."""

    index: int
    items: list[int]  # indices into the stage's item list
    key: str  # "<index>-<hash of stage key + item ids>"


class Stage:
    """A computation sharded over blocks. Subclasses fill in ``compute`` / ``merge`` /
    ``cached`` / ``load``.

    A stage object is pickled to every worker, so it holds only plain data and the task's
    callables; the model travels separately as a :class:`ModelSpec`. ``numerics`` is the
    ``compute_numerics`` its key was made for; a worker that would compute otherwise refuses.
    """

    kind: str = "stage"
    key: str = ""
    block_size: int = 64
    numerics: dict[str, Any] | None = None

    def item_ids(self) -> list[str]:
        raise NotImplementedError

    def schedule(self) -> list[int]:
        """Item indices in the order blocks are cut (the local path's batch order)."""
        return list(range(len(self.item_ids())))

    def blocks(self) -> list[Block]:
        order, ids = self.schedule(), self.item_ids()
        out = []
        for b, start in enumerate(range(0, len(order), self.block_size)):
            idx = order[start : start + self.block_size]
            h = stable_hash([self.key, [ids[i] for i in idx]], length=12)
            out.append(Block(b, idx, f"{b:05d}-{h}"))
        return out

    def compute(self, model: ModelHandle, block: Block) -> dict[str, bytes]:
        """Shard files (name -> bytes) for one block; pure: no cache access."""
        raise NotImplementedError

    def shard_tokens(self, files: dict[str, bytes]) -> int:
        """Tokens processed for one block, from the ``info.json`` every shard carries."""
        info = files.get("info.json")
        return int(json.loads(info).get("tokens", 0)) if info else 0

    def shard_tokens_at(self, path: Path) -> int:
        info = path / "info.json"
        return int(json.loads(info.read_text()).get("tokens", 0)) if info.exists() else 0

    def cached(self) -> Any | None:
        """The stored merged result (e.g. from a local run) if it is intact, else None; a
        damaged entry is reported in one line and moved aside (then recomputed)."""
        raise NotImplementedError

    def merge(
        self, shard_dirs: list[Path], blocks: list[Block], out: Path, run: dict[str, Any]
    ) -> None:
        """Write the merged result, in item order, into ``out`` (a temporary directory that
        becomes the cache entry); ``run`` (executor, cluster, block counts) goes in its
        manifest."""
        raise NotImplementedError

    def merge_in_memory(
        self, shard_dirs: list[Path], blocks: list[Block], run: dict[str, Any]
    ) -> Any:
        """The merged result without storing it (``cache=False``)."""
        raise NotImplementedError

    def load(self, entry: Path, *, cache_hit: bool) -> Any:
        """The entry this process just merged and published."""
        raise NotImplementedError


def shard_root(stage: Stage) -> Path:
    return cache_root() / "shards" / stage.kind / stage.key


def intact_shard(path: Path) -> bool:
    """Whether a finished shard is there and matches the checksums written with it; a damaged
    one is reported in one line and moved to ``cache_root()/.damaged/`` (False: recompute)."""
    if not path.exists():
        return False
    try:
        verify_entry(path)
    except DamagedEntryError as e:
        quarantine(path, str(e))
        return False
    return True


def check_numerics(stage: Stage, device: Any, threads: int) -> None:
    """Refuse to compute a block with other numerics than the stage's key was made for."""
    from knowlens.generation import compute_numerics

    got = compute_numerics(device, threads)
    if stage.numerics is not None and got != stage.numerics:
        raise KnowlensError(
            f"A {stage.kind} worker would compute with {got}, but the run's cache key was made "
            f"for {stage.numerics}; give every worker the same device type and "
            "threads_per_worker."
        )


def stamp(files: dict[str, bytes], worker: str) -> dict[str, bytes]:
    """Record in the shard's ``info.json`` which worker (host:pid) computed it."""
    info = json.loads(files.get("info.json", b"{}"))
    return {**files, "info.json": json.dumps({**info, "worker": worker}).encode()}


def write_shard(root: Path, block_key: str, files: dict[str, bytes]) -> bool:
    """Atomically store one block; False if it already existed (a retry or a racing worker)."""
    final = root / block_key
    if final.exists():
        return False
    with atomic_dir(final) as tmp:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    return True


# -- executors -------------------------------------------------------------------------------
BlockDone = Callable[[dict[str, Any]], None]


class Executor:
    """Runs a stage's missing blocks. ``local`` in this process; ``ray`` on a Ray cluster."""

    name: str = "executor"

    def run_blocks(
        self, stage: Stage, model: ModelHandle, blocks: list[Block], root: Path, on_done: BlockDone
    ) -> None:
        """Make sure a shard exists under ``root`` for every block; call ``on_done`` per block
        with ``{"block", "key", "items", "tokens", "computed", "worker", "device", "node"}``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Cluster facts for manifests: nodes, workers, devices."""
        raise NotImplementedError

    def numerics(self, model: ModelHandle) -> dict[str, Any]:
        """``generation.compute_numerics`` of the workers that will compute (part of the
        keys: CPU results depend on the thread count)."""
        raise NotImplementedError

    def planned_workers(self) -> int:
        """Model replicas a run will use (sizes the default blocks)."""
        return 1

    def close(self) -> None:
        """Release resources this executor started (no-op for local)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Blocks one after another on the driver's own model: the reference for equality."""

    name = "local"

    def run_blocks(
        self, stage: Stage, model: ModelHandle, blocks: list[Block], root: Path, on_done: BlockDone
    ) -> None:
        import torch

        check_numerics(stage, model.device, torch.get_num_threads())
        device, worker = str(model.device), f"local-{os.getpid()}"
        for block in blocks:
            files = stamp(stage.compute(model, block), worker)
            computed = write_shard(root, block.key, files)
            on_done(
                {
                    "block": block.index,
                    "key": block.key,
                    "items": len(block.items),
                    "tokens": stage.shard_tokens(files),
                    "computed": computed,
                    "worker": worker,
                    "device": device,
                    "node": _hostname(),
                }
            )

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "executor": "local",
            "nodes": 1,
            "workers": 1,
            "devices": [_hostname() + ":cpu"]
            + [f"{_hostname()}:cuda:{i}" for i in range(torch.cuda.device_count())],
            "threads": torch.get_num_threads(),
        }

    def numerics(self, model: ModelHandle) -> dict[str, Any]:
        from knowlens.generation import compute_numerics

        return compute_numerics(model.device)  # this process, on the model's device


def _hostname() -> str:
    import socket

    return socket.gethostname()


# -- driver --------------------------------------------------------------------------------------
@dataclass
class RunStats:
    """What one sharded run did (also recorded in the manifest)."""

    blocks: int = 0
    computed: int = 0
    reused: int = 0
    deduplicated: int = 0
    tokens: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def run_stage(
    stage: Stage,
    model: ModelHandle,
    executor: Executor,
    *,
    progress: bool = True,
    description: str = "",
    cache: bool = True,
) -> tuple[Any, RunStats]:
    """Compute (or reuse) every block of ``stage`` with ``executor`` and return the merged result.

    With ``cache`` the compute-or-reuse holds ``entry_lock(kind, key)`` (the local path's
    lock): an intact merged entry is reused, intact shards are kept and only the missing or
    damaged blocks are sent to the executor. Without it every block is computed into a private
    shard directory that is removed afterwards, and nothing is stored.
    """
    if not cache:
        return _run(stage, model, executor, progress, description, cache=False)
    # One writer per entry across processes, local or sharded: the others wait, then reuse.
    with entry_lock(stage.kind, stage.key):
        hit = stage.cached()  # verified; a damaged entry is quarantined (one warning)
        if hit is not None:
            return hit, RunStats()
        return _run(stage, model, executor, progress, description, cache=True)


def _run(
    stage: Stage,
    model: ModelHandle,
    executor: Executor,
    progress: bool,
    description: str,
    *,
    cache: bool,
) -> tuple[Any, RunStats]:
    entry = cache_root() / stage.kind / stage.key
    stats = RunStats()
    root = shard_root(stage)
    if not cache:
        root = root.with_name(f"{root.name}.nocache-{uuid.uuid4().hex[:8]}")
    root.mkdir(parents=True, exist_ok=True)
    try:
        blocks = stage.blocks()
        todo = [b for b in blocks if not intact_shard(root / b.key)]
        stats.blocks, stats.reused = len(blocks), len(blocks) - len(todo)
        done_keys: set[str] = set()
        total = sum(len(b.items) for b in blocks)
        t0 = time.perf_counter()
        with _progress(progress) as bar:
            task = bar.add_task(
                description or f"{stage.kind} [{executor.name}]", total=total, tokens=0
            )
            bar.update(task, advance=total - sum(len(b.items) for b in todo))

            def on_done(info: dict[str, Any]) -> None:
                if info["key"] in done_keys:  # a retried block reported twice: count it once
                    return
                done_keys.add(info["key"])
                stats.computed += 1
                # False: the shard was already there (a retried block whose first attempt had
                # landed before its worker died, or a racing writer): kept once, not twice.
                stats.deduplicated += int(not info["computed"])
                stats.tokens += int(info["tokens"])
                if info["worker"] not in stats.workers:
                    stats.workers.append(info["worker"])
                bar.update(task, advance=info["items"], tokens=stats.tokens)

            for _attempt in range(2):
                if todo:
                    executor.run_blocks(stage, model, todo, root, on_done)
                missing = [b.key for b in todo if not (root / b.key).exists()]
                if missing:
                    raise KnowlensError(
                        f"{len(missing)} of {len(blocks)} {stage.kind} blocks did not finish; "
                        "rerun the same command to resume."
                    )
                # Shards other processes wrote are verified before they are merged (a shard
                # damaged since it landed is moved aside and computed once more).
                todo = [b for b in todo if not intact_shard(root / b.key)]
                if not todo:
                    break
                done_keys.difference_update(b.key for b in todo)
            else:
                raise KnowlensError(
                    f"{len(todo)} {stage.kind} shards under {root} were damaged again right "
                    "after being rewritten; check that disk, then rerun the same command."
                )
        stats.seconds = time.perf_counter() - t0
        _clean_tmp(root)
        run_info = {
            **executor.describe(),
            "shards_version": SHARDS_VERSION,
            "shard_root": str(root) if cache else None,
            "block_size": stage.block_size,
            "blocks": stats.blocks,
            "computed": stats.computed,
            "reused": stats.reused,
            "deduplicated": stats.deduplicated,
            "tokens": stats.tokens,
            "seconds": round(stats.seconds, 3),
            "worker_ids": stats.workers,
        }
        shard_dirs = [root / b.key for b in blocks]
        if not cache:
            return stage.merge_in_memory(shard_dirs, blocks, run_info), stats
        with atomic_dir(entry) as tmp:  # checksums written, verified on every later read
            stage.merge(shard_dirs, blocks, tmp, run_info)
        return stage.load(entry, cache_hit=False), stats
    finally:
        if not cache:
            shutil.rmtree(root, ignore_errors=True)


def _clean_tmp(root: Path) -> None:
    """Remove temporary shard directories left by workers killed mid-write (SIGKILL skips
    ``atomic_dir``'s cleanup); every real shard of this stage is already in place."""
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *a: Any, **k: Any) -> int:
        return 0

    def update(self, *a: Any, **k: Any) -> None:
        return None


def _progress(enabled: bool) -> Any:
    """One aggregated bar for the whole stage, whichever worker finishes a block."""
    if not enabled:
        return _NullProgress()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[tokens]} tok"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def new_marker(root: Path) -> str:
    """Drop a file that workers look for to learn whether they see the driver's cache
    (a shared filesystem): if they do they write shards themselves, else they return bytes."""
    name = f".driver-{uuid.uuid4().hex[:12]}"
    (root / name).write_text(json.dumps({"pid": os.getpid(), "host": _hostname()}))
    return name
