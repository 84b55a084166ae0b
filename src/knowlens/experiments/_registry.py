"""The analysis registry: name -> lazily imported analysis module.

    from knowlens.experiments import get_analysis, register_analysis
    register_analysis("my_analysis", "my_pkg.my_analysis")        # or "module:object"
    get_analysis("my_analysis").Config                             # imported on first use

Entries are ``"module"`` or ``"module:object"`` strings (lm-evaluation-harness style), so
importing the registry imports no analysis. :func:`get_analysis` checks the object against
the :class:`knowlens.config.Analysis` protocol once, when it is first loaded.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, cast

from knowlens.config import ANALYSIS_OPTIONAL, ANALYSIS_REQUIRED, Analysis, AnalysisConfig
from knowlens.errors import ConfigError, did_you_mean

__all__ = ["ANALYSES", "available_analyses", "get_analysis", "register_analysis"]

ANALYSES: dict[str, str] = {
    "topic_calibration": "knowlens.experiments.topic_calibration",
    "estimator_transfer": "knowlens.experiments.estimator_transfer",
    "probe_transfer": "knowlens.experiments.probe_transfer",
    "prompt_transfer": "knowlens.experiments.prompt_transfer",
    "activation_maps": "knowlens.experiments.activation_maps",
}
# name -> (target it was loaded from, checked object); a re-registered name reloads.
_LOADED: dict[str, tuple[str, Analysis]] = {}


def register_analysis(name: str, target: str) -> None:
    """Register an analysis under ``name`` as a lazy ``"module"`` or ``"module:object"``."""
    if not isinstance(name, str) or not name or not isinstance(target, str) or not target:
        raise ConfigError(
            f"register_analysis needs a name and a 'module' or 'module:object' target; got "
            f"{name!r}, {target!r}. Call e.g. register_analysis('mine', 'my_pkg.mine')."
        )
    ANALYSES[name] = target
    _LOADED.pop(name, None)


def available_analyses() -> list[str]:
    """Registered analysis names, sorted."""
    return sorted(ANALYSES)


def get_analysis(name: str) -> Analysis:
    """The analysis registered as ``name``, imported lazily and checked against the protocol.

    Unknown names get a did-you-mean; an object that lacks ``Config`` / ``run`` /
    ``figures`` (or has a wrongly typed optional member) is a one-line ``ConfigError``.
    """
    if name not in ANALYSES:
        raise ConfigError(did_you_mean(str(name), ANALYSES, what="analysis"))
    target = ANALYSES[name]
    loaded = _LOADED.get(name)
    if loaded is not None and loaded[0] == target:
        return loaded[1]
    obj = _check(name, target, _import(name, target))
    _LOADED[name] = (target, obj)
    return obj


def _import(name: str, target: str) -> Any:
    mod_name, _, obj_name = target.partition(":")
    try:
        module: ModuleType = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise ConfigError(
                f"Analysis '{name}' is registered ({target}) but its module is not installed in "
                "this build. Choose another analysis or update knowlens."
            ) from None
        raise
    if not obj_name:
        return module
    if not hasattr(module, obj_name):
        raise ConfigError(
            f"Analysis '{name}' is registered as '{target}', but module '{mod_name}' has no "
            f"'{obj_name}'. Fix the target given to register_analysis."
        )
    return getattr(module, obj_name)


def _check(name: str, target: str, obj: Any) -> Analysis:
    missing = [a for a in ANALYSIS_REQUIRED if not hasattr(obj, a)]
    if missing:
        raise ConfigError(
            f"Analysis '{name}' ({target}) lacks {', '.join(missing)}; an analysis must expose "
            "Config, run(cfg, ctx) and figures(tables, out_dir)."
        )
    if not (isinstance(obj.Config, type) and issubclass(obj.Config, AnalysisConfig)):
        raise ConfigError(
            f"Analysis '{name}' ({target}): Config must subclass knowlens.config.AnalysisConfig; "
            f"got {obj.Config!r}."
        )
    for fn in ("run", "figures"):
        if not callable(getattr(obj, fn)):
            raise ConfigError(f"Analysis '{name}' ({target}): '{fn}' must be a function.")
    for attr, (_, kind) in ANALYSIS_OPTIONAL.items():
        if not hasattr(obj, attr):
            continue
        v = getattr(obj, attr)
        ok = callable(v) if kind is None else isinstance(v, kind)
        if not ok:
            allowed = "a function" if kind is None else f"a {kind.__name__}"
            raise ConfigError(
                f"Analysis '{name}' ({target}): '{attr}' must be {allowed}; got {v!r}."
            )
    return cast(Analysis, obj)
