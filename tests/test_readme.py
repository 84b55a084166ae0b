"""README and CLI cannot drift: every ``knowlens ...`` command in README.md's code blocks
parses with the typer app (options exist, values have the right types and ranges), the
``run`` examples resolve to valid configs, and the model specs the README promises parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from knowlens.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[list[str]]:
    """argv of every line starting with `knowlens ` inside a fenced code block."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, re.S):
        for line in block.splitlines():
            if line.strip().startswith("knowlens "):
                out.append(shlex.split(line, comments=True))
    return out


COMMANDS = readme_commands()


def _leaf(argv: list[str]):
    """The click command an argv names, and the arguments left for it."""
    cmd, args, name = typer.main.get_command(app), list(argv[1:]), "knowlens"
    while hasattr(cmd, "commands"):
        assert args, f"{argv}: names a group, not a command"
        name = args.pop(0)
        assert name in cmd.commands, f"{argv}: no command '{name}'"
        cmd = cmd.commands[name]
    return cmd, name, args


def test_readme_has_the_tour_commands():
    names = {tuple(a[1:3]) if a[1] in {"organism", "jailbreak"} else (a[1],) for a in COMMANDS}
    for want in [("models",), ("tasks",), ("generate",), ("extract",), ("run",), ("report",)]:
        assert want in names, names
    assert ("organism", "refusal") in names and ("serve",) in names


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a[1:3]) for a in COMMANDS])
def test_every_readme_command_parses(argv):
    cmd, name, args = _leaf(argv)
    # make_context parses and converts every option (unknown option, bad int, out of range
    # all raise) without running the command.
    ctx = cmd.make_context(name, args)
    given = {p.name for p in cmd.params if ctx.get_parameter_source(p.name).name != "DEFAULT"}
    flags = [a for a in args if a.startswith("-")]
    assert len(given) >= len({f.split("=")[0] for f in flags}), (argv, given)


def test_readme_inline_flags_exist():
    """Flags quoted in the prose (`--device ...`, `--model-dtype ...`) exist on a command."""
    every: set[str] = set()

    def walk(cmd):
        for p in getattr(cmd, "params", []):
            every.update(o for o in p.opts + p.secondary_opts if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    quoted = {m for m in re.findall(r"`[^`]*?(--[a-z][a-z-]*)", prose)}
    assert quoted, "README prose quotes no flags"
    assert quoted <= every, sorted(quoted - every)


@pytest.fixture
def runner_calls(monkeypatch, tmp_path):
    """The configs the runner is called with; the runner itself is replaced (cwd: ROOT)."""
    from knowlens.experiments import _runner

    seen = []

    def fake_run_config(rc, *, use_cache=True, progress=True):
        seen.append(rc)
        return _runner.RunResult(tmp_path, {}, {}, tmp_path / "report.html", {})

    monkeypatch.setattr(_runner, "run_config", fake_run_config)
    monkeypatch.chdir(ROOT)
    return seen


def test_readme_run_examples_resolve_to_valid_configs(runner_calls):
    """`knowlens run ...` lines go through the real CLI and config validation; only the
    runner itself is replaced."""
    seen = runner_calls
    runs = [a for a in COMMANDS if a[1] == "run"]
    assert runs
    for argv in runs:
        res = CliRunner().invoke(app, argv[1:])
        assert res.exit_code == 0, (argv, res.output)
    by_source = {Path(rc.source).name: rc for rc in seen}
    pt = by_source["probe_transfer.yaml"].analyses[0]
    assert pt.models == ["smollm2-135m-instruct"] and pt.limit == 100
    tc = by_source["topic_calibration.yaml"]
    assert tc.analyses[0].n_bootstrap == 200 and tc.output == Path("runs")


def test_readme_generate_examples_reach_the_model_loader(monkeypatch):
    """`generate` lines parse their model spec with the target parser (?system=) and call
    load_model with the README's dtype; the loader is stopped there (no real model)."""
    import knowlens.models
    from knowlens.errors import KnowlensError

    calls = []

    def fake_load_model(spec, **kw):
        calls.append((spec, kw))
        raise KnowlensError("stopped by the test")

    monkeypatch.setattr(knowlens.models, "load_model", fake_load_model)
    gens = [a for a in COMMANDS if a[1] == "generate"]
    assert len(gens) >= 2
    for argv in gens:
        res = CliRunner().invoke(app, argv[1:])
        assert res.exit_code == 2 and "stopped by the test" in res.output, res.output
    by_sys = {kw["system_prompt"] is not None: (spec, kw) for spec, kw in calls}
    spec, kw = by_sys[True]
    from knowlens.jailbreak.targets import SYSTEM_PROMPTS

    assert spec == "smollm2-135m-instruct" and kw["system_prompt"] == SYSTEM_PROMPTS["safety"]
    assert kw["dtype"] == "float32"
    assert by_sys[False][0] == "smollm2-135m-instruct" and by_sys[False][1]["dtype"] is None


def test_readme_model_specs_parse():
    from knowlens.jailbreak.targets import parse_target

    assert parse_target("smollm2-135m-instruct?system=safety").system_name == "safety"
    assert parse_target("organism:refusal:smollm2-135m-instruct").kind == "local"
    api = parse_target("api:NAME?base_url=http://127.0.0.1:8000/v1")
    assert api.kind == "api" and api.options["base_url"].endswith("/v1")


def test_readme_task_count_matches_the_registry():
    import subprocess
    import sys

    # A fresh process: other tests register user tasks in this one's registry.
    code = "from knowlens.tasks._registry import task_names; print(len(task_names()))"
    n = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    m = re.search(r"knowlens tasks\s+# (\d+) tasks", README)
    assert m and int(m.group(1)) == n, (m and m.group(0), n)


def test_make_demo_resolves_the_demo_config_and_every_shipped_config_is_valid(
    runner_calls, tmp_path
):
    """`make demo` runs `knowlens demo`: it reaches the runner with configs/demo.yaml's
    analyses (the runner itself replaced); every config under configs/ validates."""
    from knowlens.experiments import load_config

    seen = runner_calls
    assert "$(BIN)/knowlens demo" in (ROOT / "Makefile").read_text()
    res = CliRunner().invoke(app, ["demo", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (rc,) = seen
    kinds = [a.analysis for a in rc.analyses]
    assert kinds == [
        "topic_calibration",
        "estimator_transfer",
        "probe_transfer",
        "prompt_transfer",
        "activation_maps",
        "activation_maps",
    ]
    # the power rules of the demo (issue 15): thin cells hatched below 40 answers, topics and
    # datasets outside 10-90 % accuracy left out, >= 100 test answers per probe dataset
    tc, et, pt = rc.analyses[:3]
    assert tc.min_n >= 40 and et.min_n >= 40 and pt.min_n >= 40
    assert tc.topic_accuracy == (0.1, 0.9) and pt.task_accuracy == (0.1, 0.9)
    assert pt.limit >= 100 and pt.train_limit >= 400
    # every topic asks >= 100 test questions (a topic's AUROC interval ~ +-0.1 at 100-200)
    from collections import Counter

    from knowlens.experiments.topic_calibration import _suite_split, _train_split

    kw = {"k_shot": tc.eval_k_shot}
    per_topic = Counter(e.topic for e in _suite_split(tc, "test", tc.eval_limit, kw).examples)
    assert set(per_topic) == set(tc.topics) and min(per_topic.values()) >= 100
    (train,) = _train_split(tc, kw)
    assert len(train.examples) >= 500  # estimators train on >= 400 answers (LoRA: 80 %)
    # estimator_transfer asks the same questions with the same train settings, so its
    # diagonal reuses topic_calibration's answers and fits (what the config says it does)
    from knowlens.experiments.estimator_transfer import _split_tasks

    test = _suite_split(tc, "test", tc.eval_limit, kw)
    assert [t.examples for t in _split_tasks(et, "train")] == [train.examples]
    assert [t.examples for t in _split_tasks(et, "test")] == [test.examples]
    assert et.train == tc.train and et.seed == tc.seed
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert load_config(path).analyses, path.name
