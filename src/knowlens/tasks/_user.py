"""User tasks from YAML: a local JSONL / CSV / Parquet file (or a hub dataset) plus a column
mapping, or an override of a built-in task's prompt. No Python needed.

A file task::

    name: my_trivia
    path: data/trivia.csv            # relative to the YAML file; or a folder of split files
    # hub: {id: mandarjoshi/trivia_qa, config: rc.nocontext}   # instead of path
    columns:                         # Example field -> column (dots reach into structs)
      question: Question
      answers: Answer                # a string, a list, or a list literal "['a', 'b']"
      id: qid                        # optional; row number otherwise
      topic: category                # optional
      context: passage               # optional
      options: [A, B, C, D]          # optional: option columns, or one list column
      wrong_answer: Wrong            # optional (two-option tasks)
      metadata: [difficulty]         # optional extra columns, usable in the template
    kind: qa
    grader: alias_substring          # exact_match, numeric, multiple_choice, option_order, ...
    grader_args: {}
    template: "Q: {question}\\nA:"
    instruction: "Answer briefly."
    k_shot: 3
    max_new_tokens: 16
    version: "1"
    licence: CC BY 4.0

An override of a built-in task::

    name: capitals_zero_shot
    base: capitals
    k_shot: 0
    template: "Question: {question}\\nAnswer:"
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from knowlens.errors import ConfigError, DataError
from knowlens.tasks._benchmarks import _apply, _get, _listish, hub_rows, local_rows
from knowlens.tasks._registry import TaskSpec, get_spec, is_registered, register_task
from knowlens.tasks._types import Example

__all__ = ["build_from_columns", "load_yaml_spec", "register_yaml"]

_FIELDS = {"question", "answers", "id", "topic", "context", "options", "wrong_answer", "metadata"}
_KEYS = {
    "name",
    "base",
    "path",
    "hub",
    "columns",
    "kind",
    "grader",
    "grader_args",
    "template",
    "instruction",
    "k_shot",
    "max_new_tokens",
    "version",
    "licence",
    "source",
    "description",
    "family",
    "answer_format",
    "shot_separator",
    "shots_per_topic",
}


def _read_yaml(path: str | Path) -> dict[str, Any]:
    from knowlens._yaml import load_yaml_text, read_text_file

    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"Task file {p} does not exist; pass the path of a YAML task file.")
    if p.is_dir():
        raise ConfigError(f"Task file {p} is a directory; pass the path of a YAML task file.")
    data = load_yaml_text(read_text_file(p, "Task file"), where=f"Task file {p}")
    if not isinstance(data, dict):
        raise ConfigError(f"Task file {p} must be a YAML mapping (name:, path:, columns:, ...).")
    bad = sorted(set(data) - _KEYS)
    if bad:
        raise ConfigError(
            f"Task file {p}: unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(_KEYS))}."
        )
    _check_types(p, data)
    return data


# key -> (type(s), what the error says is allowed); checked before anything is built.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), "a string"),
    "base": ((str,), "a task name"),
    "path": ((str,), "a file or folder path"),
    "hub": ((dict,), "a mapping like {id: owner/dataset, config: name}"),
    "columns": ((dict,), "a mapping of Example fields to column names"),
    "kind": ((str,), "a string"),
    "grader": ((str,), "a grader name"),
    "grader_args": ((dict,), "a mapping"),
    "template": ((str,), "a string"),
    "instruction": ((str,), "a string"),
    "version": ((str, int, float), "a string or number"),
    "licence": ((str,), "a string"),
    "source": ((str,), "a string"),
    "description": ((str,), "a string"),
    "family": ((str,), "a string"),
    "answer_format": ((str,), "'answer' or 'letter'"),
    "shot_separator": ((str,), "a string"),
    "shots_per_topic": ((bool,), "true or false"),
}


def _check_types(p: Path, d: dict[str, Any]) -> None:
    for key, (types, allowed) in _TYPES.items():
        v = d.get(key)
        if v is not None and (
            not isinstance(v, types) or (isinstance(v, bool) and bool not in types)
        ):
            raise ConfigError(f"Task file {p}: '{key}' must be {allowed}; got {v!r}.")
    for key, lo in (("k_shot", 0), ("max_new_tokens", 1)):
        v = d.get(key)
        if key in d and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise ConfigError(
                f"Task file {p}: '{key}' must be an integer >= {lo}; got {v!r}. "
                f"Write e.g. '{key}: {max(lo, 3) if key == 'k_shot' else 16}'."
            )
    if d.get("answer_format") not in (None, "answer", "letter"):
        raise ConfigError(
            f"Task file {p}: 'answer_format' must be 'answer' or 'letter'; "
            f"got {d['answer_format']!r}."
        )


def load_yaml_spec(path: str | Path, *, _chain: tuple[Path, ...] = ()) -> TaskSpec:
    """Parse a YAML task file into a :class:`TaskSpec` (not registered)."""
    p = Path(path).expanduser().resolve()
    if p in _chain:
        loop = " -> ".join(str(x) for x in (*_chain, p))
        raise ConfigError(
            f"Task file {p}: its 'base:' chain comes back to itself ({loop}). Point 'base:' "
            "at a built-in task or at a file that does not lead back here."
        )
    d = _read_yaml(p)
    name = d.get("name") or p.stem
    overrides = {
        k: d[k]
        for k in (
            "kind",
            "grader",
            "grader_args",
            "template",
            "instruction",
            "k_shot",
            "max_new_tokens",
            "licence",
            "source",
            "description",
            "family",
            "answer_format",
            "shot_separator",
            "shots_per_topic",
        )
        if k in d
    }
    if "base" in d:
        # base: a registered task, or another YAML task file (read here, so the registry
        # never has to know about YAML files)
        base_name = str(d["base"])
        if not is_registered(base_name) and base_name.endswith((".yaml", ".yml")):
            base = load_yaml_spec(base_name, _chain=(*_chain, p))
        else:
            base = get_spec(base_name)
        version = f"{base.version}+{d.get('version', 'user')}"
        return dataclasses.replace(base, name=name, version=version, **overrides)
    if "path" not in d and "hub" not in d:
        raise ConfigError(f"Task file {p}: give 'path:' (a local file), 'hub:' or 'base:'.")
    cols = d.get("columns") or {}
    if not isinstance(cols, dict) or "question" not in cols or "answers" not in cols:
        raise ConfigError(
            f"Task file {p}: 'columns:' must map at least question and answers to column "
            f"names; got {cols!r}."
        )
    bad = sorted(set(cols) - _FIELDS)
    if bad:
        raise ConfigError(
            f"Task file {p}: unknown column mapping key(s) {', '.join(bad)}; allowed: "
            f"{', '.join(sorted(_FIELDS))}."
        )
    data_path: str | None = None
    if "path" in d:
        given = Path(str(d["path"])).expanduser()
        data_path = str(given if given.is_absolute() else p.parent / given)
    meta_cols = cols.get("metadata") or []
    kind = d.get("kind", "qa")
    default_grader = {
        "multiple_choice": "multiple_choice",
        "two_option": "option_order",
        "numeric": "numeric",
    }.get(kind, "alias_substring")
    spec = TaskSpec(
        name=name,
        builder="knowlens.tasks._user:build_from_columns",
        builder_args={"task": name, "path": data_path, "hub": d.get("hub"), "columns": cols},
        kind=kind,
        grader=d.get("grader", default_grader),
        grader_args=d.get("grader_args") or {},
        template=d.get("template", "Q: {question}\nA:"),
        instruction=d.get("instruction", ""),
        k_shot=int(d.get("k_shot", 0)),
        answer_format=d.get("answer_format", "letter" if kind == "multiple_choice" else "answer"),
        max_new_tokens=int(d.get("max_new_tokens", 16)),
        version=str(d.get("version", "1")),
        source=str(d.get("source") or data_path or (d.get("hub") or {}).get("id", "")),
        licence=d.get("licence", "user data"),
        description=d.get("description", f"user task from {p.name}"),
        family=d.get("family", "user"),
        offline=data_path is not None,
        metadata_placeholders=tuple(meta_cols)
        + (("wrong_answer",) if "wrong_answer" in cols else ()),
        shot_separator=d.get("shot_separator", "\n"),
        shots_per_topic=bool(d.get("shots_per_topic", False)),
    )
    from knowlens.tasks._task import check_template

    check_template(spec.template, spec.metadata_placeholders, task=name)
    check_template(spec.instruction, (), task=name)
    from knowlens.tasks.graders import make_grader

    make_grader(spec.grader, **spec.grader_args)  # fail now, not at generation time
    return spec


def register_yaml(path: str | Path, *, overwrite: bool = True) -> TaskSpec:
    """Parse and register a YAML task; afterwards ``load_task(name)`` finds it."""
    spec = load_yaml_spec(path)
    register_task(spec, overwrite=overwrite)
    return spec


def build_from_columns(
    task: str,
    columns: dict[str, Any],
    path: str | None = None,
    hub: dict[str, Any] | None = None,
) -> list[Example] | dict[str, list[Example]]:
    """Rows of a local file / hub dataset -> examples via the YAML column mapping."""
    if path:
        rows = local_rows(path)
    else:
        hub = hub or {}
        if "id" not in hub:
            raise ConfigError(f"Task '{task}': 'hub:' needs an 'id:' (e.g. owner/dataset).")
        rows = hub_rows(task, hub["id"], hub.get("config"), ", ".join(map(str, columns.values())))
    first = next(iter(rows.values()))[:1] if isinstance(rows, dict) else rows[:1]
    if not first:
        raise DataError(f"Task '{task}': the data file has no rows; add data or fix the path.")
    have = set(first[0])
    wanted = []
    for k, v in columns.items():
        vs = v if isinstance(v, list) else [v]
        wanted += [str(x).split(".")[0] for x in vs if x is not None and k != "id"]
    missing = [c for c in dict.fromkeys(wanted) if c not in have]
    if missing:
        raise DataError(
            f"Task '{task}': column(s) {', '.join(missing)} not in the data (found "
            f"{', '.join(sorted(map(str, have)))}). Fix 'columns:' in the YAML file."
        )
    opt = columns.get("options")

    def conv(r: dict[str, Any], i: int, split: str) -> Example | None:
        q = _get(r, columns["question"])
        ans = _get(r, columns["answers"])
        options: tuple[str, ...] = ()
        if isinstance(opt, list):
            options = tuple(str(_get(r, c)) for c in opt)
        elif opt:
            options = tuple(_listish(_get(r, opt)))
        if options and (isinstance(ans, int) or (isinstance(ans, str) and ans.isdigit())):
            answers: tuple[str, ...] = ("ABCDEFGHIJ"[int(ans)],)  # index into the options
        else:
            answers = tuple(_listish(ans))
        if q is None or not answers:
            return None
        meta = {c: r.get(c) for c in columns.get("metadata") or []}
        if columns.get("wrong_answer"):
            meta["wrong_answer"] = str(_get(r, columns["wrong_answer"]))
        rid = _get(r, columns["id"]) if columns.get("id") else f"{split}-{i}"
        topic = _get(r, columns["topic"]) if columns.get("topic") else None
        ctx = _get(r, columns["context"]) if columns.get("context") else None
        return Example(
            f"{task}-{rid}",
            str(q),
            answers,
            options=options,
            topic=None if topic is None else str(topic),
            context=None if ctx is None else str(ctx),
            metadata=meta,
        )

    return _apply(rows, conv)
