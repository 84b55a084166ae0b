"""Ray executor: blocks as rows of a Ray Data dataset, ``map_batches`` over an actor pool.

Each actor holds one model replica (``num_gpus=1`` per actor when the cluster has GPUs,
``num_cpus=threads`` otherwise) and computes one block per call. Ray Data restarts a dead
actor and retries its in-flight blocks; shards are written atomically and skipped when they
already exist, so a retry never duplicates a block and the other blocks are not recomputed.
Workers that see the driver's cache (a shared filesystem, detected with a marker file)
write their shards themselves; others return the bytes and the driver writes them.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from knowlens._cache import cache_root
from knowlens.errors import KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle
from knowlens.executors._core import (
    Block,
    BlockDone,
    Executor,
    ModelSpec,
    Stage,
    check_numerics,
    intact_shard,
    new_marker,
    stamp,
    write_shard,
)

__all__ = ["INSTALL_HINT", "RayExecutor", "import_ray"]

INSTALL_HINT = "pip install 'knowlens[ray]'"


def import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise KnowlensError(
            f"The Ray executor requires optional dependencies. Install with: {INSTALL_HINT}"
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast (seconds, not Ray's minute of retries) on an address nobody listens at."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise KnowlensError(
            f"--ray-address must look like host:port (e.g. 10.0.0.5:6379), 'auto' or "
            f"ray://host:10001; got '{address}'."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise KnowlensError(
            f"Cannot reach the Ray cluster at {address} ({reason}); start it with "
            "`ray start --head --port=6379` there, or drop --ray-address to run locally."
        ) from None


class _BlockWorker:
    """Ray Data actor: loads the model once, then computes one block per batch row."""

    def __init__(
        self,
        stage: Any,
        spec: Any,
        blocks: list[Block],
        root: str,
        marker: str,
        cache_dir: str,
        threads: int,
    ) -> None:
        import ray
        import torch

        stage = ray.get(stage) if isinstance(stage, ray.ObjectRef) else stage
        spec = ray.get(spec) if isinstance(spec, ray.ObjectRef) else spec
        self.stage: Stage = stage
        self.blocks = {b.index: b for b in blocks}
        self.root = Path(root)
        # A shared filesystem: write shards here and load models from the driver's cache.
        self.shared = (self.root / marker).exists()
        if self.shared:
            os.environ["KNOWLENS_CACHE"] = cache_dir
        if threads > 0:
            torch.set_num_threads(threads)
        gpus = ray.get_gpu_ids()
        self.device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        # Before loading the model: the key was made for the numerics the driver planned.
        check_numerics(stage, self.device, torch.get_num_threads())
        self.model = spec.load(self.device)
        self.node = socket.gethostname()
        self.worker = f"{self.node}:{os.getpid()}"
        if self.device == "cuda":
            self.device_name = f"cuda:{gpus[0]} {torch.cuda.get_device_name(0)}"
        else:
            self.device_name = f"cpu x{torch.get_num_threads()}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            k: []
            for k in ("block", "key", "items", "tokens", "computed", "worker", "device", "node")
        }
        out["payload"] = []
        for b in batch["block"]:
            block = self.blocks[int(b)]
            payload = b""
            if self.shared and intact_shard(self.root / block.key):  # a retry that had landed
                computed, tokens = False, self.stage.shard_tokens_at(self.root / block.key)
            else:
                files = stamp(self.stage.compute(self.model, block), self.worker)
                tokens = self.stage.shard_tokens(files)
                if self.shared:
                    computed = write_shard(self.root, block.key, files)
                else:
                    computed, payload = True, pickle.dumps(files, protocol=5)
            for k, v in (
                ("block", block.index),
                ("key", block.key),
                ("items", len(block.items)),
                ("tokens", tokens),
                ("computed", computed),
                ("worker", self.worker),
                ("device", self.device_name),
                ("node", self.node),
                ("payload", payload),
            ):
                out[k].append(v)
        return out


class RayExecutor(Executor):
    """Run blocks on a Ray cluster (a local one started on demand, or ``address``).

    Args:
        address: ``None`` to use the already initialised Ray or start a local one;
            ``host:port`` / ``auto`` / ``ray://host:10001`` to join an existing cluster.
        num_workers: model replicas (actors). Default: one per GPU, else one per
            ``threads_per_worker`` CPUs, capped by the number of blocks.
        threads_per_worker: torch CPU threads (and Ray CPUs) per CPU actor.
        max_retries: restarts of a dead actor and retries of its blocks.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int | None = None,
        threads_per_worker: int = 1,
        max_retries: int = 3,
    ) -> None:
        if num_workers is not None and num_workers < 1:
            raise KnowlensError(f"num_workers must be >= 1; got {num_workers}.")
        if threads_per_worker < 1:
            raise KnowlensError(f"threads_per_worker must be >= 1; got {threads_per_worker}.")
        self.ray = import_ray()
        self.address = address
        self.num_workers = num_workers
        self.threads = threads_per_worker
        self.max_retries = max_retries
        self._started = False
        self._last_workers: dict[str, str] = {}
        self._last_concurrency = 0
        self._connect()

    def _connect(self) -> None:
        ray = self.ray
        if self.address:
            _check_reachable(self.address)
        if ray.is_initialized():
            return
        try:
            ray.init(
                address=self.address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as e:
            raise KnowlensError(
                f"Cannot connect to Ray at {self.address or 'a new local cluster'} "
                f"({str(e).splitlines()[0]}); check --ray-address or start `ray start --head`."
            ) from None
        self._started = True

    def close(self) -> None:
        """Shut Ray down if this executor started it (a cluster you joined keeps running)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def _resources(self) -> tuple[float, float]:
        res = self.ray.cluster_resources()
        return float(res.get("CPU", 0)), float(res.get("GPU", 0))

    def planned_workers(self) -> int:
        if self.num_workers:
            return self.num_workers
        cpus, gpus = self._resources()
        return int(gpus) if gpus >= 1 else max(1, int(cpus // self.threads))

    def numerics(self, model: ModelHandle) -> dict[str, Any]:
        from knowlens.generation import compute_numerics

        # What run_blocks gives the actors: a GPU each when the cluster has GPUs, else
        # threads_per_worker torch threads on CPU.
        _, gpus = self._resources()
        return compute_numerics("cuda" if gpus >= 1 else "cpu", self.threads)

    def run_blocks(
        self, stage: Stage, model: ModelHandle, blocks: list[Block], root: Path, on_done: BlockDone
    ) -> None:
        ray = self.ray
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one aggregated bar instead
        ctx.print_on_execution_start = False
        _, gpus = self._resources()
        if gpus >= 1:  # one replica per GPU; torch picks its own CPU threads
            remote: dict[str, Any] = {"num_gpus": 1, "num_cpus": 1}
            threads = 0
        else:
            remote = {"num_cpus": self.threads}
            threads = self.threads
        n = max(1, min(self.planned_workers(), len(blocks)))
        self._last_concurrency = n
        self._last_workers = {}  # describe() reports this run's replicas only
        marker = new_marker(root)
        data_log = logging.getLogger("ray.data")
        level = data_log.level
        data_log.setLevel(logging.WARNING)  # no per-dataset INFO lines under the bar
        try:
            ds = ray.data.from_items(
                [{"block": b.index} for b in blocks], override_num_blocks=len(blocks)
            )
            with warnings.catch_warnings():
                # Actor restart limits have no named parameter in Ray 2.60.
                warnings.simplefilter("ignore", DeprecationWarning)
                ds = ds.map_batches(
                    _BlockWorker,
                    batch_size=1,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=n),
                    fn_constructor_kwargs={
                        "stage": stage,
                        "spec": ModelSpec.from_handle(model),
                        "blocks": blocks,
                        "root": str(root),
                        "marker": marker,
                        "cache_dir": str(cache_root()),
                        "threads": threads,
                    },
                    max_restarts=self.max_retries,
                    max_task_retries=self.max_retries,
                    **remote,
                )
            for row in ds.iter_rows():
                row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                payload = row.pop("payload")
                if payload:  # the worker could not see the cache: store its bytes here
                    row["computed"] = write_shard(root, row["key"], pickle.loads(payload))
                self._last_workers[row["worker"]] = row["device"]
                on_done(row)
        except Exception as e:
            err = _user_error(e)
            if err is not None:
                raise err from None
            raise
        finally:
            data_log.setLevel(level)
            (root / marker).unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus, gpus = self._resources()
        return {
            "executor": "ray",
            "ray_version": ray.__version__,
            "address": self.address or "local",
            "nodes": len(nodes),
            "node_names": sorted({n.get("NodeManagerHostname", "?") for n in nodes}),
            "cluster_cpus": cpus,
            "cluster_gpus": gpus,
            "workers": self._last_concurrency,
            "worker_devices": dict(sorted(self._last_workers.items())),
            "devices": sorted(set(self._last_workers.values())),
        }


def _user_error(e: BaseException) -> KnowlensError | None:
    """The worker's KnowlensError (wrapped by Ray Data / Ray core), re-raised as itself."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, KnowlensError):
            return KnowlensError(str(cur).splitlines()[0])
        stack.extend([cur.__cause__, cur.__context__, getattr(cur, "cause", None)])
    return None
