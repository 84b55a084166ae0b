"""Reading user text files (configs, task files, --set values): UTF-8 and strict YAML, with
one-line errors. Shared by the config loader (:mod:`knowlens.experiments._load`) and
:mod:`knowlens.tasks`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from knowlens.errors import ConfigError

__all__ = ["load_yaml_text", "read_text_file", "yaml_problem"]


def read_text_file(p: Path, what: str) -> str:
    """A text file's contents, or a one-line error saying it is not UTF-8 (and where)."""
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} '{p}' is not UTF-8 text: byte {e.object[e.start]:#04x} at line {line} "
            f"(offset {e.start}) cannot be decoded. Save the file as UTF-8."
        ) from None
    except OSError as e:
        raise ConfigError(
            f"{what} '{p}' cannot be read ({type(e).__name__}: {e.strerror or e}). "
            "Check the path and its permissions."
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def yaml_problem(e: yaml.YAMLError) -> str:
    """'at line L, column C: problem' from a PyYAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{at}: {problem}"


def load_yaml_text(text: str, *, where: str) -> Any:
    """``yaml.safe_load`` with duplicate keys rejected; errors are one-line ConfigErrors."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{where}: not valid YAML{yaml_problem(e)}. Fix the syntax there."
        ) from None
