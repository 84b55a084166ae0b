"""Config parsing: suites, inheritance, overrides, and one-line errors for malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowlens.config import AnalysisConfig
from knowlens.errors import ConfigError, KnowlensError
from knowlens.experiments import load_config, parse_config


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert isinstance(err.value, KnowlensError)
    return msg


def test_single_analysis_and_overrides(tmp_path):
    p = _write(tmp_path, "analysis: probe_transfer\nmodels: [a]\nlimit: 20\n")
    rc = load_config(p, limit=5, models=["x", "y"], name="r1", output=tmp_path / "runs")
    assert rc.name == "r1" and rc.output == tmp_path / "runs"
    (a,) = rc.analyses
    assert a.analysis == "probe_transfer" and a.limit == 5 and a.models == ["x", "y"]
    assert isinstance(a, AnalysisConfig) and type(a).__name__ == "Config"
    # Name defaults to the analysis name; the resolved YAML re-loads to the same config.
    rc2 = parse_config(load_config(p).to_yaml_dict())
    assert rc2.name == "probe_transfer" and rc2.analyses[0].limit == 20


def test_suite_inherits_shared_fields(tmp_path):
    p = _write(
        tmp_path,
        "name: s\nmodels: [m1, m2]\nlimit: 7\nseed: 3\nanalyses:\n"
        "  - analysis: topic_calibration\n  - analysis: probe_transfer\n    models: [m1]\n",
    )
    rc = load_config(p)
    tc, pt = rc.analyses
    assert tc.models == ["m1", "m2"] and tc.limit == 7 and tc.seed == 3
    assert pt.models == ["m1"] and pt.limit == 7
    assert load_config(p, limit=2).analyses[1].limit == 2
    rc = load_config(p, name="other", output=tmp_path / "o", eval_limit=5)
    assert rc.name == "other" and rc.output == tmp_path / "o"
    assert rc.analyses[0].eval_limit == 5


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("analysis: probe_transfr\n", ["probe_transfer", "Did you mean"]),
        ("analysis: probe_transfer\nlimt: 3\n", ["limt", "Did you mean: limit"]),
        ("analysis: probe_transfer\nlimit: -3\n", ["'limit'", "-3", "greater than or equal to 1"]),
        ("analysis: probe_transfer\nlimit: many\n", ["'limit'", "'many'"]),
        ("analysis: probe_transfer\nseed: [1, 2]\n", ["'seed'"]),
        (
            "name: s\nanalyses:\n  - analysis: topic_calibration\n    n_bootstrap: -1\n",
            ["analyses[0].n_bootstrap", "-1"],
        ),
        ("name: s\nanalyses: []\n", ["'analyses'", "non-empty"]),
        ("name: s\nlimti: 3\nanalyses:\n  - analysis: probe_transfer\n", ["limti", "limit"]),
        ("analysis: probe_transfer\nmodels: [a, a]\n", ["'models'", "twice"]),
        ("analysis: probe_transfer\nexecutor: spark\n", ["'executor'", "spark"]),
        ("- just\n- a list\n", ["top level", "mapping"]),
        ("analysis: probe_transfer\n  bad: : indent\n", ["not valid YAML", "line"]),
        ("name: a/b\nanalysis: probe_transfer\n", ["'name'", "a/b"]),
        (
            "name: s\nanalyses:\n  - analysis: probe_transfer\n  - analysis: probe_transfer\n",
            ["appears twice", "id:"],
        ),
    ],
)
def test_malformed_configs_give_one_line_errors(tmp_path, text, needles):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    msg = _one_line(e)
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_file_and_unknown_override(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.yaml")
    assert "does not exist" in _one_line(e)
    p = _write(tmp_path, "analysis: probe_transfer\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, bogus_field=1)
    assert "bogus_field" in _one_line(e)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("analysis: probe_transfer\nseed: -1\n", ["'seed'", "greater than or equal to 0", "-1"]),
        ("analysis: probe_transfer\nseed: 4294967296\n", ["'seed'", "less than 4294967296"]),
        ("analysis: probe_transfer\nlimit: true\n", ["'limit'", "not a boolean", "True"]),
        ("analysis: probe_transfer\nn_bootstrap: false\n", ["'n_bootstrap'", "not a boolean"]),
        ("analysis: probe_transfer\nlimit: 5\nlimit: 6\n", ["line 3", "'limit' appears twice"]),
        (
            "analysis: probe_transfer\nray_address: auto\n",
            ["'ray_address'", "executor is 'local'", "--executor ray"],
        ),
        (
            "name: s\nexecutor: ray\nray_address: auto\nanalyses:\n"
            "  - analysis: probe_transfer\n    executor: local\n",
            ["analyses[0].ray_address", "executor is 'local'"],
        ),
    ],
)
def test_values_that_would_be_silently_wrong_are_errors(tmp_path, text, needles):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, text))
    msg = _one_line(e)
    for n in needles:
        assert n in msg, (n, msg)


def test_valid_edge_values_still_load(tmp_path):
    p = _write(
        tmp_path, "analysis: probe_transfer\nseed: 4294967295\nexecutor: ray\nray_address: auto\n"
    )
    (a,) = load_config(p).analyses
    assert (a.seed, a.executor, a.ray_address) == (2**32 - 1, "ray", "auto")


def test_overrides_are_validated_like_file_values(tmp_path):
    p = _write(tmp_path, "analysis: probe_transfer\nlimit: 20\n")
    # None is a value for analysis fields (limit=None: all examples), "not given" for name.
    rc = load_config(p, limit=None, name=None, output=None)
    assert rc.analyses[0].limit is None and rc.name == "probe_transfer"
    assert rc.output == Path("runs")
    for bad, needle in [
        ({"limit": "abc"}, "'limit'"),
        ({"seed": -1}, "'seed'"),
        ({"seed": None}, "'seed'"),
        ({"executor": "local", "ray_address": "h:1"}, "'ray_address'"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(p, **bad)
        assert needle in _one_line(e), (bad, str(e.value))


def test_non_utf8_directory_and_unreadable_configs(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("analysis: probe_transfer\nname: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = _one_line(e)
    assert "not UTF-8" in msg and "byte 0xe9 at line 2 (offset 34)" in msg
    d = tmp_path / "cfgs"
    d.mkdir()
    with pytest.raises(ConfigError) as e:
        load_config(d)
    assert "is a directory" in _one_line(e) and "holds no .yaml files" in str(e.value)
    (d / "x.yaml").write_text("analysis: probe_transfer\n")
    with pytest.raises(ConfigError) as e:
        load_config(d)
    assert f"Config files in it: {d / 'x.yaml'}" in _one_line(e)
    assert f"e.g. {d / 'x.yaml'}" in str(e.value)


def test_analysis_specific_int_fields_reject_bools_too(tmp_path):
    # The bool guard covers fields that subclasses add (topic_calibration's eval_limit).
    p = _write(tmp_path, "analysis: topic_calibration\neval_limit: true\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "'eval_limit'" in _one_line(e) and "not a boolean" in str(e.value)


def test_loader_lives_right_of_the_registry():
    """knowlens.config holds the shapes only; reading configs is knowlens.experiments'."""
    import knowlens.config as contract
    from knowlens.experiments import _load

    assert not hasattr(contract, "load_config") and not hasattr(contract, "parse_config")
    assert load_config is _load.load_config and parse_config is _load.parse_config


def test_run_accepts_configs_as_objects(tmp_path):
    from knowlens.experiments._load import resolve_config

    p = tmp_path / "c.yaml"
    p.write_text("name: r\nanalysis: probe_transfer\nlimit: 4\n")
    rc = load_config(p)
    again = resolve_config(rc, {"limit": 2})
    assert (again.name, again.analyses[0].limit, again.source) == ("r", 2, str(p))
    one = resolve_config(rc.analyses[0], {"name": "solo"})
    assert (one.name, one.analyses[0].limit) == ("solo", 4)
    with pytest.raises(ConfigError, match="'limit'"):
        resolve_config({"analysis": "probe_transfer"}, {"limit": 0})
