"""Reading configs: YAML file or mapping in, a validated :class:`~knowlens.config.RunConfig`
out, every problem one line.

    from knowlens.experiments import load_config, parse_config
    rc = load_config("configs/demo.yaml", limit=20)         # overrides win over the file
    rc = parse_config({"analysis": "probe_transfer", "models": ["gemma3-270m"]})

Validation needs each analysis' ``Config`` class, so the loader sits right of the analysis
registry (:mod:`knowlens.experiments._registry`); the config *shapes* live in the contract
module :mod:`knowlens.config`, which imports neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from knowlens._yaml import load_yaml_text, read_text_file
from knowlens.config import SHARED_FIELDS, AnalysisConfig, RunConfig
from knowlens.errors import ConfigError, did_you_mean
from knowlens.experiments._registry import available_analyses, get_analysis

__all__ = ["format_validation_error", "load_config", "parse_config", "resolve_config"]


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_validation_error(
    err: ValidationError, *, where: str, prefix: str = "", cls: type[BaseModel] | None = None
) -> str:
    """One line from pydantic's error list: field, what is allowed, what was given, the fix."""
    e = err.errors()[0]
    field = prefix + _loc(tuple(p for p in e["loc"] if not str(p).startswith("function-")))
    given = e.get("input")
    kind = e.get("type", "")
    if kind == "extra_forbidden":
        name = str(e["loc"][-1])
        allowed = list((cls.model_fields if cls else {}).keys())
        msg = did_you_mean(name, allowed, what="field") if allowed else f"Unknown field '{name}'."
        return f"{where}: {msg.rstrip('.')} (at '{field}'). Remove or rename it."
    if kind == "missing":
        return f"{where}: field '{field}' is required but missing. Add it."
    msg = (
        e.get("msg", "invalid").removeprefix("Value error, ").replace("Input should be", "must be")
    )
    extra = (
        f" ({len(err.errors()) - 1} more problem(s) after fixing this)"
        if len(err.errors()) > 1
        else ""
    )
    return (
        f"{where}: field '{field}' {msg[0].lower() + msg[1:]}; got {given!r}. "
        f"Fix '{field}' in the config or its command-line override.{extra}"
    )


def _analysis_config_class(name: Any, where: str, loc: str) -> type[AnalysisConfig]:
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{where}: field '{loc}analysis' must name an analysis "
            f"({', '.join(available_analyses())}); got {name!r}. Add e.g. 'analysis: probe_transfer'."
        )
    return get_analysis(name).Config


def parse_config(
    data: Any, *, where: str = "config", overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Validate a config mapping (single analysis or suite) into a :class:`RunConfig`.

    ``overrides`` (from the command line or ``run(**overrides)``) win over the file: run-level
    keys ``name``/``output``, and shared analysis fields (``models``, ``limit``, ...) applied to
    every analysis. Any other key is applied to every analysis whose Config has that field.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: the top level must be a mapping with 'analysis:' or 'analyses:'; got "
            f"{type(data).__name__}. See configs/*.yaml for examples."
        )
    data = dict(data)
    # name/output None means "not given"; any other override is applied as given (None
    # included, e.g. limit=None = all examples) and validated like the file's values.
    overrides = dict(overrides or {})
    file_name, file_output = data.pop("name", None), data.pop("output", None)
    name = overrides.pop("name", None) or file_name
    output = overrides.pop("output", None) or file_output or "runs"
    data.pop("source", None)
    is_suite = "analyses" in data
    if is_suite:
        items = data.pop("analyses")
        if not isinstance(items, list) or not items:
            raise ConfigError(
                f"{where}: field 'analyses' must be a non-empty list of mappings; got {items!r}. "
                "List at least one '- analysis: <name>'."
            )
        shared = data
        bad = sorted(set(shared) - set(SHARED_FIELDS))
        if bad:
            raise ConfigError(
                f"{where}: {did_you_mean(bad[0], [*SHARED_FIELDS, 'name', 'output', 'analyses'], what='run-level field').rstrip('.')}."
                " Move analysis-specific fields under an entry of 'analyses'."
            )
    else:
        items, shared = [data], {}
    if not isinstance(name, str) or not name.strip():
        first = items[0].get("analysis") if isinstance(items[0], dict) else None
        name = first if isinstance(first, str) and first else None
        if name is None:
            raise ConfigError(
                f"{where}: field 'name' must be a non-empty string; got {name!r}. "
                "Add 'name: my-run' or pass --name."
            )
    if any(c in name for c in "/\\") or name in {".", ".."}:
        raise ConfigError(
            f"{where}: field 'name' must be a plain folder name (no '/'); got {name!r}. "
            "Use e.g. 'name: demo'."
        )

    analyses: list[AnalysisConfig] = []
    for i, item in enumerate(items):
        loc = f"analyses[{i}]." if is_suite else ""
        if not isinstance(item, dict):
            raise ConfigError(
                f"{where}: entry '{loc.rstrip('.')}' must be a mapping like "
                f"'analysis: probe_transfer'; got {item!r}."
            )
        cls = _analysis_config_class(item.get("analysis"), where, loc)
        merged = {**{k: v for k, v in shared.items()}, **item}
        for k, v in overrides.items():
            if k in cls.model_fields:
                merged[k] = v
        try:
            analyses.append(cls.model_validate(merged))
        except ValidationError as err:
            raise ConfigError(
                format_validation_error(err, where=where, prefix=loc, cls=cls)
            ) from None
    unknown = [k for k in overrides if not any(k in type(a).model_fields for a in analyses)]
    if unknown:
        raise ConfigError(
            f"{where}: override '{unknown[0]}' is not a field of any analysis in this run "
            f"({', '.join(a.analysis for a in analyses)}). Drop it or check its spelling."
        )
    keys = [a.key for a in analyses]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(
            f"{where}: analysis id '{dup[0]}' appears twice; ids must be unique in a run. "
            "Give one of them 'id: <other-name>'."
        )
    return RunConfig(name=name, output=Path(output), analyses=analyses, source=where)


def _not_a_file(p: Path) -> ConfigError:
    if p.is_dir():
        found = sorted(str(c) for c in (*p.glob("*.yaml"), *p.glob("*.yml")) if c.is_file())
        hint = (
            f" Config files in it: {', '.join(found[:8])}{' ...' if len(found) > 8 else ''}."
            if found
            else " It holds no .yaml files."
        )
        example = found[0] if found else "configs/demo.yaml"
        return ConfigError(
            f"Config '{p}' is a directory; expected a YAML config file.{hint} "
            f"Pass one file, e.g. {example}."
        )
    return ConfigError(
        f"Config file '{p}' does not exist. Pass a YAML file, e.g. configs/demo.yaml."
    )


def load_config(path: str | Path, **overrides: Any) -> RunConfig:
    """Read and validate a YAML config file (see module docstring); errors are one line."""
    p = Path(path)
    if not p.is_file():
        raise _not_a_file(p)
    data = load_yaml_text(read_text_file(p, "Config file"), where=str(p))
    return parse_config(data, where=str(p), overrides=overrides)


def resolve_config(config: Any, overrides: dict[str, Any] | None = None) -> RunConfig:
    """A :class:`RunConfig` from a YAML path, a mapping, a ``RunConfig`` or one
    ``AnalysisConfig``, with ``overrides`` applied and validated like the file's values."""
    overrides = dict(overrides or {})
    if isinstance(config, RunConfig):
        return parse_config(
            {
                "name": config.name,
                "output": str(config.output),
                "analyses": [a.model_dump() for a in config.analyses],
            },
            where=config.source or "config",
            overrides=overrides,
        )
    if isinstance(config, AnalysisConfig):
        return parse_config(config.model_dump(), where="config", overrides=overrides)
    if isinstance(config, dict):
        return parse_config(config, where="config", overrides=overrides)
    return load_config(config, **overrides)
