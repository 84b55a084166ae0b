"""Task registry: name -> lazily imported builder + prompt/grader defaults.

Entries name their builder as ``"module:function"`` strings (lm-eval style), so importing
``knowlens.tasks`` never builds data; a task's examples are built on first use and memoised.

A builder returns either a list of examples (split deterministically by ``seed``) or a dict
``{split: examples}`` for sources with native splits.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from knowlens._cache import stable_hash
from knowlens.errors import ConfigError, DataError, KnowlensError, did_you_mean
from knowlens.tasks._task import SPLITS, Task, split_examples
from knowlens.tasks._types import Example, GradeResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """How to build one task. ``grader`` is a grader name (see ``graders.make_grader``) with
    ``grader_args``; ``builder`` a ``"module:function"`` returning examples."""

    name: str
    builder: str
    kind: str
    grader: str
    template: str
    version: str = "1"
    instruction: str = ""
    k_shot: int = 0
    answer_format: str = "answer"
    max_new_tokens: int = 16
    grader_args: dict[str, Any] = field(default_factory=dict)
    builder_args: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    licence: str = ""
    description: str = ""
    family: str = ""
    offline: bool = True  # False: needs the hub or a local file (path=)
    metadata_placeholders: tuple[str, ...] = ()
    shot_separator: str = "\n\n"
    shots_per_topic: bool = False  # MMLU style: k shots from the example's own subject
    split_fractions: tuple[tuple[str, float], ...] | None = None  # None: SPLIT_FRACTIONS


_REGISTRY: dict[str, TaskSpec] = {}
_ALIASES: dict[str, str] = {}


def register_task(
    spec: TaskSpec, *, aliases: tuple[str, ...] = (), overwrite: bool = False
) -> None:
    """Add a task to the registry (user code and YAML tasks use this too)."""
    _ensure_builtins()
    if spec.name in _REGISTRY and not overwrite:
        raise ConfigError(
            f"Task '{spec.name}' is already registered; pick another name or pass overwrite=True."
        )
    _REGISTRY[spec.name] = spec
    for a in aliases:
        _ALIASES[a] = spec.name


_BUILTINS_LOADED = False


def _ensure_builtins() -> None:
    # Load the catalog once, before any lookup *or* registration: a user task registered
    # first must not hide the built-ins.
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("knowlens.tasks._catalog")


def is_registered(name: str) -> bool:
    """True if ``name`` is a registered task name or alias."""
    _ensure_builtins()
    return _ALIASES.get(name, name) in _REGISTRY


def get_spec(name: str) -> TaskSpec:
    """The registered spec of ``name`` (or an alias); unknown -> did-you-mean error.

    YAML task files given as names are resolved above the registry, by
    :func:`knowlens.tasks.get_spec` / ``load_task`` (``_load.py``)."""
    _ensure_builtins()
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise KnowlensError(did_you_mean(name, _REGISTRY, what="task"))
    return _REGISTRY[key]


def task_names() -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY)


def _resolve(target: str) -> Callable[..., Any]:
    mod, _, fn = target.partition(":")
    return getattr(importlib.import_module(mod), fn)


@functools.lru_cache(maxsize=64)
def _build_cached(builder: str, args_key: str) -> Any:
    import json

    return _resolve(builder)(**json.loads(args_key))


def build_examples(spec: TaskSpec, **kwargs: Any) -> list[Example] | dict[str, list[Example]]:
    """Run the spec's builder (memoised per arguments)."""
    import json

    args = {**spec.builder_args, **{k: v for k, v in kwargs.items() if v is not None}}
    try:
        key = json.dumps(args, sort_keys=True, default=str)
    except TypeError:
        return _resolve(spec.builder)(**args)
    return _build_cached(spec.builder, key)


def _splits(spec: TaskSpec, seed: int, **kwargs: Any) -> dict[str, list[Example]]:
    built = build_examples(spec, **kwargs)
    if isinstance(built, dict):
        return {k: list(v) for k, v in built.items()}
    ids = [e.id for e in built]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"Task '{spec.name}' has duplicate example id {dup!r}; ids must be unique.")
    fractions = dict(spec.split_fractions) if spec.split_fractions else None
    return split_examples(built, seed, fractions)


def _grader(spec: TaskSpec) -> Callable[[Example, str], GradeResult]:
    from knowlens.tasks.graders import make_grader

    return make_grader(spec.grader, **spec.grader_args)


def build_task(
    spec: TaskSpec,
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
    """Build one split of the task ``spec`` (arguments as in :func:`knowlens.tasks.load_task`,
    which resolves a name or YAML file to its spec and calls this)."""
    _check_load_args(spec, split, limit, seed, k_shot, template, instruction)
    if path is not None:
        builder_kwargs["path"] = str(path)
    _check_builder_kwargs(spec, builder_kwargs)
    if template is not None or instruction is not None or k_shot is not None:
        spec = replace(
            spec,
            template=spec.template if template is None else template,
            instruction=spec.instruction if instruction is None else instruction,
            k_shot=spec.k_shot if k_shot is None else k_shot,
        )
    splits = _splits(spec, seed, **builder_kwargs)
    if split not in splits:
        raise ConfigError(
            f"Task '{spec.name}' has no split '{split}'. Available: {', '.join(splits)}."
        )
    examples = list(splits[split])
    if not examples:
        raise DataError(
            f"Split '{split}' of task '{spec.name}' is empty. Use another split "
            f"({', '.join(f'{k}={len(v)}' for k, v in splits.items())}) or add data."
        )
    if limit is not None and limit > len(examples):
        msg = (
            f"Task '{spec.name}' split '{split}' has {len(examples)} examples, fewer than "
            f"limit={limit}; using all {len(examples)}."
        )
        warnings.warn(msg, UserWarning, stacklevel=3)  # the caller of load_task
        log.warning(msg)
    if limit is not None:
        examples = examples[:limit]
    shots = _pick_shots(spec, splits, seed)
    task = Task(
        name=spec.name,
        version="",
        kind=spec.kind,
        grader=_grader(spec),
        template=spec.template,
        examples=examples,
        split=split,
        seed=seed,
        instruction=spec.instruction,
        shots=shots,
        shot_separator=spec.shot_separator,
        shots_per_topic=spec.shots_per_topic,
        answer_format=spec.answer_format,
        max_new_tokens=spec.max_new_tokens,
        source=spec.source,
        licence=spec.licence,
        description=spec.description,
        sizes={k: len(v) for k, v in splits.items()},
        metadata_placeholders=spec.metadata_placeholders,
    )
    # The version hashes everything that changes prompts or gold answers, so caches keyed on
    # it invalidate whenever content or template changes (even for user overrides).
    content = stable_hash(
        {
            "template": spec.template,
            "instruction": spec.instruction,
            "shots": [(s.id, s.answers) for s in shots],
            "grader": [spec.grader, spec.grader_args],
            "examples": [(e.id, e.question, e.answers, e.options, e.context) for e in examples],
        },
        length=8,
    )
    task.version = f"{spec.version}-{content}"
    return task


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_load_args(
    spec: TaskSpec,
    split: Any,
    limit: Any,
    seed: Any,
    k_shot: Any,
    template: Any,
    instruction: Any,
) -> None:
    """One-line errors for load_task arguments, before any data is built."""
    where = f"load_task('{spec.name}')"
    if not isinstance(split, str) or not split:
        raise ConfigError(
            f"{where}: split must be a split name ({', '.join(SPLITS)}); got {split!r}."
        )
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ConfigError(
            f"{where}: limit must be a positive integer or None (all); got {limit!r}. "
            "Pass e.g. limit=100."
        )
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ConfigError(
            f"{where}: seed must be an integer with 0 <= seed < 2**32; got {seed!r}. "
            "Pass e.g. seed=0."
        )
    if k_shot is not None and (not _is_int(k_shot) or k_shot < 0):
        raise ConfigError(
            f"{where}: k_shot must be a non-negative integer (0 = zero-shot) or None (the "
            f"task's default, {spec.k_shot}); got {k_shot!r}."
        )
    for arg, value in (("template", template), ("instruction", instruction)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"{where}: {arg} must be a string; got {type(value).__name__} {value!r}."
            )


_LOAD_ARGS = ("split", "limit", "seed", "k_shot", "template", "instruction", "path")


def _check_builder_kwargs(spec: TaskSpec, kwargs: dict[str, Any]) -> None:
    """Extra load_task keywords go to the task's builder: reject names (and obviously wrong
    types) it does not take, instead of a TypeError from deep inside it."""
    if not kwargs:
        return
    import inspect

    try:
        params = inspect.signature(_resolve(spec.builder)).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    own = {"task", *spec.builder_args}  # fixed by the task itself
    takes = sorted(n for n in params if n not in own)
    for key, value in kwargs.items():
        if key == "path" and "path" not in params:
            raise ConfigError(
                f"Task '{spec.name}' is built in and reads no local file, so path= does not "
                "apply. Drop path=, or use a benchmark / YAML task that reads one."
            )
        if key not in params or key in own:
            close = difflib.get_close_matches(key, [*takes, *_LOAD_ARGS], n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"load_task('{spec.name}') got an unknown argument '{key}'.{hint} It takes "
                f"{', '.join(_LOAD_ARGS)}"
                + (f" and task options {', '.join(takes)}" if takes else " (no task options)")
                + "."
            )
        default = params[key].default
        if value is not None and default is not inspect.Parameter.empty and default is not None:
            want = type(default)
            ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
            if want is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok:
                raise ConfigError(
                    f"load_task('{spec.name}'): option {key} must be {want.__name__} "
                    f"(default {default!r}); got {type(value).__name__} {value!r}."
                )


def _pick_shots(spec: TaskSpec, splits: dict[str, list[Example]], seed: int) -> list[Example]:
    if spec.k_shot <= 0:
        return []
    pool_name = next((s for s in ("dev", "train", "validation") if splits.get(s)), None)
    if pool_name is None:
        log.warning(
            "Task '%s' has no train/dev split for %d shots; using 0-shot.", spec.name, spec.k_shot
        )
        return []
    pool = splits[pool_name]
    # the pool is already seed-ordered for built-ins; re-key by seed for native splits
    keyed = sorted(pool, key=lambda e: stable_hash({"s": seed, "id": e.id}))
    if not spec.shots_per_topic:
        return keyed[: spec.k_shot]
    per: dict[str | None, list[Example]] = {}
    for e in keyed:
        if len(per.setdefault(e.topic, [])) < spec.k_shot:
            per[e.topic].append(e)
    return [e for group in per.values() for e in group]


def list_tasks(sizes: bool = True) -> list[dict[str, Any]]:
    """One row per task: name, kind, family, grader, size (all splits), topics, source,
    licence, offline. Benchmarks that need a download show size None."""
    rows = []
    for name in task_names():
        spec = _REGISTRY[name]
        row: dict[str, Any] = {
            "name": name,
            "kind": spec.kind,
            "family": spec.family,
            "grader": spec.grader,
            "size": None,
            "splits": None,
            "topics": [],
            "source": spec.source,
            "licence": spec.licence,
            "offline": spec.offline,
            "description": spec.description,
        }
        if sizes and spec.offline:
            try:
                sp = _splits(spec, 0)
                row["splits"] = {k: len(v) for k, v in sp.items()}
                row["size"] = sum(row["splits"].values())
                row["topics"] = sorted({e.topic for v in sp.values() for e in v if e.topic})
            except KnowlensError as e:  # pragma: no cover - a broken data source
                row["description"] = f"unavailable: {e}"
        rows.append(row)
    return rows


def spec_splits(spec: TaskSpec, seed: int = 0, **kwargs: Any) -> dict[str, list[Example]]:
    """All splits of a task spec (``knowlens.tasks.splits_of`` takes a name)."""
    return _splits(spec, seed, **kwargs)


__all__ = [
    "SPLITS",
    "TaskSpec",
    "build_task",
    "get_spec",
    "is_registered",
    "list_tasks",
    "register_task",
    "spec_splits",
    "task_names",
]
