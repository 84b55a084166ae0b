"""prompt_transfer: the matrix equals a direct computation; the analysis runs end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_matrix_matches_hand_computation():
    from knowlens.experiments.prompt_transfer import transfer_matrix

    nan = np.nan
    # 6 prompts x 3 models; NaN = invalid verdict (excluded pair-wise)
    success = pd.DataFrame(
        {"A": [1, 1, 1, 0, 1, 0], "B": [1, 0, 1, 1, nan, 0], "C": [0, 0, 1, 1, 1, 1]},
        index=[f"p{i}" for i in range(6)],
    )
    m = transfer_matrix(success).set_index(["source", "target"])
    # A succeeds on p0,p1,p2,p4; valid for B: p0,p1,p2 -> both p0,p2 -> 2/3
    assert m.loc[("A", "B"), "n"] == 3 and m.loc[("A", "B"), "n_both"] == 2
    assert m.loc[("A", "B"), "value"] == pytest.approx(100 * 2 / 3)
    # A -> C: A succ on p0,p1,p2,p4 (all valid for C) -> C succ on p2,p4 -> 50%
    assert m.loc[("A", "C"), "value"] == pytest.approx(50.0) and m.loc[("A", "C"), "n"] == 4
    # B -> A: B succ p0,p2,p3 -> A succ p0,p2 -> 2/3
    assert m.loc[("B", "A"), "value"] == pytest.approx(100 * 2 / 3)
    # C -> B: C succ p2,p3,p4,p5, valid for B: p2,p3,p5 -> B succ p2,p3 -> 2/3
    assert m.loc[("C", "B"), "n"] == 3 and m.loc[("C", "B"), "value"] == pytest.approx(200 / 3)
    # diagonal = own ASR over valid prompts, never a fake 0: B valid 5, succ 3 -> 60%
    assert m.loc[("B", "B"), "diagonal"] and m.loc[("B", "B"), "value"] == pytest.approx(60.0)
    assert m.loc[("A", "A"), "value"] == pytest.approx(100 * 4 / 6)
    # a direct computation over every off-diagonal cell
    for s in "ABC":
        for t in "ABC":
            if s == t:
                continue
            ok = success[[s, t]].notna().all(axis=1)
            src = ok & (success[s] == 1)
            want = 100 * (src & (success[t] == 1)).sum() / src.sum()
            assert m.loc[(s, t), "value"] == pytest.approx(want)


def test_tables_from_verdicts_asr_ci_and_agreement():
    from knowlens.experiments.prompt_transfer import tables_from_verdicts

    rows = []
    for model, verdicts in {"m1": ["jailbroken"] * 3 + ["refused"], "m2": ["refused"] * 4}.items():
        for judge in ("gcg", "arditi"):
            for i, v in enumerate(verdicts):
                v2 = v if judge == "gcg" or i else "refused"
                rows.append(
                    dict(
                        model=model,
                        judge=judge,
                        prompt_id=f"p{i}",
                        kind="jailbreak",
                        template="t",
                        behavior="b",
                        verdict=v2,
                        success=float(v2 == "jailbroken"),
                        prompt="x",
                        response="y",
                        error=None,
                    )
                )
    t = tables_from_verdicts(pd.DataFrame(rows), ["m1", "m2"], n_boot=200, seed=0)
    asr = t["asr"].set_index(["model", "judge"])
    assert asr.loc[("m1", "gcg"), "value"] == 75.0 and asr.loc[("m1", "arditi"), "value"] == 50.0
    assert asr.loc[("m1", "gcg"), "ci_low"] <= 75.0 <= asr.loc[("m1", "gcg"), "ci_high"]
    m = t["prompt_transfer"].set_index(["judge", "source", "target"])
    assert m.loc[("gcg", "m1", "m2"), "value"] == 0.0 and m.loc[("gcg", "m1", "m2"), "n"] == 3
    assert np.isnan(m.loc[("gcg", "m2", "m1"), "value"])  # no source successes: undefined
    ag = t["judge_agreement"].set_index("model")
    from sklearn.metrics import cohen_kappa_score

    gcg = [1, 1, 1, 0, 0, 0, 0, 0]
    ard = [0, 1, 1, 0, 0, 0, 0, 0]
    assert ag.loc["all", "agreement"] == pytest.approx(7 / 8)
    assert ag.loc["all", "kappa"] == pytest.approx(cohen_kappa_score(gcg, ard))


@pytest.mark.timeout(170)
def test_prompt_transfer_runs_on_tiny_model(tiny_model_dir, tmp_path):
    from knowlens.experiments import run

    cfg = {
        "name": "pt",
        "output": str(tmp_path),
        "analyses": [
            {
                "analysis": "prompt_transfer",
                "models": [str(tiny_model_dir), f"{tiny_model_dir}?system=safety"],
                "n_prompts": 4,
                "templates": ["gcg"],
                "max_new_tokens": 4,
                "n_bootstrap": 50,
                "device": "cpu",
            }
        ],
    }
    res = run(cfg, progress=False)
    t = res.tables["prompt_transfer"]
    main = t["prompt_transfer"]
    assert set(main["judge"]) == {"gcg", "jbb", "arditi", "garak"}
    assert len(main) == 4 * 4  # 2 x 2 per judge
    assert (res.run_dir / "figures" / "prompt_transfer" / "prompt_transfer_gcg.png").exists()
    asr = t["asr"]
    assert int(t["settings"]["min_n"].iloc[0]) == 10  # rows with n < min_n are hatched
    assert set(asr["kind"]) == {"direct", "jailbreak", "benign"}
    assert set(asr.loc[asr["kind"] == "benign", "metric"]) == {"benign_compliance"}
    # 2 models x 4 judges x (4 attacks + 4 bare behaviours + 4 held-out benign requests)
    assert len(t["verdicts"]) == 2 * 4 * (4 + 4 + 4)
    v = t["verdicts"]
    assert v.loc[v["kind"] == "benign", "prompt_id"].str.startswith("benign-").all()
    assert res.report.exists() and "Content warning" in res.report.read_text()
