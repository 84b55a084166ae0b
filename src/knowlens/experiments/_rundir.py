"""The run folder: its layout, its tables, its typed manifest, and how it is replaced whole.

    runs/<name>/
        config.yaml                        the resolved config (re-loadable)
        manifest.json                      RunManifest: versions, seeds, models, tasks, caches,
                                           every stage's seconds and cache outcome...
        tables/<id>.<table>.parquet|csv    every analysis' tidy tables
        figures/<id>/<stem>.png|svg        drawn from the tables
        report.html                        self-contained report

The runner writes it; the report reads it back, and needs nothing else (no models, no cache),
so a run folder copied anywhere rebuilds its figures and report. The manifest is a versioned
pydantic schema (inspect_ai's log style): every field documented, every component recorded by
what it is (spec, fingerprint, version), written and read back typed.

A run folder is written as a whole: everything is built in a temporary sibling
(``runs/.tmp-<name>~pid~host~id``) and swapped in at the end (``renameat2`` exchange on Linux,
else two renames), so ``runs/<name>/`` always holds one complete run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Literal, get_args

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from knowlens._cache import (
    _tmp_name,
    atomic_write_json,
    atomic_write_text,
    cache_root,
    clean_stale_tmp,
)
from knowlens.config import RunConfig
from knowlens.errors import KnowlensError
from knowlens.experiments._load import format_validation_error, parse_config

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA_VERSION",
    "REPORT_FILE",
    "STAGE_KINDS",
    "AnalysisLog",
    "AnalysisRecord",
    "CacheOutcome",
    "CacheStats",
    "ExecutorRecord",
    "ModelRecord",
    "RunManifest",
    "StageKind",
    "StageRecord",
    "StageTotals",
    "TaskRecord",
    "building",
    "config_path",
    "figure_files",
    "figures_dir",
    "in_final",
    "json_value",
    "manifest_path",
    "read_config",
    "read_manifest",
    "read_tables",
    "report_path",
    "slowest",
    "stage_kind",
    "sum_stages",
    "table_path",
    "write_config",
    "write_manifest",
    "write_tables",
]

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.html"
TABLES_DIR = "tables"
FIGURES_DIR = "figures"


# -- layout ----------------------------------------------------------------------------------
def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def manifest_path(run_dir: Path) -> Path:
    return Path(run_dir) / MANIFEST_FILE


def report_path(run_dir: Path) -> Path:
    return Path(run_dir) / REPORT_FILE


def table_path(run_dir: Path, key: str, table: str, ext: str = "parquet") -> Path:
    """``tables/<analysis id>.<table>.<ext>``."""
    return Path(run_dir) / TABLES_DIR / f"{key}.{table}.{ext}"


def figures_dir(run_dir: Path, key: str) -> Path:
    """``figures/<analysis id>/``: where an analysis' ``figures(tables, out_dir)`` draws."""
    return Path(run_dir) / FIGURES_DIR / key


def figure_files(run_dir: Path, key: str) -> list[Path]:
    """The PNGs an analysis drew (sorted), without redrawing them."""
    return sorted(figures_dir(run_dir, key).glob("*.png"))


# -- config and tables ------------------------------------------------------------------------
def write_config(run_dir: Path, rc: RunConfig) -> None:
    atomic_write_text(config_path(run_dir), yaml.safe_dump(rc.to_yaml_dict(), sort_keys=False))


def read_config(run_dir: Path) -> RunConfig:
    """The run's resolved config, validated like any config file."""
    p = config_path(run_dir)
    if not p.is_file():
        raise KnowlensError(
            f"'{run_dir}' is not a knowlens run folder (no {CONFIG_FILE}). "
            "Pass a folder written by `knowlens run`, e.g. runs/demo."
        )
    return parse_config(yaml.safe_load(p.read_text(encoding="utf-8")), where=str(p))


def write_tables(run_dir: Path, key: str, tables: dict[str, pd.DataFrame]) -> None:
    """Each table as parquet (read back by the report) and CSV (for people)."""
    for name, df in tables.items():
        buf = df.reset_index(drop=True)
        p = table_path(run_dir, key, name)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".tmp-{p.name}")
        buf.to_parquet(tmp, index=False)
        tmp.replace(p)
        atomic_write_text(table_path(run_dir, key, name, "csv"), buf.to_csv(index=False))


def read_tables(run_dir: Path, key: str) -> dict[str, pd.DataFrame]:
    """All tables of one analysis from ``tables/<key>.<table>.parquet``."""
    out = {}
    for p in sorted((Path(run_dir) / TABLES_DIR).glob(f"{key}.*.parquet")):
        out[p.name[len(key) + 1 : -len(".parquet")]] = pd.read_parquet(p)
    return out


# -- the manifest -----------------------------------------------------------------------------
# 2: per-stage records (RunManifest.stages, AnalysisRecord.stage_totals, AnalysisLog.compute_s)
# replace AnalysisLog.timings_s; schema 1 manifests are migrated when read (read_manifest).
MANIFEST_SCHEMA_VERSION: Final = 2


def json_value(v: Any) -> JsonValue:
    """``v`` as plain JSON (numpy scalars/arrays -> lists, paths -> str, else repr)."""

    def default(o: Any) -> Any:
        if hasattr(o, "tolist"):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        return repr(o)

    return json.loads(json.dumps(v, default=default))


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelRecord(_Record):
    """A model an analysis loaded (``ctx.load_model``), as it was loaded."""

    spec: str
    """The spec the config named (embedded name, hub id, directory, .gguf, organism:...)."""
    name: str
    """Display name of the model."""
    fingerprint: str
    """Hash of the loaded weights: part of every cache key that depends on the model."""
    source: str | None = None
    """Where the weights came from (resolved spec)."""
    system_prompt: str | None = None
    """System prompt of this deployment, if any."""
    n_layers: int | None = None
    """Decoder blocks."""
    d_model: int | None = None
    """Hidden size."""
    dtype: str | None = None
    """Torch dtype the weights were loaded in."""
    device: str | None = None
    """Device the model ran on."""
    chat_template: bool | None = None
    """Whether prompts were chat-templated."""
    architecture: str | None = None
    """The HF model class."""
    n_params: int | None = None
    """Parameter count."""
    info: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Loader facts (converted directory, embedded name, GGUF source...)."""

    @model_validator(mode="before")
    @classmethod
    def _extras_into_info(cls, data: Any) -> Any:
        # handle.describe() (and manifests of schema 0) flatten the loader's info dict.
        if isinstance(data, dict):
            known = set(cls.model_fields)
            extra = {k: v for k, v in data.items() if k not in known}
            if extra:
                data = {k: v for k, v in data.items() if k in known}
                data["info"] = {**extra, **dict(data.get("info") or {})}
        return data

    @classmethod
    def from_handle(cls, spec: str, handle: Any) -> ModelRecord:
        facts: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # a minimal handle (tests) may lack some facts
            facts = {k: v for k, v in handle.describe().items() if _scalar(v)}
        return cls.model_validate(
            {**facts, "spec": spec, "name": handle.name, "fingerprint": handle.fingerprint}
        )


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


class TaskRecord(_Record):
    """A task split an analysis used (``ctx.record_task``)."""

    name: str
    """Task name (registry name or YAML task name)."""
    version: str
    """Task version: spec version + hash of template, shots, grader and examples."""
    split: str
    """Split used (train, validation, test or a native split)."""
    n: int
    """Examples used from that split."""


class CacheStats(_Record):
    """Hits and misses of one cache kind during one analysis."""

    hits: int = 0
    """Lookups answered from the cache."""
    misses: int = 0
    """Lookups computed (and stored)."""


StageKind = Literal[
    "executor",
    "load",
    "organism",
    "results",
    "compute",
    "generate",
    "extract",
    "sample",
    "train",
    "score",
    "search",
    "judge",
    "probe",
    "map",
    "figure",
    "report",
    "other",
]
STAGE_KINDS: tuple[str, ...] = get_args(StageKind)
CacheOutcome = Literal["hit", "miss", "mixed"]
# A label's first word -> its kind, for steps that name no kind (and schema 1 timings).
_KIND_WORDS = {
    "load": "load",
    "generate": "generate",
    "extract": "extract",
    "sample": "sample",
    "train": "train",
    "fit": "train",
    "score": "score",
    "gcg": "search",
    "search": "search",
    "judge": "judge",
    "probe": "probe",
    "figures": "figure",
    "report": "report",
}


def stage_kind(label: str) -> str:
    """The stage kind a label names: ``load model organism:...`` -> organism, ``<id>: figures``
    (schema 1) -> figure, else the kind its first word names (generate, extract, train, score,
    ...), else ``other``."""
    if label.startswith("load model organism:"):
        return "organism"
    if label.endswith(": figures"):
        return "figure"
    words = label.split(maxsplit=1)
    return _KIND_WORDS.get(words[0].lower().rstrip(":"), "other") if words else "other"


class StageRecord(_Record):
    """One timed stage of the run (``ctx.step`` or a step of the runner itself)."""

    analysis: str | None
    """Analysis id the stage belongs to (None: the run's own stages, e.g. the report)."""
    kind: StageKind
    """What the stage did: load (a model), organism (train or reuse one), results (result-cache
    lookup / store), compute (the analysis' own code outside named stages), generate, extract,
    sample, train, score (estimators), search (GCG), judge, probe, map, figure, report,
    executor (opening the run's executors), other."""
    label: str
    """What the stage said it did (the ``ctx.step`` description)."""
    model: str | None = None
    """The model the stage ran (display name or spec; None if none or not said)."""
    wall_s: float
    """Seconds from the stage's start to its end, nested stages included."""
    self_s: float
    """Seconds of the stage itself: ``wall_s`` minus its nested stages' ``wall_s``. Self
    times add up to the time spent in stages without counting a second twice."""
    start_s: float | None = None
    """When the stage started, seconds after the run started (None: a schema 1 timing)."""
    parent: int | None = None
    """Index (in ``RunManifest.stages``) of the stage this one ran inside; None: top level."""
    cache: CacheOutcome | None = None
    """Cache outcome of the lookups made directly in this stage: hit (all answered from a
    cache), miss (all computed), mixed (some of each); None: the stage looked up no cache."""
    hits: int = 0
    """Cache lookups of this stage answered from a cache."""
    misses: int = 0
    """Cache lookups of this stage computed (and stored)."""
    caches: dict[str, CacheStats] = Field(default_factory=dict)
    """The lookups by cache kind (generations, activations, estimators, results, ...)."""


class StageTotals(_Record):
    """Stage times of one analysis (or the whole run) added up."""

    stages_s: float
    """Seconds in stages (self times summed: no second counted twice)."""
    by_kind: dict[str, float] = Field(default_factory=dict)
    """Own seconds per stage kind (manifest.json stores keys sorted by name)."""
    n_stages: int
    """Stages recorded."""
    hits: int
    """Cache lookups answered from a cache, over all stages."""
    misses: int
    """Cache lookups computed, over all stages."""


def sum_stages(stages: list[StageRecord]) -> StageTotals:
    """Self seconds by kind, stage count and cache counts of ``stages``."""
    by_kind: dict[str, float] = {}
    for s in stages:
        by_kind[s.kind] = by_kind.get(s.kind, 0.0) + s.self_s
    return StageTotals(
        stages_s=round(sum(s.self_s for s in stages), 6),
        by_kind={k: round(v, 6) for k, v in by_kind.items()},
        n_stages=len(stages),
        hits=sum(s.hits for s in stages),
        misses=sum(s.misses for s in stages),
    )


def slowest(stages: list[StageRecord], n: int = 3) -> list[StageRecord]:
    """The ``n`` stages with the most self time (ties: earlier first)."""
    return sorted(stages, key=lambda s: -s.self_s)[:n]


class ExecutorRecord(_Record):
    """The executor generation and extraction ran on (``executor:`` / ``--executor``)."""

    name: str
    """``local`` (this process) or ``ray``."""
    ray_address: str | None = None
    """The Ray cluster joined (None: a local Ray or none)."""
    details: dict[str, JsonValue] = Field(default_factory=dict)
    """``Executor.describe()``: nodes, workers, devices, cluster CPUs/GPUs."""


class AnalysisLog(_Record):
    """What an analysis recorded while it ran (``RunContext``); stored with its cached result,
    so a result-cache hit reports how its tables were made."""

    models: dict[str, ModelRecord] = Field(default_factory=dict)
    """Models loaded, by spec."""
    tasks: list[TaskRecord] = Field(default_factory=list)
    """Task splits used and their sizes."""
    cache: dict[str, CacheStats] = Field(default_factory=dict)
    """Stage-cache hits / misses by cache kind (estimators, estimator_scores, ...)."""
    compute_s: float | None = None
    """Seconds the analysis' ``run()`` took when these tables were computed (on a result-cache
    hit: in the run that computed them; None in results cached before schema 2)."""
    notes: dict[str, JsonValue] = Field(default_factory=dict)
    """Free-form facts the analysis chose to record (``ctx.note``)."""
    executor: ExecutorRecord | None = None
    """The executor that computed the tables (None in results cached before it was recorded)."""


class AnalysisRecord(AnalysisLog):
    """One analysis of the run: how its tables were obtained, plus its :class:`AnalysisLog`."""

    analysis: str
    """Registry name of the analysis."""
    result_key: str
    """Result-cache key: hash of the resolved config, model fingerprints, CODE_VERSION and
    the code versions of the stages (``_runner.stage_versions``)."""
    from_cache: bool
    """True if the tables came from the result cache (nothing recomputed)."""
    seed: int
    """The analysis' seed."""
    wall_s: float
    """Seconds this analysis took in this run (cache lookup, run or load, figures)."""
    stage_totals: StageTotals
    """This run's stages of the analysis added up (the stages: ``RunManifest.stages``)."""


class RunManifest(_Record):
    """``manifest.json``: everything needed to say what a run folder holds and how it was
    made, readable without models or caches."""

    schema_version: Literal[2] = MANIFEST_SCHEMA_VERSION
    """Version of this schema; bumped when a field changes meaning or is removed."""
    knowlens_version: str
    """knowlens version that wrote the run."""
    run: str
    """Run name (the folder under the output folder)."""
    config_source: str | None = None
    """The config file (or 'config' for a mapping) the run came from."""
    config_hash: str
    """Hash of the resolved config (config.yaml)."""
    started_utc: str
    """Start time, ISO 8601, UTC."""
    finished_utc: str | None = None
    """End time, ISO 8601, UTC."""
    wall_s: float | None = None
    """Seconds the whole run took."""
    versions: dict[str, str] = Field(default_factory=dict)
    """Python, platform and library versions."""
    executors: list[ExecutorRecord] = Field(default_factory=list)
    """Executors the run opened (one per distinct executor / ray_address), described at the end."""
    analyses: dict[str, AnalysisRecord] = Field(default_factory=dict)
    """Per analysis id, in run order."""
    stages: list[StageRecord] = Field(default_factory=list)
    """Every timed stage of this run, in start order (a result-cache hit shows as a results
    stage with cache 'hit', the stages that computed those tables are not repeated)."""
    stage_totals: StageTotals | None = None
    """All stages of the run added up (None until the run finished)."""


def write_manifest(run_dir: Path, manifest: RunManifest) -> None:
    atomic_write_json(manifest_path(run_dir), manifest.model_dump(mode="json"))


def read_manifest(run_dir: Path) -> RunManifest | None:
    """The run's manifest, typed; None if the folder has none (a run that did not finish).

    Manifests written before the schema was versioned (no ``schema_version``) are read as
    version 1; version 1 is migrated (its per-label ``timings_s`` become stage records with
    the kind their label names and no cache outcome); a newer version is a one-line error."""
    p = manifest_path(run_dir)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KnowlensError(
            f"'{p}' is not valid JSON ({e}); restore it or rerun `knowlens run` to rewrite it."
        ) from None
    if not isinstance(data, dict):
        raise KnowlensError(
            f"'{p}' must hold a JSON object (a knowlens run manifest); got "
            f"{type(data).__name__}. Rerun `knowlens run` to rewrite it."
        )
    version = data.setdefault("schema_version", 1)  # unversioned: written as version 1
    if version == 1:
        data = _from_v1(data)
    elif version != MANIFEST_SCHEMA_VERSION:
        raise KnowlensError(
            f"'{p}' has manifest schema_version {version!r}; this knowlens reads versions 1 to "
            f"{MANIFEST_SCHEMA_VERSION}. Use the knowlens version that wrote it, or rerun the run."
        )
    try:
        return RunManifest.model_validate(data)
    except ValidationError as err:
        raise KnowlensError(
            format_validation_error(err, where=str(p), cls=RunManifest).replace(
                "in the config or its command-line override", "in the manifest (or rerun the run)"
            )
        ) from None


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema 1 manifest as schema 2: each analysis' ``timings_s`` (seconds per step label,
    summed, nested steps not marked) becomes stage records with self = wall time. Fields
    that do not parse are left for validation to name."""
    data = {**data, "schema_version": MANIFEST_SCHEMA_VERSION}
    analyses = data.get("analyses")
    if not isinstance(analyses, dict):
        return data
    stages: list[dict[str, Any]] = []
    migrated = {}
    for key, a in analyses.items():
        if not isinstance(a, dict):
            migrated[key] = a
            continue
        a = dict(a)
        timings = a.pop("timings_s", None) or {}
        own = []
        if isinstance(timings, dict):
            for label, secs in timings.items():
                rec = {"analysis": key, "kind": stage_kind(str(label)), "label": str(label)}
                own.append({**rec, "wall_s": secs, "self_s": secs})
        stages += own
        with contextlib.suppress(ValidationError):  # a bad timing: validation names it below
            a.setdefault(
                "stage_totals",
                sum_stages([StageRecord.model_validate(r) for r in own]).model_dump(),
            )
        migrated[key] = a
    data["analyses"] = migrated
    data.setdefault("stages", stages)
    with contextlib.suppress(ValidationError):
        data.setdefault(
            "stage_totals",
            sum_stages([StageRecord.model_validate(r) for r in stages]).model_dump(),
        )
    return data


# -- building a run folder and swapping it in ---------------------------------------------------
@contextlib.contextmanager
def building(output: Path, name: str) -> Iterator[tuple[Path, Path]]:
    """Yield ``(build, final)``: a fresh build folder next to ``<output>/<name>`` and the
    final folder it becomes when the block succeeds; on any error the build folder goes and
    the previous run folder stays as it was. Checked before any work: one-line errors for an
    unwritable cache or output folder."""
    final = Path(output) / name
    if final.is_symlink():  # swap the folder it points to, not the link
        final = final.resolve()
    build = _start_build(final)
    try:
        yield build, final
        _swap_in(build, final)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise


def _start_build(final: Path) -> Path:
    """Check that ``final``'s parent can hold run folders and create the build folder there,
    before any work (one-line errors instead of an OSError after a long run)."""
    cache_root()  # raises a one-line error if KNOWLENS_CACHE is not a writable folder
    out = final.parent
    for anc in (final, *final.parents):
        if anc.exists() or anc.is_symlink():
            if not anc.is_dir():
                what = "the run folder" if anc == final else "a parent of the output folder"
                raise KnowlensError(
                    f"Cannot write run '{final.name}' under '{out}': '{anc}' ({what}) is a file, "
                    "not a folder. Pass --output/-o a folder (e.g. -o runs) or another --name."
                )
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(out)  # build folders of killed runs
        build = out / _tmp_name(final.name)
        build.mkdir()
    except OSError as e:
        raise KnowlensError(
            f"Cannot write run folders under '{out}' ({type(e).__name__}: "
            f"{e.strerror or e}). Pass --output/-o a writable folder, e.g. -o runs."
        ) from None
    return build


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _swap_in(build: Path, final: Path) -> None:
    """Make the finished ``build`` folder ``final``; the previous run (if any) is removed."""
    if not (final.exists() or final.is_symlink()):
        os.rename(build, final)
    elif _exchange(build, final):
        shutil.rmtree(build, ignore_errors=True)  # now the previous run
    else:  # two renames; a crash in between leaves the old run as a .tmp- sibling
        old = final.with_name(_tmp_name(final.name))
        os.rename(final, old)
        try:
            os.rename(build, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)


def in_final(path: Path, build: Path, final: Path) -> Path:
    """``path`` inside the build folder, named where it will live once swapped in."""
    path = Path(path)
    return final / path.relative_to(build) if path.is_relative_to(build) else path
