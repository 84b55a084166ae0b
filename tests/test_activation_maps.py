"""activation_maps: the statistic equals a direct computation from HF hidden states."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _direct(handle, texts, max_len):
    """Per-prompt HF hidden states through the *CausalLM* forward, one prompt at a time."""
    from knowlens.experiments.activation_maps import encode

    out = []
    for ids in encode(handle, texts, max_len):
        with torch.no_grad():
            o = handle.model(torch.tensor([ids]), output_hidden_states=True)
        out.append(torch.stack(o.hidden_states, 1)[0].float())  # (L+1, T, d)
    return out


def test_l2_and_refusal_maps_equal_direct_hidden_states(tiny_model):
    from knowlens.experiments.activation_maps import (
        encode,
        last_token_states,
        map_moments,
        mean_map,
        refusal_direction,
        spread,
    )

    texts = ["What is the capital of France?", "Hi", "Q: 12 plus 30? A: 42. Sure, here is how."]
    max_len = 12
    hs = _direct(tiny_model, texts, max_len)
    L = tiny_model.n_layers + 1
    # L2: mean over prompts that reach each position (batched, padded run vs one by one)
    mean, count = mean_map(tiny_model, encode(tiny_model, texts, max_len), "l2", None, max_len, 2)
    want = np.full((L, max_len), np.nan)
    for p in range(max_len):
        vals = [h[:, p].norm(dim=-1).numpy() for h in hs if h.shape[1] > p]
        assert count[p] == len(vals)
        if vals:
            want[:, p] = np.mean(vals, 0)
    np.testing.assert_allclose(mean, want, rtol=1e-4, atol=1e-5)
    assert count[0] == 3 and count[-1] < 3  # short prompts drop out, counted per position
    # the spread stored beside the mean: numpy's SD (ddof 1) over the same prompts
    res = map_moments(tiny_model, encode(tiny_model, texts, max_len), "l2", None, max_len, 2)
    np.testing.assert_array_equal(res["mean"], mean)
    sd, se = spread(res["var"], res["count"])
    want_sd = np.full((L, max_len), np.nan)
    for p in range(max_len):
        vals = [h[:, p].norm(dim=-1).numpy() for h in hs if h.shape[1] > p]
        if len(vals) >= 2:
            want_sd[:, p] = np.std(vals, axis=0, ddof=1)
    np.testing.assert_allclose(sd, want_sd, rtol=1e-4, atol=1e-5)  # NaN where < 2 prompts
    np.testing.assert_allclose(se, want_sd / np.sqrt(count), rtol=1e-4, atol=1e-5)
    assert np.isnan(sd[:, count < 2]).all() and (count < 2).any()
    # refusal direction = difference of means at the last token; projection per position
    harm, harmless = texts[:2], texts[2:]
    H = last_token_states(tiny_model, encode(tiny_model, harm, max_len), 2)
    B = last_token_states(tiny_model, encode(tiny_model, harmless, max_len), 2)
    r = refusal_direction(H, B)
    hh = _direct(tiny_model, harm, max_len)
    hb = _direct(tiny_model, harmless, max_len)
    d = torch.stack([h[:, -1] for h in hh]).mean(0) - torch.stack([h[:, -1] for h in hb]).mean(0)
    d = d / d.norm(dim=-1, keepdim=True)
    np.testing.assert_allclose(r, d.numpy(), rtol=1e-4, atol=1e-5)
    mean_r, _ = mean_map(
        tiny_model,
        encode(tiny_model, texts[:1], max_len),
        "refusal",
        torch.from_numpy(r),
        max_len,
        1,
    )
    proj = torch.einsum("ltd,ld->lt", hs[0], d).numpy()
    np.testing.assert_allclose(mean_r[:, : proj.shape[1]], proj, rtol=1e-4, atol=1e-4)


def test_panel_maps_values_and_standard_errors():
    """Benign / Jailbreak / Difference panels from the two sets' moments: the value, its SE
    (log10 scale: the delta method, checked against a finite difference of log10)."""
    from knowlens.experiments.activation_maps import panel_maps

    rng = np.random.default_rng(0)
    per_set = {k: rng.gamma(5.0, 2.0, (n, 3, 4)) for k, n in (("b", 6), ("j", 9))}
    per_set["j"][4:, :, 3] = np.nan  # only 4 jailbreak prompts reach position 3
    mom = {}
    for k, x in per_set.items():
        c = np.isfinite(x[:, 0]).sum(0)
        mom[k] = {"mean": np.nanmean(x, 0), "var": np.nanvar(x, 0), "count": c}
    sd_b, sd_j = (np.nanstd(x, 0, ddof=1) for x in per_set.values())
    for log10 in (False, True):
        (pb, mb, cb, sb, eb), (pj, mj, cj, sj, ej), (pd_, md, cd, sd_d, ed) = panel_maps(
            mom["b"], mom["j"], log10=log10
        )
        assert (pb, pj, pd_) == ("Benign", "Jailbreak", "Difference")
        np.testing.assert_allclose(sb, sd_b)  # the raw statistic's SD under either scale
        np.testing.assert_allclose(sj, sd_j)
        raw_se = sd_j / np.sqrt(cj)
        if log10:  # SE of log10(mean) = SE(mean) x d log10(m)/dm, by a finite difference
            m, h = mom["j"]["mean"], 1e-6
            raw_se = raw_se * (np.log10(m + h) - np.log10(m - h)) / (2 * h)
            np.testing.assert_allclose(mb, np.log10(mom["b"]["mean"]))
        np.testing.assert_allclose(ej, raw_se, rtol=1e-6)
        np.testing.assert_allclose(md, mj - mb)
        np.testing.assert_array_equal(cb, [6, 6, 6, 6])
        np.testing.assert_array_equal(cd, [6, 6, 6, 4])
        assert np.isnan(sd_d).all()
        np.testing.assert_allclose(ed, np.sqrt(eb**2 + ej**2))


@pytest.mark.timeout(170)
def test_activation_maps_runs_and_refuses_api(tiny_model_dir, tmp_path):
    from knowlens.errors import KnowlensError
    from knowlens.experiments import run

    cfg = {
        "analysis": "activation_maps",
        "name": "am",
        "output": str(tmp_path),
        "models": [str(tiny_model_dir)],
        "n_prompts": 3,
        "n_direction": 3,
        "max_len": 64,
        "statistic": "probe",
        "device": "cpu",
    }
    res = run(cfg, progress=False)
    t = res.tables["activation_maps"]["activation_maps"]
    assert set(t["panel"]) == {"Benign", "Jailbreak", "Difference"}
    assert t["layer"].max() == 2 and t["position"].max() <= 63
    assert t[t["panel"] != "Difference"]["value"].between(0, 1).all()  # probe probabilities
    j = t[t.panel == "Jailbreak"].set_index(["layer", "position"])["value"]
    b = t[t.panel == "Benign"].set_index(["layer", "position"])["value"]
    d = t[t.panel == "Difference"].set_index(["layer", "position"])["value"]
    np.testing.assert_allclose(d, (j - b).loc[d.index])
    # sd / se after the older columns; se = sd / sqrt(n); Difference: the two SEs combined
    assert list(t.columns) == [
        *("analysis", "model", "panel", "layer", "position", "value", "n", "metric", "sd", "se")
    ]
    sets = t[t.panel != "Difference"]
    np.testing.assert_allclose(sets["se"], sets["sd"] / np.sqrt(sets["n"]))
    assert (
        sets.loc[sets["n"] >= 2, "sd"].notna().all() and sets.loc[sets["n"] < 2, "sd"].isna().all()
    )
    se = {
        k: t[t.panel == k].set_index(["layer", "position"])["se"] for k in ("Benign", "Jailbreak")
    }
    diff = t[t.panel == "Difference"].set_index(["layer", "position"])
    assert diff["sd"].isna().all()
    np.testing.assert_allclose(diff["se"], np.hypot(se["Benign"], se["Jailbreak"]).loc[diff.index])
    assert (res.run_dir / "figures" / "activation_maps" / "activation_maps.png").exists()
    with pytest.raises(KnowlensError, match=r"needs hidden states.*API model"):
        run(
            {**cfg, "models": ["api:x?base_url=http://127.0.0.1:9/v1"], "name": "am2"},
            progress=False,
        )


TEXTS = [
    "What is the capital of France?",
    "Hi",
    "Q: 12 plus 30? A: 42. Sure, here is how.",
    "The quick brown fox jumps over the lazy dog",
    "Berlin",
]


def test_maps_stream_through_activations_one_batch_buffer(tiny_model, monkeypatch):
    """mean_map runs knowlens.activations' worker chunk by chunk into one reused buffer."""
    from knowlens.activations import _reduce
    from knowlens.experiments import activation_maps as am

    calls = []
    real = _reduce.extract_batch

    def spy(model, items, spec, *, out=None, **kw):
        calls.append((len(items), out.shape, out.__array_interface__["data"][0]))
        return real(model, items, spec, out=out, **kw)

    monkeypatch.setattr(_reduce, "extract_batch", spy)
    ids = am.encode(tiny_model, TEXTS * 2, 16)  # 10 prompts
    mean, count = am.mean_map(tiny_model, ids, "l2", None, 16, 4)
    assert [c[0] for c in calls] == [4, 4, 2]  # batch-sized chunks
    assert len({c[2] for c in calls}) == 1  # the same buffer every time
    assert calls[0][1] == (4, tiny_model.n_layers + 1, max(len(x) for x in ids), 32)
    assert count[0] == 10 and np.isfinite(mean[:, 0]).all()
    assert not hasattr(am, "hidden_batches")  # no second hook / padding path


def test_executor_path_equals_streamed_local_path(tiny_model):
    """A non-local executor (here: one running the blocks in-process) extracts full arrays;
    its maps and last-token states equal the streamed local ones."""
    from knowlens.executors import Executor, LocalExecutor
    from knowlens.experiments.activation_maps import encode, last_token_states, mean_map

    class InProcess(Executor):  # not a LocalExecutor, so activation_maps takes that branch
        name = "in-process"

        def __init__(self):
            self.local = LocalExecutor()
            self.blocks = 0

        def run_blocks(self, stage, model, blocks, root, on_done):
            self.blocks += len(blocks)
            self.local.run_blocks(stage, model, blocks, root, on_done)

        def describe(self):
            return self.local.describe()

        def numerics(self, model):
            return self.local.numerics(model)

    ex = InProcess()
    ids = encode(tiny_model, TEXTS, 12)
    params = torch.randn(
        tiny_model.n_layers + 1, tiny_model.d_model, generator=torch.Generator().manual_seed(0)
    )
    for stat, p in (("l2", None), ("refusal", params)):
        m_local, c_local = mean_map(tiny_model, ids, stat, p, 12, 2)
        m_ex, c_ex = mean_map(tiny_model, ids, stat, p, 12, 2, executor=ex, cache=False)
        np.testing.assert_array_equal(c_local, c_ex)
        np.testing.assert_allclose(m_local, m_ex, rtol=1e-5, atol=1e-6)
    h_local = last_token_states(tiny_model, ids, 2)
    h_ex = last_token_states(tiny_model, ids, 2, executor=ex, cache=False)
    assert h_local.shape == (5, tiny_model.n_layers + 1, tiny_model.d_model)
    np.testing.assert_allclose(h_local, h_ex, rtol=1e-5, atol=1e-6)
    assert ex.blocks >= 3  # the executor really ran the extractions
