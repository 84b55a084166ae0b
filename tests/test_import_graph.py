"""The pipeline order of docs/ARCHITECTURE.md, enforced on the import graph of src/knowlens.

Every ``import`` / ``from ... import`` in every module is read, top-level and inside
functions alike (a lazy import is still a dependency). Two rules:
- no cycles between modules (a package's ``__init__`` re-exports its submodules; a submodule
  imports its siblings directly, never its own package);
- a module imports only modules of its own stage or of stages to its left.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import knowlens

ROOT = Path(knowlens.__file__).parent

# Left to right; a module belongs to the stage of its longest matching prefix.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "knowlens",  # the lazy top-level namespace (string table only); matches itself only
            "knowlens.experiments",  # a lazy namespace too (string table only); itself only
            "knowlens.errors",
            "knowlens._yaml",
            "knowlens._version",
            "knowlens._cache",
            "knowlens._progress",
            "knowlens._types",
            "knowlens.metrics",  # leaf
            "knowlens.plots",  # leaf
        ),
    ),
    ("models", ("knowlens.models",)),
    ("tasks", ("knowlens.tasks",)),
    ("generation", ("knowlens.generation",)),
    ("activations", ("knowlens.activations",)),
    ("training", ("knowlens.training",)),
    ("estimators", ("knowlens.estimators",)),
    ("executors", ("knowlens.executors",)),
    ("jailbreak", ("knowlens.jailbreak",)),
    # The run layer. contract: config shapes, Section, the Analysis protocol; registry:
    # analysis names -> modules; loader: YAML -> RunConfig (needs each analysis' Config);
    # run folder: layout + typed manifest; report: rebuilt from the run folder alone.
    ("contract", ("knowlens.config",)),
    ("registry", ("knowlens.experiments._registry",)),
    ("loader", ("knowlens.experiments._load",)),
    ("run folder", ("knowlens.experiments._rundir",)),
    ("analyses", ("knowlens.experiments._common", "knowlens.experiments._estimators")),
    (
        "analysis modules",
        (
            "knowlens.experiments.topic_calibration",
            "knowlens.experiments.estimator_transfer",
            "knowlens.experiments.probe_transfer",
            "knowlens.experiments.prompt_transfer",
            "knowlens.experiments.activation_maps",
        ),
    ),
    ("report", ("knowlens.report", "knowlens.claims")),  # claims: the seed-claims table
    ("runner", ("knowlens.experiments._runner",)),
    ("cli", ("knowlens.cli",)),
]


# Lazy packages: their __init__ is a string table, so they name only themselves in STAGES.
NAMESPACES = {"knowlens", "knowlens.experiments"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """knowlens modules imported anywhere in the file (resolved to existing modules)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            # `from pkg import submodule` depends on the submodule itself
            targets = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            targets = targets or [mod]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t.startswith("knowlens") and t != name:
                out.add(t)
                # Importing a.b.c first runs a/b/__init__.py (unless the importer lives in
                # a.b, which is then already running): a real dependency on that __init__.
                parent = t.rpartition(".")[0]
                while parent and parent != "knowlens":
                    if parent in known and not name.startswith(parent + ".") and parent != name:
                        out.add(parent)
                    parent = parent.rpartition(".")[0]
    return out


def _stage(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(STAGES):
        for pre in prefixes:
            # The root package is a prefix of everything: it names only itself, so a new
            # module must be given its stage here.
            nested = module.startswith(pre + ".") and pre not in NAMESPACES
            if (module == pre or nested) and len(pre) > best_len:
                best, best_len = i, len(pre)
    assert best is not None, f"{module} has no stage in STAGES: add it (and to ARCHITECTURE.md)"
    return best


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative cycle per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_stage():
    for m in _modules():
        _stage(m)
    # an unlisted module is not silently put in the root package's stage
    with pytest.raises(AssertionError, match=r"knowlens\.brand_new has no stage"):
        _stage("knowlens.brand_new")
    assert STAGES[_stage("knowlens.experiments._rundir")][0] == "run folder"
    # nor in the lazy experiments namespace's: each of its modules is listed
    with pytest.raises(AssertionError, match=r"knowlens\.experiments\.nested\.x has no stage"):
        _stage("knowlens.experiments.nested.x")


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_imports_follow_the_pipeline_order():
    bad = [
        f"{m} ({STAGES[_stage(m)][0]}) imports {t} ({STAGES[_stage(t)][0]})"
        for m, targets in sorted(_graph().items())
        for t in sorted(targets)
        if _stage(t) > _stage(m)
    ]
    assert not bad, "imports against the pipeline order:\n" + "\n".join(bad)


def test_the_checker_sees_the_package_init_a_submodule_import_runs(tmp_path):
    f = tmp_path / "report.py"
    f.write_text("from knowlens.experiments._registry import get_analysis\n")
    known = {"knowlens.report", "knowlens.experiments", "knowlens.experiments._registry"}
    got = _imports("knowlens.report", f, known)
    assert got == {"knowlens.experiments._registry", "knowlens.experiments"}


@pytest.mark.parametrize(
    "module", ["knowlens.report", "knowlens.config", "knowlens.experiments._rundir", "knowlens.cli"]
)
def test_each_entry_module_imports_first_in_a_fresh_interpreter(module):
    # The AST graph is the contract; this is the runtime check that no partial-init cycle hides
    # behind import order (tests import knowlens.experiments first, `knowlens report` did not).
    out = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_checker_sees_in_function_and_relative_imports(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text("def f():\n    from knowlens.metrics import auroc\n    from . import x\n")
    known = {"knowlens.metrics", "knowlens.experiments.x", "knowlens.experiments.mod"}
    got = _imports("knowlens.experiments.mod", f, known)
    assert got == {"knowlens.metrics", "knowlens.experiments.x"}
