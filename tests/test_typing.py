"""Typing contracts that mypy cannot check by itself (``make lint`` runs mypy on src/).

- ``src/knowlens/__init__.pyi`` gives the lazy top-level namespace its types; it must name
  exactly what ``__init__.py``'s string table resolves, and resolve to the same objects.
- The estimator base is generic in what it reads; subscripting it must not register classes.
- ``require_local`` decides local vs API by class (so ``if t.is_local:`` narrows statically).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import SimpleNamespace

import pytest

import knowlens

STUB = Path(knowlens.__file__).with_suffix(".pyi")


def _stub_imports() -> dict[str, str]:
    """name -> module of every ``from M import N as N`` in the stub."""
    out: dict[str, str] = {}
    for node in ast.parse(STUB.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                assert a.asname == a.name, f"re-export {a.name} as itself (`as {a.name}`)"
                out[a.name] = node.module or ""
    return out


def test_the_top_level_stub_names_exactly_the_lazy_table():
    names = set(_stub_imports())
    assert names == set(knowlens._LAZY) | set(knowlens._SUBMODULES), (
        "src/knowlens/__init__.pyi is out of date: "
        f"missing {sorted(set(knowlens._LAZY) | set(knowlens._SUBMODULES) - names)}, "
        f"extra {sorted(names - set(knowlens._LAZY) - set(knowlens._SUBMODULES))}"
    )
    declared = {
        n.target.id
        for n in ast.parse(STUB.read_text(encoding="utf-8")).body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert declared == {"__version__", "__all__", "_LAZY", "_SUBMODULES"}
    assert set(knowlens.__all__) == names | {"__version__"}


def test_the_stub_resolves_every_name_to_the_lazy_object():
    for name, module in sorted(_stub_imports().items()):
        if name in knowlens._SUBMODULES:
            want = importlib.import_module(f"knowlens.{name}")
        else:
            want = getattr(importlib.import_module(module), name)
        assert getattr(knowlens, name) is want, f"{name}: stub says {module}"


def test_the_generic_estimator_base_reads_what_its_parameter_names():
    from knowlens._types import ActivationSet, GenerationSet
    from knowlens.estimators import REGISTRY, Estimator
    from knowlens.estimators._lora import _LoRABase
    from knowlens.estimators._probe import _FeatureProbe
    from knowlens.estimators._query import _QueryEstimator

    before = dict(REGISTRY)
    alias = Estimator[ActivationSet]
    assert alias.__origin__ is Estimator and before == REGISTRY  # an alias is not a class
    assert _FeatureProbe.__orig_bases__ == (Estimator[ActivationSet],)
    assert _LoRABase.__orig_bases__ == (Estimator[GenerationSet],)
    assert _QueryEstimator.__orig_bases__ == (Estimator[GenerationSet],)
    assert {"LogisticProbe", "MLPProbe", "LoRAProbe", "PTrue"} <= set(REGISTRY)
    assert "_FeatureProbe" in REGISTRY and "Estimator" not in REGISTRY


def test_require_local_returns_the_handle_and_refuses_api_targets():
    from knowlens.errors import KnowlensError
    from knowlens.jailbreak.api import ApiTarget
    from knowlens.jailbreak.targets import LocalTarget, require_local

    handle = SimpleNamespace(name="m", target_id="fp")
    assert require_local(LocalTarget(handle), "activation_maps") is handle
    api = ApiTarget("gpt-x", base_url="https://api.example.invalid/v1")
    with pytest.raises(KnowlensError) as e:
        require_local(api, "activation_maps")
    assert str(e.value) == (
        "activation_maps needs hidden states, but target 'api:gpt-x' is an API model "
        "(generation only). Use a local model spec (embedded name, directory, organism) here."
    )
    assert LocalTarget.is_local is True and ApiTarget.is_local is False
