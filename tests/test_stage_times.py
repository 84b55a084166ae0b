"""Per-stage times: every ctx.step and runner step becomes a StageRecord of manifest.stages
(kind, label, model, seconds with and without nested stages, cache outcome), added up per
analysis; the report's "Where the time went" shows them; the CLI prints the slowest three."""

from __future__ import annotations

import html
import json
import re
import sys
import time
import types
from pathlib import Path
from typing import Literal

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from knowlens.cli import app
from knowlens.config import AnalysisConfig
from knowlens.errors import KnowlensError
from knowlens.experiments import ANALYSES, register_analysis, run
from knowlens.experiments._rundir import RunManifest, StageRecord, read_manifest, sum_stages
from knowlens.report import _fmt, build_report

OWN_CODE = "run stage_probe (own code)"


# ---- a fake analysis with nested, slept, cached steps ------------------------------------------
class _Config(AnalysisConfig):
    analysis: Literal["stage_probe"] = "stage_probe"
    size: int = 2


def _run(cfg, ctx):
    with ctx.step("train outer", model="m1"):
        time.sleep(0.03)
        with ctx.step("extract inner", model="m1"):
            time.sleep(0.02)
            ctx.count_cache("activations", hit=True)
            ctx.count_cache("activations", hit=False)
        ctx.count_cache("estimators", hit=False)
    with ctx.step("fit probes on the maps", kind="probe"):
        time.sleep(0.01)
    ctx.cached_frame("stage_probe", {"size": cfg.size}, lambda: pd.DataFrame({"x": [cfg.size]}))
    return {"t": pd.DataFrame({"metric": "m", "value": [cfg.size], "n": 1})}


FAKE = types.SimpleNamespace(
    Config=_Config, run=_run, figures=lambda tables, out: [], LOADS_MODELS=False
)


@pytest.fixture
def fake():
    sys.modules.setdefault(__name__, sys.modules[__name__])
    register_analysis("stage_probe", f"{__name__}:FAKE")
    yield
    ANALYSES.pop("stage_probe", None)


def _by_label(stages, analysis="stage_probe"):
    return {s.label: s for s in stages if s.analysis == analysis}


def test_nested_stages_self_time_parent_and_cache_outcomes(tmp_path, fake):
    res = run({"name": "s", "analysis": "stage_probe"}, output=tmp_path, progress=False)
    man = read_manifest(res.run_dir)
    assert man.schema_version == 2 and man.stages == res.stages
    st = _by_label(man.stages)
    outer, inner, probe = st["train outer"], st["extract inner"], st["fit probes on the maps"]
    # kinds: named by the first word, or given
    assert (outer.kind, inner.kind, probe.kind) == ("train", "extract", "probe")
    assert (outer.model, inner.model, probe.model) == ("m1", "m1", None)
    # nesting: the inner stage names its parent; the outer's own seconds exclude it
    assert man.stages[inner.parent] == outer
    assert inner.wall_s >= 0.02 and outer.wall_s >= 0.05 and probe.wall_s >= 0.01
    assert outer.self_s == pytest.approx(outer.wall_s - inner.wall_s, abs=2e-6)
    assert outer.self_s >= 0.03 and inner.self_s == inner.wall_s
    # lookups count in the innermost open stage: mixed in the inner, a miss in the outer
    assert (inner.cache, inner.hits, inner.misses) == ("mixed", 1, 1)
    assert inner.caches["activations"].model_dump() == {"hits": 1, "misses": 1}
    assert (outer.cache, list(outer.caches)) == ("miss", ["estimators"])
    assert probe.cache is None and (probe.hits, probe.misses) == (0, 0)
    # the runner's own stages: result lookup (miss), the analysis' code (holds the
    # cached_frame miss), store, figures; the run's: executors, report
    own = st[OWN_CODE]
    assert (own.kind, own.cache, list(own.caches)) == ("compute", "miss", ["stage_probe"])
    assert own.parent is None and man.stages[outer.parent] == own
    assert own.wall_s >= outer.wall_s + probe.wall_s
    assert (st["result cache lookup"].kind, st["result cache lookup"].cache) == ("results", "miss")
    assert st["figures"].kind == "figure" and st["store results"].kind == "results"
    assert [(s.kind, s.label) for s in man.stages if s.analysis is None] == [
        ("executor", "open executors"),
        ("report", "report"),
    ]
    # start order; every stage has a positive time
    starts = [s.start_s for s in man.stages]
    assert starts == sorted(starts) and all(s.wall_s > 0 for s in man.stages)
    # totals: own seconds of this analysis' stages, by kind; the run's over all stages
    rec = man.analyses["stage_probe"]
    mine = [s for s in man.stages if s.analysis == "stage_probe"]
    assert rec.stage_totals == sum_stages(mine)
    assert rec.stage_totals.stages_s == pytest.approx(
        sum(s.wall_s for s in mine if s.parent is None), abs=1e-5
    )
    by_kind = rec.stage_totals.by_kind
    assert by_kind["train"] == outer.self_s and by_kind["extract"] == inner.self_s
    assert set(by_kind) == {"results", "compute", "train", "extract", "probe", "figure"}
    assert sum(by_kind.values()) == pytest.approx(rec.stage_totals.stages_s, abs=1e-5)
    # hits: activations; misses: activations, estimators, stage_probe, results
    assert (rec.stage_totals.hits, rec.stage_totals.misses) == (1, 4)
    assert man.stage_totals == sum_stages(man.stages)
    assert rec.compute_s == own.wall_s and man.wall_s >= rec.wall_s

    # Unchanged rerun: the result cache answers; no analysis stage runs again.
    res2 = run({"name": "s", "analysis": "stage_probe"}, output=tmp_path, progress=False)
    man2 = read_manifest(res2.run_dir)
    st2 = _by_label(man2.stages)
    assert set(st2) == {"result cache lookup", "figures"}
    look = st2["result cache lookup"]
    assert (look.cache, look.hits, look.misses) == ("hit", 1, 0)
    rec2 = man2.analyses["stage_probe"]
    assert rec2.from_cache and (rec2.stage_totals.hits, rec2.stage_totals.misses) == (1, 0)
    assert rec2.compute_s == own.wall_s  # how long computing them took, in the run that did


def test_manifest_round_trips_typed(tmp_path, fake):
    res = run({"name": "s", "analysis": "stage_probe"}, output=tmp_path, progress=False)
    man = read_manifest(res.run_dir)
    again = RunManifest.model_validate_json(man.model_dump_json())
    assert again == man and again.stages[0] == man.stages[0]
    raw = json.loads((res.run_dir / "manifest.json").read_text())
    assert RunManifest.model_validate(raw) == man
    assert raw["stages"][0] == man.stages[0].model_dump(mode="json")


def test_bad_stage_kind_is_one_line(tmp_path):
    from knowlens.experiments import RunContext

    ctx = RunContext(run_dir=tmp_path, cfg=_Config(), seed=0)
    with pytest.raises(KnowlensError) as e, ctx.step("fry", kind="fry"):
        pass
    msg = str(e.value)
    assert "\n" not in msg and "'fry'" in msg and "generate" in msg and "leave kind out" in msg
    with ctx.step("generate x"):
        pass
    ((rec),) = ctx.stages.records()
    assert (rec.kind, rec.analysis, rec.label) == ("generate", "stage_probe", "generate x")


# ---- old manifests ----------------------------------------------------------------------------
V1_MANIFEST = {
    "schema_version": 1,
    "knowlens_version": "0.1.0",
    "run": "old",
    "config_source": "c.yaml",
    "config_hash": "abc",
    "started_utc": "2025-01-01T00:00:00+00:00",
    "finished_utc": "2025-01-01T00:01:00+00:00",
    "wall_s": 60.0,
    "versions": {"python": "3.11"},
    "executors": [],
    "analyses": {
        "stage_probe": {
            "models": {},
            "tasks": [],
            "cache": {"estimators": {"hits": 0, "misses": 1}},
            "timings_s": {
                "load model tiny": 2.5,
                "generate tiny · capitals/train (40)": 31.25,
                "train probe · tiny on 40 answers": 7.0,
                "stage_probe: figures": 0.75,
                "GCG search on tiny (3 steps)": 4.0,
            },
            "notes": {},
            "executor": None,
            "analysis": "stage_probe",
            "result_key": "k",
            "from_cache": False,
            "seed": 0,
            "wall_s": 50.0,
        }
    },
}


def test_schema_1_manifest_loads_and_reports(tmp_path, fake):
    res = run({"name": "old", "analysis": "stage_probe"}, output=tmp_path, progress=False)
    (res.run_dir / "manifest.json").write_text(json.dumps(V1_MANIFEST))
    man = read_manifest(res.run_dir)
    assert man.schema_version == 2
    got = [(s.label, s.kind, s.wall_s, s.self_s, s.cache) for s in man.stages]
    assert got == [
        ("load model tiny", "load", 2.5, 2.5, None),
        ("generate tiny · capitals/train (40)", "generate", 31.25, 31.25, None),
        ("train probe · tiny on 40 answers", "train", 7.0, 7.0, None),
        ("stage_probe: figures", "figure", 0.75, 0.75, None),
        ("GCG search on tiny (3 steps)", "search", 4.0, 4.0, None),
    ]
    t = man.analyses["stage_probe"].stage_totals
    assert (t.stages_s, t.n_stages, t.hits, t.misses) == (45.5, 5, 0, 0)
    assert t.by_kind == {
        "generate": 31.25,
        "train": 7.0,
        "search": 4.0,
        "load": 2.5,
        "figure": 0.75,
    }
    assert man.stage_totals == t and man.analyses["stage_probe"].compute_s is None
    # unversioned (written before schema_version existed) reads the same
    (res.run_dir / "manifest.json").write_text(
        json.dumps({k: v for k, v in V1_MANIFEST.items() if k != "schema_version"})
    )
    assert read_manifest(res.run_dir) == man
    # `knowlens report` rebuilds from the folder alone, with the old times
    out = CliRunner().invoke(app, ["report", str(res.run_dir)])
    assert out.exit_code == 0, out.output
    page = (res.run_dir / "report.html").read_text()
    row = _row(page, "generate tiny · capitals/train (40)")
    assert ">31.25<" in row and ">generate<" in row
    assert "45.5 s in 5 stages of 50 s wall" in page


def _section(page: str) -> str:
    assert page.count('<h2 id="time">Where the time went</h2>') == 1
    return page.split('<h2 id="time">Where the time went</h2>', 1)[1]


def _row(page: str, label: str) -> str:
    """The table row of the time section whose first cell is ``label``."""
    rows = re.findall(r"<tr>.*?</tr>", _section(page))
    (hit,) = [r for r in rows if f">{html.escape(label)}</td>" in r.split("</td>", 1)[0] + "</td>"]
    return hit


def test_report_shows_the_manifest_numbers(tmp_path, fake):
    res = run({"name": "s", "analysis": "stage_probe"}, output=tmp_path, progress=False)
    man = read_manifest(res.run_dir)
    for page in (res.report.read_text(), build_report(res.run_dir).read_text()):
        sec = _section(page)
        assert f"Run total: <b>{_fmt(man.wall_s)} s wall</b>" in sec
        for s in man.stages:  # the report stage included: the page is built after it
            row = _row(page, s.label)
            assert f">{_fmt(s.self_s)}<" in row and f">{_fmt(s.wall_s)}<" in row, (s, row)
            assert f">{s.kind}<" in row and f">{s.cache or ''}<" in row
        t = man.analyses["stage_probe"].stage_totals
        assert f"{_fmt(t.stages_s)} s in {t.n_stages} stages" in sec
        assert f"cache lookups: {t.hits} hits, {t.misses} misses" in sec
        # slowest first within the analysis' table
        mine = sorted(
            (s for s in man.stages if s.analysis == "stage_probe"), key=lambda s: -s.self_s
        )
        pos = [sec.index(_row(page, s.label)) for s in mine]
        assert pos == sorted(pos)
        assert ">extract inner<" in sec and "activations: 1 hit, 1 miss" in _row(
            page, "extract inner"
        )
        assert _row(page, "extract inner").endswith('<td class="s">train outer</td></tr>')


def test_cli_prints_the_three_slowest_stages(tmp_path, fake, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "cli", "analysis": "stage_probe"}))
    res = CliRunner().invoke(app, ["run", str(cfg), "-o", "out"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    i = lines.index("slowest stages (all in the report's 'Where the time went'):")
    shown = lines[i + 1 : i + 4]
    man = read_manifest(Path("out") / "cli")
    top = sorted(man.stages, key=lambda s: -s.self_s)[:3]
    assert len(shown) == 3
    for line, s in zip(shown, top, strict=True):
        where = f"{s.analysis}: " if s.analysis else ""
        cache = f", cache {s.cache} ({s.hits} hit, {s.misses} miss)" if s.cache else ""
        assert line.strip() == f"{s.self_s:.2f}s  {where}{s.label} [{s.kind}{cache}]", (line, s)
    assert lines[-1].endswith("report.html")


# ---- model loads: cache entries published during the load are misses ---------------------------
class _LoadConfig(AnalysisConfig):
    analysis: Literal["stage_load"] = "stage_load"


LOADER = types.SimpleNamespace(
    Config=_LoadConfig,
    run=lambda cfg, ctx: {"t": pd.DataFrame({"metric": "m", "value": [1], "n": 1})},
    figures=lambda tables, out: [],
)


def test_model_load_stage_counts_cache_entries(tmp_path, tiny_model_dir, monkeypatch):
    import shutil

    import knowlens.models
    from knowlens._cache import atomic_dir, cache_root

    real = knowlens.models.load_model
    entry = cache_root() / "models" / "tiny-converted"

    def converting_load(spec, **kw):  # like an embedded model's first GGUF conversion
        if not entry.exists():
            with atomic_dir(entry) as tmp:
                for f in Path(tiny_model_dir).iterdir():
                    shutil.copy(f, tmp / f.name)
        return real(entry, **kw)

    monkeypatch.setattr(knowlens.models, "load_model", converting_load)
    sys.modules.setdefault(__name__, sys.modules[__name__])
    register_analysis("stage_load", f"{__name__}:LOADER")
    try:
        cfg = {"name": "l", "analysis": "stage_load", "models": ["tiny"], "device": "cpu"}
        outcomes = []
        for i in range(2):  # the second run changes no key but reloads the model
            res = run({**cfg, "seed": i}, output=tmp_path, progress=False)
            st = _by_label(res.stages, "stage_load")
            load = st["load model tiny"]
            assert (load.kind, load.model, list(load.caches)) == ("load", "tiny", ["models"])
            assert load.wall_s > 0
            outcomes.append(load.cache)
            rec = read_manifest(res.run_dir).analyses["stage_load"]
            assert rec.cache["models"].hits + rec.cache["models"].misses == 1
        assert outcomes == ["miss", "hit"]
    finally:
        ANALYSES.pop("stage_load", None)


# ---- a real analysis on the tiny model -------------------------------------------------------
N = 30
GOLD: dict[str, tuple[str, ...]] = {}


def _examples():
    from knowlens.tasks import Example

    return [
        Example(
            id=f"q{i}",
            question=f"What is the capital of country {i}?",
            answers=GOLD.get(f"q{i}", ("zzzq",)),
            topic=f"topic{i % 2}",
        )
        for i in range(N)
    ]


def first_pass():
    return _examples()


def with_gold():
    return _examples()


def _register(builder: str) -> None:
    from knowlens.tasks import TaskSpec, register_task

    register_task(
        TaskSpec(
            name="stage_tiny",
            builder=f"{__name__}:{builder}",
            kind="qa",
            grader="alias_substring",
            template="Q: {question}\nA:",
            max_new_tokens=4,
        ),
        overwrite=True,
    )


@pytest.fixture(scope="module")
def task(tiny_model):
    """A task whose gold makes every other answer of the tiny model correct."""
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    sys.modules.setdefault(__name__, sys.modules[__name__])
    _register("first_pass")  # the registry memoises builders by name: another for the gold
    GOLD.clear()
    for split in ("train", "validation", "test"):
        gens = generate(
            tiny_model, load_task("stage_tiny", split=split), cache=False, progress=False
        )
        for k, g in enumerate(gens.rows):
            if k % 2 == 0 and g.answer.strip():
                GOLD[g.example_id] = (g.answer.strip(),)
    _register("with_gold")
    return "stage_tiny"


@pytest.mark.timeout(600)
def test_tiny_model_run_cold_then_warm(task, tiny_model_dir, tmp_path, monkeypatch):
    from knowlens.experiments import topic_calibration

    # its figures take ~10 s a run on two cores; the figure stage is timed all the same
    monkeypatch.setattr(topic_calibration, "figures", lambda tables, out_dir: [])
    cfg = {
        "name": "tc",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [task],
        "eval_task": task,
        "estimators": ["probe"],
        "train": {"probe_epochs": 3},
        "n_bootstrap": 10,
        "min_n": 2,
        "device": "cpu",
    }
    m = Path(tiny_model_dir).name

    def kinds(stages):
        return {(s.kind, s.label): s for s in stages if s.analysis == "topic_calibration"}

    cold = run(cfg, output=tmp_path, progress=False)
    st = kinds(cold.stages)
    gens = [s for (k, _), s in st.items() if k == "generate"]
    (train,) = [s for (k, _), s in st.items() if k == "train"]
    (score,) = [s for (k, _), s in st.items() if k == "score"]
    (load,) = [s for (k, _), s in st.items() if k == "load"]
    assert len(gens) == 2  # the train split and the test split
    assert all(s.wall_s > 0 and s.self_s > 0 for s in cold.stages)
    assert all(s.model == m and s.cache == "miss" for s in gens)
    assert all(list(s.caches) == ["generations"] for s in gens)
    # training reads the probe's query-form states (read inside it) and fits: two misses
    assert (train.cache, train.model, train.misses, train.hits) == ("miss", m, 2, 0)
    assert set(train.caches) == {"query_activations", "estimators"}
    assert (score.cache, set(score.caches)) == ("miss", {"query_activations", "estimator_scores"})
    assert load.model == str(tiny_model_dir) and load.cache is None  # a folder, not a cache
    assert st[("results", "result cache lookup")].cache == "miss"
    assert ("compute", "run topic_calibration (own code)") in st
    assert ("figure", "figures") in st

    # Another bootstrap size: the tables are recomputed, every stage cache answers.
    warm = run({**cfg, "n_bootstrap": 20}, output=tmp_path, progress=False)
    wt = kinds(warm.stages)
    assert wt[("results", "result cache lookup")].cache == "miss"
    for (kind, label), s in wt.items():
        if kind in ("generate", "train", "score"):
            assert (s.cache, s.misses) == ("hit", 0), (label, s)
            assert s.self_s < 1.0, (label, s)  # near zero: read back, nothing computed
    assert sum(s.self_s for (k, _), s in wt.items() if k in ("generate", "train", "score")) < sum(
        s.self_s for (k, _), s in st.items() if k in ("generate", "train", "score")
    )
    # Unchanged: the result cache answers; the analysis runs no stage of its own.
    again = run({**cfg, "n_bootstrap": 20}, output=tmp_path, progress=False)
    at = kinds(again.stages)
    assert {k for k, _ in at} == {"load", "results", "figure"}
    assert at[("results", "result cache lookup")].cache == "hit"
    man = read_manifest(again.run_dir)
    assert man.analyses["topic_calibration"].from_cache
    assert RunManifest.model_validate_json(man.model_dump_json()) == man
    assert all(isinstance(s, StageRecord) for s in man.stages)
