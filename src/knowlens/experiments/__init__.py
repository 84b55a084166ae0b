"""Analyses: config in, tidy tables out, figures drawn from the tables.

    import knowlens as kl
    res = kl.run("configs/demo.yaml")                  # every analysis in the file
    res = kl.run("configs/probe_transfer.yaml", models=["gemma3-270m"], limit=40)
    print(res.report)                                  # runs/<name>/report.html

An analysis is a module (registered in :data:`ANALYSES` as a lazy ``"module"`` or
``"module:object"`` entry) satisfying :class:`knowlens.config.Analysis`:

* ``Config``: a pydantic subclass of :class:`knowlens.config.AnalysisConfig`;
* ``run(cfg, ctx) -> dict[str, pandas.DataFrame]``: tidy tables, one row per figure cell;
* ``figures(tables, out_dir) -> list[Path]``: drawn from the tables only (via
  :mod:`knowlens.plots`), so ``knowlens report runs/<name>`` can redraw them;
* optional ``report_sections(tables, figures) -> list[knowlens.config.Section]`` (captions,
  key numbers, which tables to show), ``CODE_VERSION`` (bump to invalidate cached results)
  and ``LOADS_MODELS = False`` for analyses whose models are not local.

The run layer, left to right (each module imports only from its left):
``knowlens.config`` (the contract: config shapes, ``Section``, ``Analysis``) ->
``_registry`` (names -> analyses) -> ``_load`` (YAML -> validated ``RunConfig``) ->
``_rundir`` (the run folder's layout and typed ``RunManifest``) -> the analyses ->
``knowlens.report`` -> ``_runner`` (``run``, ``RunContext``) -> this package.
"""

from __future__ import annotations

from knowlens.experiments._load import load_config, parse_config
from knowlens.experiments._registry import (
    ANALYSES,
    available_analyses,
    get_analysis,
    register_analysis,
)
from knowlens.experiments._runner import RunContext, RunResult, run

__all__ = [
    "ANALYSES",
    "RunContext",
    "RunResult",
    "available_analyses",
    "get_analysis",
    "load_config",
    "parse_config",
    "register_analysis",
    "run",
]
