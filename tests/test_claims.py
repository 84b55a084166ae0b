"""The seed-claims table (knowlens.claims): each claim on synthetic tables with a known
answer (reproduced, not reproduced, inconclusive), values equal to a direct computation
with knowlens.metrics, and the table in a report built from a tiny real run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from knowlens import claims as C
from knowlens import metrics

B = 200  # resamples: enough for stable verdicts on these tables, fast


def test_verdict_rule():
    assert C.verdict(0.1, 0.3, 0.0, "above") == "reproduced"
    assert C.verdict(-0.3, -0.1, 0.0, "above") == "not reproduced"
    assert C.verdict(-0.1, 0.3, 0.0, "above") == "inconclusive at this n"
    assert C.verdict(0.0, 0.3, 0.0, "above") == "inconclusive at this n"  # touching
    assert C.verdict(-0.3, -0.1, 0.0, "below") == "reproduced"
    assert C.verdict(0.1, 0.3, 0.0, "below") == "not reproduced"
    assert C.verdict(float("nan"), 0.3, 0.0, "above") == "inconclusive at this n"


# -- seed 002 ------------------------------------------------------------------------------
FOUR = ["Zero-Shot Classifier", "Probe", "LoRA", "LoRA + Prompt"]


def _scores_002(n: int, quality: dict[str, float], models=("m1", "m2"), seed=0) -> pd.DataFrame:
    """Per model n answers; an estimator's P(correct) = sigmoid(q * (2y - 1) + noise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in models:
        y = rng.integers(0, 2, n).astype(float)
        for est, q in quality.items():
            p = 1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(0, 1, n))))
            rows.append(
                pd.DataFrame(
                    {
                        "model": m,
                        "estimator": est,
                        "example_id": [f"e{i:04d}" for i in range(n)],
                        "topic": np.where(np.arange(n) % 2, "t1", "t2"),
                        "correct": y,
                        "p": p,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


def _direct_diff(scores: pd.DataFrame, metric: str, a: str, b: str) -> float:
    per = []
    for _, s in scores.groupby("model"):
        sa, sb = s[s["estimator"] == a], s[s["estimator"] == b]
        per.append(
            metrics.METRICS[metric](sa["correct"], sa["p"])
            - metrics.METRICS[metric](sb["correct"], sb["p"])
        )
    return float(np.mean(per))


@pytest.mark.parametrize(
    ("quality", "n", "want", "rival"),
    [
        (
            {"Zero-Shot Classifier": 0.0, "Probe": 0.5, "LoRA": 0.3, "LoRA + Prompt": 2.0},
            300,
            "reproduced",
            "Probe",
        ),
        (
            {"Zero-Shot Classifier": 0.0, "Probe": 2.0, "LoRA": 0.3, "LoRA + Prompt": 0.2},
            300,
            "not reproduced",
            "Probe",
        ),
        (
            {"Zero-Shot Classifier": 0.0, "Probe": 1.0, "LoRA": 0.0, "LoRA + Prompt": 1.05},
            30,
            "inconclusive at this n",
            None,
        ),
    ],
)
def test_lora_prompt_best_auroc(quality, n, want, rival):
    scores = _scores_002(n, quality)
    (row,) = C.lora_prompt_best_auroc({"scores": scores}, n_resamples=B, seed=3)
    means = {
        e: np.mean(
            [
                metrics.auroc(s["correct"], s["p"])
                for _, s in scores[scores.estimator == e].groupby("model")
            ]
        )
        for e in FOUR
    }
    rival = rival or max((e for e in FOUR if e != "LoRA + Prompt"), key=means.get)
    assert f"AUROC({rival})" in row.measured
    assert row.value == pytest.approx(_direct_diff(scores, "auroc", "LoRA + Prompt", rival))
    assert row.verdict == want and row.n == 2 * n and row.unit == "answers"
    assert row.ci_low <= row.value <= row.ci_high
    assert row.seed == "002" and row.side == "above" and row.threshold == 0.0


def test_lora_prompt_auroc_interval_is_metrics_paired_bootstrap_for_one_model():
    scores = _scores_002(80, {"Probe": 0.5, "LoRA + Prompt": 1.0}, models=("m1",))
    (row,) = C.lora_prompt_best_auroc({"scores": scores}, n_resamples=B, seed=7)
    a, b = (scores[scores.estimator == e] for e in ("LoRA + Prompt", "Probe"))
    ref = metrics.bootstrap_diff("auroc", a["correct"], a["p"], b["p"], n_resamples=B, seed=7)
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx((ref.value, ref.low, ref.high))


@pytest.mark.parametrize("metric", ["ece", "auroc"])
def test_resampled_metric_equals_knowlens_metrics(metric):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 300).astype(float)
    p = rng.random(300)
    p[:20] = [0.3, 0.5, 0.7, 1.0, 0.0] * 4  # on bin edges and at the 0.5 call
    idx = rng.integers(0, 300, (30, 300))
    got = C._resampled(metric, y, p, idx)
    want = [metrics.METRICS[metric](y[i], p[i]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def _calibrated_002(n: int, bias: dict[str, float], seed=0) -> pd.DataFrame:
    """True probabilities q ~ U(0.05, 0.95), y ~ Bernoulli(q); estimator p = q shifted by its
    bias toward overconfidence (0 = calibrated)."""
    rng = np.random.default_rng(seed)
    rows = []
    for m in ("m1", "m2"):
        q = rng.uniform(0.05, 0.95, n)
        y = (rng.random(n) < q).astype(float)
        for est, b in bias.items():
            p = np.clip(np.where(q >= 0.5, q + b, q - b), 0, 1)
            rows.append(
                pd.DataFrame(
                    {
                        "model": m,
                        "estimator": est,
                        "example_id": [f"e{i:04d}" for i in range(n)],
                        "correct": y,
                        "p": p,
                    }
                )
            )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize(
    ("bias", "n", "want"),
    [
        ({"Zero-Shot Classifier": 0.3, "Probe": 0.2, "LoRA + Prompt": 0.0}, 400, "reproduced"),
        ({"Zero-Shot Classifier": 0.3, "Probe": 0.0, "LoRA + Prompt": 0.25}, 400, "not reproduced"),
        (
            {"Zero-Shot Classifier": 0.3, "Probe": 0.02, "LoRA + Prompt": 0.0},
            40,
            "inconclusive at this n",
        ),
    ],
)
def test_lora_prompt_lowest_ece(bias, n, want):
    scores = _calibrated_002(n, bias)
    settings = pd.DataFrame([{"min_n": 5, "setting": "in_distribution"}])
    tables = {"scores": scores, "settings": settings}
    (row,) = C.lora_prompt_lowest_ece(tables, n_resamples=100)  # ECE is the slow metric
    rival = "Probe"  # the best-calibrated other one in all three cases
    assert f"ECE({rival})" in row.measured
    assert row.value == pytest.approx(_direct_diff(scores, "ece", "LoRA + Prompt", rival))
    assert row.verdict == want and row.side == "below"
    assert "setting: in_distribution" in row.detail


def test_seed_002_needs_lora_prompt_and_a_rival():
    scores = _scores_002(20, {"Probe": 1.0, "LoRA": 1.0})
    (row,) = C.lora_prompt_best_auroc({"scores": scores})
    assert row.verdict == "not run" and "LoRA + Prompt" in row.detail
    (row,) = C.lora_prompt_best_auroc({"topic_calibration": pd.DataFrame()})
    assert row.verdict == "not run" and "'scores'" in row.detail
    # estimators outside the seed's four are not rivals
    scores = _scores_002(200, {"Probe": 0.2, "LoRA + Prompt": 1.0, "Semantic entropy": 3.0})
    (row,) = C.lora_prompt_best_auroc({"scores": scores}, n_resamples=B)
    assert "AUROC(Probe)" in row.measured and row.verdict == "reproduced"


# -- seed 001 ------------------------------------------------------------------------------
def _scores_001(n: int, q_diag: float, q_off: float, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for est in ("Probe", "LoRA + Prompt"):
        for m in ("A", "B"):
            y = rng.integers(0, 2, n).astype(float)
            for t in ("A", "B"):
                q = q_diag if t == m else q_off
                p = 1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(0, 1, n))))
                rows.append(
                    pd.DataFrame(
                        {
                            "model": m,
                            "trained_on": t,
                            "estimator": est,
                            "example_id": [f"e{i:04d}" for i in range(n)],
                            "correct": y,
                            "p": p,
                        }
                    )
                )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize(
    ("q_diag", "q_off", "n", "want"),
    [
        (1.0, 1.0, 800, "reproduced"),  # transfers: no loss off the diagonal
        (2.0, 0.0, 300, "not reproduced"),  # off-diagonal at chance
        (1.0, 0.7, 30, "inconclusive at this n"),
    ],
)
def test_estimators_transfer(q_diag, q_off, n, want):
    scores = _scores_001(n, q_diag, q_off)
    rows = C.estimators_transfer({"scores": scores}, n_resamples=B, seed=1)
    assert [r.measured.split(":")[0] for r in rows] == ["Probe", "LoRA + Prompt"]
    for r in rows:
        s = scores[scores["estimator"] == r.measured.split(":")[0]]

        def auc(m, t, s=s):
            c = s[(s["model"] == m) & (s["trained_on"] == t)]
            return metrics.auroc(c["correct"], c["p"])

        want_v = np.mean([auc("A", "B") - auc("A", "A"), auc("B", "A") - auc("B", "B")])
        assert r.value == pytest.approx(want_v)
        assert r.verdict == want, (r.value, r.ci_low, r.ci_high)
        assert r.threshold == -0.05 and r.n == 2 * n
        assert r.ci_low <= r.value <= r.ci_high
    if want == "inconclusive at this n":
        assert any(r.ci_low < -0.05 < r.ci_high for r in rows)


def test_estimators_transfer_one_model_is_not_run():
    s = _scores_001(20, 1.0, 1.0)
    s = s[(s["model"] == "A") & (s["trained_on"] == "A")]
    rows = C.estimators_transfer({"scores": s})
    assert {r.verdict for r in rows} == {"not run"} and "at least 2 models" in rows[0].detail


# -- seed 003 ------------------------------------------------------------------------------
def _probe_table(diag: float, off: float, half: float, k: int = 3, n: int = 100) -> pd.DataFrame:
    rows = []
    for i in range(k):
        for j in range(k):
            v = diag if i == j else off + 0.01 * (i - j)
            rows.append(
                {
                    "model": "m",
                    "baseline": "mean log-prob of exact-answer tokens",
                    "train_task": f"t{i}",
                    "test_task": f"t{j}",
                    "metric": "auroc_minus_baseline",
                    "value": v,
                    "ci_low": v - half,
                    "ci_high": v + half,
                    "n": n,
                }
            )
            rows.append({**rows[-1], "metric": "auroc", "value": 0.7})  # not used
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("diag", "off", "half", "want", "best"),
    [
        (0.20, -0.05, 0.05, "reproduced", 3),
        (-0.10, 0.10, 0.05, "not reproduced", 0),
        (0.02, 0.00, 0.30, "inconclusive at this n", 3),
    ],
)
def test_probes_best_on_own_dataset(diag, off, half, want, best):
    t = _probe_table(diag, off, half)
    (row,) = C.probes_best_on_own_dataset({"probe_transfer": t})
    d = t[t["metric"] == "auroc_minus_baseline"]
    eye = d["train_task"] == d["test_task"]
    assert row.value == pytest.approx(d[eye]["value"].mean() - d[~eye]["value"].mean())
    # by hand: 3 test sets, each with 1 diagonal cell (weight 1/3) and 2 off cells (1/6 each),
    # every cell SE = half / z: per test set 2/3 SE (worst-case correlation), sqrt(3) of them
    se = half / 1.959963984540054
    ci_half = 1.959963984540054 * math.sqrt(3) * (2 / 3) * se
    assert row.ci_high - row.value == pytest.approx(ci_half)
    assert row.value - row.ci_low == pytest.approx(ci_half)
    assert row.verdict == want and row.n == 300 and row.unit == "test answers"
    assert f"best cell of its test column in {best} of 3" in row.detail
    assert row.ci_method.startswith("normal approximation")  # no scores table: older run


def _probe_scores(
    n: int, q_diag: float, q_off: float, k: int = 3, seed: int = 0, q_base: float = 0.5
) -> dict[str, pd.DataFrame]:
    """probe_transfer tables with a ``scores`` table: per test set n answers; the probe
    trained on t_i scores P(correct) = sigmoid(q * (2y - 1) + noise), q = q_diag on its own
    set else q_off; the logit baseline (one per test set) q_base. The main table's cells are
    computed from the scores with knowlens.metrics (their CIs are deliberately wrong: the
    bootstrap must not read them)."""
    rng = np.random.default_rng(seed)
    parts, cells = [], []
    for j in range(k):
        y = rng.integers(0, 2, n).astype(float)
        base = 1 / (1 + np.exp(-(q_base * (2 * y - 1) + rng.normal(0, 1, n))))
        ids = [f"x{j}-{i:04d}" for i in range(n)]
        for i in range(k):
            q = q_diag if i == j else q_off
            p = 1 / (1 + np.exp(-(q * (2 * y - 1) + rng.normal(0, 1, n))))
            for role, scorer, s in (("probe", "Logistic probe", p), ("baseline", "mlp", base)):
                parts.append(
                    pd.DataFrame(
                        {
                            "model": "m",
                            "train_task": f"t{i}",
                            "test_task": f"t{j}",
                            "layer": 2,
                            "position": "exact_answer",
                            "role": role,
                            "scorer": scorer,
                            "example_id": ids,
                            "correct": y,
                            "p": s,
                        }
                    )
                )
            v = metrics.auroc(y, p) - metrics.auroc(y, base)
            cells.append(
                {
                    "model": "m",
                    "baseline": "mlp",
                    "train_task": f"t{i}",
                    "test_task": f"t{j}",
                    "metric": "auroc_minus_baseline",
                    "value": v,
                    "ci_low": v - 9.0,
                    "ci_high": v + 9.0,
                    "n": n,
                }
            )
    return {"probe_transfer": pd.DataFrame(cells), "scores": pd.concat(parts, ignore_index=True)}


def _probe_boot_direct(tables: dict[str, pd.DataFrame], n_resamples: int, seed: int):
    """The seed-003 interval by hand: per test set (table order) one draw of its answers,
    every cell's AUROC(probe) - AUROC(baseline) on the drawn rows with knowlens.metrics
    (rows with a NaN dropped), diagonal mean minus off-diagonal mean, 2.5 / 97.5 %."""
    t, s = tables["probe_transfer"], tables["scores"]
    t = t[t["metric"] == "auroc_minus_baseline"].dropna(subset=["value"])
    rng = np.random.default_rng(seed)
    diffs: dict[tuple[str, str], np.ndarray] = {}
    for test in dict.fromkeys(t["test_task"]):
        st = s[s["test_task"] == test]
        n = st["example_id"].nunique()
        idx = rng.integers(0, n, (n_resamples, n))
        for train in t[t["test_task"] == test]["train_task"]:
            c = st[st["train_task"] == train]
            y = c[c.role == "probe"]["correct"].to_numpy()
            pp, pb = (c[c.role == r]["p"].to_numpy() for r in ("probe", "baseline"))
            out = []
            for i in idx:
                yi, ppi, pbi = y[i], pp[i], pb[i]
                ok = ~(np.isnan(ppi) | np.isnan(pbi))
                out.append(metrics.auroc(yi[ok], ppi[ok]) - metrics.auroc(yi[ok], pbi[ok]))
            diffs[train, test] = np.array(out)
    diag = np.mean([v for (a, b), v in diffs.items() if a == b], axis=0)
    off = np.mean([v for (a, b), v in diffs.items() if a != b], axis=0)
    return tuple(np.quantile(diag - off, [0.025, 0.975]))


@pytest.mark.parametrize(
    ("q_diag", "q_off", "n", "want"),
    [
        (2.0, 0.3, 150, "reproduced"),
        (0.3, 2.0, 150, "not reproduced"),
        (1.0, 0.9, 40, "inconclusive at this n"),
    ],
)
def test_probe_claim_paired_bootstrap_over_answers(q_diag, q_off, n, want):
    tables = _probe_scores(n, q_diag, q_off)
    (row,) = C.probes_best_on_own_dataset(tables, n_resamples=B, seed=5)
    d = tables["probe_transfer"]
    eye = d["train_task"] == d["test_task"]
    assert row.value == pytest.approx(d[eye]["value"].mean() - d[~eye]["value"].mean())
    assert (row.ci_low, row.ci_high) == pytest.approx(_probe_boot_direct(tables, B, 5), abs=1e-12)
    assert row.verdict == want, (row.value, row.ci_low, row.ci_high)
    assert row.ci_method.startswith("paired bootstrap over test answers (200 resamples")
    assert row.n == 3 * n and row.unit == "test answers"


def test_probe_claim_bootstrap_drops_nan_scores_and_cells_without_a_probe():
    tables = _probe_scores(60, 1.5, 0.5, seed=2)
    s, t = tables["scores"], tables["probe_transfer"]
    s.loc[(s.role == "baseline") & s["example_id"].str.endswith("7"), "p"] = np.nan
    s.loc[(s.role == "probe") & (s["train_task"] == "t2"), "p"] = np.nan  # no probe for t2
    t.loc[t["train_task"] == "t2", "value"] = np.nan
    (row,) = C.probes_best_on_own_dataset(tables, n_resamples=B, seed=1)
    assert (row.ci_low, row.ci_high) == pytest.approx(_probe_boot_direct(tables, B, 1), abs=1e-12)
    assert "(2 cells)" in row.detail and row.ci_method.startswith("paired bootstrap")


def test_probe_claim_falls_back_to_the_cells_intervals_without_scores():
    tables = _probe_scores(50, 1.5, 0.5)
    (boot,) = C.probes_best_on_own_dataset(tables, n_resamples=B)
    # older runs: no scores table, or one missing a cell -> the normal approximation
    s = tables["scores"]
    for old in ({"probe_transfer": tables["probe_transfer"]}, {**tables, "scores": s[:-50]}):
        (row,) = C.probes_best_on_own_dataset(old, n_resamples=B)
        assert row.ci_method.startswith("normal approximation")
        assert row.value == boot.value and row.ci_high - row.value == pytest.approx(
            1.959963984540054 * math.sqrt(3) * (2 / 3) * 9.0 / 1.959963984540054
        )
    assert boot.ci_high - boot.ci_low < 1.0  # the bootstrap never read the 9.0 half-widths


def test_probe_rows_without_a_probe_are_left_out():
    t = _probe_table(0.2, -0.05, 0.05)
    t.loc[(t["train_task"] == "t2") & (t["metric"] == "auroc_minus_baseline"), "value"] = np.nan
    (row,) = C.probes_best_on_own_dataset({"probe_transfer": t})
    d = t[(t["metric"] == "auroc_minus_baseline") & t["value"].notna()]
    eye = d["train_task"] == d["test_task"]
    assert row.value == pytest.approx(d[eye]["value"].mean() - d[~eye]["value"].mean())
    assert "(2 cells)" in row.detail and "(4 cells)" in row.detail


# -- seed 000 ------------------------------------------------------------------------------
def _verdicts(success: dict[str, np.ndarray], direct_asr: dict[str, float], judge="gcg"):
    """A verdict table: attack prompts with the given success vectors; 20 bare requests
    per model with the given ASR."""
    from knowlens.experiments.prompt_transfer import tables_from_verdicts

    rows = []
    for m, s in success.items():
        for i, v in enumerate(s):
            rows.append(("jailbreak", m, f"p{i}", v))
        k = round(20 * direct_asr[m] / 100)
        for i in range(20):
            rows.append(("direct", m, f"d{i}", float(i < k)))
    df = pd.DataFrame(
        [
            dict(
                analysis="prompt_transfer",
                model=m,
                judge=judge,
                prompt_id=pid,
                kind=kind,
                template="t",
                behavior="b",
                verdict="jailbroken" if v == 1 else "refused",
                success=v,
                prompt="x",
                response="y",
                error=None,
            )
            for kind, m, pid, v in rows
        ]
    )
    return tables_from_verdicts(df, list(success), n_boot=50, seed=0)


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("shared", "reproduced"),
        ("disjoint", "not reproduced"),
        ("few", "inconclusive at this n"),
    ],
)
def test_transfer_between_refusing_models(case, want):
    rng = np.random.default_rng(0)
    P = 80
    if case == "shared":  # the same prompts break A and B
        a = (rng.random(P) < 0.5).astype(float)
        b = a.copy()
        b[:4] = 1 - b[:4]
    elif case == "disjoint":
        a = np.r_[np.ones(30), np.zeros(50)]
        b = np.r_[np.zeros(30), np.ones(30), np.zeros(20)]
    else:  # 4 successes each, half shared: T = 50 % on n = 4
        a = np.r_[np.ones(4), np.zeros(P - 4)]
        b = np.r_[np.ones(2), np.zeros(2), np.ones(2), np.zeros(P - 6)]
    c = np.ones(P)  # complies with everything: not a refusing model
    tables = _verdicts({"A": a, "B": b, "C": c}, {"A": 5.0, "B": 10.0, "C": 95.0})
    (row,) = C.transfer_between_refusing_models(tables, n_resamples=B)
    m = tables["prompt_transfer"]
    cells = m[(~m["diagonal"]) & m["source"].isin(["A", "B"]) & m["target"].isin(["A", "B"])]
    assert row.value == pytest.approx(cells["value"].mean())  # the stored matrix's cells
    assert row.verdict == want and row.percent and row.threshold == 45.0
    assert row.n == P and "C 95 %" in row.detail and "range" in row.detail
    assert "judge gcg" in row.measured


def test_transfer_recomputed_cells_equal_transfer_matrix():
    from knowlens.experiments.prompt_transfer import transfer_matrix

    rng = np.random.default_rng(2)
    S = rng.choice([0.0, 1.0, np.nan], size=(50, 3), p=[0.5, 0.4, 0.1])
    got = C._transfer_cells(S, np.ones((1, 50)))[0]
    ref = transfer_matrix(pd.DataFrame(S, columns=["a", "b", "c"])).set_index(["source", "target"])
    for i, s in enumerate("abc"):
        for j, t in enumerate("abc"):
            if i != j:
                assert got[i, j] == pytest.approx(ref.loc[(s, t), "value"], nan_ok=True)


def test_fewer_than_two_refusing_models_is_inconclusive():
    tables = _verdicts({"A": np.ones(10), "B": np.ones(10)}, {"A": 5.0, "B": 90.0})
    (row,) = C.transfer_between_refusing_models(tables, n_resamples=B)
    assert row.verdict == "inconclusive at this n" and "fewer than 2 refusing" in row.detail


# -- seed 004 ------------------------------------------------------------------------------
def _maps(D: np.ndarray, n_late: int = 0, metric: str = "l2") -> pd.DataFrame:
    """An activation_maps table whose Difference panel is ``D`` (layers x positions), all
    positions reached by 10 prompts, plus ``n_late`` positions reached by 1 prompt with a
    huge difference (must be ignored)."""
    L, T = D.shape
    rows = []
    for lay in range(L):
        for pos in range(T + n_late):
            late = pos >= T
            d = 100.0 if late else D[lay, pos]
            n = 1 if late else 10
            for panel, v in (("Benign", 1.0), ("Jailbreak", 1.0 + d), ("Difference", d)):
                rows.append(("m", panel, lay, pos, v, n))
    df = pd.DataFrame(rows, columns=["model", "panel", "layer", "position", "value", "n"])
    df.insert(0, "analysis", "activation_maps")
    return df.assign(metric=metric)


def _shares(D: np.ndarray, axis: int) -> np.ndarray:
    parts = np.array_split(np.arange(D.shape[axis]), 3)
    A = np.abs(D)
    return np.array([np.take(A, p, axis=axis).sum() for p in parts]) / A.sum()


def _layer_case(case: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    D = rng.normal(0, 0.05, (9, 30))
    if case == "lower":
        D[:3] += 1.0
    elif case == "upper":
        D[6:] -= 1.0
    else:  # lower layers at half the positions, upper at the other half: no winner
        D[:3, ::2] += 1.0
        D[6:, 1::2] += 1.0
    return D


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("lower", "reproduced"),
        ("upper", "not reproduced"),
        ("split", "inconclusive at this n"),
    ],
)
def test_difference_by_layer(case, want):
    D = _layer_case(case)
    (row,) = C.difference_by_layer({"activation_maps": _maps(D, n_late=5)}, n_resamples=B)
    s = _shares(D, 0)
    assert row.value == pytest.approx(s[0] - max(s[1], s[2]))
    assert row.verdict == want and row.n == 30 and "(norm)" in row.claim


def _position_case(case: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case == "flat":  # depends on the layer only
        return np.repeat(rng.normal(0, 1, (9, 1)), 30, axis=1)
    D = np.zeros((9, 30))
    if case == "late":
        D[:, 20:] = rng.normal(1, 0.1, (9, 10))
        return D
    # layers disagree: two put everything late, the rest are flat
    D[:] = 1.0
    D[:2, :20] = 0.0
    D[:2, 20:] = 4.0
    return D


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("flat", "reproduced"),
        ("late", "not reproduced"),
        ("mixed", "inconclusive at this n"),
    ],
)
def test_difference_by_position(case, want):
    D = _position_case(case)
    tables = {"activation_maps": _maps(D, n_late=5, metric="refusal")}
    (row,) = C.difference_by_position(tables, n_resamples=B)
    assert row.value == pytest.approx(_shares(D, 1).max())
    assert row.verdict == want, (row.value, row.ci_low, row.ci_high)
    assert row.threshold == pytest.approx(1 / 3 + 0.1) and row.side == "below"
    assert "(refusal direction)" in row.claim and row.n == 9


def _maps_se(D: np.ndarray, se, metric: str = "l2", n: int = 10) -> pd.DataFrame:
    """``_maps`` (5 late one-prompt positions) with the ``sd`` / ``se`` columns of
    activation_maps CODE_VERSION 2: the Difference panel's se = ``se`` (a number or a
    layers x positions array), the late positions' NaN."""
    t = _maps(D, n_late=5, metric=metric)
    t["n"] = np.where(t["n"] == 10, n, t["n"])
    se = np.broadcast_to(np.asarray(se, float), D.shape)
    late = t["position"] >= D.shape[1]
    diff = (t["panel"] == "Difference") & ~late
    t["sd"] = np.nan
    t["se"] = np.nan
    t.loc[diff, "se"] = se[t.loc[diff, "layer"], t.loc[diff, "position"]]
    return t


def _prompt_se_direct(D, se, axis, stat):
    """The claim's SE over prompts by hand: the gradient of ``stat`` (shares -> value) in
    |D| by forward finite differences (|D| may be 0), |gradient| x se summed over the layers
    of each position (worst case), then root sum of squares over positions."""
    A = np.abs(D)
    g = np.zeros_like(A)
    h = 1e-7
    f0 = stat(_shares(A, axis))
    for i in range(A.shape[0]):
        for j in range(A.shape[1]):
            up = A.copy()
            up[i, j] += h
            g[i, j] = (stat(_shares(up, axis)) - f0) / h
    return float(np.sqrt(((np.abs(g) * se).sum(0) ** 2).sum()))


@pytest.mark.parametrize(
    ("case", "se", "want"),
    [
        ("lower", 0.3, "reproduced"),
        ("upper", 0.3, "not reproduced"),
        ("split", 0.3, "inconclusive at this n"),
        ("lower", 3.0, "inconclusive at this n"),  # prompt noise swamps the pattern
    ],
)
def test_difference_by_layer_interval_over_prompts(case, se, want):
    D = _layer_case(case)
    (row,) = C.difference_by_layer({"activation_maps": _maps_se(D, se)}, n_resamples=B)
    s = _shares(D, 0)
    rival = 1 + int(np.argmax(s[1:]))
    assert row.value == pytest.approx(s[0] - s[rival])
    half = 1.959963984540054 * _prompt_se_direct(D, se, 0, lambda r: r[0] - r[rival])
    assert (row.ci_low, row.ci_high) == pytest.approx((row.value - half, row.value + half))
    assert row.verdict == want, (row.value, row.ci_low, row.ci_high)
    assert row.n == 10 and row.unit == "prompts per set"
    assert row.ci_method.startswith("normal approximation over prompts")


@pytest.mark.parametrize(
    ("case", "want"),
    [("flat", "reproduced"), ("late", "not reproduced"), ("mixed", "inconclusive at this n")],
)
def test_difference_by_position_interval_over_prompts(case, want):
    D = _position_case(case)
    se = np.full(D.shape, 0.02)
    if case == "mixed":  # the two late-heavy layers rest on few, scattered prompts
        se[:2] = 5.0
    tables = {"activation_maps": _maps_se(D, se, metric="refusal", n=24)}
    (row,) = C.difference_by_position(tables, n_resamples=B)
    top = int(np.argmax(_shares(D, 1)))
    assert row.value == pytest.approx(_shares(D, 1)[top])
    half = 1.959963984540054 * _prompt_se_direct(D, se, 1, lambda r: r[top])
    assert (row.ci_low, row.ci_high) == pytest.approx((row.value - half, row.value + half))
    assert row.verdict == want, (row.value, row.ci_low, row.ci_high)
    assert row.n == 24 and "(refusal direction)" in row.claim


def test_prompt_interval_known_answers_and_fallback():
    D = _layer_case("lower")
    # no prompt noise: the interval is the point
    (row,) = C.difference_by_layer({"activation_maps": _maps_se(D, 0.0)}, n_resamples=50)
    assert row.ci_low == pytest.approx(row.value, abs=1e-12)
    assert row.ci_high == pytest.approx(row.value, abs=1e-12) and row.verdict == "reproduced"
    # two models (the same prompts): mean of the values, mean of their SEs, smaller n
    a, b = _maps_se(D, 0.3), _maps_se(D[::-1], 0.6, n=8).assign(model="m2")
    (two,) = C.difference_by_layer({"activation_maps": pd.concat([a, b])})
    s_a, s_b = _shares(D, 0), _shares(D[::-1], 0)
    want = np.mean([s_a[0] - max(s_a[1:]), s_b[0] - max(s_b[1:])])
    se_a = _prompt_se_direct(D, 0.3, 0, lambda r: r[0] - max(r[1], r[2]))
    se_b = _prompt_se_direct(D[::-1], 0.6, 0, lambda r: r[0] - max(r[1], r[2]))
    half = 1.959963984540054 * (se_a + se_b) / 2
    assert (two.value, two.ci_high - two.value) == pytest.approx((want, half))
    assert two.n == 8 and "m2:" in two.detail
    # a used cell resting on one prompt has no SE: no interval, whatever the map shows
    se = np.full(D.shape, 0.01)
    se[4, 7] = np.nan
    (row,) = C.difference_by_layer({"activation_maps": _maps_se(D, se)}, n_resamples=50)
    assert math.isnan(row.ci_low) and row.verdict == "inconclusive at this n"
    # older tables (no se column): the bootstrap over the other axis, as before
    (old,) = C.difference_by_layer({"activation_maps": _maps(D, n_late=5)}, n_resamples=50)
    assert old.ci_method.startswith("bootstrap over positions") and old.unit.startswith("pos")
    assert old.n == 30 and old.value == pytest.approx(row.value)


# -- the run -------------------------------------------------------------------------------
def test_check_run_orders_by_seed_and_names_the_missing_map_statistic():
    maps = {"activation_maps": _maps(_layer_case("lower"))}
    probe = {"probe_transfer": _probe_table(0.2, -0.05, 0.05)}
    rows = C.check_run(
        [
            ("activation_maps", "am", maps, 100, 0),
            ("probe_transfer", "pt", probe, 100, 0),
            ("fake_matrix", "fake", {"fake_matrix": pd.DataFrame({"x": [1]})}, 100, 0),
        ]
    )
    assert [r.seed for r in rows] == ["003", "004", "004", "004"]
    missing = rows[-1]
    assert missing.verdict == "not run" and "statistic refusal" in missing.detail
    frame = C.claims_frame(rows)
    assert list(frame.columns)[:3] == ["seed", "analysis", "claim"] and len(frame) == 4
    assert C.resamples_for(0) == 200 and C.resamples_for(300) == 300
    assert C.resamples_for(5000) == 1000


def test_a_claim_that_cannot_be_computed_is_a_not_run_row(caplog):
    bad = _probe_table(0.2, -0.05, 0.05).assign(value="x")  # not numbers
    (row,) = C.check_analysis("probe_transfer", "pt", {"probe_transfer": bad})
    assert row.verdict == "not run" and row.seed == "003" and "could not be computed" in row.detail
    assert "probes_best_on_own_dataset" in caplog.text


@pytest.mark.timeout(170)
def test_report_of_a_tiny_run_ends_with_the_claims_table(tiny_model_dir, tmp_path):
    from knowlens.experiments import run
    from knowlens.experiments._rundir import read_tables
    from knowlens.report import build_report

    cfg = {
        "analysis": "activation_maps",
        "name": "am",
        "output": str(tmp_path),
        "models": [str(tiny_model_dir)],
        "n_prompts": 3,
        "n_direction": 3,
        "max_len": 32,
        "n_bootstrap": 50,
        "device": "cpu",
    }
    res = run(cfg, progress=False)
    html = res.report.read_text()
    head = "What the seed figures show, and what this run measured"
    assert head in html and "href='#claims'" in html
    assert html.index(head) > html.index("Where the time went")  # the report ends with it
    table = html[html.index(head) :]
    for verdict in ("not run",):
        assert verdict in table
    assert "(norm)" in table and "statistic refusal" in table
    # claims.json holds the rows the tables give, recomputed here
    want = C.check_run(
        [("activation_maps", "activation_maps", read_tables(res.run_dir, "activation_maps"), 50, 0)]
    )
    saved = json.loads((res.run_dir / "claims.json").read_text())["rows"]
    assert [r["verdict"] for r in saved] == [w.verdict for w in want]
    assert [r["claim"] for r in saved] == [w.claim for w in want]
    for r, w in zip(saved, want, strict=True):
        assert (r["value"] is None and math.isnan(w.value)) or r["value"] == pytest.approx(w.value)
        assert r["verdict"] in table
    # rebuilt from the folder alone: same table
    build_report(res.run_dir, redraw=False)
    assert json.loads((res.run_dir / "claims.json").read_text())["rows"] == saved
