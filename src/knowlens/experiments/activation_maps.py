"""Layer x token activation maps, benign vs jailbreak (seed 004).

    knowlens run configs/activation_maps.yaml
    knowlens run configs/activation_maps.yaml --set statistic=refusal

Per model, three panels over (layer 0..L) x (token position 0..max_len-1): Benign,
Jailbreak and Difference (Jailbreak - Benign). Prompts are aligned left; a position past a
prompt's end is excluded from that position's mean and the per-position count ``n`` is kept
in the table. Cell = mean over prompts of a statistic of the residual stream (HF
``hidden_states[layer]`` at that position, the chat template applied); beside it ``sd``,
the sample standard deviation (ddof 1) of the statistic over those prompts (the raw norm
under ``scale: log10``; NaN where fewer than 2 prompts, and on the Difference panel, whose
two sets are different prompts), and ``se``, the standard error of the cell's value
(sd / sqrt(n); log10: by the delta method, sd / (sqrt(n) mean ln 10); Difference:
sqrt(se_Benign^2 + se_Jailbreak^2), the two sets taken as independent, which overstates
it for length-matched pairs):

* ``l2`` (default): ``||h||_2`` (``scale: log10`` plots log10 of it);
* ``refusal``: projection ``h . r_l / ||r_l||`` on the refusal direction of layer l, the
  difference of means of bare harmful vs bare harmless instructions at the last prompt
  token (Arditi et al. 2024); computed on the *training* behaviours, disjoint from the
  held-out behaviours shown in the maps;
* ``probe``: a logistic-regression probe per layer trained on the same bare sets
  (harmful = 1); cell = its probability.

Jailbreak prompts are templates x held-out HarmBench behaviours; the benign set keeps each
prompt's template and swaps in a benign instruction of the nearest token length, so the
two sets match in format and length and the difference isolates the request's content.
Hidden states come from ``knowlens.activations`` (the one hook / padding path) and are
reduced to the statistic batch by batch (``reduce_items`` + ``PositionMoments``, never
stored), so memory stays flat in the number of prompts at max_len 512. Needs local weights:
API targets are refused with a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from knowlens.config import AnalysisConfig, Section
from knowlens.errors import ConfigError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

# 2: sd and se per cell (cached results without them are recomputed); 3: statistic "probe"
# fitted by Newton in float64 (lbfgs stopped short of the optimum)
CODE_VERSION = "3"
LOADS_MODELS = False  # specs may carry ?system=; local weights are loaded via ctx.load_model
PANELS = ("Benign", "Jailbreak", "Difference")


class Config(AnalysisConfig):
    analysis: str = "activation_maps"
    statistic: Literal["l2", "refusal", "probe"] = Field(
        default="l2", description="l2 (norm), refusal (direction projection) or probe."
    )
    scale: Literal["raw", "log10"] = Field(default="raw", description="For l2: raw or log10.")
    max_len: int = Field(default=512, ge=1, le=8192, description="Token positions shown.")
    n_prompts: int = Field(default=24, ge=1, description="Prompts per set (limit wins).")
    n_direction: int = Field(
        default=32, ge=2, description="Bare harmful/harmless pairs for the direction/probe."
    )
    templates: list[str] = Field(default_factory=lambda: ["dan", "autodan", "gcg"])
    batch_size: int = Field(default=4, ge=1)


# -- hidden-state statistics (tested against HF hidden states) -----------------------------
def encode(handle: ModelHandle, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each user turn as the model sees it (chat template), cut at max_len."""
    out = []
    for t in texts:
        s = handle.format_prompt(t)
        ids = handle.tokenizer(s, add_special_tokens=not handle.has_chat_template)["input_ids"]
        out.append(list(ids)[:max_len])
    return out


def position_statistic(hs: torch.Tensor, statistic: str, params: Any = None) -> torch.Tensor:
    """(B, L+1, T, d) hidden states -> (B, L+1, T) statistic."""
    if statistic == "l2":
        return hs.norm(dim=-1)
    if statistic == "refusal":
        r = params  # (L+1, d), unit vectors
        return torch.einsum("bltd,ld->blt", hs, r)
    if statistic == "probe":
        w, b = params  # (L+1, d), (L+1,)
        return torch.sigmoid(torch.einsum("bltd,ld->blt", hs, w) + b[None, :, None])
    raise ConfigError(f"statistic must be l2, refusal or probe; got '{statistic}'.")


def _items(ids: list[list[int]]) -> list[Any]:
    from knowlens.activations import ExtractItem

    return [ExtractItem(str(i), tuple(x), len(x)) for i, x in enumerate(ids)]


def _on_executor(executor: Any) -> bool:
    from knowlens.executors import LocalExecutor

    return executor is not None and not isinstance(executor, LocalExecutor)


def _executor_acts(
    handle: ModelHandle,
    ids: list[list[int]],
    tokens: str,
    batch_size: int,
    executor: Any,
    cache: bool,
) -> Any:
    """Every layer of ``ids`` (float32) from :func:`knowlens.executors.extract` on a non-local
    executor: the full array, cached like any extraction (workers cannot stream)."""
    from knowlens._types import Generation
    from knowlens.executors import extract

    rows = [
        Generation(str(i), "activation_maps", "", "", list(x), [], [], [], None, "none")
        for i, x in enumerate(ids)
    ]
    return extract(
        handle,
        rows,
        executor=executor,
        layers="all",
        tokens=tokens,
        dtype="float32",
        max_positions=max(len(x) for x in ids),
        batch_size=batch_size,
        cache=cache,
        progress=False,
    )


def mean_map(
    handle: ModelHandle,
    ids: list[list[int]],
    statistic: str,
    params: Any,
    max_len: int,
    batch_size: int,
    executor: Any = None,
    cache: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean statistic per (layer, position) over prompts and the count per position
    (:func:`map_moments` without the variance)."""
    res = map_moments(handle, ids, statistic, params, max_len, batch_size, executor, cache)
    return res["mean"], res["count"]


def map_moments(
    handle: ModelHandle,
    ids: list[list[int]],
    statistic: str,
    params: Any,
    max_len: int,
    batch_size: int,
    executor: Any = None,
    cache: bool = True,
) -> dict[str, np.ndarray]:
    """Mean and population variance of the statistic per (layer, position) over prompts, and
    the count per position (``PositionMoments.result()``: ``mean``, ``var``, ``count``).

    In this process the hidden states stream through ``knowlens.activations.reduce_items``
    (one batch buffer, nothing stored); on a non-local ``executor`` (the run's
    ``ctx.executor``) the full float32 array is extracted there and reduced in batches."""
    from knowlens.activations import PositionMoments, reduce_items

    red = PositionMoments(
        lambda hs: position_statistic(hs, statistic, params),
        n_layers=handle.n_layers + 1,
        n_positions=max_len,
    )
    if _on_executor(executor):
        acts = _executor_acts(handle, ids, "all", batch_size, executor, cache)
        for s in range(0, len(ids), batch_size):
            e = min(s + batch_size, len(ids))
            red.update(
                np.array(acts.values[s:e], dtype=np.float32),
                np.asarray(acts.mask[s:e], dtype=bool),
                np.asarray(acts.positions[s:e]),
                np.arange(s, e),
            )
        res = red.result()
    else:
        res = reduce_items(
            handle,
            _items(ids),
            red,
            layers="all",
            tokens="all",
            dtype="float32",
            max_positions=max_len,
            batch_size=batch_size,
        )
    return dict(res)


def spread(var: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample SD (ddof 1) per (layer, position) from the population variance ``var`` of
    ``count`` prompts per position, and the SE of the mean; NaN where fewer than 2."""
    n = np.broadcast_to(count, var.shape).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.where(n >= 2, np.sqrt(var * n / np.maximum(n - 1, 1)), np.nan)
        return sd, sd / np.sqrt(np.maximum(n, 1))


def last_token_states(
    handle: ModelHandle,
    ids: list[list[int]],
    batch_size: int,
    executor: Any = None,
    cache: bool = True,
) -> np.ndarray:
    """(n, L+1, d) hidden states at each prompt's last token (``tokens="last"``)."""
    if _on_executor(executor):
        acts = _executor_acts(handle, ids, "last", batch_size, executor, cache)
    else:
        from knowlens.activations import run_extraction

        acts = run_extraction(
            handle,
            _items(ids),
            layers="all",
            tokens="last",
            dtype="float32",
            max_positions=max(len(x) for x in ids),
            batch_size=batch_size,
            cache=False,
            progress=False,
            meta={"source": "activation_maps"},
        )
    return np.array(acts.values[:, :, 0], dtype=np.float32)


def refusal_direction(harm: np.ndarray, harmless: np.ndarray) -> np.ndarray:
    """Unit difference of means per layer, (L+1, d) (Arditi et al. 2024)."""
    r = harm.mean(0) - harmless.mean(0)
    return r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), 1e-12)


def fit_probes(harm: np.ndarray, harmless: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One logistic regression per layer (harmful = 1); returns weights (L+1, d), bias (L+1,)
    (Newton is deterministic: no seed)."""
    from knowlens.estimators import fit_logistic

    X = np.concatenate([harm, harmless])
    y = np.r_[np.ones(len(harm)), np.zeros(len(harmless))]
    W = np.zeros(X.shape[1:], dtype=np.float32)
    B = np.zeros(X.shape[1], dtype=np.float32)
    for layer in range(X.shape[1]):
        clf = fit_logistic(X[:, layer], y)  # Newton in float64, as LogisticProbe
        W[layer], B[layer] = clf.coef_[0], clf.intercept_[0]
    return W, B


Panel = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def panel_maps(
    benign: dict[str, np.ndarray], jailbreak: dict[str, np.ndarray], *, log10: bool = False
) -> list[Panel]:
    """(panel, value, count, sd, se) of the Benign, Jailbreak and Difference panels from the
    two sets' :func:`map_moments`; ``log10``: values are log10 of the mean, their SE by the
    delta method (sd stays the raw statistic's)."""
    out: list[Panel] = []
    for panel, res in (("Benign", benign), ("Jailbreak", jailbreak)):
        sd, se = spread(res["var"], res["count"])
        m = res["mean"]
        if log10:
            m, se = np.log10(m), se / (m * np.log(10))
        out.append((panel, m, res["count"], sd, se))
    (_, mb, cb, _, eb), (_, mj, cj, _, ej) = out
    # two different prompt sets: no per-prompt difference, so no sd; SEs add in quadrature
    diff = mj - mb
    out.append(
        ("Difference", diff, np.minimum(cb, cj), np.full_like(diff, np.nan), np.hypot(eb, ej))
    )
    return out


# -- run -----------------------------------------------------------------------------------
def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    from knowlens.jailbreak import corpora
    from knowlens.jailbreak.targets import load_target, require_local

    if not cfg.models:
        raise ConfigError(
            "activation_maps: field 'models' needs at least one local model; got []. "
            "Add e.g. 'models: [smollm2-135m-instruct]'."
        )
    train, held_out = corpora.harmbench_split()
    n = cfg.limit or cfg.n_prompts
    jail = corpora.attack_prompts(
        held_out, corpora.templates(tuple(cfg.templates)), n=n, seed=cfg.seed, max_chars=None
    )
    rows, counts, spreads = [], [], []
    for spec in cfg.models:
        target = load_target(spec, loader=ctx.load_model)
        handle = require_local(target, "activation_maps")
        # streamed in this process, or extracted on the run's (non-local) executor
        on_executor = {"executor": ctx.executor, "cache": ctx.use_cache}
        benign = corpora.matched_benign(jail, tokenizer=handle.tokenizer, seed=cfg.seed)
        # refusal: one direction per layer; probe: (weights, biases) per layer
        params: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None
        if cfg.statistic in ("refusal", "probe"):
            harm_b = train[: cfg.n_direction]
            harmless_b = corpora.matched_benign(harm_b, tokenizer=handle.tokenizer, seed=cfg.seed)
            what = f"{target.name}: {cfg.statistic} direction/probe on bare prompts"
            with ctx.step(what, kind="probe", model=target.name):
                H = last_token_states(
                    handle,
                    encode(handle, [p.text for p in harm_b], cfg.max_len),
                    cfg.batch_size,
                    **on_executor,
                )
                B = last_token_states(
                    handle,
                    encode(handle, [p.text for p in harmless_b], cfg.max_len),
                    cfg.batch_size,
                    **on_executor,
                )
                if cfg.statistic == "refusal":
                    params = torch.from_numpy(refusal_direction(H, B))
                else:
                    w, b = fit_probes(H, B)
                    params = (torch.from_numpy(w), torch.from_numpy(b))
        maps = {}
        for panel, prompts in (("Benign", benign), ("Jailbreak", jail)):
            ids = encode(handle, [p.text for p in prompts], cfg.max_len)
            what = f"{target.name}: {panel.lower()} maps ({len(ids)} prompts)"
            with ctx.step(what, kind="map", model=target.name):
                maps[panel] = map_moments(
                    handle, ids, cfg.statistic, params, cfg.max_len, cfg.batch_size, **on_executor
                )
        log10 = cfg.statistic == "l2" and cfg.scale == "log10"
        panels = panel_maps(maps["Benign"], maps["Jailbreak"], log10=log10)
        cb, cj = panels[0][2], panels[1][2]
        for panel, m, c, sd, se in panels:
            L, T = m.shape
            keep = c > 0
            lay, pos = np.meshgrid(np.arange(L), np.arange(T), indexing="ij")
            df = pd.DataFrame(
                {
                    "layer": lay[:, keep].ravel(),
                    "position": pos[:, keep].ravel(),
                    "value": m[:, keep].ravel(),
                    "n": np.broadcast_to(c, (L, T))[:, keep].ravel(),
                }
            )
            df.insert(0, "panel", panel)
            df.insert(0, "model", target.name)
            spreads.append(pd.DataFrame({"sd": sd[:, keep].ravel(), "se": se[:, keep].ravel()}))
            rows.append(df)
        counts.append(
            pd.DataFrame(
                {
                    "model": target.name,
                    "position": np.arange(cfg.max_len),
                    "n_benign": cb,
                    "n_jailbreak": cj,
                }
            )
        )
    main = pd.concat(rows, ignore_index=True)
    main.insert(0, "analysis", "activation_maps")
    main["metric"] = cfg.statistic if cfg.scale == "raw" or cfg.statistic != "l2" else "log10_l2"
    # after the older columns, so a table of CODE_VERSION 1 is a prefix of this one
    main[["sd", "se"]] = pd.concat(spreads, ignore_index=True)
    summary = (
        main.groupby(["model", "panel"], sort=False)["value"]
        .agg(["mean", "min", "max"])
        .reset_index()
    )
    return {"activation_maps": main, "position_counts": pd.concat(counts), "summary": summary}


# -- figures -------------------------------------------------------------------------------
_LABEL = {
    "l2": "mean L2 norm",
    "log10_l2": "mean log10 L2 norm",
    "refusal": "projection on refusal direction",
    "probe": "probe P(harmful)",
}


def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from knowlens import plots

    main = tables["activation_maps"]
    models = list(dict.fromkeys(main["model"]))
    metric = str(main["metric"].iloc[0])
    fig, axes = plt.subplots(len(models), 3, figsize=(15, 3.2 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        mm = main[main["model"] == model]
        grids = {}
        for panel in PANELS:
            p = mm[mm["panel"] == panel]
            grids[panel] = p.pivot(index="layer", columns="position", values="value")
        both = np.concatenate(
            [grids["Benign"].to_numpy().ravel(), grids["Jailbreak"].to_numpy().ravel()]
        )
        both = both[np.isfinite(both)]
        # robust limits: the first token (attention sink) can be 10-100x the rest
        lo, hi = np.percentile(both, [1, 99]) if len(both) else (0, 1)
        d = grids["Difference"].to_numpy()
        dl = np.nanpercentile(np.abs(d), 99) if np.isfinite(d).any() else 1.0
        for c, panel in enumerate(PANELS):
            ax = axes[r, c]
            g = grids[panel]
            kw = (
                dict(cmap=plots.DIVERGING, vmin=-dl, vmax=dl)
                if panel == "Difference"
                else dict(cmap="viridis", vmin=lo, vmax=hi)
            )
            im = ax.imshow(
                g.to_numpy(),
                aspect="auto",
                origin="lower",
                interpolation="nearest",
                extent=(-0.5, g.shape[1] - 0.5, -0.5, g.shape[0] - 0.5),
                **kw,
            )
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.ax.tick_params(labelsize=7)
            if panel == "Difference":
                cb.set_label("Jailbreak - Benign", fontsize=7)
            ax.set_title(f"{model} · {panel}", fontsize=9.5)
            ax.set_xlabel("Token position", fontsize=8)
            if c == 0:
                ax.set_ylabel("Layer", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(
        f"Activation maps: {_LABEL.get(metric, metric)} (colour limits 1st-99th pct)", fontsize=11
    )
    fig.tight_layout()
    return plots.save_figure(fig, out_dir, "activation_maps")


def report_sections(tables: dict[str, pd.DataFrame], figures: list[Path]) -> list[Any]:
    s = tables["summary"]
    keys = {
        f"{r['model']} · {r['panel']}": f"mean {r['mean']:.3g} (min {r['min']:.3g}, max {r['max']:.3g})"
        for _, r in s.iterrows()
    }
    return [
        Section(
            title="Activation maps: benign vs jailbreak",
            caption=(
                "Per model: mean statistic of the residual stream per layer (rows, 0 = "
                "embeddings) and token position (prompts aligned left; positions past a "
                "prompt's end are excluded, counts in position_counts). Benign prompts use the "
                "same templates around length-matched benign instructions; Difference = "
                "Jailbreak - Benign on a 0-centred diverging scale. The table gives per cell "
                "the prompt count n, the SD of the statistic over those prompts and the SE of "
                "the cell's value."
            ),
            figures=[f for f in figures if f.suffix == ".png"],
            key_numbers=keys,
            tables=["summary"],
        )
    ]
