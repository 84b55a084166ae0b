"""lm-polygraph's estimator and metric classes, loaded without its package ``__init__``.

lm-polygraph is a test-only dependency installed with ``--no-deps`` (its full extras pull
spaCy, vLLM-era pins and GPU packages). Its package ``__init__`` files import every module,
among them spaCy-based ones, so this loader registers the packages as bare namespaces and
imports only the modules a test names. ``polygraph("estimators.monte_carlo_sequence_entropy")``
returns that module, or skips the test when lm-polygraph (or a module it needs) is missing.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import pytest

__all__ = ["polygraph"]


def _bare_package(name: str, path: Path) -> None:
    if name in sys.modules:
        return
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    mod = importlib.util.module_from_spec(spec)  # a package whose __init__ is not run
    sys.modules[name] = mod


def polygraph(module: str) -> types.ModuleType:
    """``lm_polygraph.<module>`` without running the package ``__init__`` files."""
    spec = importlib.util.find_spec("lm_polygraph")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lm-polygraph is not installed (pip install --no-deps lm-polygraph)")
    root = Path(next(iter(spec.submodule_search_locations)))
    _bare_package("lm_polygraph", root)
    for d in sorted(root.rglob("*")):  # every subpackage too: their __init__s import spaCy
        if d.is_dir() and (d / "__init__.py").exists():
            _bare_package("lm_polygraph." + ".".join(d.relative_to(root).parts), d)
    try:
        return importlib.import_module(f"lm_polygraph.{module}")
    except ModuleNotFoundError as e:
        pytest.skip(f"lm-polygraph module {module} needs '{e.name}', not installed")
