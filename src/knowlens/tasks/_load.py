"""``load_task``'s front end: a registered name or a YAML task file -> its spec -> a Task.

    >>> from knowlens.tasks import load_task
    >>> task = load_task("capitals", split="train", limit=100)
    >>> task = load_task("my_tasks/trivia.yaml")        # a YAML task file works as a name

It sits above both the registry (``_registry``: registered specs, building a split) and the
YAML reader (``_user``, which registers through the registry), so neither imports the other
back: names are looked up in the registry first, then read as YAML files.
"""

from __future__ import annotations

import os
from typing import Any

from knowlens.errors import ConfigError
from knowlens.tasks._registry import TaskSpec, build_task, is_registered, spec_splits
from knowlens.tasks._registry import get_spec as registered_spec
from knowlens.tasks._task import Task
from knowlens.tasks._types import Example
from knowlens.tasks._user import load_yaml_spec

__all__ = ["get_spec", "load_task", "splits_of"]


def get_spec(name: str) -> TaskSpec:
    """The spec of a registered task (or alias), else of a YAML task file named ``name``;
    an unknown name is a one-line error with a did-you-mean."""
    if not is_registered(name) and name.endswith((".yaml", ".yml")):
        return load_yaml_spec(name)
    return registered_spec(name)


def load_task(
    name: str,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
    *,
    k_shot: int | None = None,
    template: str | None = None,
    instruction: str | None = None,
    path: str | None = None,
    **builder_kwargs: Any,
) -> Task:
    """Load a task split.

    Args:
        name: registered task name (``knowlens tasks`` lists them) or a path to a YAML task.
        split: "train", "validation" or "test" (or a source's native split name).
        limit: keep the first ``limit`` examples of the (seed-shuffled) split; warns when the
            split is smaller.
        seed: seed of the split and of the few-shot selection.
        k_shot, template, instruction: override the task's prompt defaults.
        path: local file for benchmark loaders (same schema as the hub dataset).

    >>> task = load_task("capitals", split="train", limit=100)
    >>> task.prompt(task.examples[0])  # doctest: +SKIP
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"load_task: name must be a task name or a YAML task file; got {name!r}. "
            "`knowlens tasks` lists the names."
        )
    return build_task(
        get_spec(name),
        split,
        limit,
        seed,
        k_shot=k_shot,
        template=template,
        instruction=instruction,
        path=path,
        **builder_kwargs,
    )


def splits_of(name: str, seed: int = 0, **kwargs: Any) -> dict[str, list[Example]]:
    """All splits of a task (for inspection and tests)."""
    return spec_splits(get_spec(name), seed, **kwargs)
