"""Estimators in the analyses: registry lookup, shared inputs, one fit cache, cached scores.

No analysis switches on estimator names. A config lists registered names
(``knowlens.estimators.estimator_names()``: ``zero_shot``, ``p_true``, ``logit``,
``probe``, ``logistic``, ``lora``, ``lora_prompt`` and any estimator registered later); for
each, :class:`EstimatorBench` asks the registry entry what it reads, prepares that once per
(reader, answers) and shares it between estimators that read the same thing, builds the
estimator (training settings mapped by the entry), fits it through the one estimator cache
(``fit_cached``: ``cache_root()/estimators/<Estimator.cache_key()>/``) and scores answers.

A *reader* model judges answers that may come from another model (FIGURES.md section 2):
activations are the reader's hidden states of the question + answer as the reader would
read them (``knowlens.estimators.retokenize``); model-running estimators re-read other
models' answers themselves. Scores are cached per example under ``estimator_scores/<hash>``
(estimator key, reader, inputs, answers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from knowlens._cache import stable_hash

__all__ = [
    "ESTIMATORS_HELP",
    "SCORES_VERSION",
    "EstimatorBench",
    "Fitted",
    "TrainSettings",
    "concat",
    "display_name",
    "fit_recorded",
    "gens_identity",
    "known_estimators",
]

SCORES_VERSION = "1"
#: what the ``estimators`` field of an analysis config accepts
ESTIMATORS_HELP = (
    "Registered estimator names (knowlens.estimators.estimator_names(); aliases allowed)."
)


class TrainSettings(BaseModel):
    """Training settings of the learned estimators (paper defaults where they exist); each
    registry entry names the ones it takes (``settings=``, ``train_limit=``)."""

    model_config = ConfigDict(extra="forbid")

    probe_epochs: int = Field(default=100, ge=1, description="MLP probe epochs.")
    lora_steps: int = Field(default=60, ge=1, description="Optimiser steps of the LoRA estimators.")
    lora_r: int = Field(default=8, ge=1, description="LoRA rank (paper: 8).")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (paper: 32).")
    lora_lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate (paper: 1e-4).")
    batch_size: int = Field(default=4, ge=1, description="Training batch size (paper: 4).")
    max_train: int | None = Field(
        default=None, ge=2, description="Cap on training answers for LoRA estimators."
    )


def known_estimators(names: list[str]) -> list[str]:
    """Field validator of an ``estimators`` list: config names, aliases resolved; a one-line
    ValueError (did-you-mean, available names) for an unknown or repeated one."""
    from knowlens.estimators import canonical_estimator_names

    return canonical_estimator_names(list(names))


def display_name(name: str) -> str:
    """Table / figure label of estimator ``name``."""
    from knowlens.estimators import get_estimator

    return get_estimator(name).display_name


def gens_identity(gens: Any) -> str:
    """A content key of a GenerationSet: its cache key (if any), ids, labels and answers."""
    return stable_hash(
        {
            "key": gens.meta.get("cache_key"),  # hash field name kept: keys stay stable
            "ids": gens.example_ids,
            "y": [None if r.correct is None else bool(r.correct) for r in gens.rows],
            "answers": stable_hash([r.answer for r in gens.rows]),
            "prompts": stable_hash([r.prompt for r in gens.rows]),
        }
    )


def concat(parts: list[Any]) -> Any:
    """One GenerationSet from several tasks' (ids prefixed by task so they stay unique)."""
    from knowlens._types import GenerationSet

    rows = []
    for g in parts:
        for r in g.rows:
            rows.append(replace(r, example_id=f"{r.task}/{r.example_id}"))
    meta = dict(parts[0].meta) if parts else {}
    meta.pop("task", None)
    meta["cache_key"] = stable_hash([gens_identity(g) for g in parts])
    meta["tasks"] = [g.meta.get("task_name") or (g.rows[0].task if len(g) else "") for g in parts]
    return GenerationSet(rows, meta)


def _cap(gens: Any, n: int | None, seed: int) -> Any:
    if n is None or len(gens) <= n:
        return gens
    idx = np.sort(np.random.default_rng(seed).choice(len(gens), n, replace=False))
    out = gens.subset(idx)
    # the parent's key must not name the subset (it keys the fitted estimator)
    out.meta["cache_key"] = stable_hash({"subset_of": gens_identity(gens), "idx": idx.tolist()})
    return out


def fit_recorded(ctx: Any, estimator: Any, X: Any, y: Any) -> tuple[Any, str]:
    """``fit_cached`` (the one estimator cache) with the hit / miss counted in the run
    manifest under ``cache.estimators``; returns the fitted estimator and its cache key."""
    from knowlens.estimators import CACHE_KIND, fit_cached

    key = estimator.cache_key(X, y)
    fitted = fit_cached(estimator, X, y, cache=ctx.use_cache)
    ctx.count_cache(CACHE_KIND, hit=fitted.from_cache_)
    return fitted, key


@dataclass
class Fitted:
    """A fitted estimator of an analysis: config name, registry entry, estimator, its cache
    key (which keys its scores) and the reader model it belongs to."""

    name: str
    spec: Any
    estimator: Any
    key: str
    reader: Any

    @property
    def label(self) -> str:
        return str(self.spec.display_name)


class EstimatorBench:
    """Fits and scores registered estimators for one analysis run (see the module docstring).

    Inputs are prepared once per (reader, answers, declared input) for the whole run, so
    two estimators that read the same activations share one extraction."""

    def __init__(self, ctx: Any, settings: TrainSettings, seed: int) -> None:
        self.ctx = ctx
        self.settings = settings
        self.seed = seed
        self._inputs: dict[tuple[Any, ...], Any] = {}

    def inputs(self, spec: Any, reader: Any, gens: Any) -> Any:
        """What ``spec`` reads for ``gens`` under ``reader``: the GenerationSet itself, or the
        reader's activations of the answers at the declared layer and selector."""
        need = spec.inputs
        if need.source == "generations":
            return gens
        layer = need.resolve_layer(int(reader.n_layers))
        key = (reader.target_id, gens_identity(gens), layer, need.tokens)
        if key not in self._inputs:
            from knowlens.estimators import retokenize
            from knowlens.experiments._common import activations

            view = retokenize(gens, reader)
            self._inputs[key] = activations(
                self.ctx, reader, view, layers=[layer], tokens=need.tokens
            )
        return self._inputs[key]

    def fit(self, name: str, reader: Any, train: Any) -> Fitted:
        """Estimator ``name`` of ``reader``, fitted on the ``train`` answers (or loaded)."""
        from knowlens.estimators import get_estimator

        spec = get_estimator(name)
        if spec.train_limit is not None:
            train = _cap(train, getattr(self.settings, spec.train_limit), self.seed)
        est = spec.make(model=reader, settings=self.settings, seed=self.seed)
        with self.ctx.step(f"train {spec.name} · {reader.name} on {len(train)} answers"):
            X = self.inputs(spec, reader, train)
            est, key = fit_recorded(self.ctx, est, X, train.correct)
        return Fitted(name=spec.name, spec=spec, estimator=est, key=key, reader=reader)

    def score(self, fitted: Fitted, gens: Any) -> np.ndarray:
        """P(correct) of ``fitted`` for ``gens`` (answers of any model), cached per example."""

        def compute() -> pd.DataFrame:
            what = f"score {fitted.name} · {fitted.reader.name} on {len(gens)} answers"
            with self.ctx.step(what):
                p = fitted.estimator.predict_proba(self.inputs(fitted.spec, fitted.reader, gens))
            return pd.DataFrame({"example_id": gens.example_ids, "p": np.asarray(p, dtype=float)})

        df = self.ctx.cached_frame(
            "estimator_scores",
            {
                "estimator": fitted.key,
                "reader": fitted.reader.target_id,
                "inputs": asdict(fitted.spec.inputs),
                "gens": gens_identity(gens),
                "code": SCORES_VERSION,
            },
            compute,
        )
        return df["p"].to_numpy(dtype=float)
