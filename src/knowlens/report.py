"""One self-contained HTML report per run (images embedded, no network).

    from knowlens.report import build_report
    build_report("runs/demo")          # redraws figures from tables/, writes report.html

The report reads only what the run folder holds (``config.yaml``, ``manifest.json`` read back
as a typed ``RunManifest``, ``tables/``), never models or caches, so a run folder copied
anywhere rebuilds its figures and report. It imports only the analysis registry, the run
folder module (:mod:`knowlens.experiments._rundir`) and the contract (:mod:`knowlens.config`). It shows what was run (models
with fingerprints, tasks and sizes, the resolved config, versions), accuracy per task and
model, then one block per analysis: each figure with a caption and its key numbers, and the
tables, sortable by clicking a column header.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from knowlens._cache import atomic_write_text
from knowlens.config import AnalysisConfig, RunConfig, Section, report_sections
from knowlens.experiments._registry import get_analysis
from knowlens.experiments._rundir import (
    RunManifest,
    figure_files,
    figures_dir,
    read_config,
    read_manifest,
    read_tables,
    report_path,
)

__all__ = ["build_report", "draw_figures", "table_html"]

MAX_TABLE_ROWS = 400


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:24px;color:#222;line-height:1.45}
h1{margin-bottom:0}h2{border-bottom:2px solid #6a51a3;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px}.sub{color:#666;margin-top:4px}
figure{margin:16px 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#444;font-size:.92em;margin-top:6px;text-align:left}
ul.keys{background:#f6f4fb;border-left:4px solid #6a51a3;padding:8px 8px 8px 28px}
table{border-collapse:collapse;font-size:.82em;margin:8px 0 16px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0eef7;cursor:pointer;user-select:none;position:sticky;top:0}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.s,th.s{text-align:left}.scroll{max-height:420px;overflow:auto;display:inline-block;max-width:100%}
pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:.82em}
details{margin:8px 0}.note{color:#8a5a00}
"""

# Sort any table by clicking a header (numbers numerically, NaN last); no external code.
_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=!th.classList.contains('asc');
      t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
      th.classList.add(asc?'asc':'desc');
      var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].textContent,y=b.cells[i].textContent;
        var nx=parseFloat(x),ny=parseFloat(y);
        var r=(!isNaN(nx)&&!isNaN(ny))?nx-ny:(isNaN(nx)&&!isNaN(ny)?1:(!isNaN(nx)&&isNaN(ny)?-1:x.localeCompare(y)));
        return asc?r:-r;});
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if pd.isna(v):
            return "nan"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


def table_html(df: pd.DataFrame, *, max_rows: int = MAX_TABLE_ROWS) -> str:
    """A sortable HTML table (first ``max_rows`` rows)."""
    shown = df.head(max_rows)
    numeric = {c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])}
    head = "".join(f'<th class="{"" if c in numeric else "s"}">{_esc(c)}</th>' for c in df.columns)
    body = []
    for rec in shown.itertuples(index=False):
        cells = "".join(
            f'<td class="{"" if c in numeric else "s"}">{_esc(_fmt(v))}</td>'
            for c, v in zip(df.columns, rec, strict=True)
        )
        body.append(f"<tr>{cells}</tr>")
    more = (
        f'<p class="note">showing {max_rows} of {len(df)} rows; the full table is in the CSV.</p>'
        if len(df) > max_rows
        else ""
    )
    return (
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>{more}"
    )


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def draw_figures(
    run_dir: Path, analysis: AnalysisConfig, tables: dict[str, pd.DataFrame]
) -> list[Path]:
    """An analysis' figures, drawn from its tables into ``figures/<id>/`` (no models)."""
    module = get_analysis(analysis.analysis)
    return list(module.figures(tables, figures_dir(run_dir, analysis.key)))


def _default_sections(key: str, tables: dict[str, pd.DataFrame], figs: list[Path]) -> list[Section]:
    return [
        Section(
            title=key,
            figures=[f for f in figs if f.suffix == ".png"],
            tables=list(tables),
        )
    ]


def _run_summary(rc: RunConfig, manifest: RunManifest | None) -> str:
    models: dict[str, dict[str, Any]] = {}
    tasks: list[dict[str, Any]] = []
    rows = []
    for key, a in (manifest.analyses if manifest else {}).items():
        for spec, m in a.models.items():
            models.setdefault(
                spec,
                {
                    "spec": spec,
                    "name": m.name,
                    "fingerprint": m.fingerprint,
                    **{
                        k: v
                        for k, v in (
                            ("n_layers", m.n_layers),
                            ("d_model", m.d_model),
                            ("dtype", m.dtype),
                            ("device", m.device),
                            ("chat_template", m.chat_template),
                        )
                        if v is not None
                    },
                },
            )
        for t in a.tasks:
            rec = {"analysis": key, **t.model_dump()}
            if rec not in tasks:
                tasks.append(rec)
        rows.append(
            {
                "analysis": key,
                "seed": a.seed,
                "from cache": "yes" if a.from_cache else "no",
                "executor": a.executor.name if a.executor else "",
                "wall s": a.wall_s,
            }
        )
    parts = ["<h2>What was run</h2>"]
    if models:
        parts += ["<h3>Models</h3>", table_html(pd.DataFrame(list(models.values())))]
    if tasks:
        parts += ["<h3>Tasks and sizes</h3>", table_html(pd.DataFrame(tasks))]
    if rows:
        parts += ["<h3>Analyses</h3>", table_html(pd.DataFrame(rows))]
    vers = manifest.versions if manifest else {}
    if vers:
        parts.append(
            '<p class="sub">' + " · ".join(f"{_esc(k)} {_esc(v)}" for k, v in vers.items()) + "</p>"
        )
    parts.append(
        "<details><summary>Resolved config (config.yaml)</summary><pre>"
        + _esc(yaml.safe_dump(rc.to_yaml_dict(), sort_keys=False))
        + "</pre></details>"
    )
    return "\n".join(parts)


def build_report(run_dir: str | Path, *, redraw: bool = True) -> Path:
    """Write ``<run_dir>/report.html`` from the run folder; ``redraw`` re-renders figures
    from the saved tables first (what ``knowlens report`` does). Returns the report path."""
    run_dir = Path(run_dir)
    rc = read_config(run_dir)
    manifest = read_manifest(run_dir)
    blocks: list[str] = []
    accuracy: list[pd.DataFrame] = []
    n_figs = 0
    for acfg in rc.analyses:
        tables = read_tables(run_dir, acfg.key)
        if not tables:
            blocks.append(
                f"<h2>{_esc(acfg.key)}</h2><p class='note'>no tables saved for this analysis "
                "(the run did not finish it).</p>"
            )
            continue
        if "accuracy" in tables:
            accuracy.append(tables["accuracy"].assign(analysis=acfg.key))
        # redraw: figures from the saved tables (knowlens report); else the ones the run drew
        figs = draw_figures(run_dir, acfg, tables) if redraw else figure_files(run_dir, acfg.key)
        maker = report_sections(get_analysis(acfg.analysis))
        sections = maker(tables, figs) if maker else _default_sections(acfg.key, tables, figs)
        blocks.append(f'<h2 id="{_esc(acfg.key)}">{_esc(acfg.key)}</h2>')
        for sec in sections:
            blocks.append(f"<h3>{_esc(sec.title)}</h3>")
            if sec.key_numbers:
                blocks.append(
                    '<ul class="keys">'
                    + "".join(
                        f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in sec.key_numbers.items()
                    )
                    + "</ul>"
                )
            for f in sec.figures:
                f = Path(f)
                if f.suffix != ".png" or not f.is_file():
                    continue
                n_figs += 1
                svg = f.with_suffix(".svg")
                link = (
                    f' (<a href="{_esc(svg.relative_to(run_dir))}">SVG</a>)'
                    if svg.is_file() and svg.is_relative_to(run_dir)
                    else ""
                )
                blocks.append(
                    f"<figure>{_img(f, f.stem)}<figcaption><b>Figure {n_figs}</b> "
                    f"({_esc(f.stem)}){link}. {_esc(sec.caption)}</figcaption></figure>"
                )
            if sec.notes:
                blocks.append(f'<p class="note">{_esc(sec.notes)}</p>')
            for name in sec.tables:
                if name in tables:
                    blocks.append(
                        f"<details open><summary>table <code>{_esc(acfg.key)}.{_esc(name)}"
                        f"</code> ({len(tables[name])} rows)</summary>"
                        + table_html(tables[name])
                        + "</details>"
                    )
    acc_html = ""
    if accuracy:
        acc = pd.concat(accuracy, ignore_index=True)
        cols = [c for c in ("model", "task", "split", "n", "accuracy", "analysis") if c in acc]
        acc = acc[cols].drop_duplicates(subset=[c for c in cols if c != "analysis"])
        acc_html = (
            "<h2>Accuracy per task and model</h2><p>Share of the model's own greedy answers "
            "graded correct (the labels every estimator is trained and scored on).</p>"
            + table_html(acc)
        )
    title = f"knowlens report: {rc.name}"
    started = manifest.started_utc if manifest else ""
    version = manifest.knowlens_version if manifest else ""
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_esc(title)}"
        f"</title><link rel='icon' href='data:,'><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='sub'>run folder <code>{_esc(run_dir)}</code>"
        f"{' · started ' + _esc(started) if started else ''} · {n_figs} figures · knowlens "
        f"{_esc(version)}</p>"
        + _run_summary(rc, manifest)
        + acc_html
        + "\n".join(blocks)
        + f"<script>{_JS}</script></body></html>"
    )
    out = report_path(run_dir)
    atomic_write_text(out, doc)
    return out
