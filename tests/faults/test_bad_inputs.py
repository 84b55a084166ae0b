"""Never silently wrong: a table of bad inputs, each of which must fail with one line.

For every case, through the CLI (``typer.testing.CliRunner`` on the real app) or the Python
API (load_task, load_config, generate, extract, metrics, estimators, load_model):

* the CLI exits with code 2 and prints exactly one non-empty line, ``error: ...``, naming
  what was wrong (``needle``), with no traceback; the API raises a ``KnowlensError`` whose
  message is one line and names it;
* no cache entry changed: the file list, sizes and mtimes of a cache that already holds
  generations and activations of the tiny model are the same before and after.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from knowlens.cli import app
from knowlens.errors import KnowlensError

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Case:
    id: str
    what: list[str] | Callable[[dict[str, Any]], Any]  # CLI argv, or fn(env) for the API
    needle: str  # must appear in the error line
    env: dict[str, str] = field(default_factory=dict)  # CLI only; values may use {names}

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


# ---- fixtures: a populated cache and the files bad inputs point at -------------------------
@pytest.fixture(scope="module")
def world(tiny_model_dir, tmp_path_factory) -> dict[str, Any]:
    """Paths used by the cases, and a cache that already holds entries to protect."""
    base = tmp_path_factory.mktemp("bad-inputs")
    w: dict[str, Any] = {"tiny": str(tiny_model_dir), "base": str(base)}
    cache = base / "cache"
    w["cache"] = cache
    blocker = base / "a-file"
    blocker.write_text("not a folder\n")
    w["file"] = str(blocker)
    cfgs = base / "cfgs"
    cfgs.mkdir()
    (cfgs / "one.yaml").write_text("analysis: probe_transfer\n")
    w["cfgdir"] = str(cfgs)
    cfg = base / "ok.yaml"
    cfg.write_text(f"name: ok\nanalysis: probe_transfer\nmodels: ['{tiny_model_dir}']\n")
    w["cfg"] = str(cfg)
    latin = base / "latin1.yaml"
    latin.write_bytes("analysis: probe_transfer\nname: caf\xe9\n".encode("latin-1"))
    w["latin1"] = str(latin)
    dup = base / "dup.yaml"
    dup.write_text("analysis: probe_transfer\nlimit: 5\nlimit: 50\n")
    w["dupkey"] = str(dup)
    (base / "qa.csv").write_text("Q,A\nWhat is 2+2?,4\nCapital of France?,Paris\n" * 5)
    bad_task = base / "task_latin1.yaml"
    bad_task.write_bytes(
        "name: t\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "instruction: r\xe9ponds\n".encode("latin-1")
    )
    w["task_latin1"] = str(bad_task)
    for name, text in {
        "task_kshot": "name: t1\npath: qa.csv\ncolumns: {question: Q, answers: A}\nk_shot: -2\n",
        "task_kshot_str": "name: t2\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "k_shot: many\n",
        "task_maxnew": "name: t3\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "max_new_tokens: 0\n",
        "task_pertopic": "name: t4\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "shots_per_topic: 'no'\n",
        "task_dupkey": "name: t5\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "k_shot: 1\nk_shot: 2\n",
        "task_format": "name: t6\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "answer_format: words\n",
        "task_template": "name: t7\npath: qa.csv\ncolumns: {question: Q, answers: A}\n"
        "template: [a, b]\n",
    }.items():
        p = base / f"{name}.yaml"
        p.write_text(text)
        w[name] = str(p)
    w["taskdir"] = str(cfgs)
    w["out"] = str(base / "runs")

    # Populate the cache the cases must not touch: generations + activations of the tiny
    # model (the same calls the CLI makes), through the public API.
    import knowlens as kl

    old = os.environ.get("KNOWLENS_CACHE")
    os.environ["KNOWLENS_CACHE"] = str(cache)
    try:
        model = kl.load_model(tiny_model_dir, device="cpu")
        gens = kl.generate(model, kl.load_task("capitals", limit=4), max_new_tokens=3)
        kl.extract(model, gens, layers=[0, -1], tokens="last")
        w["model"], w["gens"] = model, gens
    finally:
        if old is None:
            os.environ.pop("KNOWLENS_CACHE", None)
        else:
            os.environ["KNOWLENS_CACHE"] = old
    assert any(cache.rglob("*.parquet")), "the populated cache holds no entries"
    return w


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    # .locks/ holds empty lock files, not entries: taking a lock changes no cached data.
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] != ".locks"
    }


@pytest.fixture()
def env(world, monkeypatch) -> dict[str, Any]:
    monkeypatch.setenv("KNOWLENS_CACHE", str(world["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A case that got past validation must not start a real analysis.
    from knowlens.experiments import _runner

    def no_work(*a: Any, **k: Any) -> Any:
        raise AssertionError("a bad input reached the analyses")

    monkeypatch.setattr(_runner, "_run_into", no_work)
    return world


def _fill(s: str, w: dict[str, Any]) -> str:
    return s.format(**{k: v for k, v in w.items() if isinstance(v, str)})


# ---- the CLI table ----------------------------------------------------------------------
RUN = ["run", "{cfg}", "-o", "{out}"]
GEN = ["generate", "-m", "{tiny}", "-t", "capitals", "--device", "cpu", "-n", "2"]
EXT = ["extract", "-m", "{tiny}", "-t", "capitals", "--device", "cpu", "-n", "2"]

CLI_CASES = [
    # run: config files
    Case("run-directory", ["run", "{cfgdir}"], "is a directory; expected a YAML config file"),
    Case("run-missing", ["run", "{base}/nope.yaml"], "does not exist"),
    Case("run-non-utf8", ["run", "{latin1}"], "not UTF-8"),
    Case("run-dup-key", ["run", "{dupkey}"], "'limit' appears twice"),
    Case("run-no-config", ["run"], "Missing argument 'config'"),
    # run: --set values, validated like the file's
    Case("set-limit-abc", [*RUN, "--set", "limit=abc"], "'limit'"),
    Case("set-limit-0", [*RUN, "--set", "limit=0"], "greater than or equal to 1"),
    Case("set-limit-bool", [*RUN, "--set", "limit=true"], "not a boolean"),
    Case("set-limit-float", [*RUN, "--set", "limit=1.5"], "'limit'"),
    Case("set-limit-list", [*RUN, "--set", "limit=[1, 2]"], "'limit'"),
    Case("set-yaml-error", [*RUN, "--set", "limit=[1,"], "not valid YAML"),
    Case("set-yaml-mapping", [*RUN, "--set", "limit={{a: 1"], "not valid YAML"),
    Case("set-seed-neg", [*RUN, "--set", "seed=-1"], "'seed'"),
    Case("set-seed-big", [*RUN, "--set", "seed=4294967296"], "'seed'"),
    Case("set-seed-str", [*RUN, "--set", "seed=zero"], "'seed'"),
    Case("set-no-equals", [*RUN, "--set", "limit"], "key=value"),
    Case("set-empty-key", [*RUN, "--set", "=3"], "key=value"),
    Case("set-twice", [*RUN, "--set", "limit=3", "--set", "limit=4"], "given twice"),
    Case("set-and-option", [*RUN, "--set", "limit=3", "--limit", "4"], "given twice"),
    Case("set-unknown-field", [*RUN, "--set", "limti=3"], "limti"),
    Case("set-n-bootstrap", [*RUN, "--set", "n_bootstrap=-5"], "'n_bootstrap'"),
    Case("set-min-n", [*RUN, "--set", "min_n=0"], "'min_n'"),
    Case("set-models-dup", [*RUN, "--set", "models=[a, a]"], "twice"),
    Case("set-models-str", [*RUN, "--set", "models=7"], "'models'"),
    Case("set-executor", [*RUN, "--set", "executor=spark"], "'executor'"),
    Case("set-name-slash", [*RUN, "--set", "name=a/b"], "plain folder name"),
    Case(
        "set-tokens",
        [*RUN, "--set", "tokens=[nope]"],
        "tokens",
    ),
    # run: options
    Case("seed-neg", [*RUN, "--seed", "-1"], "greater than or equal to 0"),
    Case("seed-big", [*RUN, "--seed", "4294967296"], "less than 4294967296"),
    Case("seed-abc", [*RUN, "--seed", "abc"], "--seed"),
    Case("limit-0", [*RUN, "--limit", "0"], "'limit'"),
    Case("limit-neg", [*RUN, "--limit", "-3"], "'limit'"),
    Case("limit-abc", [*RUN, "--limit", "abc"], "--limit"),
    Case("models-empty", [*RUN, "--models", ""], "no empty entry"),
    Case("models-blank-entry", [*RUN, "--models", "a,,b"], "no empty entry"),
    Case("models-comma", [*RUN, "--models", ","], "no empty entry"),
    Case("models-dup", [*RUN, "--models", "a,a"], "twice"),
    Case("executor-bad", [*RUN, "--executor", "spark"], "'executor'"),
    Case("ray-address-local", [*RUN, "--executor", "local", "--ray-address", "h:1"], "'ray'"),
    Case("ray-address-alone", [*RUN, "--ray-address", "auto"], "executor is 'local'"),
    Case("name-slash", [*RUN, "--name", "a/b"], "plain folder name"),
    Case("name-dotdot", [*RUN, "--name", ".."], "plain folder name"),
    Case("unknown-option", [*RUN, "--limt", "3"], "No such option"),
    Case("out-under-file", ["run", "{cfg}", "-o", "{file}/sub"], "is a file"),
    Case("out-is-file", ["run", "{cfg}", "-o", "{file}"], "is a file"),
    Case("out-unwritable", ["run", "{cfg}", "-o", "/proc/knowlens-no"], "Cannot write run"),
    Case("run-cache-file", [*RUN], "KNOWLENS_CACHE", env={"KNOWLENS_CACHE": "{file}"}),
    Case("run-cache-proc", [*RUN], "KNOWLENS_CACHE", env={"KNOWLENS_CACHE": "/proc/kl"}),
    Case("demo-limit-0", ["demo", "--limit", "0", "-o", "{out}"], "'analyses[0].limit'"),
    # report
    Case("report-not-a-run", ["report", "{cfgdir}"], "not a knowlens run folder"),
    Case("report-missing", ["report", "{base}/none"], "not a knowlens run folder"),
    # generate
    Case(
        "gen-unknown-model",
        ["generate", "-m", "smollm2-instruct", "-t", "capitals"],
        "Did you mean",
    ),
    Case("gen-missing-path", ["generate", "-m", "/no/such/model", "-t", "capitals"], "not found"),
    Case(
        "gen-file-not-model",
        ["generate", "-m", "{file}", "-t", "capitals"],
        "neither a model directory nor a .gguf",
    ),
    Case("gen-dir-not-model", ["generate", "-m", "{cfgdir}", "-t", "capitals"], "no config.json"),
    Case("gen-system-typo", [*GEN[:2], "{tiny}?sytem=safety", *GEN[3:]], "unknown option 'sytem'"),
    Case(
        "gen-api-target",
        ["generate", "-m", "api:x?base_url=http://127.0.0.1:9/v1", "-t", "capitals"],
        "API target",
    ),
    Case("gen-empty-model", ["generate", "-m", "", "-t", "capitals"], "non-empty"),
    Case("gen-unknown-task", [*GEN[:4], "capitls", *GEN[5:]], "Did you mean: capitals"),
    Case("gen-task-non-utf8", [*GEN[:4], "{task_latin1}", *GEN[5:]], "not UTF-8"),
    Case("gen-task-dir", [*GEN[:4], "{taskdir}/x.yaml", *GEN[5:]], "does not exist"),
    Case("gen-split", [*GEN, "--split", "dev"], "no split 'dev'"),
    Case("gen-limit-0", [*GEN[:-1], "0"], "--limit"),
    Case("gen-max-new-0", [*GEN, "--max-new-tokens", "0"], "--max-new-tokens"),
    Case("gen-batch-0", [*GEN, "--batch-size", "0"], "--batch-size"),
    Case("gen-device", [*GEN[:6], "tpu", *GEN[7:]], "Unknown device 'tpu'"),
    Case("gen-model-dtype", [*GEN, "--model-dtype", "int8"], "Unknown dtype 'int8'"),
    Case("gen-dtype-flag", [*GEN, "--dtype", "float16"], "--model-dtype"),
    Case("gen-cache-file", GEN, "KNOWLENS_CACHE", env={"KNOWLENS_CACHE": "{file}"}),
    # extract
    Case("ext-layer-range", [*EXT, "--layers", "9"], "out of range"),
    Case("ext-layer-neg-range", [*EXT, "--layers", "-9"], "out of range"),
    Case("ext-layer-text", [*EXT, "--layers", "abc"], "layers"),
    Case("ext-layers-empty", [*EXT, "--layers", ""], "layers"),
    Case("ext-layers-dup", [*EXT, "--layers", "0,0,-3"], "twice"),
    Case("ext-tokens", [*EXT, "--tokens", "exact"], "selector"),
    Case("ext-dtype", [*EXT, "--dtype", "int8"], "float16"),
    Case("ext-dtype-bf16", [*EXT, "--dtype", "bfloat16"], "float16"),
    Case("ext-max-positions", [*EXT, "--max-positions", "0"], "--max-positions"),
    Case("ext-batch-0", [*EXT, "--batch-size", "0"], "--batch-size"),
    Case("ext-unknown-model", ["extract", "-m", "gemma3-27", "-t", "capitals"], "Did you mean"),
    # tasks
    Case("tasks-unknown", ["tasks", "capitols"], "Did you mean: capitals"),
    Case("tasks-split", ["tasks", "capitals", "--split", "dev"], "no split 'dev'"),
    Case("tasks-path-builtin", ["tasks", "capitals", "--path", "{file}"], "path= does not apply"),
    Case("tasks-limit-0", ["tasks", "capitals", "--limit", "0"], "limit"),
    Case("tasks-bad-yaml", ["tasks", "{task_kshot}"], "'k_shot'"),
    # organism / serve / jailbreak / unknown
    Case("organism-seed", ["organism", "refusal", "--base", "x", "--seed", "-1"], "--seed"),
    Case("organism-steps", ["organism", "refusal", "--base", "x", "--steps", "0"], "--steps"),
    Case("organism-no-base", ["organism", "refusal"], "--base"),
    Case("serve-port", ["serve", "{tiny}", "--port", "70000"], "--port"),
    Case("jailbreak-unknown", ["jailbreak", "judge"], "No such command"),
    Case("unknown-command", ["generat"], "No such command"),
    Case("models-cache-file", ["models"], "KNOWLENS_CACHE", env={"KNOWLENS_CACHE": "{file}"}),
]


@pytest.mark.parametrize("case", [c.param() for c in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2(case, env):
    before = _snapshot(env["cache"])
    argv = [_fill(a, env) for a in case.what]  # type: ignore[union-attr]
    res = CliRunner().invoke(app, argv, env={k: _fill(v, env) for k, v in case.env.items()})
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert case.needle in lines[0], (case.needle, lines[0])
    assert _snapshot(env["cache"]) == before, "a bad input changed the cache"


# ---- the Python API table ------------------------------------------------------------------
def _task(**kw: Any) -> Callable[[dict[str, Any]], Any]:
    from knowlens.tasks import load_task

    return lambda w: load_task(kw.pop("name", "capitals"), **kw)


def _task_file(key: str) -> Callable[[dict[str, Any]], Any]:
    from knowlens.tasks import load_task

    return lambda w: load_task(w[key])


def _config(text: str | None = None, key: str | None = None, **ov: Any) -> Callable:
    from knowlens.experiments import load_config, parse_config

    if key is not None:
        return lambda w: load_config(w[key], **ov)
    import yaml

    return lambda w: parse_config(yaml.safe_load(text), overrides=ov)


def _metric(name: str, y: Any, p: Any, **kw: Any) -> Callable:
    from knowlens import metrics

    return lambda w: (
        metrics.METRICS[name](y, p, **kw)
        if name in metrics.METRICS
        else getattr(metrics, name)(y, p, **kw)
    )


def _load_model(spec: Any, **kw: Any) -> Callable:
    from knowlens.models import load_model

    return lambda w: load_model(_fill(spec, w) if isinstance(spec, str) else spec, **kw)


def _gen(**kw: Any) -> Callable:
    import knowlens as kl

    return lambda w: kl.generate(w["model"], kl.load_task("capitals", limit=2), **kw)


def _ext(**kw: Any) -> Callable:
    import knowlens as kl

    return lambda w: kl.extract(w["model"], w["gens"], **kw)


def _est(make: Callable[[dict[str, Any]], Any]) -> Callable:
    return make


Y, P = [1, 0, 1, 0], [0.9, 0.2, 0.7, 0.4]

API_CASES = [
    # load_task
    Case("task-unknown", _task(name="capitls"), "Did you mean: capitals"),
    Case("task-unknown-kwarg", _task(foo=1), "unknown argument 'foo'"),
    Case("task-kwarg-typo", _task(limt=3), "Did you mean: limit"),
    Case("task-k-shot-neg", _task(k_shot=-2), "k_shot must be a non-negative integer"),
    Case("task-k-shot-str", _task(k_shot="3"), "k_shot"),
    Case("task-k-shot-bool", _task(k_shot=True), "k_shot"),
    Case("task-limit-0", _task(limit=0), "limit must be a positive integer"),
    Case("task-limit-bool", _task(limit=True), "limit"),
    Case("task-limit-float", _task(limit=2.5), "limit"),
    Case("task-seed-neg", _task(seed=-1), "seed must be an integer"),
    Case("task-seed-str", _task(seed="0"), "seed"),
    Case("task-split", _task(split="dev"), "no split 'dev'"),
    Case("task-split-type", _task(split=1), "split must be a split name"),
    Case("task-template-type", _task(template=3), "template must be a string"),
    Case("task-template-placeholder", _task(template="{qestion}"), "unknown placeholder"),
    Case("task-path-builtin", _task(path="x.csv"), "path= does not apply"),
    Case("task-option-type", _task(name="city_country", n="many"), "option n must be int"),
    Case("task-name-none", _task(name=None), "name must be a task name"),
    Case("task-file-non-utf8", _task_file("task_latin1"), "not UTF-8"),
    Case("task-file-k-shot", _task_file("task_kshot"), "'k_shot' must be an integer >= 0"),
    Case("task-file-k-shot-str", _task_file("task_kshot_str"), "'k_shot'"),
    Case("task-file-max-new", _task_file("task_maxnew"), "'max_new_tokens'"),
    Case("task-file-per-topic", _task_file("task_pertopic"), "'shots_per_topic'"),
    Case("task-file-dup-key", _task_file("task_dupkey"), "'k_shot' appears twice"),
    Case("task-file-format", _task_file("task_format"), "'answer_format'"),
    Case("task-file-template", _task_file("task_template"), "'template' must be a string"),
    Case(
        "task-file-dir",
        lambda w: __import__("knowlens").load_task(w["taskdir"] + ".yaml"),
        "does not exist",
    ),
    # configs
    Case("cfg-directory", _config(key="cfgdir"), "is a directory"),
    Case("cfg-non-utf8", _config(key="latin1"), "not UTF-8"),
    Case("cfg-dup-key", _config(key="dupkey"), "appears twice"),
    Case("cfg-seed-override", _config(key="cfg", seed=-1), "'seed'"),
    Case("cfg-seed-none", _config(key="cfg", seed=None), "'seed'"),
    Case("cfg-limit-str", _config(key="cfg", limit="abc"), "'limit'"),
    Case(
        "cfg-ray-local",
        _config("analysis: probe_transfer\nray_address: auto\n"),
        "executor is 'local'",
    ),
    Case("cfg-bool-int", _config("analysis: probe_transfer\nmin_n: true\n"), "not a boolean"),
    Case(
        "cfg-unknown-field", _config("analysis: probe_transfer\nlimt: 1\n"), "Did you mean: limit"
    ),
    Case("cfg-unknown-analysis", _config("analysis: probe_transfr\n"), "Did you mean"),
    Case("cfg-not-mapping", _config("[1, 2]\n"), "mapping"),
    # metrics
    Case(
        "auroc-str-labels",
        _metric("auroc", ["yes", "no", "yes", "no"], P),
        "labels must be numbers",
    ),
    Case("auroc-str-scores", _metric("auroc", Y, ["a", "b", "c", "d"]), "scores must be numbers"),
    Case("auroc-num-str", _metric("auroc", ["1", "0", "1", "0"], P), "labels must be numbers"),
    Case("auroc-len", _metric("auroc", Y, P[:3]), "same length"),
    Case("auroc-labels-2", _metric("auroc", [2, 0, 1, 0], P), "labels must be 0/1"),
    Case("auroc-2d", _metric("auroc", np.ones((2, 2)), P), "one value per example"),
    Case("brier-above-1", _metric("brier", Y, [0.9, 0.2, 1.5, 0.4]), "[0, 1]"),
    Case("brier-below-0", _metric("brier", Y, [0.9, -0.2, 0.5, 0.4]), "[0, 1]"),
    Case("brier-inf", _metric("brier", Y, [0.9, np.inf, 0.5, 0.4]), "[0, 1]"),
    Case("accuracy-logits", _metric("accuracy", Y, [3.0, -2.0, 1.0, -1.0]), "[0, 1]"),
    Case("accuracy-threshold", _metric("accuracy", Y, P, threshold=5), "threshold"),
    Case("ece-above-1", _metric("ece", Y, [0.9, 0.2, 1.5, 0.4]), "ece: scores must be"),
    Case("ece-n-bins", _metric("ece", Y, P, n_bins=0), "n_bins"),
    Case("ece-pcorrect-str", _metric("ece_pcorrect", ["a"] * 4, P), "ece_pcorrect: labels"),
    Case("prr-str", _metric("prr", Y, ["x"] * 4), "prr: scores must be numbers"),
    Case("reliability-mode", _metric("reliability", Y, P, mode="pc"), "mode"),
    Case(
        "bootstrap-unknown",
        lambda w: __import__("knowlens").metrics.bootstrap("aurc", Y, P),
        "unknown metric",
    ),
    Case(
        "bootstrap-n",
        lambda w: __import__("knowlens").metrics.bootstrap("auroc", Y, P, n_resamples=0),
        "n_resamples",
    ),
    # models
    Case("model-unknown", _load_model("smollm2-instruct"), "Did you mean"),
    Case("model-missing-path", _load_model("/no/such/dir"), "not found"),
    Case("model-text-file", _load_model("{file}"), "neither a model directory"),
    Case("model-dir-no-config", _load_model("{cfgdir}"), "no config.json"),
    Case("model-device", _load_model("{tiny}", device="tpu"), "Unknown device"),
    Case("model-dtype", _load_model("{tiny}", dtype="int8"), "Unknown dtype"),
    # load_model says "path not found"; it should point at system_prompt= (the CLI's
    # generate/extract and the jailbreak targets read ?system= themselves).
    Case(
        "model-system-spec",
        _load_model("{tiny}?system=safety"),
        "system_prompt=",
    ),
    # generation / activations (the tiny model)
    Case("gen-max-new-0", _gen(max_new_tokens=0), "max_new_tokens"),
    Case("gen-batch-0", _gen(batch_size=0), "batch_size"),
    Case(
        "gen-not-a-model",
        lambda w: __import__("knowlens").generate(
            "smollm2", __import__("knowlens").load_task("capitals", limit=2)
        ),
        "ModelHandle",
    ),
    Case(
        "gen-context-length",
        lambda w: __import__("knowlens").generate_texts(
            w["model"], ["word " * 3000], max_new_tokens=2
        ),
        "context",
    ),
    Case("ext-layer-range", _ext(layers=[9]), "out of range"),
    Case("ext-layers-dup", _ext(layers=[0, 0, -3]), "twice"),
    Case("ext-tokens", _ext(tokens="exact"), "selector"),
    Case("ext-dtype", _ext(dtype="int8"), "float16"),
    Case("ext-empty", lambda w: __import__("knowlens").extract(w["model"], []), "empty"),
    # estimators
    Case(
        "est-logit-statistic",
        _est(
            lambda w: (
                __import__("knowlens")
                .estimators.LogitBaseline(statistic="mean")
                .fit(w["gens"])
                .predict_proba(w["gens"])
            )
        ),
        "statistic",
    ),
    Case(
        "est-logistic-C",
        _est(lambda w: __import__("knowlens").estimators.LogisticProbe(C=0).fit(None, w["gens"])),
        "C must be > 0",
    ),
    Case(
        "est-unfitted",
        _est(lambda w: __import__("knowlens").estimators.LogisticProbe().predict_proba(None)),
        "fit",
    ),
    Case(
        "est-zsc-no-model",
        _est(lambda w: __import__("knowlens").estimators.ZeroShotClassifier().fit(w["gens"])),
        "model=",
    ),
    Case(
        "est-unknown",
        _est(lambda w: __import__("knowlens").estimators.get_estimator("logistik")),
        "logistic",
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in API_CASES])
def test_api_bad_input_raises_one_line_knowlens_error(case, env):
    before = _snapshot(env["cache"])
    with pytest.raises(KnowlensError) as e:
        case.what(env)  # type: ignore[operator]
    msg = str(e.value)
    assert "\n" not in msg and msg.strip(), msg
    assert case.needle in msg, (case.needle, msg)
    assert _snapshot(env["cache"]) == before, "a bad input changed the cache"


def test_the_table_is_large_and_ids_are_unique():
    ids = [c.id for c in CLI_CASES] + [f"api-{c.id}" for c in API_CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)
