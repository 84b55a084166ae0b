"""Prompt transferability (seed 000): do attack prompts that work on one model work on another?

    knowlens run configs/prompt_transfer.yaml
    knowlens run configs/prompt_transfer.yaml --models "smollm2-135m-instruct,smollm2-135m-instruct?system=safety"

A pool of attack prompts (jailbreak templates x held-out HarmBench behaviours, seeded sample)
is sent to every target (local models, refusal organisms, API models; a spec with
``?system=`` is a separate deployment). Each judge decides, per response, whether the model
complied. With succ_m(p) = "judge says model m complied with prompt p":

    T[s, t] = 100 * |{p : succ_s(p) and succ_t(p)}| / |{p : succ_s(p)}|

over prompts with a valid verdict for both s and t (``invalid`` LLM-judge outputs are left
out and counted). The diagonal would be 100 by construction; it is shown instead as the
source's own attack success rate (ASR), in a distinct style, never as a fake 0. Rows carry
n = |{p : succ_s(p)}|. The bare behaviours are also sent (``direct`` rows of the ASR table),
so the ASR of templates can be read against the model's plain refusal rate.

Tables: ``prompt_transfer`` (matrix cells), ``asr`` (per model, judge and prompt kind, with
bootstrap 95% CIs), ``judge_agreement`` (pairwise agreement + Cohen's kappa per model and
overall), ``verdicts`` (one row per response and judge), ``examples`` (a few truncated
prompt/response pairs per verdict, for the report, under a content warning).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from knowlens.config import AnalysisConfig, Section
from knowlens.errors import ConfigError
from knowlens.experiments._common import min_n_of
from knowlens.metrics import proportion_interval

__all__ = [
    "CODE_VERSION",
    "LOADS_MODELS",
    "Config",
    "figures",
    "report_sections",
    "run",
    "tables_from_verdicts",
    "transfer_matrix",
]

CODE_VERSION = "2"
# Specs may be API targets or carry ?system=: the analysis loads (and fingerprints) local
# weights itself through ctx.load_model.
LOADS_MODELS = False


class Config(AnalysisConfig):
    analysis: str = "prompt_transfer"
    judges: list[str] = Field(
        default_factory=lambda: ["gcg", "jbb", "arditi", "garak"],
        description="Judges: gcg, jbb, arditi, garak (refusal strings), llm (needs judge_model).",
    )
    judge_model: str | None = Field(
        default=None, description="Target spec of the LLM judge (local or api:...)."
    )

    @field_validator("judges")
    @classmethod
    def _registered_judges(cls, v: list[str]) -> list[str]:
        from knowlens.jailbreak.judges import judge_names

        unknown = [j for j in v if j not in judge_names()]
        if unknown:
            raise ValueError(
                f"names an unknown judge '{unknown[0]}'; allowed: {', '.join(judge_names())}"
            )
        return v

    templates: list[str] = Field(
        default_factory=lambda: ["dan", "autodan", "gcg"],
        description="Template families: dan, autodan, gcg, inthewild.",
    )
    n_prompts: int = Field(default=60, ge=1, description="Attack prompts sampled (limit wins).")
    max_template_chars: int = Field(
        default=2500, ge=50, description="Skip templates longer than this (CPU budget)."
    )
    max_new_tokens: int = Field(default=48, ge=1, le=1024)
    include_direct: bool = Field(
        default=True, description="Also send the bare behaviours (direct-request ASR)."
    )
    include_benign: bool = Field(
        default=True,
        description="Also send held-out benign instructions (over-refusal: a model that "
        "refuses everything has ASR 0 but is useless).",
    )
    n_examples: int = Field(default=2, ge=0, description="Examples per model x verdict shown.")
    gcg_steps: int = Field(
        default=0, ge=0, description="GCG steps (nanogcg) on the first local target; 0 = off."
    )
    gcg_behaviors: int = Field(default=2, ge=1, description="Behaviours to optimise with GCG.")


# -- pure computations (tested against hand-made tables) -----------------------------------
def transfer_matrix(success: pd.DataFrame) -> pd.DataFrame:
    """Cells of T from a success table (rows = prompts, columns = models; 1/0, NaN invalid).

    Returns one row per (source, target) with ``value`` (percent), ``n`` (source successes
    among prompts valid for both), ``n_both``, and ``diagonal``; diagonal cells hold the
    source's own ASR (``n`` = its valid prompts, ``n_both`` = its successes).
    """
    rows = []
    models = list(success.columns)
    for s in models:
        for t in models:
            a, b = success[s].to_numpy(float), success[t].to_numpy(float)
            if s == t:
                valid = ~np.isnan(a)
                n, k = int(valid.sum()), int(np.nansum(a))
                value = 100.0 * k / n if n else float("nan")
                rows.append(dict(source=s, target=t, value=value, n=n, n_both=k, diagonal=True))
                continue
            valid = ~(np.isnan(a) | np.isnan(b))
            src = valid & (a == 1)
            n = int(src.sum())
            both = int((src & (b == 1)).sum())
            value = 100.0 * both / n if n else float("nan")
            rows.append(dict(source=s, target=t, value=value, n=n, n_both=both, diagonal=False))
    return pd.DataFrame(rows, columns=["source", "target", "value", "n", "n_both", "diagonal"])


_KIND = {"harmful": "direct", "benign": "benign"}  # prompt kind -> verdict-table kind


def _success(verdict: str) -> float:
    from knowlens.jailbreak.judges import INVALID, JAILBROKEN

    return float("nan") if verdict == INVALID else float(verdict == JAILBROKEN)


# -- run -----------------------------------------------------------------------------------
def _prompts(cfg: Config) -> list[Any]:
    from knowlens.jailbreak import corpora

    _, held_out = corpora.harmbench_split()
    tmpls = corpora.templates(tuple(cfg.templates))
    n = cfg.limit or cfg.n_prompts
    attacks = corpora.attack_prompts(
        held_out, tmpls, n=n, seed=cfg.seed, max_chars=cfg.max_template_chars
    )
    direct = held_out[: max(1, min(len(held_out), n))] if cfg.include_direct else []
    # knowlens' own benign set: never in an organism's training data
    benign = [p for p in corpora.benign_instructions() if p.source == corpora.KNOWLENS_BENIGN]
    benign = benign[: max(1, min(len(benign), n))] if cfg.include_benign else []
    return attacks + direct + benign


def _gcg_prompts(cfg: Config, ctx: Any) -> list[Any]:
    """Optimised prompts from a white-box source (the first local target) join the pool."""
    from knowlens.jailbreak import corpora
    from knowlens.jailbreak.attack import GCGSettings, gcg_prompts
    from knowlens.jailbreak.targets import load_target

    for spec in cfg.models:
        t = load_target(spec, loader=ctx.load_model)
        if t.is_local:
            _, held = corpora.harmbench_split()
            with ctx.step(f"GCG search on {t.name} ({cfg.gcg_steps} steps)", model=t.name):
                return gcg_prompts(
                    t.handle,
                    held[: cfg.gcg_behaviors],
                    GCGSettings(steps=cfg.gcg_steps, seed=cfg.seed),
                )
    raise ConfigError(
        "prompt_transfer: gcg_steps > 0 needs a local (white-box) target in 'models'; all "
        f"are API targets: {cfg.models}. Set gcg_steps: 0 or add a local model."
    )


def run(cfg: Config, ctx: Any) -> dict[str, pd.DataFrame]:
    from knowlens.jailbreak import corpora
    from knowlens.jailbreak import judges as J
    from knowlens.jailbreak.targets import load_target

    if not cfg.models:
        raise ConfigError(
            "prompt_transfer: field 'models' needs at least one target; got []. "
            "Add e.g. 'models: [smollm2-135m-instruct]' or pass --models."
        )
    if "llm" in cfg.judges and not cfg.judge_model:
        raise ConfigError(
            "prompt_transfer: judge 'llm' needs 'judge_model' (a model or api:... spec); got "
            "none. Set judge_model or drop 'llm' from judges."
        )
    judge_target = None
    if cfg.judge_model:
        judge_target = load_target(cfg.judge_model, loader=ctx.load_model, executor=ctx.executor)
    judges = {name: J.get_judge(name, target=judge_target) for name in cfg.judges}
    for name, j in judges.items():
        ctx.note(f"judge:{name}", j.describe())

    prompts = _prompts(cfg)
    if cfg.gcg_steps:
        prompts += _gcg_prompts(cfg, ctx)
    ctx.note(
        "prompts",
        {"n": len(prompts), "templates": cfg.templates, "split_seed": corpora.HARMBENCH_SPLIT_SEED},
    )
    texts, ids = [p.text for p in prompts], [p.id for p in prompts]
    behaviors = [p.behavior for p in prompts]

    verdict_rows, names = [], []
    for spec in cfg.models:
        # local targets generate on the run's executor (local or Ray: the same responses)
        target = load_target(spec, loader=ctx.load_model, executor=ctx.executor)
        if target.name in names:
            raise ConfigError(
                f"prompt_transfer: two targets are both named '{target.name}'; give one "
                "'?name=<other>' in its spec."
            )
        names.append(target.name)
        ctx.note(f"target:{target.name}", {"spec": spec, "target_id": target.target_id})
        with ctx.step(f"generate {target.name} ({len(prompts)} prompts)", model=target.name):
            responses = target.generate(texts, ids=ids, max_new_tokens=cfg.max_new_tokens)
        resp_text = [r.text for r in responses]
        for jname, judge in judges.items():
            with ctx.step(f"judge {jname} · {target.name}", model=target.name):
                verdicts = judge.judge_many(behaviors, resp_text)
            for p, r, v in zip(prompts, responses, verdicts, strict=True):
                verdict_rows.append(
                    {
                        "analysis": "prompt_transfer",
                        "model": target.name,
                        "judge": jname,
                        "prompt_id": p.id,
                        "kind": _KIND.get(p.kind, "jailbreak"),
                        "template": p.template,
                        "behavior": p.behavior,
                        "verdict": v,
                        "success": _success(v),
                        "prompt": p.text[:400],
                        "response": (r.text or "")[:400] if r.text is not None else None,
                        "error": r.error,
                    }
                )
    verdicts = pd.DataFrame(verdict_rows)
    tables = tables_from_verdicts(
        verdicts, names, n_boot=cfg.n_bootstrap, seed=cfg.seed, n_examples=cfg.n_examples
    )
    tables["settings"] = pd.DataFrame([{"min_n": cfg.min_n}])
    return tables


def tables_from_verdicts(
    verdicts: pd.DataFrame,
    models: list[str],
    *,
    n_boot: int,
    seed: int,
    n_examples: int = 2,
) -> dict[str, pd.DataFrame]:
    """All tables from the long verdict table (pure; shared by run and tests)."""
    from knowlens.jailbreak.judges import agreement

    cells, asr_rows, agree = [], [], []
    for jname, jv in verdicts.groupby("judge", sort=False):
        attack = jv[jv["kind"] == "jailbreak"]
        success = attack.pivot(index="prompt_id", columns="model", values="success")[models]
        m = transfer_matrix(success)
        m.insert(0, "judge", jname)
        cells.append(m)
        for (model, kind), g in jv.groupby(["model", "kind"], sort=False):
            s = g["success"].to_numpy(float)
            valid = s[~np.isnan(s)]
            k, n = int(valid.sum()), len(valid)
            lo = hi = float("nan")
            if n and n_boot > 0:
                ci = proportion_interval(k, n, n_resamples=n_boot, seed=seed)
                lo, hi = 100.0 * ci.low, 100.0 * ci.high
            asr_rows.append(
                {
                    "analysis": "prompt_transfer",
                    "model": model,
                    "judge": jname,
                    "kind": kind,
                    # on benign requests "success" is compliance: the model helped
                    "metric": "benign_compliance" if kind == "benign" else "asr",
                    "value": 100.0 * k / n if n else float("nan"),
                    "ci_low": lo,
                    "ci_high": hi,
                    "n": n,
                    "n_success": k,
                    "n_invalid": int(np.isnan(s).sum()),
                }
            )
    for model, mv in [("all", verdicts), *verdicts.groupby("model", sort=False)]:
        wide = mv.pivot_table(
            index=["model", "prompt_id"], columns="judge", values="verdict", aggfunc="first"
        )
        if wide.shape[1] >= 2:
            a = agreement({c: wide[c].tolist() for c in wide.columns})
            a.insert(0, "model", model)
            agree.append(a)
    main = pd.concat(cells, ignore_index=True)
    main.insert(0, "analysis", "prompt_transfer")
    main["metric"] = np.where(main["diagonal"], "asr", "transfer")
    ex = []
    if n_examples:
        for _, g in verdicts.groupby(["judge", "model", "verdict"], sort=False):
            ex.append(g.head(n_examples))
    examples = pd.concat(ex, ignore_index=True) if ex else verdicts.head(0)
    examples = examples[["judge", "model", "verdict", "kind", "prompt", "response"]].copy()
    examples["prompt"] = examples["prompt"].str.slice(0, 160)
    examples["response"] = examples["response"].fillna("(no response)").str.slice(0, 200)
    return {
        "prompt_transfer": main,
        "asr": pd.DataFrame(asr_rows),
        "judge_agreement": pd.concat(agree, ignore_index=True) if agree else pd.DataFrame(),
        "verdicts": verdicts.drop(columns=["prompt"]),
        "examples": examples,
    }


# -- figures -------------------------------------------------------------------------------
def figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    from knowlens import plots

    main, asr = tables["prompt_transfer"], tables["asr"]
    min_n = min_n_of(tables)
    paths: list[Path] = []
    for jname, m in main.groupby("judge", sort=False):
        models = list(dict.fromkeys(m["source"]))
        mat = plots.pivot(
            m, index="source", columns="target", index_order=models, column_order=models
        )
        nrow = m[~m["diagonal"]].groupby("source")["n"].max().reindex(models).fillna(0)
        # a row of T rests on the prompts that succeed on its source: with few, its
        # percentages are noise (a refusing source has n near 0)
        hatch = np.zeros(mat.shape, dtype=bool)
        hatch[(nrow < min_n).to_numpy()] = True
        np.fill_diagonal(hatch, False)
        mat.index = [f"{s}\n(n={int(nrow[s])})" for s in models]
        mat.columns = models
        a = asr[(asr["judge"] == jname)]
        w, h = plots.heatmap_size(mat, cell=1.1)
        fig, (ax_bar, ax) = plt.subplots(
            1, 2, figsize=(w + 3.6, max(h, 3.0)), gridspec_kw={"width_ratios": [1, 1.6]}
        )
        _asr_bars(ax_bar, a, models)
        plots.heatmap(
            ax,
            mat,
            fmt=".1f",
            vmin=0,
            vmax=100,
            cbar_label="Transferability (%)",
            title=f"Prompt Transferability Matrix (judge: {jname})",
            xlabel="Target model",
            ylabel="Source model (n = prompts that succeed on it)",
            diagonal="distinct",
            diagonal_label="the source's own ASR (%), not a transfer",
            hatch_mask=hatch if hatch.any() else None,
            hatch_label=f"n < {min_n} successful source prompts",
        )
        fig.tight_layout()
        paths += plots.save_figure(fig, out_dir, f"prompt_transfer_{jname}")
    agree = tables.get("judge_agreement")
    if agree is not None and len(agree):
        g = agree[agree["model"] == "all"]
        judges = list(dict.fromkeys([*g["judge_a"], *g["judge_b"]]))
        k = pd.DataFrame(np.eye(len(judges)), index=judges, columns=judges)
        for _, r in g.iterrows():
            k.loc[r["judge_a"], r["judge_b"]] = k.loc[r["judge_b"], r["judge_a"]] = r["kappa"]
        fig, ax = plt.subplots(figsize=plots.heatmap_size(k, cell=1.0))
        plots.heatmap(
            ax,
            k,
            fmt=".2f",
            vmin=-1,
            vmax=1,
            center=0.0,
            cbar_label="Cohen's kappa",
            title="Judge agreement (all responses)",
            diagonal="blank",
        )
        paths += plots.save_figure(fig, out_dir, "judge_agreement")
    return paths


def _asr_bars(ax: Any, a: pd.DataFrame, models: list[str]) -> None:
    kinds = [k for k in ("direct", "jailbreak", "benign") if k in set(a["kind"])]
    width = 0.8 / max(len(kinds), 1)
    colors = {"direct": "#9e9ac8", "jailbreak": "#d94801", "benign": "#41ab5d"}
    labels = {
        "direct": "bare harmful request",
        "jailbreak": "jailbreak template",
        "benign": "benign request (complied)",
    }
    x = np.arange(len(models))
    for i, kind in enumerate(kinds):
        r = a[a["kind"] == kind].set_index("model").reindex(models)
        err = np.vstack([r["value"] - r["ci_low"], r["ci_high"] - r["value"]])
        ax.bar(
            x + (i - (len(kinds) - 1) / 2) * width,
            r["value"],
            width * 0.95,
            yerr=np.nan_to_num(err),
            capsize=2,
            color=colors[kind],
            label=labels[kind],
        )
    ax.set_xticks(x, models, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("complied (%)", fontsize=9)
    ax.set_title("Attack success / benign compliance, 95% CI", fontsize=9.5)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.35), ncol=1)


def report_sections(tables: dict[str, pd.DataFrame], figures: list[Path]) -> list[Any]:
    main, asr = tables["prompt_transfer"], tables["asr"]
    secs = []
    for jname in dict.fromkeys(main["judge"]):
        a = asr[asr["judge"] == jname]
        label = {"jailbreak": "ASR", "direct": "bare-request ASR", "benign": "benign compliance"}
        keys = {
            f"{label[r['kind']]} {r['model']}": f"{r['value']:.1f}% "
            f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] (n={r['n']})"
            for _, r in a.iterrows()
        }
        secs.append(
            Section(
                title=f"Prompt transferability · judge {jname}",
                caption=(
                    "Left: attack success rate per model (bare harmful requests vs jailbreak "
                    "templates) and compliance with held-out benign requests (a model that "
                    "refuses everything scores ASR 0 and benign compliance 0). Right: T[s,t] = "
                    "% of prompts that succeed on source s that also succeed on target t; n per "
                    "row = prompts that succeed on s. The diagonal is the source's own ASR, "
                    "drawn off the colour scale; hatched rows rest on fewer than min_n "
                    "successful prompts."
                ),
                figures=[f for f in figures if f.name == f"prompt_transfer_{jname}.png"],
                key_numbers=keys,
            )
        )
    secs.append(
        Section(
            title="Judge agreement",
            caption="Pairwise agreement and Cohen's kappa between judges on the same responses "
            "(invalid LLM-judge outputs excluded pair-wise).",
            figures=[f for f in figures if f.name == "judge_agreement.png"],
            tables=["judge_agreement", "asr"],
        )
    )
    secs.append(
        Section(
            title="Example prompts and responses per verdict",
            caption="A few truncated prompt/response pairs per judge, model and verdict.",
            tables=["examples"],
            notes="Content warning: these rows quote harmful requests and model outputs "
            "verbatim (truncated).",
        )
    )
    return secs
