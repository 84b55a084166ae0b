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

import importlib
from typing import Any

# A lazy namespace, as the top-level package: importing one submodule (the report imports
# ``_registry`` and ``_rundir``) must not import the runner, which imports the report.
_LAZY: dict[str, str] = {
    "ANALYSES": "knowlens.experiments._registry",
    "available_analyses": "knowlens.experiments._registry",
    "get_analysis": "knowlens.experiments._registry",
    "register_analysis": "knowlens.experiments._registry",
    "load_config": "knowlens.experiments._load",
    "parse_config": "knowlens.experiments._load",
    "RunContext": "knowlens.experiments._runner",
    "RunResult": "knowlens.experiments._runner",
    "run": "knowlens.experiments._runner",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'knowlens.experiments' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
