"""The runner: run folder layout, manifest, result cache, overrides, CLI errors."""

from __future__ import annotations

import json
import logging
import re
import sys
import types
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from knowlens.cli import app
from knowlens.config import AnalysisConfig
from knowlens.errors import ConfigError
from knowlens.executors import Executor, LocalExecutor
from knowlens.experiments import ANALYSES, get_analysis, load_config, register_analysis, run

CALLS: list[int] = []
SEEN: list[tuple[AnalysisConfig, Path]] = []  # (cfg, ctx.run_dir) of each analysis run
COMPUTED: list[int] = []  # ctx.cached_frame computations


class _Config(AnalysisConfig):
    analysis: Literal["fake_count"] = "fake_count"
    size: int = 2
    fail: bool = False  # raise inside run (after writing into the run folder)
    draw: bool = False  # figures() writes one file


def _compute(size):
    COMPUTED.append(size)
    return pd.DataFrame({"x": range(size)})


def _run(cfg, ctx):
    CALLS.append(cfg.size)
    SEEN.append((cfg, ctx.run_dir))
    value = ctx.cached_frame("fake", {"size": cfg.size}, lambda: _compute(cfg.size))
    with ctx.step("work"):
        pass
    ctx.note("size", cfg.size)
    if cfg.fail:
        (ctx.run_dir / "partial.txt").write_text("half a run")
        raise RuntimeError("analysis failed")
    return {"fake_count": pd.DataFrame({"metric": "m", "value": value["x"], "n": 5})}


def _figures(tables, out_dir):
    if len(tables["fake_count"]) != 6:  # size=6 means: draw one figure
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "f.png").write_bytes(b"png")
    return [out_dir / "f.png"]


FAKE = types.SimpleNamespace(Config=_Config, run=_run, figures=_figures, LOADS_MODELS=False)


@pytest.fixture(autouse=True)
def _fake():
    sys.modules.setdefault(__name__, sys.modules[__name__])
    register_analysis("fake_count", f"{__name__}:FAKE")
    CALLS.clear()
    SEEN.clear()
    COMPUTED.clear()
    yield
    ANALYSES.pop("fake_count", None)


def test_run_folder_manifest_and_result_cache(tmp_path):
    out = tmp_path / "runs"
    r1 = run({"name": "a", "analysis": "fake_count", "size": 3}, output=out, progress=False)
    assert CALLS == [3] and r1.cache_hits == {"fake_count": False}
    d = out / "a"
    assert (d / "tables" / "fake_count.fake_count.parquet").is_file()
    assert (d / "tables" / "fake_count.fake_count.csv").is_file()
    assert list(r1.tables["fake_count"]["fake_count"]["value"]) == [0, 1, 2]
    man = json.loads((d / "manifest.json").read_text())
    a = man["analyses"]["fake_count"]
    assert a["seed"] == 0 and a["notes"] == {"size": 3} and not a["from_cache"]
    assert a["cache"]["fake"] == {"hits": 0, "misses": 1}
    # ctx.step("work") is a stage; the lookup outside any named step is the analysis' own
    stages = {s["label"]: s for s in man["stages"] if s["analysis"] == "fake_count"}
    assert stages["work"]["kind"] == "other" and stages["work"]["wall_s"] > 0
    own = stages["run fake_count (own code)"]
    assert (own["kind"], own["cache"], own["caches"]) == (
        "compute",
        "miss",
        {"fake": {"hits": 0, "misses": 1}},
    )
    assert man["versions"]["torch"] and man["config_hash"]
    # The resolved config re-loads to the same analyses.
    assert load_config(d / "config.yaml").analyses[0].size == 3

    r2 = run(d / "config.yaml", progress=False)
    assert CALLS == [3] and r2.cache_hits == {"fake_count": True}  # nothing recomputed
    pd.testing.assert_frame_equal(
        r1.tables["fake_count"]["fake_count"], r2.tables["fake_count"]["fake_count"]
    )
    # Changing a field recomputes; the stage-level cache is still reused where keys match.
    run(d / "config.yaml", size=4, progress=False)
    run(d / "config.yaml", size=3, use_cache=False, progress=False)
    assert CALLS == [3, 4, 3]


def test_a_bumped_stage_or_estimator_version_recomputes_cached_results(tmp_path, monkeypatch):
    """Results rest on the stages' caches: a stage whose code version changes (here the
    logistic probe's fit) invalidates the cached tables too, not only its own entries."""
    from knowlens.estimators import LogisticProbe
    from knowlens.experiments._runner import stage_versions

    versions = stage_versions()
    assert versions["estimator:LogisticProbe"] == LogisticProbe.code_version == "2"
    assert {"generation", "activations", "estimators", "scores", "organisms"} <= set(versions)
    out = tmp_path / "runs"
    cfg = {"name": "v", "analysis": "fake_count", "size": 3}
    run(cfg, output=out, progress=False)
    assert run(cfg, output=out, progress=False).cache_hits == {"fake_count": True}
    key = LogisticProbe(layer=0).cache_key()
    monkeypatch.setattr(LogisticProbe, "code_version", "3")
    assert LogisticProbe(layer=0).cache_key() != key
    assert run(cfg, output=out, progress=False).cache_hits == {"fake_count": False}
    monkeypatch.setattr("knowlens.generation.GENERATION_VERSION", "changed")
    assert run(cfg, output=out, progress=False).cache_hits == {"fake_count": False}
    assert CALLS == [3, 3, 3]


def test_registry_errors():
    with pytest.raises(ConfigError, match="Did you mean: probe_transfer"):
        get_analysis("probe_transfr")
    register_analysis("broken", "json:dumps")
    with pytest.raises(ConfigError, match="lacks Config, run, figures"):
        get_analysis("broken")
    ANALYSES.pop("broken")


def test_cli_run_and_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "cli", "analysis": "fake_count"}))
    res = CliRunner().invoke(app, ["run", str(cfg), "--set", "size=5", "-o", "out"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(
        tmp_path / "out" / "cli" / "report.html"
    ) or res.output.strip().endswith("out/cli/report.html")
    assert CALLS == [5]
    # A malformed config: the CLI's main() prints one red line and exits 2.
    cfg.write_text("analysis: fake_count\nsize: lots\n")
    from knowlens.cli import main

    monkeypatch.setattr(sys, "argv", ["knowlens", "run", str(cfg)])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2


def _cli(args, env=None):
    """Invoke the CLI in-process; returns (exit code, non-empty output lines)."""
    res = CliRunner().invoke(app, args, env=env)
    lines = [line for line in res.output.splitlines() if line.strip()]
    return res.exit_code, lines


def _write_cfg(tmp_path, **fields):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "cli", "analysis": "fake_count", **fields}))
    return cfg


def test_cli_set_limit_and_seed_reach_the_analysis(tmp_path):
    cfg = _write_cfg(tmp_path, limit=50, seed=1)
    code, out = _cli(["run", str(cfg), "--set", "limit=7", "--set", "seed=3", "-o", str(tmp_path)])
    assert code == 0, out
    ((got, _),) = SEEN
    assert (got.limit, got.seed) == (7, 3)  # --set is not masked by the CLI's defaults
    # Options given on the command line override; limit=null means "all examples".
    code, out = _cli(["run", str(cfg), "--limit", "9", "--set", "limit=null", "-o", str(tmp_path)])
    assert code == 2 and "given twice" in out[-1], out
    code, out = _cli(["run", str(cfg), "--set", "limit=null", "--seed", "4", "-o", str(tmp_path)])
    assert code == 0, out
    assert (SEEN[-1][0].limit, SEEN[-1][0].seed) == (None, 4)
    # Omitted options leave the file's values alone.
    code, out = _cli(["run", str(cfg), "-o", str(tmp_path)])
    assert code == 0 and (SEEN[-1][0].limit, SEEN[-1][0].seed) == (50, 1)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "limit=abc"], ["'limit'", "'abc'"]),
        (["--set", "limit=0"], ["'limit'", "greater than or equal to 1"]),
        (["--set", "limit=true"], ["'limit'", "not a boolean"]),
        (["--set", "limit=[1,"], ["--set limit=[1,", "not valid YAML"]),
        (["--set", "seed=-1"], ["'seed'", "-1"]),
        (["--seed", "-1"], ["'seed'", "greater than or equal to 0"]),
        (["--seed", str(2**32)], ["'seed'", "less than 4294967296"]),
        (["--set", "nosuch=1"], ["nosuch", "not a field"]),
        (["--set", "size"], ["key=value"]),
        (["--set", "size=1", "--set", "size=2"], ["given twice"]),
        (["--models", ""], ["--models", "no empty entry"]),
        (["--models", "a,,b"], ["--models", "no empty entry"]),
        (["--executor", "local", "--ray-address", "127.0.0.1:1"], ["ray_address", "'ray'"]),
        (["--ray-address", "auto"], ["ray_address", "executor is 'local'"]),
        (["--executor", "spark"], ["'executor'", "spark"]),
        (["--limit", "x"], ["--limit", "integer"]),
        (["--bogus"], ["No such option", "--bogus"]),
    ],
)
def test_cli_run_bad_options_are_one_line_before_any_work(tmp_path, args, needles):
    cfg = _write_cfg(tmp_path)
    code, out = _cli(["run", str(cfg), "-o", str(tmp_path / "runs"), *args])
    assert code == 2, out
    assert len(out) == 1 and "Traceback" not in out[0] and out[0].startswith("error:"), out
    for n in needles:
        assert n in out[0], (n, out)
    assert CALLS == [] and not (tmp_path / "runs" / "cli").exists()


def test_failed_run_leaves_the_previous_run_folder_intact(tmp_path):
    out = tmp_path / "runs"
    r1 = run({"name": "a", "analysis": "fake_count", "size": 6}, output=out, progress=False)
    d = out / "a"
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert Path("config.yaml") in before and Path("manifest.json") in before
    # The analysis ran in a build folder next to runs/a, which replaced it at the end.
    ((_, build),) = SEEN
    assert build.parent == out and build.name.startswith(".tmp-a~") and not build.exists()
    assert r1.run_dir == d and r1.report == d / "report.html"
    assert r1.figures["fake_count"] == [d / "figures" / "fake_count" / "f.png"]
    assert str(d) in r1.report.read_text() and ".tmp-" not in r1.report.read_text()

    with pytest.raises(RuntimeError, match="analysis failed"):
        run(
            {"name": "a", "analysis": "fake_count", "size": 4, "fail": True},
            output=out,
            progress=False,
        )
    after = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before  # config, tables, figures, manifest, report: all the old run's
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # no build folder left behind
    assert load_config(d / "config.yaml").analyses[0].size == 6

    # A successful rerun replaces the whole folder (no stale figure of the old run stays).
    run({"name": "a", "analysis": "fake_count", "size": 3}, output=out, progress=False)
    assert load_config(d / "config.yaml").analyses[0].size == 3
    assert not (d / "figures" / "fake_count" / "f.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a"]


def test_run_folder_swap_without_renameat2(tmp_path, monkeypatch):
    from knowlens.experiments import _rundir

    monkeypatch.setattr(_rundir, "_exchange", lambda a, b: False)
    out = tmp_path / "runs"
    for size in (2, 3):
        run({"name": "a", "analysis": "fake_count", "size": size}, output=out, progress=False)
        assert load_config(out / "a" / "config.yaml").analyses[0].size == size
    assert sorted(p.name for p in out.iterdir()) == ["a"]


def test_output_that_cannot_hold_runs_is_one_line_before_work(tmp_path):
    cfg = _write_cfg(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for o, needle in [
        (blocker, "is a file"),
        (blocker / "sub", "is a file"),
        (Path("/proc/knowlens-no"), "Cannot write run folders"),
    ]:
        code, out = _cli(["run", str(cfg), "-o", str(o)])
        assert code == 2 and len(out) == 1 and needle in out[0], (o, out)
    code, out = _cli(["run", str(cfg), "-o", str(tmp_path), "--name", "file"])
    assert code == 2 and "(the run folder) is a file" in out[0], out
    assert CALLS == []


def test_unwritable_cache_is_one_line(tmp_path):
    cfg = _write_cfg(tmp_path)
    not_a_dir = tmp_path / "cache-file"
    not_a_dir.write_text("x")
    code, out = _cli(["run", str(cfg), "-o", str(tmp_path)], env={"KNOWLENS_CACHE": str(not_a_dir)})
    assert code == 2 and len(out) == 1, out
    assert "KNOWLENS_CACHE" in out[0] and str(not_a_dir) in out[0]
    assert not (tmp_path / "cli").exists()


def test_run_on_a_directory_names_its_config_files(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "b.yaml").write_text("analysis: fake_count\n")
    (d / "a.yml").write_text("analysis: fake_count\n")
    code, out = _cli(["run", str(d)])
    assert code == 2 and len(out) == 1, out
    assert "is a directory; expected a YAML config file" in out[0]
    assert f"{d / 'a.yml'}, {d / 'b.yaml'}" in out[0]
    code, out = _cli(["run", str(tmp_path / "none")])
    assert code == 2 and "does not exist" in out[0]


def _entry(kind):
    from knowlens._cache import cache_root

    (entry,) = [p for p in (cache_root() / kind).iterdir() if not p.name.startswith(".")]
    return entry


def test_damaged_result_entry_is_warned_about_and_recomputed(tmp_path, caplog):
    from knowlens._cache import cache_root

    out = tmp_path / "runs"
    cfg = {"name": "a", "analysis": "fake_count", "size": 3}
    run(cfg, output=out, progress=False)
    entry = _entry("results")
    assert (entry / "checksums.json").is_file()  # written through atomic_dir
    table = entry / "fake_count.parquet"
    table.write_bytes(table.read_bytes()[:-8] + b"XXXXXXXX")  # same size, other bytes
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        r = run(cfg, output=out, progress=False)
    assert CALLS == [3, 3] and r.cache_hits == {"fake_count": False}
    assert any("damaged entry results/" in m for m in caplog.messages), caplog.messages
    assert list(r.tables["fake_count"]["fake_count"]["value"]) == [0, 1, 2]
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    # The recomputed entry is intact again: the next run is a hit.
    assert run(cfg, output=out, progress=False).cache_hits == {"fake_count": True}
    assert CALLS == [3, 3]


def test_damaged_stage_entry_is_recomputed(tmp_path, caplog):
    out = tmp_path / "runs"
    run({"name": "a", "analysis": "fake_count", "size": 3}, output=out, progress=False)
    assert COMPUTED == [3]
    stage = _entry("fake")
    (stage / "table.parquet").write_bytes(b"truncated")
    # Same stage key (size=3), another result key (min_n): the analysis reruns and reads
    # the damaged stage entry.
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        r = run(
            {"name": "b", "analysis": "fake_count", "size": 3, "min_n": 2},
            output=out,
            progress=False,
        )
    assert COMPUTED == [3, 3]  # damaged -> recomputed, not read
    assert any("damaged entry fake/" in m for m in caplog.messages), caplog.messages
    assert list(r.tables["fake_count"]["fake_count"]["value"]) == [0, 1, 2]
    man = json.loads((out / "b" / "manifest.json").read_text())
    assert man["analyses"]["fake_count"]["cache"]["fake"] == {"hits": 0, "misses": 1}


def test_ctx_load_model_refuses_deployment_options(tmp_path):
    from knowlens.errors import KnowlensError
    from knowlens.experiments import RunContext

    ctx = RunContext(run_dir=tmp_path, cfg=_Config(), seed=0)
    with pytest.raises(KnowlensError, match=r"deployment options after '\?'") as e:
        ctx.load_model("smollm2-135m-instruct?system=safety")
    assert "\n" not in str(e.value) and "prompt_transfer" in str(e.value)


# ---- the typed manifest ----------------------------------------------------------------------
def test_manifest_reads_back_typed(tmp_path):
    from knowlens.experiments._rundir import RunManifest, read_manifest

    out = tmp_path / "runs"
    run({"name": "a", "analysis": "fake_count", "size": 3}, output=out, progress=False)
    man = read_manifest(out / "a")
    assert isinstance(man, RunManifest) and man.schema_version == 2 and man.run == "a"
    rec = man.analyses["fake_count"]
    assert (rec.analysis, rec.seed, rec.from_cache, rec.notes) == (
        "fake_count",
        0,
        False,
        {"size": 3},
    )
    assert (rec.cache["fake"].hits, rec.cache["fake"].misses) == (0, 1)
    assert rec.executor is not None and rec.executor.name == "local"
    assert [e.name for e in man.executors] == ["local"]
    assert man.finished_utc is not None and man.wall_s is not None and man.wall_s >= rec.wall_s
    # Every field of every record says what it means (the schema is the documentation).
    from knowlens.experiments import _rundir

    for cls in (
        RunManifest,
        _rundir.AnalysisRecord,
        _rundir.ModelRecord,
        _rundir.TaskRecord,
        _rundir.CacheStats,
        _rundir.ExecutorRecord,
        _rundir.StageRecord,
        _rundir.StageTotals,
    ):
        undocumented = [n for n, f in cls.model_fields.items() if not f.description]
        assert not undocumented, (cls.__name__, undocumented)


def test_manifest_versions_and_damage_are_one_line(tmp_path):
    from knowlens.errors import KnowlensError
    from knowlens.experiments._rundir import read_manifest

    out = tmp_path / "runs"
    run({"name": "a", "analysis": "fake_count", "size": 3}, output=out, progress=False)
    mpath = out / "a" / "manifest.json"
    data = json.loads(mpath.read_text())
    # Written before the schema was versioned (schema 1 fields, no schema_version) -> read.
    legacy = {
        k: json.loads(json.dumps(v))  # a copy: data is written again below
        for k, v in data.items()
        if k not in ("schema_version", "executors", "stages", "stage_totals")
    }
    for a in legacy["analyses"].values():
        a.pop("executor")
        a.pop("stage_totals")
        a.pop("compute_s")
        a["timings_s"] = {"work": 0.5}
    mpath.write_text(json.dumps(legacy))
    man = read_manifest(out / "a")
    assert man.analyses["fake_count"].executor is None and man.executors == []
    assert [(s.label, s.kind, s.self_s) for s in man.stages] == [("work", "other", 0.5)]
    for text, needle in [
        (
            json.dumps({**data, "schema_version": 3}),
            "schema_version 3; this knowlens reads versions 1 to 2",
        ),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({**data, "run": 7}), "field 'run'"),
        (json.dumps({**data, "bogus": 1}), "bogus"),
    ]:
        mpath.write_text(text)
        with pytest.raises(KnowlensError) as e:
            read_manifest(out / "a")
        assert needle in str(e.value) and "\n" not in str(e.value), (needle, str(e.value))
    mpath.unlink()
    assert read_manifest(out / "a") is None


def test_result_entry_of_another_schema_is_moved_aside_and_recomputed(tmp_path, caplog):
    from knowlens._cache import write_checksums

    out = tmp_path / "runs"
    cfg = {"name": "a", "analysis": "fake_count", "size": 3}
    run(cfg, output=out, progress=False)
    entry = _entry("results")
    (entry / "manifest.json").write_text(json.dumps({"tasks": "not a list"}))
    write_checksums(entry)  # intact bytes, unreadable content
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        r = run(cfg, output=out, progress=False)
    assert CALLS == [3, 3] and r.cache_hits == {"fake_count": False}
    assert any("unreadable result entry" in m for m in caplog.messages), caplog.messages
    assert run(cfg, output=out, progress=False).cache_hits == {"fake_count": True}


# ---- the registry ------------------------------------------------------------------------------
def test_registry_checks_the_analysis_protocol():
    from knowlens.config import Analysis

    assert isinstance(get_analysis("fake_count"), Analysis)
    bad = types.SimpleNamespace(Config=_Config, run=_run, figures=_figures, CODE_VERSION=2)
    globals()["BAD"] = bad
    for target, needle in [
        (f"{__name__}:BAD", "'CODE_VERSION' must be a str; got 2"),
        (f"{__name__}:NOPE", f"module '{__name__}' has no 'NOPE'"),
        ("knowlens_no_such_pkg.mod", "not installed"),
    ]:
        register_analysis("broken", target)
        with pytest.raises(ConfigError, match=re.escape(needle)):
            get_analysis("broken")
    bad.Config = dict
    register_analysis("broken", f"{__name__}:BAD")
    with pytest.raises(ConfigError, match="Config must subclass"):
        get_analysis("broken")
    # Re-registering a name points it at the new target (no stale object).
    register_analysis("broken", f"{__name__}:FAKE")
    assert get_analysis("broken") is FAKE
    ANALYSES.pop("broken")
    with pytest.raises(ConfigError, match="needs a name"):
        register_analysis("", "x")


# ---- the run's executor --------------------------------------------------------------------------
class _ShardedHere(Executor):
    """Takes the sharded (non-local) path of knowlens.executors but computes every block in
    this process: the Ray code path without a Ray cluster."""

    name = "sharded"

    def __init__(self) -> None:
        self.closed = False

    def run_blocks(self, stage, model, blocks, root, on_done):
        LocalExecutor.run_blocks(self, stage, model, blocks, root, on_done)

    def numerics(self, model):
        return LocalExecutor.numerics(self, model)

    def describe(self):
        return {"executor": "sharded", "workers": 1}

    def close(self):
        self.closed = True


@pytest.fixture
def sharded(monkeypatch):
    """`executor: ray` gets a _ShardedHere; every executor the runner makes is recorded."""
    from knowlens.experiments import _runner

    made = []

    def fake_get_executor(name, *, ray_address=None):
        ex = _ShardedHere() if name == "ray" else LocalExecutor()
        made.append((name, ray_address, ex))
        return ex

    monkeypatch.setattr(_runner, "get_executor", fake_get_executor)
    return made


def test_runner_owns_one_executor_per_run(tmp_path, sharded):
    seen = []
    real_run = FAKE.run
    FAKE.run = lambda cfg, ctx: (seen.append(ctx.executor), real_run(cfg, ctx))[1]
    try:
        suite = {
            "name": "s",
            "executor": "ray",
            "analyses": [
                {"analysis": "fake_count", "id": "one", "size": 2},
                {"analysis": "fake_count", "id": "two", "size": 3},
            ],
        }
        res = run(suite, output=tmp_path, progress=False)
        ((name, addr, ex),) = sharded  # one executor for the whole run...
        assert (name, addr) == ("ray", None) and seen == [ex, ex]  # ...shared by both
        assert ex.closed  # closed when the run ended
        from knowlens.experiments._rundir import read_manifest

        man = read_manifest(res.run_dir)
        assert [(e.name, e.details) for e in man.executors] == [
            ("sharded", {"executor": "sharded", "workers": 1})
        ]
        assert {k: a.executor.name for k, a in man.analyses.items()} == {
            "one": "sharded",
            "two": "sharded",
        }
        # A failing run closes its executor too.
        with pytest.raises(RuntimeError, match="analysis failed"):
            run(
                {**suite, "analyses": [{"analysis": "fake_count", "fail": True}]},
                output=tmp_path,
                progress=False,
            )
        assert sharded[-1][2].closed and len(sharded) == 2
    finally:
        FAKE.run = real_run


def test_one_run_joins_one_ray_cluster(tmp_path, sharded):
    suite = {
        "name": "s",
        "executor": "ray",
        "analyses": [
            {"analysis": "fake_count", "id": "one", "ray_address": "10.0.0.1:6379"},
            {"analysis": "fake_count", "id": "two", "ray_address": "10.0.0.2:6379"},
        ],
    }
    with pytest.raises(ConfigError, match="2 different Ray clusters") as e:
        run(suite, output=tmp_path, progress=False)
    assert "\n" not in str(e.value) and sharded == [] and CALLS == []
    assert not (tmp_path / "s").exists()


def test_unreachable_ray_address_is_one_line_before_work(tmp_path):
    pytest.importorskip("ray")
    cfg = _write_cfg(tmp_path)
    code, out = _cli(
        ["run", str(cfg), "-o", str(tmp_path), "--executor", "ray", "--ray-address", "127.0.0.1:9"]
    )
    assert code == 2 and len(out) == 1 and "127.0.0.1:9" in out[0], out
    assert CALLS == [] and not (tmp_path / "cli").exists()


@pytest.mark.timeout(300)
def test_prompt_transfer_generates_on_the_run_executor(tiny_model_dir, tmp_path, sharded):
    from knowlens._cache import cache_root

    cfg = {
        "analysis": "prompt_transfer",
        "models": [str(tiny_model_dir), f"{tiny_model_dir}?system=safety"],
        "n_prompts": 3,
        "templates": ["gcg"],
        "max_new_tokens": 4,
        "n_bootstrap": 0,
        "device": "cpu",
    }
    local = run({**cfg, "name": "local"}, output=tmp_path, progress=False)
    assert not (cache_root() / "shards" / "generations").exists()
    other = run({**cfg, "name": "ray", "executor": "ray"}, output=tmp_path, progress=False)
    assert [n for n, _, _ in sharded] == ["local", "ray"]
    # the sharded path ran (one shard folder per target), with the same responses
    assert len(list((cache_root() / "shards" / "generations").iterdir())) == 2
    for name in ("verdicts", "asr", "prompt_transfer"):
        pd.testing.assert_frame_equal(
            local.tables["prompt_transfer"][name], other.tables["prompt_transfer"][name]
        )


@pytest.mark.timeout(300)
def test_activation_maps_extracts_on_the_run_executor(tiny_model_dir, tmp_path, sharded):
    from knowlens._cache import cache_root

    cfg = {
        "analysis": "activation_maps",
        "models": [str(tiny_model_dir)],
        "n_prompts": 3,
        "n_direction": 3,
        "max_len": 48,
        "statistic": "probe",
        "device": "cpu",
    }
    local = run({**cfg, "name": "local"}, output=tmp_path, progress=False)
    assert not (cache_root() / "shards" / "activations").exists()
    other = run({**cfg, "name": "ray", "executor": "ray"}, output=tmp_path, progress=False)
    # bare harmful + harmless (direction/probe), benign + jailbreak maps: 4 extractions
    assert len(list((cache_root() / "shards" / "activations").iterdir())) == 4
    a, b = (r.tables["activation_maps"] for r in (local, other))
    pd.testing.assert_frame_equal(a["position_counts"], b["position_counts"])
    ta, tb = a["activation_maps"], b["activation_maps"]
    pd.testing.assert_frame_equal(ta.drop(columns="value"), tb.drop(columns="value"))
    # same hidden states, other batch compositions: equal up to float32 rounding
    np.testing.assert_allclose(tb["value"], ta["value"], rtol=1e-4, atol=1e-5)
