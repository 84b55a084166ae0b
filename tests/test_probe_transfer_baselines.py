"""probe_transfer with registered estimators as baselines (issue 16): a logit statistic, a
sample estimator and an activation estimator beside the logit baseline, each scored with
its own predict_proba on the same answers and bootstrapped on the probe's resamples; the old
config's rows are unchanged; a bad name is one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from knowlens import metrics
from knowlens.errors import ConfigError
from test_experiments import second_model_dir, tasks  # noqa: F401

BASELINES = ["max_entropy", "mc_entropy", "mahalanobis"]
LABELS = {"max_entropy": "Max. token entropy", "mc_entropy": "MC sequence entropy"}
LABELS["mahalanobis"] = "Mahalanobis distance"
N_BOOT = 20


def _cfg(tasks, tiny_model_dir, **kw):  # noqa: F811
    return {
        "name": "ptb",
        "analysis": "probe_transfer",
        "models": [str(tiny_model_dir)],
        "tasks": tasks,
        "layer": 2,
        "n_bootstrap": N_BOOT,
        "device": "cpu",
        "min_n": 5,
        **kw,
    }


def _direct(tiny_model, tasks):  # noqa: F811
    """P(correct) of each baseline fitted on tasks[0]'s train split, on tasks[1]'s test
    answers, computed with the estimators themselves (no analysis code)."""
    import knowlens as kl
    from knowlens._types import SampledGenerations
    from knowlens.activations import extract
    from knowlens.estimators import get_estimator
    from knowlens.experiments._common import decided
    from knowlens.generation import generate
    from knowlens.tasks import load_task

    g_tr = decided(generate(tiny_model, load_task(tasks[0], split="train"), progress=False))
    g_te = decided(generate(tiny_model, load_task(tasks[1], split="test"), progress=False))
    for g in (g_tr, g_te):  # every answer has an exact-answer position: no subset taken
        a = extract(tiny_model, g, layers=[2], tokens="exact_answer", progress=False)
        assert np.asarray(a.mask).any(1).all()
    kw = {"k": 2, "temperature": 1.0, "top_p": 1.0, "seed": 0, "max_new_tokens": None}
    s_tr, s_te = (
        SampledGenerations.of(g, kl.sample(tiny_model, g, progress=False, **kw))
        for g in (g_tr, g_te)
    )
    last = tiny_model.n_layers
    a_tr, a_te = (
        extract(tiny_model, g, layers=[last], tokens="last", progress=False) for g in (g_tr, g_te)
    )
    inputs = {"max_entropy": (g_tr, g_te), "mc_entropy": (s_tr, s_te), "mahalanobis": (a_tr, a_te)}
    p = {}
    for name, (x_tr, x_te) in inputs.items():
        est = get_estimator(name).make(model=tiny_model, seed=0)
        p[name] = est.fit(x_tr, g_tr.correct).predict_proba(x_te)
    return g_te.correct, p


def test_registered_baselines_beside_the_logit_baseline(
    tasks,  # noqa: F811
    tiny_model,
    tiny_model_dir,
    tmp_path,
):
    from knowlens.experiments import run
    from knowlens.experiments.probe_transfer import baseline_summary, report_sections

    cfg = _cfg(tasks, tiny_model_dir, baselines=BASELINES, sampling={"k": 2})
    res = run(cfg, output=tmp_path / "runs", progress=False)
    tabs = res.tables["probe_transfer"]
    t = tabs["probe_transfer"]
    primary = "mean log-prob of exact-answer tokens"
    assert list(dict.fromkeys(t["baseline"])) == [primary, *LABELS.values()]
    # per cell: the difference, 3 probe + 3 primary metrics, 3 metrics per extra baseline
    assert len(t) == 2 * 2 * (7 + 3 * len(BASELINES))
    extra = t[t["baseline"] != primary]
    assert set(extra["metric"]) == {"baseline_auroc", "baseline_ece", "baseline_prr"}
    assert extra["value"].notna().all()

    y, direct = _direct(tiny_model, tasks)
    cell = t[(t["train_task"] == tasks[0]) & (t["test_task"] == tasks[1])]
    seed = 0 + 7919 * 1  # the test split's resamples, shared by the probe's rows
    for name, label in LABELS.items():
        rows = cell[cell["baseline"] == label].set_index("metric")
        p = direct[name]
        assert rows.loc["baseline_auroc", "value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert rows.loc["baseline_auroc", "n"] == len(y)
        assert rows.loc["baseline_ece", "value"] == pytest.approx(metrics.ece(y, p), abs=1e-12)
        assert rows.loc["baseline_prr", "value"] == pytest.approx(metrics.prr(y, p), abs=1e-12)
        for m in ("auroc", "ece", "prr"):  # same bootstrap resamples as the probe's rows
            ci = metrics.bootstrap(m, y, p, n_resamples=N_BOOT, seed=seed)
            got = rows.loc[f"baseline_{m}", ["ci_low", "ci_high"]].to_numpy(dtype=float)
            np.testing.assert_allclose(got, [ci.low, ci.high], rtol=0, atol=1e-12)
    # scores: each extra baseline's P(correct) per answer (role extra, scorer = its label),
    # the one its cells were computed from
    s = tabs["scores"]
    assert list(dict.fromkeys(s["role"])) == ["probe", "baseline", "extra"]
    sc = s[(s["train_task"] == tasks[0]) & (s["test_task"] == tasks[1])]
    for name, label in LABELS.items():
        e = sc[(sc["role"] == "extra") & (sc["scorer"] == label)]
        np.testing.assert_allclose(e["p"], direct[name], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(e["correct"], y)
    for (tr, te, label), c in s[s["role"] == "extra"].groupby(
        ["train_task", "test_task", "scorer"]
    ):
        row = t[(t["train_task"] == tr) & (t["test_task"] == te) & (t["baseline"] == label)]
        for m, v in row.set_index("metric")["value"].items():
            assert v == metrics.METRICS[m.removeprefix("baseline_")](c["correct"], c["p"])
    assert len(s) == 2 * 2 * len(y) * (2 + len(BASELINES))
    # the probe's AUROC still comes with the primary baseline's difference (figure unchanged)
    prim = cell[cell["baseline"] == primary].set_index("metric")
    assert prim.loc["auroc_minus_baseline", "value"] == pytest.approx(
        prim.loc["auroc", "value"] - prim.loc["baseline_auroc", "value"]
    )

    # the old config's rows are the first rows of every cell, equal to a run without baselines
    old = run(_cfg(tasks, tiny_model_dir, name="ptb_old"), output=tmp_path / "runs", progress=False)
    t_old = old.tables["probe_transfer"]["probe_transfer"]
    assert set(t_old["baseline"]) == {primary} and len(t_old) == 2 * 2 * 7
    pd.testing.assert_frame_equal(
        t[t["baseline"] == primary].reset_index(drop=True), t_old, check_exact=True
    )
    for name in ("layers", "accuracy"):
        pd.testing.assert_frame_equal(tabs[name], old.tables["probe_transfer"][name])

    # summary: every scorer's AUROC / ECE / PRR with the mean interval bounds over the cells
    m = tiny_model_dir.name
    summary = baseline_summary(t, str(tiny_model_dir))
    assert list(summary) == ["Logistic probe", primary, *LABELS.values()]
    mc = t[(t["baseline"] == LABELS["mc_entropy"]) & (t["metric"] == "baseline_prr")]
    assert summary[LABELS["mc_entropy"]]["prr"] == pytest.approx(
        tuple(mc[["value", "ci_low", "ci_high"]].mean())
    )
    (sec,) = report_sections(tabs, res.figures["probe_transfer"])
    v, lo, hi = summary[LABELS["mahalanobis"]]["auroc"]
    assert (
        f"AUROC {v:.3f} [{lo:.3f}, {hi:.3f}]"
        in sec.key_numbers["Mahalanobis distance (mean over cells)"]
    )
    assert sec.key_numbers["baseline"] == primary
    names = sorted(p.name for p in res.figures["probe_transfer"] if p.suffix == ".png")
    assert f"probe_baselines_{m}.png" in names
    assert f"probe_baselines_{m}.png" not in {p.name for p in old.figures["probe_transfer"]}
    assert "Mahalanobis distance (mean over cells)" in res.report.read_text()


def test_bad_baseline_name_is_one_line():
    from knowlens.experiments import parse_config

    with pytest.raises(ConfigError) as e:
        parse_config({"analysis": "probe_transfer", "baselines": ["mc_entropi"]})
    msg = str(e.value)
    assert "\n" not in msg and "baselines" in msg and "mc_entropi" in msg
    assert "did you mean: mc_entropy" in msg and "mahalanobis" in msg  # the registered names
    with pytest.raises(ConfigError, match="twice") as e:
        parse_config({"analysis": "probe_transfer", "baselines": ["md", "mahalanobis"]})
    with pytest.raises(ConfigError, match="kk"):
        parse_config({"analysis": "probe_transfer", "sampling": {"kk": 2}})
    rc = parse_config({"analysis": "probe_transfer", "baselines": ["md", "msp"]})
    assert rc.analyses[0].baselines == ["mahalanobis", "max_sequence_prob"]
    assert rc.analyses[0].baseline == "mean_logprob"  # the logit baseline stays the default
