"""Executors: run generation, sampling and extraction in this process (``local``) or on Ray.

    from knowlens.executors import get_executor, generate, sample, extract
    with get_executor("ray", ray_address=None, num_workers=2) as ex:   # local Ray cluster
        gens = generate(model, task, executor=ex)
        gens, acts = generate(model, task, executor=ex, layers="all")  # states of the same pass
        samples = sample(model, gens, k=10, temperature=1.0, seed=0, executor=ex)
        acts = extract(model, gens, layers="all", executor=ex)

Both executors cut the work into the same deterministic blocks, compute each block with the
same pure worker (``generation.generate_examples`` / ``sample_items`` /
``activations.extract_batch``), store one shard per block in the content-addressed cache and
merge the shards in example order, so the results are identical whichever executor ran them.
Configs and the CLI pass ``executor: local | ray`` / ``--executor`` and ``ray_address`` /
``--ray-address``.

The local path never imports Ray; Ray is the optional extra ``pip install 'knowlens[ray]'``.
"""

from __future__ import annotations

from typing import Any

from knowlens.executors._core import (
    Block,
    Executor,
    LocalExecutor,
    ModelSpec,
    RunStats,
    Stage,
    run_stage,
    shard_root,
)
from knowlens.executors._select import EXECUTORS, get_executor, resolve_executor

__all__ = [
    "EXECUTORS",
    "Block",
    "Executor",
    "LocalExecutor",
    "ModelSpec",
    "RunStats",
    "Stage",
    "extract",
    "generate",
    "generate_capturing",
    "get_executor",
    "resolve_executor",
    "run_stage",
    "sample",
    "shard_root",
]


def __getattr__(name: str) -> Any:
    # The stage wrappers import generation / activations (torch) only when used.
    if name in {"generate", "generate_capturing", "sample", "extract"}:
        from knowlens.executors import _stages

        return getattr(_stages, name)
    raise AttributeError(f"module 'knowlens.executors' has no attribute '{name}'")
