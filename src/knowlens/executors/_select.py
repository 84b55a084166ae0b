"""Choosing an executor by name: what configs' ``executor:`` and ``--executor`` map to."""

from __future__ import annotations

from typing import Any

from knowlens.errors import ConfigError, did_you_mean
from knowlens.executors._core import Executor, LocalExecutor

__all__ = ["EXECUTORS", "get_executor", "resolve_executor"]

EXECUTORS = ("local", "ray")


def get_executor(
    name: str = "local",
    *,
    ray_address: str | None = None,
    num_workers: int | None = None,
    threads_per_worker: int = 1,
) -> Executor:
    """Build an executor by name (``local`` or ``ray``): what configs and ``--executor`` map to.

    Args:
        name: ``local`` (this process) or ``ray``.
        ray_address: join an existing Ray cluster (``host:port``, ``auto``, ``ray://...``);
            default: the Ray already initialised in this process, else a new local one.
        num_workers: Ray model replicas (default: one per GPU, else one per
            ``threads_per_worker`` CPUs).
        threads_per_worker: torch threads per CPU replica.
    """
    if name not in EXECUTORS:
        raise ConfigError(did_you_mean(str(name), EXECUTORS, what="executor"))
    if name == "local":
        if ray_address or num_workers:
            opt = "--ray-address" if ray_address else "num_workers"
            raise ConfigError(f"{opt} only applies to the Ray executor; add --executor ray.")
        return LocalExecutor()
    from knowlens.executors._ray import RayExecutor

    return RayExecutor(ray_address, num_workers=num_workers, threads_per_worker=threads_per_worker)


def resolve_executor(executor: str | Executor | None, **kwargs: Any) -> Executor:
    """An ``Executor`` from a name, an instance or ``None`` (local)."""
    if executor is None:
        return LocalExecutor()
    if isinstance(executor, Executor):
        return executor
    return get_executor(executor, **kwargs)
