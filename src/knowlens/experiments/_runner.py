"""The runner: config in, ``runs/<name>/`` out.

    from knowlens.experiments import run
    result = run("configs/probe_transfer.yaml", limit=50)     # overrides win over the file
    result.tables["probe_transfer"]["probe_transfer"]          # tidy DataFrame
    result.report                                              # runs/<name>/report.html

For each analysis of the config the runner builds a :class:`RunContext`, asks the result
cache for the analysis' tables (key = resolved config + model fingerprints + the analysis'
``CODE_VERSION`` + the stages' code versions, ``stage_versions``), runs
``module.run(cfg, ctx)`` on a miss, writes tables (parquet + csv), draws figures from the
tables (``module.figures``), and finally writes ``manifest.json`` and the HTML report (the folder's layout and manifest schema: :mod:`knowlens.experiments._rundir`).
The runner owns the run's executors: one ``get_executor(executor, ray_address=...)`` per
distinct setting of the run's analyses, opened before any work, handed to each analysis as
``ctx.executor``, described in the manifest and closed when the run ends. Inside an
analysis every expensive step goes through a content-addressed cache too (generations,
activations, trained estimators, estimator scores), so changing one setting recomputes only
what depends on it.

Every stage is timed: each ``ctx.step`` and each step of the runner itself (model loading
and organism training, the result-cache lookup, the analysis' own code, figures, the report)
becomes a :class:`~knowlens.experiments._rundir.StageRecord` of ``manifest.stages`` (kind,
label, model, seconds with and without nested stages, and the cache outcome of the lookups
``ctx.count_cache`` / ``ctx.cached`` made inside it), added up per analysis in
``stage_totals``; the report's "Where the time went" section and the CLI's summary show them.

The run folder is written as a whole: everything is built in a temporary sibling
(``runs/.tmp-<name>~...``) and swapped in at the end, so ``runs/<name>/`` always holds one
complete run (config, tables, figures, manifest and report that belong together), and a run
that fails leaves the previous folder untouched. Cache entries (results, ``ctx.cached``) are
verified against their checksums when read (a damaged one is moved aside with a warning and
recomputed) and computed under a per-entry lock, so concurrent runs compute each once.
"""

from __future__ import annotations

import contextlib
import html
import importlib.metadata
import json
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar, cast

import pandas as pd
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from knowlens._cache import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    entry_dir,
    entry_lock,
    quarantine,
    stable_hash,
    verified_entry,
)
from knowlens.config import AnalysisConfig, RunConfig, code_version, loads_models
from knowlens.errors import ConfigError, KnowlensError
from knowlens.executors import Executor, LocalExecutor, get_executor
from knowlens.experiments._load import resolve_config
from knowlens.experiments._registry import get_analysis
from knowlens.experiments._rundir import (
    STAGE_KINDS,
    AnalysisLog,
    AnalysisRecord,
    CacheOutcome,
    CacheStats,
    ExecutorRecord,
    ModelRecord,
    RunManifest,
    StageKind,
    StageRecord,
    TaskRecord,
    building,
    in_final,
    json_value,
    report_path,
    stage_kind,
    sum_stages,
    write_config,
    write_manifest,
    write_tables,
)
from knowlens.report import build_report, draw_figures

__all__ = ["RESULTS_VERSION", "RunContext", "RunResult", "run", "run_config"]

T = TypeVar("T")

# 2: a learning_curves table for every trained estimator; 3: a score_maps table for every
# calibrated one-score estimator
RESULTS_VERSION = "3"
_console = Console(stderr=True)


def stage_versions() -> dict[str, str]:
    """The code versions of the stages an analysis' tables rest on (part of the result-cache
    key, so a bumped stage recomputes the results built on it, not only its own entries):
    generation, activations, estimators (and each estimator class' own version), scores,
    query reads and refusal organisms."""
    from knowlens.activations._api import ACTIVATIONS_VERSION
    from knowlens.estimators import ESTIMATORS_VERSION, QUERY_READS_VERSION, REGISTRY
    from knowlens.experiments._estimators import SCORES_VERSION
    from knowlens.generation import GENERATION_VERSION, SAMPLE_VERSION
    from knowlens.jailbreak.organisms import ORGANISM_VERSION

    out = {
        "generation": GENERATION_VERSION,
        "samples": SAMPLE_VERSION,
        "activations": ACTIVATIONS_VERSION,
        "estimators": ESTIMATORS_VERSION,
        "scores": SCORES_VERSION,
        "query_reads": QUERY_READS_VERSION,
        "organisms": ORGANISM_VERSION,
    }
    out.update(
        {f"estimator:{n}": c.code_version for n, c in sorted(REGISTRY.items()) if c.code_version}
    )
    return out


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("knowlens", "torch", "transformers", "peft", "scikit-learn", "numpy", "pandas"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass(eq=False)  # identity: the open-stage stack removes this very stage
class _Open:
    """A stage that has started and not ended: what its record will say."""

    index: int
    parent: _Open | None
    t0: float
    children_s: float = 0.0
    caches: dict[str, CacheStats] = field(default_factory=dict)


@dataclass
class StageClock:
    """The run's stage records, shared by its analyses' contexts: one record per stage, in
    start order (a record's ``parent`` is the index of the stage it ran inside)."""

    t0: float = field(default_factory=time.perf_counter)
    _records: list[StageRecord | None] = field(default_factory=list)
    _open: list[_Open] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(
        self, analysis: str | None, kind: StageKind, label: str, model: str | None = None
    ) -> Iterator[_Open]:
        """Time the block as one stage; its record is complete when the block ends."""
        op = _Open(len(self._records), self._open[-1] if self._open else None, time.perf_counter())
        self._records.append(None)  # the slot keeps start order; filled at the end
        self._open.append(op)
        try:
            yield op
        finally:
            dt = time.perf_counter() - op.t0
            self._open.remove(op)
            if op.parent is not None:
                op.parent.children_s += dt
            hits = sum(c.hits for c in op.caches.values())
            misses = sum(c.misses for c in op.caches.values())
            outcome: CacheOutcome | None = None
            if hits or misses:
                outcome = "mixed" if hits and misses else "hit" if hits else "miss"
            self._records[op.index] = StageRecord(
                analysis=analysis,
                kind=kind,
                label=label,
                model=model,
                wall_s=round(dt, 6),
                self_s=round(max(0.0, dt - op.children_s), 6),
                start_s=round(op.t0 - self.t0, 6),
                parent=None if op.parent is None else op.parent.index,
                cache=outcome,
                hits=hits,
                misses=misses,
                caches=op.caches,
            )

    def count(self, kind: str, *, hit: bool) -> None:
        """Count a cache lookup in the innermost open stage (none open: not a stage's)."""
        if not self._open:
            return
        stats = self._open[-1].caches.setdefault(kind, CacheStats())
        if hit:
            stats.hits += 1
        else:
            stats.misses += 1

    def record(self, index: int) -> StageRecord | None:
        return self._records[index]

    def records(self) -> list[StageRecord]:
        """Every stage of the run, in start order; one-line error if one is still open."""
        if self._open or any(r is None for r in self._records):
            raise KnowlensError(
                f"{len(self._open)} stage(s) still running when the run's stages were read; "
                "read them after every `ctx.step` block has ended."
            )
        return [r for r in self._records if r is not None]

    def of(self, analysis: str | None) -> list[StageRecord]:
        """The finished stages of one analysis id (None: the run's own stages)."""
        return [r for r in self._records if r is not None and r.analysis == analysis]


@dataclass
class RunContext:
    """What an analysis gets besides its config: where to write, seeds, caches, the run's
    executor, progress, and the recorder of its part of the manifest.

    Attributes:
        run_dir: the run folder being built (a temporary sibling of ``runs/<name>/`` that
            replaces it when the whole run succeeded).
        cfg: the analysis' validated config.
        seed: the analysis' seed (use it for every split, init and bootstrap).
        use_cache: False disables every cache lookup (``--no-cache``); writes still happen.
        executor: where generation and extraction run (``cfg.executor``): pass it as
            ``executor=`` to :func:`knowlens.executors.generate` / ``extract``. Owned by
            the runner (shared by the run's analyses, closed when the run ends); local
            unless the runner gives another.
        log: what this analysis records (models, tasks, cache hits, notes, executor);
            becomes its entry of ``manifest.json``.
        stages: the run's :class:`StageClock` (shared by its analyses): ``step`` records
            each stage there, ``count_cache`` counts lookups in the innermost open stage.
    """

    run_dir: Path
    cfg: AnalysisConfig
    seed: int
    use_cache: bool = True
    executor: Executor = field(default_factory=LocalExecutor)
    console: Console = field(default_factory=lambda: _console)
    log: AnalysisLog = field(default_factory=AnalysisLog)
    stages: StageClock = field(default_factory=StageClock)
    _models: dict[str, Any] = field(default_factory=dict)
    _progress: Progress | None = None
    _curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    _score_maps: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ---- learning curves -------------------------------------------------------------------
    def record_curve(self, key: str, curve: pd.DataFrame) -> None:
        """Keep the learning curve of one fitted estimator (``key``: its cache key, so a fit
        used twice is shown once); the runner writes them as the ``learning_curves`` table."""
        self._curves.setdefault(key, curve)

    def curves(self) -> pd.DataFrame | None:
        return pd.concat(self._curves.values(), ignore_index=True) if self._curves else None

    def record_score_map(self, key: str, row: dict[str, Any]) -> None:
        """Keep how one fitted one-score estimator maps its raw score to P(correct) (``key``:
        its cache key); the runner writes them as the ``score_maps`` table."""
        self._score_maps.setdefault(key, row)

    def score_maps(self) -> pd.DataFrame | None:
        return pd.DataFrame(list(self._score_maps.values())) if self._score_maps else None

    # ---- models, tasks -------------------------------------------------------------------
    def load_model(self, spec: str) -> Any:
        """Load (once per run) and record a model: name, fingerprint, layers, dtype, device."""
        if "?" in str(spec) and not Path(spec).exists():
            # load_model does not read deployment options; dropping them would be silent.
            raise KnowlensError(
                f"Model '{spec}' of analysis '{self.cfg.analysis}': deployment options after "
                "'?' (e.g. ?system=safety) are read by the jailbreak analyses (prompt_transfer, "
                "activation_maps) and by `knowlens generate/extract -m`, not by this analysis. "
                "List the plain model spec here."
            )
        if spec not in self._models:
            from knowlens.models import load_model

            kind: StageKind = "organism" if str(spec).startswith("organism:") else "load"
            with self.step(f"load model {spec}", kind=kind, model=str(spec)):
                since = time.time()
                handle = load_model(spec, device=self.cfg.device)
                self._count_load(handle, since)
            self._models[spec] = handle
        # Record in *this* analysis' log even when an earlier analysis of the run loaded
        # the model (the handle cache is shared across analyses).
        handle = self._models[spec]
        if spec not in self.log.models:
            self.log.models[spec] = ModelRecord.from_handle(spec, handle)
        return handle

    def _count_load(self, handle: Any, since: float) -> None:
        """Count the cache entry a load read (a converted GGUF under ``models/``, an organism
        under ``organisms/``): a miss if the entry was published during this load (its
        ``checksums.json``, written last by ``atomic_dir``, is newer than the load's start),
        else a hit. A directory outside the cache is no cache lookup."""
        from knowlens._cache import cache_root

        info = getattr(handle, "info", None) or {}
        if not info.get("directory"):
            return
        entry = Path(info["directory"])
        root = cache_root().resolve()
        with contextlib.suppress(OSError):
            if entry.resolve().parent.parent == root:
                written = (entry / "checksums.json").stat().st_mtime
                self.count_cache(entry.resolve().parent.name, hit=written < since)

    def record_task(self, task: Any, *, split: str, n: int | None = None) -> None:
        """Record a task (name, version, split, size) in the manifest."""
        rec = TaskRecord(
            name=getattr(task, "name", str(task)),
            version=str(getattr(task, "version", "")),
            split=split,
            n=int(n if n is not None else len(getattr(task, "examples", []))),
        )
        if rec not in self.log.tasks:
            self.log.tasks.append(rec)

    def note(self, key: str, value: Any) -> None:
        """Record a free-form fact (chosen layer, baseline name...) in the manifest."""
        self.log.notes[key] = json_value(value)

    def count_cache(self, kind: str, *, hit: bool) -> None:
        """Count one lookup of a stage cache (``cache.<kind>`` in the manifest), also in the
        innermost open ``step`` (its ``cache`` outcome and counts)."""
        stats = self.log.cache.setdefault(kind, CacheStats())
        if hit:
            stats.hits += 1
        else:
            stats.misses += 1
        self.stages.count(kind, hit=hit)

    # ---- progress ------------------------------------------------------------------------
    @contextlib.contextmanager
    def step(
        self, description: str, *, kind: str | None = None, model: str | None = None
    ) -> Iterator[None]:
        """Time a step, show it while it runs, and record it as a stage of the manifest
        (``manifest.stages``): ``kind`` (one of ``STAGE_KINDS``; None: the kind the
        description's first word names, e.g. "generate ...", else ``other``), ``model`` it
        ran, seconds, and the outcome of the cache lookups counted while it ran."""
        kind = kind if kind is not None else stage_kind(description)
        if kind not in STAGE_KINDS:
            raise KnowlensError(
                f"ctx.step({description!r}): kind must be one of {', '.join(STAGE_KINDS)}; "
                f"got {kind!r}. Pass one of those, or leave kind out to take it from the "
                "description's first word."
            )
        if self._progress is not None:
            task_id = self._progress.add_task(description, total=None)
        else:
            self.console.print(f"[dim]·[/] {description}", highlight=False)
        op: _Open | None = None
        try:
            with self.stages.stage(self.cfg.key, cast(StageKind, kind), description, model) as op:
                yield
        finally:
            if self._progress is not None:
                self._progress.remove_task(task_id)
                rec = self.stages.record(op.index) if op is not None else None
                if rec is not None:
                    cached = ", cached" if rec.cache == "hit" else ""
                    self._progress.console.print(
                        f"[dim]·[/] {description} [dim]({rec.wall_s:.1f}s{cached})[/]"
                    )

    def track(self, items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        """Iterate with a progress bar (nested in the run's live display)."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        if self._progress is None:
            yield from items
            return
        task_id = self._progress.add_task(description, total=total)
        try:
            for x in items:
                yield x
                self._progress.advance(task_id)
        finally:
            self._progress.remove_task(task_id)

    # ---- caches --------------------------------------------------------------------------
    def cached(
        self,
        kind: str,
        key_obj: Any,
        compute: Callable[[], T],
        save: Callable[[T, Path], None],
        load: Callable[[Path], T],
    ) -> T:
        """Content-addressed memo: ``load(entry)`` on a hit, else ``compute()`` then
        ``save(value, tmpdir)`` written atomically to ``cache_root()/<kind>/<hash(key_obj)>``.

        A hit is verified against the entry's checksums first (damaged: warned about, moved
        aside, recomputed); misses compute under the entry's lock, so two runs sharing a
        cache compute it once."""
        key = stable_hash(key_obj)
        if self.use_cache and (hit := verified_entry(kind, key)) is not None:
            self.count_cache(kind, hit=True)
            return load(hit)
        with entry_lock(kind, key):
            # Another process may have published it while this one waited for the lock.
            if self.use_cache and (hit := verified_entry(kind, key)) is not None:
                self.count_cache(kind, hit=True)
                return load(hit)
            self.count_cache(kind, hit=False)
            value = compute()
            # With use_cache=False an intact entry is kept (readers may hold it open);
            # an absent or damaged one (moved aside by verified_entry) is published.
            if verified_entry(kind, key) is None:
                with atomic_dir(entry_dir(kind, key)) as tmp:
                    save(value, tmp)
        return value

    def cached_frame(self, kind: str, key_obj: Any, compute: Callable[[], pd.DataFrame]) -> Any:
        """:meth:`cached` for a DataFrame (parquet)."""
        return self.cached(
            kind,
            key_obj,
            compute,
            lambda df, d: df.to_parquet(d / "table.parquet", index=False),
            lambda d: pd.read_parquet(d / "table.parquet"),
        )


@dataclass
class RunResult:
    """What :func:`run` returns.

    Attributes:
        run_dir: ``runs/<name>/``.
        tables: ``{analysis id: {table name: DataFrame}}``.
        figures: ``{analysis id: [png/svg paths]}``.
        report: path of ``report.html``.
        cache_hits: ``{analysis id: True if its tables came from the result cache}``.
        stages: this run's timed stages (``manifest.stages``), in start order.
    """

    run_dir: Path
    tables: dict[str, dict[str, pd.DataFrame]]
    figures: dict[str, list[Path]]
    report: Path
    cache_hits: dict[str, bool]
    stages: list[StageRecord] = field(default_factory=list)


def run(
    config: str | Path | dict[str, Any] | RunConfig | AnalysisConfig,
    *,
    use_cache: bool = True,
    progress: bool = True,
    **overrides: Any,
) -> RunResult:
    """Run a config (YAML path, mapping, :class:`RunConfig` or one ``AnalysisConfig``).

    ``overrides`` replace config values: ``name``, ``output``, and any analysis field
    (``models``, ``limit``, ``seed``, ...).
    """
    return run_config(resolve_config(config, overrides), use_cache=use_cache, progress=progress)


def run_config(rc: RunConfig, *, use_cache: bool = True, progress: bool = True) -> RunResult:
    """Run every analysis of a validated :class:`RunConfig` (see module docstring).

    Everything is written to a temporary sibling of ``<output>/<name>/`` that replaces it
    only when the whole run succeeded; on any error the previous run folder is untouched.
    The run's executors are opened before any analysis runs and closed at the end, also
    when the run fails.
    """
    clock = StageClock()
    with building(rc.output, rc.name) as (build, final):
        executors: dict[tuple[str, str | None], Executor] = {}
        try:
            with clock.stage(None, "executor", "open executors"):
                _open_executors(rc, executors)
            return _run_into(
                build,
                final,
                rc,
                use_cache=use_cache,
                progress=progress,
                executors=executors,
                clock=clock,
            )
        finally:
            for ex in executors.values():
                ex.close()


def _executor_key(cfg: AnalysisConfig) -> tuple[str, str | None]:
    return (cfg.executor, cfg.ray_address)


def _open_executors(rc: RunConfig, into: dict[tuple[str, str | None], Executor]) -> None:
    """One executor per distinct (executor, ray_address) of the run, opened up front so a
    bad cluster address fails before any work."""
    ray = {a.ray_address for a in rc.analyses if a.executor == "ray"}
    if len(ray) > 1:
        shown = ", ".join(sorted(str(r or "(local Ray)") for r in ray))
        raise ConfigError(
            f"Run '{rc.name}': its analyses name {len(ray)} different Ray clusters ({shown}); "
            "one process joins one Ray cluster. Give every analysis the same ray_address."
        )
    for a in rc.analyses:
        key = _executor_key(a)
        if key not in into:
            into[key] = get_executor(a.executor, ray_address=a.ray_address)


def _describe(ex: Executor, ray_address: str | None) -> ExecutorRecord:
    details: Any = {}
    with contextlib.suppress(Exception):  # a description must never fail a finished run
        details = json_value(ex.describe())
    return ExecutorRecord(name=ex.name, ray_address=ray_address, details=details)


def _load_results(entry: Path) -> tuple[dict[str, pd.DataFrame], AnalysisLog]:
    tables = {p.stem: pd.read_parquet(p) for p in sorted(entry.glob("*.parquet"))}
    log = json.loads((entry / "manifest.json").read_text())
    if isinstance(log, dict):  # results cached under manifest schema 1: step times of a past run
        log.pop("timings_s", None)
    return tables, AnalysisLog.model_validate(log)


def _cached_results(
    key: str, use_cache: bool
) -> tuple[dict[str, pd.DataFrame], AnalysisLog] | None:
    """The result entry's tables and log, or None (absent, damaged, or unreadable: moved
    aside and recomputed)."""
    if not use_cache or (entry := verified_entry("results", key)) is None:
        return None
    try:
        return _load_results(entry)
    except (OSError, ValueError) as e:  # intact bytes of another schema (ValidationError too)
        quarantine(entry, f"unreadable result entry: {str(e).splitlines()[0]}")
        return None


def _save_results(key: str, tables: dict[str, pd.DataFrame], log: AnalysisLog) -> None:
    if verified_entry("results", key) is not None:  # intact (use_cache=False rerun): keep it
        return
    with atomic_dir(entry_dir("results", key)) as tmp:
        for name, df in tables.items():
            df.reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False)
        atomic_write_json(tmp / "manifest.json", log.model_dump(mode="json"))


def _run_into(
    run_dir: Path,
    final: Path,
    rc: RunConfig,
    *,
    use_cache: bool,
    progress: bool,
    executors: dict[tuple[str, str | None], Executor],
    clock: StageClock,
) -> RunResult:
    from knowlens import __version__

    write_config(run_dir, rc)
    # The clock started before the executors opened; the run started then too.
    started = datetime.now(timezone.utc) - timedelta(seconds=time.perf_counter() - clock.t0)
    manifest = RunManifest(
        knowlens_version=__version__,
        run=rc.name,
        config_source=rc.source,
        config_hash=stable_hash(rc.to_yaml_dict()),
        started_utc=started.isoformat(timespec="seconds"),
        versions=_versions(),
    )
    all_tables: dict[str, dict[str, pd.DataFrame]] = {}
    all_figs: dict[str, list[Path]] = {}
    hits: dict[str, bool] = {}
    models: dict[str, Any] = {}  # shared across analyses: each model loads once per run

    columns = [
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    live = Progress(*columns, console=_console, transient=True, disable=not progress)
    with live:
        for i, acfg in enumerate(rc.analyses, 1):
            module = get_analysis(acfg.analysis)
            _console.print(
                f"[bold]▶ [{i}/{len(rc.analyses)}] {acfg.key}[/] "
                f"[dim]({', '.join(acfg.models) or 'no models'})[/]",
                highlight=False,
            )
            ctx = RunContext(
                run_dir=run_dir,
                cfg=acfg,
                seed=acfg.seed,
                use_cache=use_cache,
                executor=executors[_executor_key(acfg)],
                stages=clock,
                _models=models,
                _progress=live if progress else None,
            )
            t0 = time.perf_counter()
            # Result cache: unchanged config + same model weights + same code -> same tables.
            fps = {}
            for spec in acfg.models:
                fps[spec] = ctx.load_model(spec).fingerprint if loads_models(module) else spec
            key_obj = {
                "config": acfg.model_dump(mode="json", exclude={"id"}),
                "fingerprints": fps,
                "code": code_version(module),
                "runner": RESULTS_VERSION,
                "stages": stage_versions(),
            }
            result_key = stable_hash(key_obj)
            with contextlib.ExitStack() as held:
                with clock.stage(acfg.key, "results", "result cache lookup"):
                    cached = _cached_results(result_key, use_cache)
                    if cached is None:
                        # Computed under the entry's lock; a concurrent run may have
                        # finished it while this one waited (the wait is this stage's).
                        held.enter_context(entry_lock("results", result_key))
                        cached = _cached_results(result_key, use_cache)
                    clock.count("results", hit=cached is not None)
                if cached is None:
                    label = (
                        f"run {acfg.analysis} (own code)"  # its named steps are stages of their own
                    )
                    with clock.stage(acfg.key, "compute", label) as op:
                        tables = dict(module.run(acfg, ctx))
                    curves = ctx.curves()
                    if curves is not None and "learning_curves" not in tables:
                        tables["learning_curves"] = curves
                    maps = ctx.score_maps()
                    if maps is not None and "score_maps" not in tables:
                        tables["score_maps"] = maps
                    done = clock.record(op.index)
                    ctx.log.compute_s = done.wall_s if done is not None else None
                    ctx.log.executor = _describe(ctx.executor, acfg.ray_address)
                    with clock.stage(acfg.key, "results", "store results"):
                        _save_results(result_key, tables, ctx.log)
            if cached is not None:
                tables, prev = cached
                # The cached log says how the tables were made; the models are this run's.
                ctx.log = prev.model_copy(update={"models": {**prev.models, **ctx.log.models}})
                _console.print(f"  [green]✓ cached results[/] [dim]{result_key}[/]")
            hits[acfg.key] = cached is not None
            write_tables(run_dir, acfg.key, tables)
            with ctx.step("figures", kind="figure"):
                figs = draw_figures(run_dir, acfg, tables)
            all_figs[acfg.key] = [in_final(f, run_dir, final) for f in figs]
            all_tables[acfg.key] = tables
            manifest.analyses[acfg.key] = AnalysisRecord(
                analysis=acfg.analysis,
                result_key=result_key,
                from_cache=hits[acfg.key],
                seed=acfg.seed,
                wall_s=round(time.perf_counter() - t0, 2),
                stage_totals=sum_stages(clock.of(acfg.key)),
                **dict(ctx.log),
            )
    manifest.executors = [_describe(ex, addr) for (_, addr), ex in executors.items()]
    _seal(manifest, clock)
    write_manifest(run_dir, manifest)
    with clock.stage(None, "report", "report"):
        build_report(run_dir, redraw=False)
    # The page shows the manifest as saved: with the report's own time, so built once more.
    _seal(manifest, clock)
    write_manifest(run_dir, manifest)
    report = build_report(run_dir, redraw=False)
    # The report names its folder; name the one it will live in, not the build folder.
    text = report.read_text(encoding="utf-8")
    atomic_write_text(report, text.replace(html.escape(str(run_dir)), html.escape(str(final))))
    return RunResult(final, all_tables, all_figs, report_path(final), hits, manifest.stages)


def _seal(manifest: RunManifest, clock: StageClock) -> None:
    """The run's stages, their totals, end time and wall time, as of now."""
    manifest.stages = clock.records()
    manifest.stage_totals = sum_stages(manifest.stages)
    manifest.finished_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.wall_s = round(time.perf_counter() - clock.t0, 2)
