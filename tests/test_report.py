"""HTML report: self-contained, figures and sortable tables present, no console errors in
headless Chromium; `knowlens report` redraws figures from saved tables."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import types
from typing import Literal

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from knowlens import plots
from knowlens.config import AnalysisConfig, Section
from knowlens.experiments import ANALYSES, register_analysis, run
from knowlens.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Config(AnalysisConfig):
    analysis: Literal["fake_matrix"] = "fake_matrix"
    size: int = 3


def _run(cfg, ctx):
    ctx.note("calls", ctx.note.__name__)
    rows = [
        {
            "model": "m",
            "train_task": f"t{i}",
            "test_task": f"t{j}",
            "metric": "auroc",
            "value": 0.5 + 0.1 * i - 0.05 * j,
            "ci_low": 0.4,
            "ci_high": 0.9,
            "n": 20 + i,
        }
        for i in range(cfg.size)
        for j in range(cfg.size)
    ]
    acc = pd.DataFrame([{"model": "m", "task": "t0", "split": "test", "n": 20, "accuracy": 0.4}])
    return {"fake_matrix": pd.DataFrame(rows), "accuracy": acc}


def _figures(tables, out_dir):
    t = tables["fake_matrix"]
    m = plots.pivot(t, index="train_task", columns="test_task")
    fig, ax = plt.subplots(figsize=plots.heatmap_size(m))
    plots.heatmap(
        ax, m, center=0.5, cbar_label="AUROC", xlabel="Test dataset", ylabel="Train dataset"
    )
    return plots.save_figure(fig, out_dir, "fake")


def _sections(tables, figs):
    return [
        Section(
            title="Fake matrix",
            caption="A fake transfer matrix.",
            figures=[f for f in figs if f.suffix == ".png"],
            key_numbers={"max": f"{tables['fake_matrix']['value'].max():.2f}"},
            tables=["fake_matrix"],
        )
    ]


FAKE = types.SimpleNamespace(
    Config=_Config,
    run=_run,
    figures=_figures,
    report_sections=_sections,
    LOADS_MODELS=False,
    CODE_VERSION="1",
)


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    sys.modules.setdefault(__name__, sys.modules[__name__])
    register_analysis("fake_matrix", f"{__name__}:FAKE")
    yield run({"name": "r", "analysis": "fake_matrix"}, output=tmp_path / "runs", progress=False)
    ANALYSES.pop("fake_matrix", None)


def test_report_is_self_contained(fake_run):
    html = fake_run.report.read_text()
    assert "<h3>Analyses</h3>" in html  # from the typed manifest
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(imgs) == 1 and base64.b64decode(imgs[0])[:4] == b"\x89PNG"
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network
    assert html.count('class="sortable"') >= 3  # analyses, accuracy, fake_matrix table
    assert "Accuracy per task and model" in html and "A fake transfer matrix." in html
    assert "<b>max</b>: 0.70" in html
    assert "Resolved config" in html and "fake_matrix" in html


def test_report_redraws_from_tables(fake_run):
    png = fake_run.run_dir / "figures" / "fake_matrix" / "fake.png"
    png.unlink()
    out = build_report(fake_run.run_dir)
    assert png.is_file() and out == fake_run.run_dir / "report.html"
    from typer.testing import CliRunner

    from knowlens.cli import app

    res = CliRunner().invoke(app, ["report", str(fake_run.run_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().endswith("report.html")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make browser installs it)")
def test_report_renders_in_headless_chromium(fake_run, tmp_path):
    # Inject a probe that records any JS error and checks the sort handler runs.
    html = fake_run.report.read_text().replace(
        "</body>",
        "<script>var th=document.querySelector('table.sortable th');th.click();th.click();"
        "document.body.setAttribute('data-sorted', th.className);"
        "document.body.setAttribute('data-imgs', [].filter.call(document.images,"
        "function(i){return i.complete&&i.naturalWidth>0;}).length);</script></body>",
    )
    page = tmp_path / "page.html"
    page.write_text(html)
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=3000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = proc.stdout
    assert re.search(r'data-sorted="[a-z ]*\bdesc"', dom), proc.stderr[-2000:]
    assert 'data-imgs="1"' in dom
    assert dom.count("<table") >= 3 and "<figure>" in dom
    console = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console


def test_report_rebuilds_from_a_copied_run_folder_alone(fake_run, tmp_path, monkeypatch):
    """`knowlens report` needs only the run folder: no models, no cache."""
    from typer.testing import CliRunner

    import knowlens.models
    from knowlens.cli import app

    copy = tmp_path / "elsewhere" / "r"
    shutil.copytree(fake_run.run_dir, copy)
    shutil.rmtree(fake_run.run_dir)  # nothing may be read from the original
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("KNOWLENS_CACHE", str(empty))

    def no_models(*a, **k):
        raise AssertionError("the report loaded a model")

    monkeypatch.setattr(knowlens.models, "load_model", no_models)
    for p in (copy / "figures").rglob("*.png"):
        p.unlink()
    (copy / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(copy / "report.html")
    html = (copy / "report.html").read_text()
    assert (copy / "figures" / "fake_matrix" / "fake.png").is_file()  # redrawn from tables
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 1
    assert f"run folder <code>{copy}</code>" in html and "<b>max</b>: 0.70" in html
    assert list(empty.iterdir()) == []  # the cache was never touched


def test_report_of_a_folder_without_manifest_or_config(fake_run):
    from knowlens.errors import KnowlensError

    d = fake_run.run_dir
    (d / "manifest.json").unlink()  # an unfinished run: the report still shows the tables
    html = build_report(d).read_text()
    assert "A fake transfer matrix." in html and "<h3>Analyses</h3>" not in html
    (d / "config.yaml").unlink()
    with pytest.raises(KnowlensError, match="not a knowlens run folder"):
        build_report(d)
