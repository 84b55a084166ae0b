"""One self-contained HTML report per run (images embedded, no network).

    from knowlens.report import build_report
    build_report("runs/demo")          # redraws figures from tables/, writes report.html

The report reads only what the run folder holds (``config.yaml``, ``manifest.json`` read back
as a typed ``RunManifest``, ``tables/``), never models or caches, so a run folder copied
anywhere rebuilds its figures and report. It imports only the analysis registry, the run
folder module (:mod:`knowlens.experiments._rundir`), the contract (:mod:`knowlens.config`)
and the seed-claim checks (:mod:`knowlens.claims`). It shows what was run (models
with fingerprints, tasks and sizes, the resolved config, versions), accuracy per task and
model, then one block per analysis: each figure with a caption and its key numbers, and the
tables, sortable by clicking a column header; then "Where the time went": each analysis'
stages from ``manifest.stages`` (seconds, slowest first, cache hits), and the run's total;
last, "What the seed figures show, and what this run measured" (:mod:`knowlens.claims`, one
row per seed claim with value, 95% CI, n and a rule-made verdict; also ``claims.json``).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from knowlens import plots
from knowlens._cache import atomic_write_text
from knowlens.claims import CLAIMS_FILE, ClaimRow, check_run, write_claims
from knowlens.config import AnalysisConfig, RunConfig, Section, report_sections
from knowlens.experiments._registry import get_analysis
from knowlens.experiments._rundir import (
    RunManifest,
    StageRecord,
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
.claims-wrap{overflow-x:auto}
table.claims td{white-space:normal;text-align:left;vertical-align:top;max-width:26em}
table.claims td.num{text-align:right;white-space:nowrap}
td.v-reproduced{background:#e5f5e0}td.v-not{background:#fde0dd}
td.v-inconclusive{background:#fff3cd}td.v-notrun{color:#888}
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
    """An analysis' figures, drawn from its tables into ``figures/<id>/`` (no models), and
    the learning curves of its trained estimators when it has any."""
    module = get_analysis(analysis.analysis)
    out_dir = figures_dir(run_dir, analysis.key)
    figs = list(module.figures(tables, out_dir))
    curves = tables.get("learning_curves")
    if curves is not None and len(curves):
        figs += plots.save_figure(plots.learning_curves(curves), out_dir, "learning_curves")
    return figs


def curves_section(curves: pd.DataFrame, figs: list[Path]) -> Section:
    """The report section of a ``learning_curves`` table: where each estimator stopped."""
    keys = {}
    for (model, est), g in curves.groupby(["model", "estimator"], sort=False):
        r = g.iloc[0]
        best = g.loc[g["step"] == r["best_step"]]
        at = (
            f", validation loss {best['val_loss'].iloc[0]:.3f}, AUROC {best['val_auroc'].iloc[0]:.3f}"
            if len(best)
            else ""
        )
        why = (
            "stopped early"
            if r["stopped_step"] < r["max_steps"]
            else "ran out of steps: raise lora_steps"
        )
        keys[f"{model} · {est}"] = (
            f"kept step {r['best_step']:.0f}{at}; {why} at step {r['stopped_step']:.0f} of "
            f"{r['max_steps']:.0f} (train {r['n_train']:.0f}, validation {r['n_validation']:.0f})"
        )
    return Section(
        title="Learning curves of the trained estimators",
        caption=(
            "Training loss (mean over the steps since the previous evaluation) and loss on a "
            "held-out validation split of the training answers (stratified, dropout off), "
            "with the validation AUROC on the right axis. Training stops once the validation "
            "loss has not improved for `patience` evaluations; the dashed line is the step "
            "whose weights the estimator keeps."
        ),
        figures=[f for f in figs if f.stem == "learning_curves"],
        key_numbers=keys,
        tables=["learning_curves"],
    )


def score_maps_section(maps: pd.DataFrame) -> Section:
    """The report section of a ``score_maps`` table: how each one-score estimator's raw
    uncertainty became P(correct), and which ones are constant by construction."""
    keys = {}
    for r in maps.itertuples():
        what = f"{r.model} · {r.estimator}"
        if r.slope_clipped:
            keys[what] = (
                "constant P(correct) (the training accuracy): its uncertainty rose with "
                f"correctness on the {r.n_train} training answers, so the calibration slope was "
                "clipped to 0 rather than invert the method; its AUROC is 0.5 by construction"
            )
        elif r.a == 0:
            keys[what] = (
                "constant P(correct) (the training accuracy): its raw score did not vary, or "
                f"the {r.n_train} training answers had one label; its AUROC is 0.5 by construction"
            )
        else:
            keys[what] = (
                f"P(correct) = sigmoid({r.a:.3g} * (-u) + {r.b:.3g}), fitted on {r.n_train} "
                "training answers"
            )
    constant = int((maps["slope_clipped"].astype(bool) | (maps["a"] == 0)).sum())
    return Section(
        title="Score calibration of the one-score estimators",
        notes=(
            "Sampling, density, verbalised and token-entropy estimators compute one raw "
            "uncertainty u per answer (the published definition) and map it to P(correct) by "
            "Platt scaling fitted on the training answers with a non-negative slope. "
            + (
                f"{constant} of {len(maps)} fits give a constant P(correct): their cells show "
                "AUROC 0.5 with a zero-width interval by construction, not because the raw "
                "score was measured to carry no signal."
                if constant
                else "Every fit has a positive slope."
            )
        ),
        key_numbers=keys,
        tables=["score_maps"],
    )


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


def _stage_rows(stages: list[StageRecord], parents: dict[int, StageRecord]) -> pd.DataFrame:
    """One row per stage, slowest (own seconds) first."""
    total = sum(s.self_s for s in stages) or 1.0
    rows = [
        {
            "stage": s.label,
            "kind": s.kind,
            "model": s.model or "",
            "seconds": s.self_s,
            "incl. nested s": s.wall_s,
            "share %": round(100 * s.self_s / total, 1),
            "cache": s.cache or "",
            "hits": s.hits,
            "misses": s.misses,
            "lookups": ", ".join(
                f"{k}: {c.hits} hit, {c.misses} miss" for k, c in s.caches.items()
            ),
            "inside": parents[s.parent].label if s.parent in parents else "",
        }
        for s in sorted(stages, key=lambda s: -s.self_s)
    ]
    return pd.DataFrame(rows)


def _time_section(manifest: RunManifest | None, order: list[str]) -> str:
    """The "Where the time went" section: per analysis its stages slowest first with their
    cache outcomes, then the run's own stages and total (all from ``manifest.stages``);
    analyses in ``order`` (the config's), then any other the manifest holds."""
    parts = ['<h2 id="time">Where the time went</h2>']
    if manifest is None or not manifest.stages:
        return parts[0] + '<p class="note">no stage times recorded for this run.</p>'
    parents = dict(enumerate(manifest.stages))
    tot = manifest.stage_totals
    wall = f"{_fmt(manifest.wall_s)} s wall" if manifest.wall_s is not None else "wall unknown"
    counts = f"{tot.n_stages} stages, {_fmt(tot.stages_s)} s" if tot else ""
    cache = f"; cache lookups: {tot.hits} hits, {tot.misses} misses" if tot else ""
    parts.append(
        f"<p>Run total: <b>{_esc(wall)}</b> ({_esc(counts)}{_esc(cache)}). A stage's "
        "<i>seconds</i> are its own, without the stages nested in it (shown under "
        "<i>incl. nested</i> and named in <i>inside</i>), so they add up without counting a "
        "second twice; <i>compute</i> is the analysis' own code outside its named stages. "
        "A rerun that reuses caches shows hits and near-zero seconds.</p>"
    )
    keys = [k for k in order if k in manifest.analyses]
    for key in keys + [k for k in manifest.analyses if k not in keys]:
        rec = manifest.analyses[key]
        own = [s for s in manifest.stages if s.analysis == key]
        t = rec.stage_totals
        by_time = sorted(t.by_kind.items(), key=lambda kv: -kv[1])
        kinds = ", ".join(f"{k} {_fmt(v)} s" for k, v in by_time)
        made = ""
        if rec.from_cache:
            took = f" in {_fmt(rec.compute_s)} s" if rec.compute_s is not None else ""
            made = f" Tables from the result cache (computed{took} by the run that made them)."
        parts.append(
            f'<h3 id="time-{_esc(key)}">{_esc(key)}</h3><p class="sub">{_fmt(t.stages_s)} s in '
            f"{t.n_stages} stages of {_fmt(rec.wall_s)} s wall; cache lookups: {t.hits} hits, "
            f"{t.misses} misses. By kind: {_esc(kinds)}.{_esc(made)}</p>"
        )
        if own:
            parts.append(table_html(_stage_rows(own, parents)))
    run_own = [s for s in manifest.stages if s.analysis is None]
    if run_own:
        parts += ["<h3>The run itself</h3>", table_html(_stage_rows(run_own, parents))]
    return "\n".join(parts)


#: what each metric of the analyses' tables means (``metric`` column; ``baseline_<m>`` too)
METRIC_NOTES = {
    "auroc": "AUROC: area under the ROC curve of P(correct) against correctness "
    "(0.5 = chance, 1 = perfect ranking)",
    "ece": "ECE: expected calibration error, 10 equal-width bins on max(p, 1-p) "
    "(0 = calibrated, lower is better)",
    "ece_pcorrect": "ECE (P(correct), 20 bins): calibration error binned on P(correct) itself",
    "brier": "Brier: mean (p - y)^2 (lower is better)",
    "prr": "PRR: prediction-rejection ratio (Malinin et al.; LM-Polygraph's PRR), the area "
    "under the accuracy-vs-rejection curve when the least confident answers are rejected "
    "first, normalised so that 1 = oracle ranking, 0 = random, < 0 = worse than random",
}


def _metric_legend(tables: dict[str, pd.DataFrame]) -> str:
    """One line naming the metrics the analysis' tables report (with their CIs)."""
    seen: list[str] = []
    for df in tables.values():
        if "metric" in df:
            for m in dict.fromkeys(df["metric"].astype(str)):
                m = m.removeprefix("baseline_")
                if m in METRIC_NOTES and m not in seen:
                    seen.append(m)
    if not seen:
        return ""
    items = "; ".join(_esc(METRIC_NOTES[m]) for m in seen)
    return f'<p class="sub metrics">Metrics (value with a bootstrap 95% interval): {items}.</p>'


_VERDICT_CLASS = {
    "reproduced": "v-reproduced",
    "not reproduced": "v-not",
    "inconclusive at this n": "v-inconclusive",
    "not run": "v-notrun",
}


def _claim_num(v: float, percent: bool) -> str:
    if pd.isna(v):
        return ""
    return f"{v:.1f} %" if percent else f"{v:.3f}"


def _claims_section(rows: list[ClaimRow]) -> str:
    """The closing table: per seed claim the seed's numbers, what this run measured, the
    value with its 95% CI and n, and the verdict its rule gives (knowlens.claims)."""
    if not rows:
        return ""
    counts = pd.Series([r.verdict for r in rows]).value_counts()
    tally = ", ".join(f"{int(counts[v])} {v}" for v in _VERDICT_CLASS if v in counts)
    head = (
        "<tr><th class='s'>seed</th><th class='s'>analysis</th><th class='s'>claim</th>"
        "<th class='s'>the seed figure shows</th><th class='s'>this run measured</th>"
        "<th>value</th><th>95% CI</th><th>n</th><th class='s'>verdict</th>"
        "<th class='s'>how decided</th><th class='s'>detail</th></tr>"
    )
    body = []
    for r in rows:
        ci = (
            f"[{_claim_num(r.ci_low, r.percent)}, {_claim_num(r.ci_high, r.percent)}]"
            if not (pd.isna(r.ci_low) or pd.isna(r.ci_high))
            else ("" if r.verdict == "not run" else "undefined")
        )
        n = f"{r.n} {r.unit}" if r.verdict != "not run" else ""
        how = f"{r.rule}; CI: {r.ci_method}" if r.rule else ""
        body.append(
            f"<tr><td>{_esc(r.seed)}</td><td>{_esc(r.analysis)}</td><td>{_esc(r.claim)}</td>"
            f"<td>{_esc(r.seed_shows)}</td><td>{_esc(r.measured)}</td>"
            f"<td class='num'>{_esc(_claim_num(r.value, r.percent))}</td>"
            f"<td class='num'>{_esc(ci)}</td><td class='num'>{_esc(n)}</td>"
            f"<td class='{_VERDICT_CLASS[r.verdict]}'><b>{_esc(r.verdict)}</b></td>"
            f"<td>{_esc(how)}</td><td>{_esc(r.detail)}</td></tr>"
        )
    return (
        '<h2 id="claims">What the seed figures show, and what this run measured</h2>'
        "<p>One row per claim of the seed figures (<code>../shared/seeds</code>), computed "
        "from this run folder's tables alone (also in <code>claims.json</code>). Each claim "
        "says a value lies above or below a threshold: <b>reproduced</b> if the whole 95% "
        "interval lies on the claimed side, <b>not reproduced</b> if it lies wholly on the "
        "other side, <b>inconclusive at this n</b> if it contains the threshold (or is "
        "undefined); <b>not run</b>: the run has no data for it. "
        f"This run: {_esc(tally)}.</p>"
        f"<div class='claims-wrap'><table class='claims'><thead>{head}</thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def build_report(run_dir: str | Path, *, redraw: bool = True) -> Path:
    """Write ``<run_dir>/report.html`` from the run folder; ``redraw`` re-renders figures
    from the saved tables first (what ``knowlens report`` does). Returns the report path."""
    run_dir = Path(run_dir)
    rc = read_config(run_dir)
    manifest = read_manifest(run_dir)
    blocks: list[str] = []
    accuracy: list[pd.DataFrame] = []
    claim_inputs: list[tuple[str, str, dict[str, pd.DataFrame], int, int]] = []
    n_figs = 0
    for acfg in rc.analyses:
        tables = read_tables(run_dir, acfg.key)
        if tables:
            claim_inputs.append((acfg.analysis, acfg.key, tables, acfg.n_bootstrap, acfg.seed))
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
        curves = tables.get("learning_curves")
        if maker and curves is not None and len(curves):
            sections = [*sections, curves_section(curves, figs)]
        maps = tables.get("score_maps")
        if maker and maps is not None and len(maps):
            sections = [*sections, score_maps_section(maps)]
        blocks.append(f'<h2 id="{_esc(acfg.key)}">{_esc(acfg.key)}</h2>')
        blocks.append(_metric_legend(tables))
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
    claims = check_run(claim_inputs)
    if claims:
        write_claims(run_dir, claims)
    else:  # a rebuild must not leave the table of other analyses behind
        (run_dir / CLAIMS_FILE).unlink(missing_ok=True)
    claims_link = " · <a href='#claims'>seed claims</a>" if claims else ""
    title = f"knowlens report: {rc.name}"
    started = manifest.started_utc if manifest else ""
    version = manifest.knowlens_version if manifest else ""
    doc = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{_esc(title)}"
        f"</title><link rel='icon' href='data:,'><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='sub'>run folder <code>{_esc(run_dir)}</code>"
        f"{' · started ' + _esc(started) if started else ''} · {n_figs} figures · knowlens "
        f"{_esc(version)} · <a href='#time'>where the time went</a>{claims_link}</p>"
        + _run_summary(rc, manifest)
        + acc_html
        + "\n".join(blocks)
        + _time_section(manifest, [a.key for a in rc.analyses])
        + _claims_section(claims)
        + f"<script>{_JS}</script></body></html>"
    )
    out = report_path(run_dir)
    atomic_write_text(out, doc)
    return out
