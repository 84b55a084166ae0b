"""load_task's front end (``tasks/_load.py``): names are looked up in the registry, YAML task
files are read by ``_user``; the registry itself never reads YAML (one-way imports)."""

from __future__ import annotations

import logging
import warnings

import pytest

from knowlens.errors import ConfigError, KnowlensError
from knowlens.tasks import _registry, get_spec, load_task, splits_of


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_yaml_names_resolve_above_the_registry(tmp_path):
    y = _write(tmp_path, "zs.yaml", "name: capitals_zs_test\nbase: capitals\nk_shot: 0\n")
    spec = get_spec(str(y))
    assert spec.name == "capitals_zs_test" and spec.k_shot == 0
    assert spec.builder == _registry.get_spec("capitals").builder
    with pytest.raises(KnowlensError, match="Unknown task"):
        _registry.get_spec(str(y))  # the registry knows registered names only
    assert not _registry.is_registered(str(y)) and _registry.is_registered("capitals")
    # both front-end entry points take the file
    assert load_task(str(y), limit=3).name == "capitals_zs_test"
    assert sum(len(v) for v in splits_of(str(y)).values()) == sum(
        len(v) for v in splits_of("capitals").values()
    )


def test_base_may_be_another_yaml_file(tmp_path):
    _write(tmp_path, "a.yaml", 'name: cap_a\nbase: capitals\ntemplate: "Capital of {question}?"\n')
    b = _write(tmp_path, "b.yaml", f"name: cap_b\nbase: {tmp_path / 'a.yaml'}\nk_shot: 0\n")
    spec = get_spec(str(b))
    assert (spec.name, spec.template, spec.k_shot) == ("cap_b", "Capital of {question}?", 0)
    base_version = _registry.get_spec("capitals").version
    assert spec.version == f"{base_version}+user+user"  # each override layer is recorded


def test_base_chain_that_loops_is_one_line(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(f"name: a\nbase: {b}\n")
    b.write_text(f"name: b\nbase: {a}\n")
    with pytest.raises(ConfigError, match="chain comes back to itself") as e:
        load_task(str(a))
    assert "\n" not in str(e.value) and str(a) in str(e.value)


def test_limit_warning_points_at_the_caller():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_task("capitals", split="test", limit=10**6)
    (w,) = [c for c in caught if "fewer than limit" in str(c.message)]
    assert w.filename == __file__


def test_an_analysis_reports_a_short_split_once(caplog):
    """Inside an analysis the shortfall is one log line, not a Python warning as well."""
    from knowlens.experiments._common import load_split

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        task = load_split("capitals", "test", limit=10**6, seed=0)
    assert not [c for c in caught if "fewer than limit" in str(c.message)]
    lines = [r.getMessage() for r in caplog.records if "fewer than limit" in r.getMessage()]
    assert lines == [
        f"Task 'capitals' split 'test' has {len(task.examples)} examples, fewer than "
        f"limit={10**6}; using all {len(task.examples)}."
    ]
