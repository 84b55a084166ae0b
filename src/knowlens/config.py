"""The run layer's contract: typed experiment configs, report sections, the analysis protocol.

A config file holds either one analysis::

    analysis: probe_transfer
    name: probe-transfer-smollm
    models: [smollm2-135m-instruct]
    tasks: [capitals, trivia]
    limit: 200

or a suite of analyses sharing run-level fields (the demo)::

    name: demo
    models: [smollm2-135m-instruct, gemma3-270m]
    limit: 60
    analyses:
      - analysis: topic_calibration
      - analysis: probe_transfer
        models: [smollm2-135m-instruct]

Run-level fields (``models``, ``limit``, ``seed``, ``device``, ``n_bootstrap``, ``min_n``,
``executor``) are defaults that each analysis inherits unless it sets its own; command-line
overrides (``--models``, ``--limit``, ...) replace them everywhere. Every analysis module
defines ``Config(AnalysisConfig)`` with its own fields; unknown keys are errors (with a
"did you mean"), so a typo never silently falls back to a default.

This module sits left of the analysis registry, so it only *declares* shapes: reading and
validating a YAML file needs each analysis' ``Config`` class from the registry and lives in
:mod:`knowlens.experiments._load` (``load_config`` / ``parse_config``, re-exported by
:mod:`knowlens.experiments`).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ANALYSIS_OPTIONAL",
    "ANALYSIS_REQUIRED",
    "SHARED_FIELDS",
    "Analysis",
    "AnalysisConfig",
    "RunConfig",
    "Section",
    "code_version",
    "loads_models",
    "report_sections",
]


class AnalysisConfig(BaseModel):
    """Fields every analysis understands. Subclass it as ``Config`` in an analysis module."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    analysis: str = Field(description="Registry name of the analysis, e.g. 'probe_transfer'.")
    id: str | None = Field(
        default=None,
        description="Unique id inside a run (tables/figures are prefixed with it); "
        "defaults to the analysis name.",
    )
    models: list[str] = Field(
        default_factory=list,
        description="Model specs: embedded names, hub ids, local dirs or .gguf files.",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Max examples per task and split (None = all)."
    )
    seed: int = Field(
        default=0,
        ge=0,
        lt=2**32,
        description="Seed for splits, training and bootstrap (0 <= seed < 2**32, numpy's range).",
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:0', 'mps'.")
    n_bootstrap: int = Field(
        default=1000, ge=0, description="Bootstrap resamples for 95% CIs (0 = no CIs)."
    )
    min_n: int = Field(
        default=10, ge=1, description="Cells with fewer examples are hatched in figures."
    )
    executor: str = Field(default="local", description="'local' or 'ray' (generation/extract).")
    ray_address: str | None = Field(
        default=None, description="Ray cluster to join with executor 'ray' (host:port, auto)."
    )

    @property
    def key(self) -> str:
        return self.id or self.analysis

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_int(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode turns true/false into 1/0; `limit: true` is a mistake, not 1.
        if isinstance(v, bool) and info.field_name and _is_int_field(cls, info.field_name):
            raise ValueError("must be an integer, not a boolean")
        return v

    @field_validator("models")
    @classmethod
    def _unique_models(cls, v: list[str]) -> list[str]:
        dup = sorted({m for m in v if v.count(m) > 1})
        if dup:
            raise ValueError(f"model(s) listed twice: {', '.join(dup)}; list each model once")
        return v

    @field_validator("executor")
    @classmethod
    def _executor(cls, v: str) -> str:
        if v not in ("local", "ray"):
            raise ValueError(f"must be 'local' or 'ray', got '{v}'")
        return v

    @field_validator("ray_address")
    @classmethod
    def _ray_address_needs_ray(cls, v: str | None, info: ValidationInfo) -> str | None:
        # A cluster address with the local executor would be silently unused.
        executor = info.data.get("executor", "local")
        if v is not None and executor != "ray":
            raise ValueError(
                f"only applies with executor 'ray', but executor is '{executor}' "
                "(pass --executor ray, or drop ray_address)"
            )
        return v


def _is_int_field(cls: type[BaseModel], name: str) -> bool:
    field = cls.model_fields.get(name)
    if field is None:
        return False
    ann = field.annotation
    args = set(typing.get_args(ann))
    return ann is int or (int in args and args <= {int, type(None)})


SHARED_FIELDS = (
    "models",
    "limit",
    "seed",
    "device",
    "n_bootstrap",
    "min_n",
    "executor",
    "ray_address",
)


class RunConfig(BaseModel):
    """A resolved run: its name, output folder and the analyses' validated configs."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(description="Run name: results go to <output>/<name>/.")
    output: Path = Field(default=Path("runs"), description="Folder that holds run folders.")
    analyses: list[AnalysisConfig]
    source: str | None = Field(default=None, description="The YAML file it came from.")

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved config as written to ``runs/<name>/config.yaml`` (re-loadable)."""
        return {
            "name": self.name,
            "output": str(self.output),
            "analyses": [a.model_dump(mode="json") for a in self.analyses],
        }


@dataclass
class Section:
    """A block of the report contributed by an analysis (``report_sections``).

    Attributes:
        title: heading.
        caption: what the figure measures, in a sentence or two.
        figures: PNG paths to embed (SVG siblings are linked, not embedded).
        key_numbers: label -> formatted value, shown as a list beside the caption.
        tables: names of the analysis' tables to show under the figures.
        notes: extra plain text (caveats such as "n < min_n cells hatched").
    """

    title: str
    caption: str = ""
    figures: list[Path] = field(default_factory=list)
    key_numbers: dict[str, str] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    notes: str = ""


@runtime_checkable
class Analysis(Protocol):
    """What an analysis module (or namespace object) exposes; the registry checks it.

    Required:

    * ``Config``: a subclass of :class:`AnalysisConfig` with the analysis' own fields;
    * ``run(cfg, ctx) -> {table name: DataFrame}``: tidy tables, one row per figure cell
      (``ctx`` is the runner's ``knowlens.experiments.RunContext``); the table named like
      the analysis is its main table;
    * ``figures(tables, out_dir) -> [paths]``: drawn from the tables alone, so
      ``knowlens report runs/<name>`` redraws them without models.

    Optional (read through :func:`report_sections`, :func:`code_version`,
    :func:`loads_models`; defaults in :data:`ANALYSIS_OPTIONAL`):

    * ``report_sections(tables, figures) -> [Section]``; without it the report shows one
      section with every figure and table;
    * ``CODE_VERSION: str``: part of the result-cache key; bump it when results change;
    * ``LOADS_MODELS: bool``: ``False`` when the specs in ``models`` are not plain local
      models (API targets, ``?system=``), so the runner does not fingerprint them itself.
    """

    Config: type[AnalysisConfig]

    def run(self, cfg: Any, ctx: Any) -> Mapping[str, pd.DataFrame]: ...

    def figures(self, tables: Mapping[str, pd.DataFrame], out_dir: Path) -> list[Path]: ...


ANALYSIS_REQUIRED = ("Config", "run", "figures")
# name -> (default, the type it must have when given)
ANALYSIS_OPTIONAL: dict[str, tuple[Any, type | None]] = {
    "report_sections": (None, None),  # a callable
    "CODE_VERSION": ("1", str),
    "LOADS_MODELS": (True, bool),
}


def report_sections(analysis: Analysis) -> Callable[..., list[Section]] | None:
    """The analysis' ``report_sections`` function, or None (one default section)."""
    return getattr(analysis, "report_sections", None)


def code_version(analysis: Analysis) -> str:
    """The analysis' ``CODE_VERSION`` (part of its result-cache key), default ``"1"``."""
    return str(getattr(analysis, "CODE_VERSION", ANALYSIS_OPTIONAL["CODE_VERSION"][0]))


def loads_models(analysis: Analysis) -> bool:
    """False for analyses whose model specs are not local weights the runner can load."""
    return bool(getattr(analysis, "LOADS_MODELS", ANALYSIS_OPTIONAL["LOADS_MODELS"][0]))
