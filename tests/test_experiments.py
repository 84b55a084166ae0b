"""The three knowledge analyses on tiny random models with two small tasks: table shapes,
values equal to a direct computation with knowlens.metrics / estimators, figures, caching."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from knowlens import metrics
from knowlens.experiments import run

N_EXAMPLES = 40
GOLD: dict[str, dict[str, tuple[str, ...]]] = {"exp_tiny_a": {}, "exp_tiny_b": {}}
QUESTIONS = {
    "exp_tiny_a": "What is the capital of country {i}?",
    "exp_tiny_b": "Which country is city {i} in?",
}


def _build(name: str):
    from knowlens.tasks import Example

    return [
        Example(
            id=f"q{i}",
            question=QUESTIONS[name].format(i=i),
            answers=GOLD[name].get(f"q{i}", ("zzzq",)),
            topic=f"topic{i % 2}",
        )
        for i in range(N_EXAMPLES)
    ]


def build_a():
    return _build("exp_tiny_a")


def build_b():
    return _build("exp_tiny_b")


# The task registry memoises builders by name, so the first pass uses other builders.
def first_a():
    return _build("exp_tiny_a")


def first_b():
    return _build("exp_tiny_b")


def _register(prefix: str) -> None:
    from knowlens.tasks import TaskSpec, register_task

    for name, fn in (("exp_tiny_a", f"{prefix}_a"), ("exp_tiny_b", f"{prefix}_b")):
        register_task(
            TaskSpec(
                name=name,
                builder=f"{__name__}:{fn}",
                kind="qa",
                grader="alias_substring",
                template="Q: {question}\nA:",
                max_new_tokens=5,
            ),
            overwrite=True,
        )


@pytest.fixture(scope="module")
def tasks(tiny_model, second_model_dir):
    """Two tasks whose gold answers make about half of the tiny model's answers correct:
    a first pass reads the model's greedy answers, the gold of every other example is then
    set to the answers of both tiny models (the task version changes with the gold)."""
    from knowlens.generation import generate
    from knowlens.models import load_model
    from knowlens.tasks import load_task

    second = load_model(second_model_dir, device="cpu")
    sys.modules.setdefault(__name__, sys.modules[__name__])
    _register("first")
    for name in GOLD:
        GOLD[name].clear()
        for split in ("train", "validation", "test"):
            t = load_task(name, split=split)
            by_model = [generate(m, t, cache=False, progress=False) for m in (tiny_model, second)]
            for k, rows in enumerate(zip(*by_model, strict=True)):
                answers = tuple(dict.fromkeys(g.answer.strip() for g in rows if g.answer.strip()))
                GOLD[name][rows[0].example_id] = answers if answers and k % 2 == 0 else ("zzzq",)
    _register("build")
    return list(GOLD)


@pytest.fixture(scope="module")
def second_model_dir(tiny_model_dir, tmp_path_factory):
    import sys as _sys

    _sys.path.insert(0, str(tiny_model_dir.parent))
    from conftest import build_tiny_llama, build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tiny-llama-2")
    tok = build_tiny_tokenizer()
    build_tiny_llama(len(tok), seed=1).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _base(tmp_path, **kw):
    return {"n_bootstrap": 50, "device": "cpu", "min_n": 5, **kw}


def test_probe_transfer_matches_direct_computation(tasks, tiny_model, tiny_model_dir, tmp_path):
    from knowlens.activations import extract
    from knowlens.estimators import LogisticProbe, LogitBaseline
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    cfg = {
        "name": "pt",
        "analysis": "probe_transfer",
        "models": [str(tiny_model_dir)],
        "tasks": tasks,
        "sweep_layers": [1, 2],
        **_base(tmp_path),
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    t = res.tables["probe_transfer"]["probe_transfer"]
    # the AUROC difference, then AUROC, ECE and PRR (default metrics) of probe and baseline
    assert len(t) == 2 * 2 * 7
    assert set(t["metric"]) == {
        "auroc_minus_baseline",
        *(f"{pre}{m}" for pre in ("", "baseline_") for m in ("auroc", "ece", "prr")),
    }
    assert t[["value", "n"]].notna().all().all() and (t["n"] > 0).all()
    # Direct computation of one off-diagonal cell with the chosen layer.
    cell = t[(t["train_task"] == tasks[0]) & (t["test_task"] == tasks[1])].set_index("metric")
    layer = int(cell.loc["auroc", "layer"])
    g_tr = generate(tiny_model, load_task(tasks[0], split="train"), progress=False)
    g_te = generate(tiny_model, load_task(tasks[1], split="test"), progress=False)
    # the sweep's layers: the entries the analysis wrote (read while generating), same values
    a_tr = extract(tiny_model, g_tr, layers=[1, 2], tokens="exact_answer", progress=False)
    a_te = extract(tiny_model, g_te, layers=[1, 2], tokens="exact_answer", progress=False)
    assert np.asarray(a_tr.mask).any(1).all() and np.asarray(a_te.mask).any(1).all()
    p = LogisticProbe(layer=layer, max_iter=1000).fit(a_tr, g_tr).predict_proba(a_te)
    base = LogitBaseline(statistic="mean_logprob", span="exact_answer").predict_proba(g_te)
    y = g_te.correct
    # scores: the per-answer P(correct) behind every cell; each cell's AUROCs recomputed
    # from it equal the stored values exactly
    s = res.tables["probe_transfer"]["scores"]
    assert len(s) == 2 * 2 * 2 * len(g_te) and set(s["role"]) == {"probe", "baseline"}
    one = s[(s["train_task"] == tasks[0]) & (s["test_task"] == tasks[1])]
    pr, ba = (one[one.role == r].set_index("example_id") for r in ("probe", "baseline"))
    assert list(pr.index) == g_te.example_ids and (pr["layer"] == layer).all()
    # (the analysis' hidden states are captured while generating: not bit-identical to the
    # teacher-forced extract above, see activations/_capture.py)
    np.testing.assert_allclose(pr["p"], p, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ba["p"], base, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(pr["correct"], y)
    for (tr, te), c in s.groupby(["train_task", "test_task"]):
        row = t[(t["train_task"] == tr) & (t["test_task"] == te)].set_index("metric")
        pp, pb = (c[c.role == r] for r in ("probe", "baseline"))
        auc = metrics.auroc(pp["correct"], pp["p"])
        auc_b = metrics.auroc(pb["correct"], pb["p"])
        assert row.loc["auroc", "value"] == auc and row.loc["baseline_auroc", "value"] == auc_b
        assert row.loc["auroc_minus_baseline", "value"] == auc - auc_b
        for m in ("ece", "prr"):
            assert row.loc[m, "value"] == metrics.METRICS[m](pp["correct"], pp["p"])
            assert row.loc[f"baseline_{m}", "value"] == metrics.METRICS[m](pb["correct"], pb["p"])
        assert (pp["layer"] == row.loc["auroc", "layer"]).all()
        assert (pp["scorer"] == row.loc["auroc", "estimator"]).all()
        assert (pb["scorer"] == row.loc["auroc", "baseline"]).all()
    assert cell.loc["auroc", "value"] == pytest.approx(metrics.auroc(y, p))
    assert cell.loc["baseline_auroc", "value"] == pytest.approx(metrics.auroc(y, base))
    assert cell.loc["auroc_minus_baseline", "value"] == pytest.approx(
        metrics.auroc(y, p) - metrics.auroc(y, base)
    )
    for m in ("ece", "prr"):  # reported with a CI next to AUROC, for probe and baseline
        assert cell.loc[m, "value"] == pytest.approx(metrics.METRICS[m](y, p))
        assert cell.loc[f"baseline_{m}", "value"] == pytest.approx(metrics.METRICS[m](y, base))
        assert cell.loc[m, "ci_low"] <= cell.loc[m, "value"] <= cell.loc[m, "ci_high"]
    assert cell.loc["auroc", "n"] == len(g_te)
    lo, hi = cell.loc["auroc", "ci_low"], cell.loc["auroc", "ci_high"]
    assert lo <= cell.loc["auroc", "value"] <= hi
    # Layer sweep recorded, one chosen layer per train task; accuracy per task and split.
    lay = res.tables["probe_transfer"]["layers"]
    assert len(lay) == 2 * 2 and lay.groupby("task")["chosen"].sum().eq(1).all()
    acc = res.tables["probe_transfer"]["accuracy"]
    assert len(acc) == 4 and acc["accuracy"].between(0.2, 0.8).all()
    m = tiny_model_dir.name
    assert sorted(p.name for p in res.figures["probe_transfer"] if p.suffix == ".png") == [
        f"probe_layers_{m}.png",
        f"probe_transfer_raw_{m}.png",
        f"probe_transfer_{m}.png",
    ]


def test_topic_calibration_and_rerun_hits_cache(tasks, tiny_model, tiny_model_dir, tmp_path):
    from knowlens.estimators import ZeroShotClassifier
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    cfg = {
        "name": "tc",
        "analysis": "topic_calibration",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],
        "eval_task": tasks[1],
        "estimators": ["zero_shot", "probe", "lora_prompt"],
        "train": {"probe_epochs": 5, "lora_steps": 2},
        **_base(tmp_path),
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    tabs = res.tables["topic_calibration"]
    t = tabs["topic_calibration"]
    # 2 topics + "(all)", 3 estimators, 3 metrics (default: ECE, AUROC, PRR).
    assert len(t) == 3 * 3 * 3
    assert set(t["estimator"]) == {"Zero-Shot Classifier", "Probe", "LoRA + Prompt"}
    s = tabs["scores"]
    for (est, topic), grp in s.groupby(["estimator", "topic"]):
        row = t[(t["estimator"] == est) & (t["topic"] == topic)].set_index("metric")
        assert row.loc["ece", "value"] == pytest.approx(metrics.ece(grp["correct"], grp["p"]))
        assert row.loc["ece", "n"] == len(grp)
        auc = metrics.auroc(grp["correct"], grp["p"])
        assert row.loc["auroc", "value"] == pytest.approx(auc, nan_ok=True)
        prr = metrics.prr(grp["correct"], grp["p"])
        assert row.loc["prr", "value"] == pytest.approx(prr, nan_ok=True)
    # The zero-shot scores equal a direct ZeroShotClassifier run on the eval answers.
    ev = generate(tiny_model, load_task(tasks[1], split="test"), progress=False)
    direct = ZeroShotClassifier(model=tiny_model, progress=False).fit().predict_proba(ev)
    zs = s[s["estimator"] == "Zero-Shot Classifier"]
    np.testing.assert_allclose(zs["p"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
    rel = tabs["reliability"]
    assert len(rel) == 3 * 10 and rel.groupby("estimator")["count"].sum().eq(len(ev)).all()
    assert {p.name for p in res.figures["topic_calibration"]} >= {
        "topic_calibration.png",
        "topic_calibration.svg",
        "reliability.png",
        "learning_curves.png",
    }
    # the LoRA estimator's learning curve: evaluations at step 0 and its last step (budget 2)
    lc = tabs["learning_curves"]
    assert set(lc["estimator"]) == {"LoRA + Prompt"} and list(lc["step"]) == [0, 2]
    assert (lc["max_steps"] == 2).all() and (lc["stopped_step"] == 2).all()
    assert lc["best_step"].iloc[0] == lc.loc[lc["val_loss"].idxmin(), "step"]
    # paired differences to the Zero-Shot Classifier on the same answers (shown topics)
    d = tabs["differences"].set_index(["estimator", "metric"])
    assert set(d.index) == {(e, m) for e in ("Probe", "LoRA + Prompt") for m in ("auroc", "ece")}
    for est in ("Probe", "LoRA + Prompt"):
        a_, b_ = s[s["estimator"] == est], s[s["estimator"] == "Zero-Shot Classifier"]
        assert list(a_["example_id"]) == list(b_["example_id"])
        for m in ("auroc", "ece"):
            want = metrics.METRICS[m](a_["correct"], a_["p"]) - metrics.METRICS[m](
                b_["correct"], b_["p"]
            )
            row = d.loc[(est, m)]
            assert row["value"] == pytest.approx(want) and row["n"] == len(a_)
            assert row["ci_low"] <= row["value"] <= row["ci_high"]
    html = res.report.read_text()
    assert "LoRA + Prompt minus Zero-Shot Classifier" in html
    assert "Learning curves of the trained estimators" in html
    assert "ran out of steps: raise lora_steps" in html

    # Rerun, unchanged config: tables come from the result cache, nothing recomputed.
    res2 = run(res.run_dir / "config.yaml", progress=False)
    assert res2.cache_hits == {"topic_calibration": True}
    pd.testing.assert_frame_equal(t, res2.tables["topic_calibration"]["topic_calibration"])
    # Changed bootstrap size: recomputes the table, but reuses every cached generation,
    # trained estimator and score (no misses in those caches).
    res3 = run(res.run_dir / "config.yaml", n_bootstrap=20, progress=False)
    import json

    man = json.loads((res3.run_dir / "manifest.json").read_text())
    cache = man["analyses"]["topic_calibration"]["cache"]
    assert cache["estimators"] == {"hits": 3, "misses": 0}
    assert cache["estimator_scores"] == {"hits": 3, "misses": 0}
    # fitted estimators live in one place, cache_root()/estimators/<Estimator.cache_key()>
    from knowlens._cache import cache_root

    entries = sorted((cache_root() / "estimators").iterdir())
    assert len(entries) == 3 and all((e / "checksums.json").exists() for e in entries)
    assert not (cache_root() / "trained_estimators").exists()
    t3 = res3.tables["topic_calibration"]["topic_calibration"]
    np.testing.assert_allclose(t3["value"], t["value"])


def test_estimator_transfer_matrix(tasks, tiny_model_dir, second_model_dir, tmp_path):
    models = [str(tiny_model_dir), str(second_model_dir)]
    cfg = {
        "name": "et",
        "analysis": "estimator_transfer",
        "models": models,
        "tasks": tasks,
        "estimators": ["probe", "lora_prompt"],
        "train": {"probe_epochs": 5, "lora_steps": 2},
        **_base(tmp_path),
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    t = res.tables["estimator_transfer"]["estimator_transfer"]
    assert len(t) == 2 * 2 * 2 * 3  # estimators x models x trained_on x (AUROC, ECE, PRR)
    assert list(dict.fromkeys(t["metric"])) == ["auroc", "ece", "prr"]
    assert set(zip(t["model"], t["trained_on"], strict=True)) == {
        (a, b) for a in models for b in models
    }
    s = res.tables["estimator_transfer"]["scores"]
    for (m, tr, est), grp in s.groupby(["model", "trained_on", "estimator"]):
        row = t[(t["model"] == m) & (t["trained_on"] == tr) & (t["estimator"] == est)]
        row = row.set_index("metric")
        for name in ("auroc", "ece", "prr"):
            assert row.loc[name, "value"] == pytest.approx(
                metrics.METRICS[name](grp["correct"], grp["p"]), nan_ok=True
            )
        assert (row["n"] == len(grp)).all() and len(grp) == 2 * 12
    # The row model's answers differ by model; the estimator of the column model reads them.
    a = s[(s["trained_on"] == models[0]) & (s["estimator"] == "Probe")]
    assert a.groupby("model")["p"].apply(lambda x: tuple(x.to_numpy().round(6))).nunique() == 2
    assert any(p.name == "estimator_transfer_auroc.png" for p in res.figures["estimator_transfer"])
    from knowlens.experiments._common import short_model
    from knowlens.experiments.estimator_transfer import report_sections

    (sec,) = report_sections(res.tables["estimator_transfer"], [])
    acc = res.tables["estimator_transfer"]["accuracy"]
    acc = acc[acc["split"] == "test"].groupby("model")[["n", "n_correct"]].sum()
    want = [
        f"{short_model(m)} {acc.loc[m, 'n_correct'] / acc.loc[m, 'n']:.0%} of 24" for m in models
    ]
    assert sec.key_numbers["test answers correct"] == "; ".join(want)


def test_estimator_transfer_topics_reuse_topic_calibrations_fits(tasks, tiny_model_dir, tmp_path):
    """``topics`` keeps one topic's questions; the selection (and the train split without the
    test split's questions) is topic_calibration's in_distribution one, so after it the
    estimator_transfer diagonal trains nothing: its fit comes from the estimator cache."""
    import json

    from knowlens.tasks import load_task

    model = str(tiny_model_dir)
    shared = {"models": [model], "estimators": ["probe"], "train": {"probe_epochs": 5}}
    suite = {
        "name": "et-topics",
        "limit": 40,
        "analyses": [
            {
                "analysis": "topic_calibration",
                "setting": "in_distribution",
                "eval_task": tasks[1],
                "topics": ["topic0"],
                **shared,
                **_base(tmp_path),
            },
            {
                "analysis": "estimator_transfer",
                "tasks": [tasks[1]],
                "topics": ["topic0"],
                **shared,
                **_base(tmp_path),
            },
        ],
    }
    res = run(suite, output=tmp_path / "runs", progress=False)
    acc = res.tables["estimator_transfer"]["accuracy"].set_index("split")
    for split in ("train", "test"):
        want = [e for e in load_task(tasks[1], split=split).examples if e.topic == "topic0"]
        assert acc.loc[split, "n"] == len(want) > 0
    man = json.loads((res.run_dir / "manifest.json").read_text())
    cache = man["analyses"]["estimator_transfer"]["cache"]
    assert cache["estimators"] == cache["estimator_scores"] == {"hits": 1, "misses": 0}
    t = res.tables["estimator_transfer"]["estimator_transfer"].set_index("metric")
    c = res.tables["topic_calibration"]["topic_calibration"]
    pooled = c[(c["topic"] == "(all)") & (c["metric"] == "auroc")]
    assert t.loc["auroc", "value"] == pytest.approx(pooled["value"].iloc[0])
    with pytest.raises(Exception, match="topics \\['nope'\\] are not topics of"):
        run(
            {**suite, "analyses": [{**suite["analyses"][1], "topics": ["nope"]}]},
            output=tmp_path / "r2",
            progress=False,
        )


def test_logit_and_ptrue_from_a_config(
    tasks, tiny_model, tiny_model_dir, second_model_dir, tmp_path
):
    """LogitBaseline and PTrue are usable by config name: estimator_transfer with both, on
    the two tiny models; scores equal direct runs of the estimators."""
    from knowlens.estimators import LogitBaseline, PTrue
    from knowlens.experiments._common import decided
    from knowlens.experiments._estimators import concat
    from knowlens.generation import generate
    from knowlens.models import load_model
    from knowlens.tasks import load_task

    models = [str(tiny_model_dir), str(second_model_dir)]
    cfg = {
        "name": "lp",
        "analysis": "estimator_transfer",
        "models": models,
        "tasks": tasks,
        "estimators": ["logit", "p_true"],
        **_base(tmp_path),
    }
    res = run(cfg, output=tmp_path / "runs", progress=False)
    t = res.tables["estimator_transfer"]["estimator_transfer"]
    assert set(t["estimator"]) == {"Logit baseline", "P(True)"} and len(t) == 2 * 2 * 2 * 3
    s = res.tables["estimator_transfer"]["scores"]
    handles = {models[0]: tiny_model, models[1]: load_model(second_model_dir, device="cpu")}
    test = {
        m: concat([decided(generate(h, load_task(n, split="test"), progress=False)) for n in tasks])
        for m, h in handles.items()
    }
    for (m, tr, est), grp in s.groupby(["model", "trained_on", "estimator"]):
        if est == "Logit baseline":  # the answering model's own log-probs, whoever "trains"
            direct = LogitBaseline().predict_proba(test[m])
        else:  # the trained-on model is asked about the row model's answers
            direct = PTrue(model=handles[tr], progress=False).fit().predict_proba(test[m])
        np.testing.assert_allclose(grp["p"].to_numpy(), direct, rtol=1e-5, atol=1e-6)
        row = t[(t["model"] == m) & (t["trained_on"] == tr) & (t["estimator"] == est)]
        row = row.set_index("metric")
        assert row.loc["auroc", "value"] == pytest.approx(metrics.auroc(grp["correct"], direct))
        assert row.loc["prr", "value"] == pytest.approx(metrics.prr(grp["correct"], direct))
    logit = s[s["estimator"] == "Logit baseline"]
    by = {k: g["p"].to_numpy() for k, g in logit.groupby(["model", "trained_on"])}
    for m in models:  # same scores in every column of a row; rows differ
        np.testing.assert_array_equal(by[m, models[0]], by[m, models[1]])
    assert not np.array_equal(by[models[0], models[0]], by[models[1], models[0]])


def test_topic_calibration_in_distribution_and_topic_filter(
    tasks, tiny_model, tiny_model_dir, tmp_path
):
    """in_distribution trains on the eval task's own train split; ``topic_accuracy`` hides
    topics outside the range, recorded in the ``topics`` table."""
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    ev = generate(tiny_model, load_task(tasks[1], split="test"), progress=False)
    acc = pd.DataFrame({"topic": [g.topic for g in ev], "c": ev.correct}).groupby("topic")["c"]
    acc = acc.mean()
    assert acc.max() < 0.9  # so [0.9, 1] hides every topic
    cfg = {
        "name": "tc-id",
        "analysis": "topic_calibration",
        "setting": "in_distribution",
        "models": [str(tiny_model_dir)],
        "train_tasks": [tasks[0]],  # ignored in this setting
        "eval_task": tasks[1],
        "topic_accuracy": [0.9, 1.0],
        "estimators": ["zero_shot", "probe"],
        "train": {"probe_epochs": 5},
        **_base(tmp_path),
    }
    tabs = run(cfg, output=tmp_path / "runs", progress=False).tables["topic_calibration"]
    a = tabs["accuracy"]
    assert set(zip(a["task"], a["split"], strict=True)) == {(tasks[1], "train"), (tasks[1], "test")}
    assert tabs["settings"]["setting"].iloc[0] == "in_distribution"
    tt = tabs["topics"].set_index("topic")
    np.testing.assert_allclose(tt.loc[acc.index, "accuracy"], acc.to_numpy())
    assert not tt["shown"].any()
    t = tabs["topic_calibration"]
    assert set(t["topic"]) == {"(all)"}
    assert (t["n"] == len(ev)).all()  # the pooled cell still pools every answer
    with pytest.raises(Exception, match="0 <= lo < hi <= 1"):
        run({**cfg, "topic_accuracy": [0.9, 0.1]}, output=tmp_path / "r2", progress=False)


def test_probe_transfer_train_limit_caps_the_training_answers_only(tasks, tiny_model_dir, tmp_path):
    cfg = {
        "name": "pt-tl",
        "analysis": "probe_transfer",
        "models": [str(tiny_model_dir)],
        "tasks": tasks,
        "sweep_layers": [1],
        "limit": 10,
        "train_limit": 18,
        **_base(tmp_path),
    }
    tabs = run(cfg, output=tmp_path / "runs", progress=False).tables["probe_transfer"]
    acc = tabs["accuracy"]
    assert (acc.loc[acc["split"] == "train", "n"] == 18).all()
    assert (acc.loc[acc["split"] == "test", "n"] == 10).all()
    t = tabs["probe_transfer"]
    assert (t.loc[t["metric"] == "auroc", "n"] == 10).all()


def test_probe_transfer_task_accuracy_leaves_out_one_class_datasets(
    tasks, tiny_model_dir, tmp_path
):
    """``task_accuracy`` keeps the datasets whose train and test accuracy lie in the range
    (noted otherwise); kept cells keep their resamples, so [0, 1] changes nothing, and a
    range that keeps none gives empty tables and a report that says why."""
    from types import SimpleNamespace

    from knowlens.experiments.probe_transfer import Config, _within_accuracy

    def split(acc):
        return (SimpleNamespace(correct=np.array([1.0] * acc + [0.0] * (10 - acc))), None)

    data = {"a": {"train": split(5), "test": split(4)}, "b": {"train": split(10), "test": split(5)}}
    notes = []
    ctx = SimpleNamespace(note=lambda k, v: notes.append((k, v)))
    cfg = Config(models=["m"], tasks=["a", "b"], task_accuracy=(0.1, 0.9))
    assert _within_accuracy(cfg, ctx, "m", data) == ["a"]
    assert notes == [
        ("m:b", "accuracy 1.00 (train) / 0.50 (test) is outside task_accuracy [0.1, 0.9]: "
         "dataset left out of the matrix")
    ]  # fmt: skip
    with pytest.raises(Exception, match="0 <= lo < hi <= 1"):
        Config(models=["m"], tasks=["a", "b"], task_accuracy=(0.5, 0.5))

    cfg = {
        "analysis": "probe_transfer",
        "models": [str(tiny_model_dir)],
        "tasks": tasks,
        "sweep_layers": [1, 2],
        **_base(tmp_path),
    }
    plain = run({**cfg, "name": "pt"}, output=tmp_path / "runs", progress=False)
    wide = run({**cfg, "name": "pt-01", "task_accuracy": [0, 1]}, output=tmp_path / "runs",
               progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(
        plain.tables["probe_transfer"]["probe_transfer"],
        wide.tables["probe_transfer"]["probe_transfer"],
    )
    none = run({**cfg, "name": "pt-none", "task_accuracy": [0.95, 1]}, output=tmp_path / "runs",
               progress=False)  # fmt: skip
    assert none.tables["probe_transfer"]["probe_transfer"].empty
    text = none.report.read_text()
    assert "every dataset&#x27;s accuracy is outside task_accuracy" in text  # html-escaped
    from knowlens.experiments.probe_transfer import left_out

    assert left_out(none.tables["probe_transfer"], str(tiny_model_dir)) == tasks
    assert left_out(plain.tables["probe_transfer"], str(tiny_model_dir)) == []


def test_topics_and_suite_options_choose_the_questions_asked():
    """``topics`` keeps only those topics' questions before the limits apply,
    ``eval_task_options`` reaches mc_suite's builder, and in_distribution keeps same-stem
    questions with other options ("Which of these numbers is prime?") while dropping any
    train question equal to a test one (text and options)."""
    from collections import Counter

    from knowlens.errors import ConfigError
    from knowlens.experiments._common import _question
    from knowlens.experiments.topic_calibration import Config, _suite_split, _train_split

    base = {"models": ["m"], "eval_task": "mc_suite", "setting": "in_distribution"}
    cfg = Config(**base, topics=["primes", "population"])
    test = _suite_split(cfg, "test", 70, {})
    assert len(test.examples) == 70 and {e.topic for e in test.examples} == {"primes", "population"}
    (train,) = _train_split(Config(**base, topics=["primes"], train_limit=500), {})
    ids = Counter(e.topic for e in train.examples)
    assert set(ids) == {"primes"} and ids["primes"] > 50  # the old text-only rule kept none
    asked = {
        _question(e)
        for e in _suite_split(Config(**base, topics=["primes"]), "test", None, {}).examples
    }
    assert not asked & {_question(e) for e in train.examples}
    small = _suite_split(Config(**base, topics=["arithmetic"]), "test", None, {})
    big = _suite_split(
        Config(**base, topics=["arithmetic"], eval_task_options={"per_topic": 400}),
        "test",
        None,
        {},
    )
    assert len(big.examples) > 1.7 * len(small.examples)
    assert {e.id for e in small.examples} <= {e.id for e in big.examples}  # hash splits: stable
    with pytest.raises(ConfigError, match=r"topics \['astrology'\] are not topics") as e:
        _suite_split(Config(**base, topics=["astrology"]), "test", None, {})
    assert "\n" not in str(e.value) and "primes" in str(e.value)
    with pytest.raises(ConfigError, match="per_topc"):
        _suite_split(Config(**base, eval_task_options={"per_topc": 3}), "test", None, {})


def test_topic_filter_needs_the_range_on_every_model():
    from knowlens.experiments.topic_calibration import Config, _topic_table

    # topic a: 0.5 on both models; b: 0.5 on m1 but 1.0 on m2; c: 0.0 on both.
    rows = []
    for model, accs in (
        ("m1", {"a": 0.5, "b": 0.5, "c": 0.0}),
        ("m2", {"a": 0.5, "b": 1.0, "c": 0.0}),
    ):
        for topic, a in accs.items():
            for i in range(4):
                rows.append(("E", model, f"{topic}{i}", topic, float(i < 4 * a)))
    scores = pd.DataFrame(rows, columns=["estimator", "model", "example_id", "topic", "correct"])
    cfg = Config(models=["m1", "m2"], topic_accuracy=(0.1, 0.9))
    tab = _topic_table(scores, cfg, {})  # open answers: guessing rate 0
    assert dict(zip(tab["model"] + "/" + tab["topic"], tab["accuracy"], strict=True)) == {
        "m1/a": 0.5, "m1/b": 0.5, "m1/c": 0.0, "m2/a": 0.5, "m2/b": 1.0, "m2/c": 0.0,
    }  # fmt: skip
    assert set(tab.loc[tab["shown"], "topic"]) == {"a"}
    assert _topic_table(scores, Config(models=["m1"]), {})["shown"].all()


def test_topics_at_the_guessing_rate_are_not_shown():
    """A four-option topic is shown only when its accuracy is above 25 % on every model
    (one-sided binomial test at 0.05): 30/120 correct is guessing, 45/120 is not (p = 0.002),
    whatever ``topic_accuracy`` allows; the report names the hidden topic and its rate."""
    from types import SimpleNamespace

    from scipy.stats import binomtest

    from knowlens.experiments.topic_calibration import (
        Config,
        _chance_rates,
        _topic_table,
        report_sections,
    )
    from knowlens.tasks import Example

    task = SimpleNamespace(
        examples=[
            Example("g", "q", ("A",), options=("w", "x", "y", "z"), topic="guess"),
            Example("k", "q", ("B",), options=("w", "x", "y", "z"), topic="known"),
            Example("o", "q", ("Paris",), topic="open"),
        ]
    )
    chance = _chance_rates(task)
    assert chance == {"guess": 0.25, "known": 0.25, "open": 0.0}
    rows = []
    for topic, k in (("guess", 30), ("known", 45), ("open", 10)):
        rows += [("E", "m", f"{topic}{i}", topic, float(i < k), 0.5) for i in range(120)]
    scores = pd.DataFrame(
        rows, columns=["estimator", "model", "example_id", "topic", "correct", "p"]
    )
    tab = _topic_table(scores, Config(models=["m"], topic_accuracy=(0.05, 0.95)), chance)
    tab = tab.set_index("topic")
    assert tab.loc["guess", "p_above_chance"] == pytest.approx(
        binomtest(30, 120, 0.25, alternative="greater").pvalue
    )
    assert tab.loc["guess", "p_above_chance"] > 0.05 > tab.loc["known", "p_above_chance"]
    assert tab["shown"].to_dict() == {"guess": False, "known": True, "open": True}
    tables = {
        "topic_calibration": pd.DataFrame(
            [
                {"analysis": "topic_calibration", "model": "m", "estimator": "E", "topic": t,
                 "metric": "auroc", "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 120,
                 "n_correct": 45}
                for t in ("known", "open", "(all)")
            ]
        ),
        "topics": tab.reset_index(),
    }  # fmt: skip
    keys = report_sections(tables, [])[0].key_numbers
    assert keys["at the guessing rate (not shown: correctness is a coin flip there)"] == (
        "m guess 25% (guessing 25%)"
    )


def test_resolution_counts_drawn_cells_and_their_ci_width():
    from knowlens.experiments._common import resolution

    cells = pd.DataFrame(
        {
            "metric": ["auroc"] * 4 + ["ece"],
            "value": [0.7, 0.6, np.nan, 0.9, 0.1],
            "ci_low": [0.6, 0.4, np.nan, 0.5, 0.0],
            "ci_high": [0.8, 0.8, np.nan, 1.0, 0.2],
            "n": [50, 40, 60, 3, 50],
        }
    )
    # drawn: the first two (the third has no value, the fourth n < 5); half-widths 0.1, 0.2
    assert resolution(cells, 5) == {
        "AUROC cells drawn (n >= 5)": "2 of 4",
        "smallest n of a drawn AUROC cell": "40",
        "median AUROC 95% CI half-width": "0.150",
    }
