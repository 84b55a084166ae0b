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
(estimator key, reader, inputs, answers; for sample readers also the sampling settings).

Sample estimators (registry input ``samples()``: MC entropy, lexical similarity, EigenScore,
P(True) with samples, semantic entropy, ...) read ``SampledGenerations``: the answers plus
``k`` answers sampled by ``knowlens.sample`` with the analysis' ``sampling:`` settings
(:class:`SamplingSettings`). The samples are drawn from the model that *answered* (the
one whose ``target_id`` the answers record), never from the reader: their spread measures
the answering model's distribution over answers to that question, which is what the score
is about. What transfers across models is the reader's part: the fitted calibration (and
for ``samples(model=True)`` estimators the reader's hidden states / judgement of the
answering model's samples). So in ``estimator_transfer`` an estimator trained on model T
and judging model M's answers reads M's samples (and T's calibration, T's forward pass).
The samples are drawn once per (answering model, answers, sampling settings) for the whole
run and shared by every sample estimator (and cached across runs by ``knowlens.sample``).
The answering model is found among the models the analysis loaded (``ctx.load_model``);
pass ``answerer=`` to :meth:`EstimatorBench.fit` / :meth:`EstimatorBench.score` otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from knowlens._cache import stable_hash
from knowlens.errors import ConfigError

__all__ = [
    "ESTIMATORS_HELP",
    "SCORES_VERSION",
    "TEMPERATURE_COLUMNS",
    "EstimatorBench",
    "Fitted",
    "SamplingSettings",
    "TrainSettings",
    "concat",
    "display_name",
    "fit_recorded",
    "gens_identity",
    "known_estimators",
]

SCORES_VERSION = "1"
#: columns of an analysis' ``temperatures`` table (``train.temperature_scaling``), after
#: its own leading ones (``model``, ...): :attr:`Fitted.calibration`
TEMPERATURE_COLUMNS = ["estimator", "temperature", "validation", "n_validation", "n_correct"]
#: share of the training answers the bench holds out to fit a temperature (stratified, seeded)
VALIDATION_FRACTION = 0.2
#: what the ``estimators`` field of an analysis config accepts
ESTIMATORS_HELP = (
    "Registered estimator names (knowlens.estimators.estimator_names(); aliases allowed)."
)


class TrainSettings(BaseModel):
    """Training settings of the learned estimators (paper defaults where they exist); each
    registry entry names the ones it takes (``settings=``, ``train_limit=``)."""

    model_config = ConfigDict(extra="forbid")

    probe_epochs: int = Field(default=100, ge=1, description="MLP probe epochs.")
    lora_steps: int = Field(
        default=400,
        ge=1,
        description="Most optimiser steps of the LoRA estimators (early stopping ends sooner).",
    )
    lora_validation_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Training answers held out for LoRA early stopping (0: exactly lora_steps).",
    )
    lora_eval_every: int = Field(default=20, ge=1, description="Steps between LoRA validations.")
    lora_patience: int = Field(
        default=5, ge=1, description="LoRA validations without a lower loss before stopping."
    )
    lora_min_delta: float = Field(
        default=0.0,
        ge=0,
        description="LoRA: a validation loss counts as lower only if below the best by more "
        "than this (nats per answer).",
    )
    lora_r: int = Field(default=8, ge=1, description="LoRA rank (paper: 8).")
    lora_alpha: int = Field(default=32, ge=1, description="LoRA alpha (paper: 32).")
    lora_lr: float = Field(default=1e-4, gt=0, description="AdamW learning rate (paper: 1e-4).")
    batch_size: int = Field(default=4, ge=1, description="Training batch size (paper: 4).")
    max_train: int | None = Field(
        default=None, ge=2, description="Cap on training answers for LoRA estimators."
    )
    temperature_scaling: bool = Field(
        default=False,
        description="Fit a temperature on a held-out validation split and report each "
        'estimator also as "<name> + TS".',
    )

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # Left out while off: a config without it dumps (and keys the result cache) as before.
        out: dict[str, Any] = handler(self)
        if not self.temperature_scaling:
            out.pop("temperature_scaling", None)
        return out


class SamplingSettings(BaseModel):
    """How the sample estimators' answers are drawn (``knowlens.sample``); the ``sampling:``
    section of an analysis config."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=5, ge=1, description="Sampled answers per question.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature (> 0).")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus (top-p) mass; 1 = off.")
    seed: int = Field(default=0, description="Sampling seed (per example and sample index).")
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="Token budget per sample (None = the answers' own)."
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
    key (which keys its scores) and the reader model it belongs to.

    A temperature-scaled variant (``EstimatorBench.fit_variants``) is the same fit with
    ``temperature`` set: labelled "<display name> + TS", scored as its base through
    ``apply_temperature``; ``calibration`` is its ``temperatures`` row: ``temperature``,
    ``validation`` ("estimator": the split the estimator held out from its own training,
    "held_out": the bench's), ``n_validation`` and ``n_correct`` (validation answers)."""

    name: str
    spec: Any
    estimator: Any
    key: str
    reader: Any
    temperature: float | None = None
    calibration: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        base = str(self.spec.display_name)
        return base if self.temperature is None else f"{base} + TS"


class EstimatorBench:
    """Fits and scores registered estimators for one analysis run (see the module docstring).

    Inputs are prepared once per (reader, answers, declared input) for the whole run, so
    two estimators that read the same activations share one extraction. Reads of query
    texts by the frozen reader are shared the same way, through one
    ``knowlens.estimators.QueryReads`` per run (:attr:`reads`): estimators that take
    ``reads=`` get it (Zero-Shot Classifier, P(True), LoRA + Prompt's frozen states) and
    activations declared ``text="query"`` (the probe) are read through it, so one forward
    pass over a query serves all of them.

    ``share_reads=False`` gives every estimator its own passes (same values to ~1e-7; the
    benchmark's "before"); ``estimator_params`` sets constructor parameters on every
    estimator that has them (e.g. ``{"length_window": 1}``: unbucketed LoRA batches)."""

    def __init__(
        self,
        ctx: Any,
        settings: TrainSettings,
        seed: int,
        sampling: SamplingSettings | None = None,
        *,
        share_reads: bool = True,
        estimator_params: dict[str, Any] | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.seed = seed
        self.sampling = sampling
        self.share_reads = share_reads
        self.estimator_params = dict(estimator_params or {})
        self._inputs: dict[tuple[Any, ...], Any] = {}
        self._reads: Any = None

    @property
    def reads(self) -> Any:
        """The run's shared ``QueryReads`` (a fresh private one per use when not sharing)."""
        from knowlens.estimators import QueryReads

        if not self.share_reads:
            return QueryReads()
        if self._reads is None:
            self._reads = QueryReads()
        return self._reads

    def inputs(self, spec: Any, reader: Any, gens: Any, answerer: Any = None) -> Any:
        """What ``spec`` reads for ``gens`` under ``reader``: the GenerationSet itself, the
        reader's activations of the answers at the declared layer and selector, or the
        answers with their samples (drawn from the answering model, see the module
        docstring)."""
        need = spec.inputs
        if need.source == "generations":
            return gens
        if need.source == "samples":
            return self.sampled(gens, answerer or self.answerer(gens, reader), who=spec.name)
        layer = need.resolve_layer(int(reader.n_layers))
        key: tuple[Any, ...] = (reader.target_id, gens_identity(gens), layer, need.tokens)
        if need.text == "query":
            key = ("query", *key)
            if key not in self._inputs:
                self._inputs[key] = self.query_activations(reader, gens, layer)
            return self._inputs[key]
        if key not in self._inputs:
            from knowlens.estimators import retokenize
            from knowlens.experiments._common import activations

            view = retokenize(gens, reader)
            self._inputs[key] = activations(
                self.ctx, reader, view, layers=[layer], tokens=need.tokens
            )
        return self._inputs[key]

    def query_activations(self, reader: Any, gens: Any, layer: int) -> Any:
        """The reader's last-token states of the answers' Zero-Shot Classifier queries
        (``knowlens.estimators.query_activations``), read through the run's shared reads and
        cached across runs under ``query_activations/`` (a warm rerun runs no model)."""
        from knowlens.estimators import QUERY_READS_VERSION, query_activations

        key = {
            "reader": reader.target_id,
            "gens": gens_identity(gens),
            "layer": layer,
            "code": QUERY_READS_VERSION,
        }
        return self.ctx.cached(
            "query_activations",
            key,
            lambda: query_activations(self.reads, reader, gens, layer=layer),
            _save_activations,
            _load_activations,
        )

    def sampling_settings(self, who: str) -> SamplingSettings:
        if self.sampling is None:
            raise ConfigError(
                f"Estimator '{who}' reads sampled answers, but this analysis has no sampling "
                "settings; give the EstimatorBench sampling=SamplingSettings(...) (configs: "
                "a 'sampling:' section)."
            )
        return self.sampling

    def answerer(self, gens: Any, reader: Any) -> Any:
        """The loaded model that produced ``gens`` (matched by the ``target_id`` the answers
        record): the reader, or another model this analysis loaded."""
        meta = gens.meta
        keys = ("target_id", "model_target_id", "model_fingerprint", "fingerprint")
        want = next((meta[k] for k in keys if isinstance(meta.get(k), str)), None)
        if want is None:
            raise ConfigError(
                f"Sample estimators sample from the model that answered, but these "
                f"{len(gens)} answers do not record it (no target_id / fingerprint in "
                "gens.meta); pass answerer=<ModelHandle> or answers from knowlens.generate."
            )
        if want in (reader.target_id, reader.fingerprint):
            return reader
        for spec in list(self.ctx.log.models):
            handle = self.ctx.load_model(spec)  # already loaded: the run's handle
            if want in (handle.target_id, handle.fingerprint):
                return handle
        raise ConfigError(
            f"Samples must come from the model that answered ({gens.meta.get('model')!r}, "
            f"{want}), which this analysis has not loaded; load it with ctx.load_model(...) "
            "or pass answerer=<ModelHandle>."
        )

    def sampled(self, gens: Any, answerer: Any, *, who: str = "samples") -> Any:
        """``SampledGenerations`` of ``gens``: their samples from ``answerer`` under the
        run's sampling settings, drawn once per (answerer, answers, settings)."""
        from knowlens._types import SampledGenerations

        cfg = self.sampling_settings(who)
        key = ("samples", answerer.target_id, gens_identity(gens), cfg.model_dump_json())
        if key not in self._inputs:
            from knowlens.executors import sample

            what = f"sample {answerer.name} · {len(gens)} answers x {cfg.k} (T={cfg.temperature})"
            with self.ctx.step(what, kind="sample", model=answerer.name):
                smp = sample(  # on the run's executor (local or Ray: the same samples)
                    answerer,
                    gens,
                    **cfg.model_dump(),
                    executor=self.ctx.executor,
                    cache=self.ctx.use_cache,
                    progress=False,
                )
                if "cache_hit" in smp.meta:  # counted on this step, not the enclosing one
                    self.ctx.count_cache("samples", hit=bool(smp.meta["cache_hit"]))
            self._inputs[key] = SampledGenerations.of(gens, smp)
        return self._inputs[key]

    def fit(self, name: str, reader: Any, train: Any, *, answerer: Any = None) -> Fitted:
        """Estimator ``name`` of ``reader``, fitted on the ``train`` answers (or loaded);
        ``answerer``: the model that produced ``train`` (default: found by its target_id)."""
        from knowlens.estimators import get_estimator

        spec = get_estimator(name)
        if spec.train_limit is not None:
            train = _cap(train, getattr(self.settings, spec.train_limit), self.seed)
        return self._fit(spec, reader, train, answerer)

    def fit_variants(
        self, name: str, reader: Any, train: Any, *, answerer: Any = None
    ) -> list[Fitted]:
        """``[fit(...)]``; with ``settings.temperature_scaling`` also its "+ TS" variant
        (Guo et al. 2017; ``knowlens.estimators.fit_temperature``), sharing the one base fit.
        An estimator whose fit holds out its own validation split (``validation_scores_`` /
        ``validation_labels_``; ``declares_validation``) trains on all ``train`` answers and
        ``T`` is fitted on that split. Any other trains on a stratified seeded 80 % of them
        (``VALIDATION_FRACTION``; the raw variant's numbers then come from that fit too) and
        ``T`` on its cached scores of the other 20 %."""
        from knowlens.estimators import fit_temperature, get_estimator
        from knowlens.estimators._calibrate import (
            declares_validation,
            own_validation,
            subset_rows,
            validation_split,
        )

        if not self.settings.temperature_scaling:
            return [self.fit(name, reader, train, answerer=answerer)]
        spec = get_estimator(name)
        if spec.train_limit is not None:
            train = _cap(train, getattr(self.settings, spec.train_limit), self.seed)
        # the configured instance decides: a LoRA fit with validation_fraction 0 has no split
        if declares_validation(self._make(spec, reader)):
            raw = self._fit(spec, reader, train, answerer)
            own = own_validation(raw.estimator)
            if own is not None:  # else (a fit restored without its scores) hold one out
                return [raw, _scaled(raw, fit_temperature(*own), *own, "estimator")]
        who = f"{spec.name}: temperature scaling"
        fit_rows, val_rows = validation_split(train.correct, VALIDATION_FRACTION, self.seed, who)
        # the whole split's inputs, prepared (extracted, sampled) once and cut in two
        X = self.inputs(spec, reader, train, answerer)
        part = subset_rows(train, fit_rows)
        raw = self._fit(spec, reader, part, answerer, X=subset_rows(X, fit_rows))
        val = subset_rows(train, val_rows)
        p = self.score(raw, val, answerer=answerer, X=subset_rows(X, val_rows))
        return [raw, _scaled(raw, fit_temperature(p, val.correct), p, val.correct, "held_out")]

    def _make(self, spec: Any, reader: Any) -> Any:
        """``spec``'s estimator of ``reader``, configured as this bench fits it (settings,
        per-analysis parameters, the run's cache use); not fitted."""
        shared = {"reads": self.reads} if "reads" in spec.cls._param_names() else {}
        est = spec.make(model=reader, settings=self.settings, seed=self.seed, **shared)
        own = {k: v for k, v in self.estimator_params.items() if k in est.get_params()}
        if own:
            est.set_params(**own)
        if "cache" in est.get_params():  # its own cache use (EigenScore's states) obeys --no-cache
            est.set_params(cache=self.ctx.use_cache)
        return est

    def _fit(self, spec: Any, reader: Any, train: Any, answerer: Any, X: Any = None) -> Fitted:
        """``spec``'s estimator of ``reader`` fitted on ``train`` (inputs ``X``, by default
        prepared here) through the one estimator cache."""
        est = self._make(spec, reader)
        what = f"train {spec.name} · {reader.name} on {len(train)} answers"
        with self.ctx.step(what, kind="train", model=reader.name):
            if X is None:
                X = self.inputs(spec, reader, train, answerer)
            est, key = fit_recorded(self.ctx, est, X, train.correct)
        if getattr(est, "learning_curve_", None) and hasattr(self.ctx, "record_curve"):
            self.ctx.record_curve(key, curve_frame(est, reader.name, spec.display_name))
        row = score_map_row(est, reader.name, spec.display_name, len(train))
        if row is not None and hasattr(self.ctx, "record_score_map"):
            self.ctx.record_score_map(key, row)
        return Fitted(name=spec.name, spec=spec, estimator=est, key=key, reader=reader)

    def score(
        self, fitted: Fitted, gens: Any, *, answerer: Any = None, X: Any = None
    ) -> np.ndarray:
        """P(correct) of ``fitted`` for ``gens`` (answers of any model), cached per example;
        ``answerer`` as in :meth:`fit` (sample estimators only); ``X``: ``gens``' inputs if
        already prepared. A "+ TS" variant is its base's cached P(correct) through
        ``apply_temperature``."""
        if fitted.temperature is not None:
            from knowlens.estimators import apply_temperature

            base = replace(fitted, temperature=None, calibration=None)
            p_base = self.score(base, gens, answerer=answerer, X=X)
            return apply_temperature(p_base, fitted.temperature)

        def compute() -> pd.DataFrame:
            inputs = self.inputs(fitted.spec, fitted.reader, gens, answerer) if X is None else X
            p = fitted.estimator.predict_proba(inputs)
            return pd.DataFrame({"example_id": gens.example_ids, "p": np.asarray(p, dtype=float)})

        key: dict[str, Any] = {
            "estimator": fitted.key,
            "reader": fitted.reader.target_id,
            "inputs": _inputs_key(fitted.spec.inputs),
            "gens": gens_identity(gens),
            "code": SCORES_VERSION,
        }
        if fitted.spec.inputs.source == "samples":
            # an uncalibrated sample estimator's key does not name its samples; the scores must
            key["sampling"] = self.sampling_settings(fitted.name).model_dump()
            key["answerer"] = (answerer or self.answerer(gens, fitted.reader)).target_id
        # the step spans the cache lookup, so a cached score shows as a hit
        what = f"score {fitted.name} · {fitted.reader.name} on {len(gens)} answers"
        with self.ctx.step(what, kind="score", model=fitted.reader.name):
            df = self.ctx.cached_frame("estimator_scores", key, compute)
        return df["p"].to_numpy(dtype=float)


#: columns of an analysis' ``learning_curves`` table (one row per validation evaluation)
CURVE_COLUMNS = [
    "model",
    "estimator",
    "step",
    "train_loss",
    "val_loss",
    "val_auroc",
    "best_step",
    "stopped_step",
    "max_steps",
    "n_train",
    "n_validation",
]


def score_map_row(est: Any, model: str, label: str, n_train: int) -> dict[str, Any] | None:
    """How a fitted one-score estimator maps its raw uncertainty ``u`` to P(correct)
    (``calibration_``: ``sigmoid(a * -u + b)``, ``slope_clipped`` when the training answers
    asked for a negative slope, which would invert the method, so P(correct) is the
    constant training accuracy); None for estimators without that map."""
    cal = getattr(est, "calibration_", None)
    if not isinstance(cal, dict) or "a" not in cal:
        return None
    return {
        "model": model,
        "estimator": label,
        "a": float(cal["a"]),
        "b": float(cal["b"]),
        "slope_clipped": bool(cal.get("slope_clipped", False)),
        "n_train": int(n_train),
    }


def curve_frame(est: Any, model: str, label: str) -> pd.DataFrame:
    """The learning curve of a fitted estimator with early stopping (``learning_curve_``,
    ``best_step_``, ``stopped_step_``, as the LoRA estimators keep them) as table rows."""
    rows = [
        {
            "model": model,
            "estimator": label,
            "step": int(e["step"]),
            "train_loss": e.get("train_loss", np.nan),
            "val_loss": e["loss"],
            "val_auroc": e.get("auroc", np.nan),
            "best_step": est.best_step_,
            "stopped_step": est.stopped_step_,
            "max_steps": int(est.steps),
            "n_train": est.n_train_,
            "n_validation": est.n_validation_,
        }
        for e in est.learning_curve_
    ]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _scaled(raw: Fitted, T: float, p: np.ndarray, y: np.ndarray, where: str) -> Fitted:
    """The "+ TS" variant of ``raw``: temperature ``T``, fitted on validation ``p``, ``y``."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(p) & np.isfinite(y)
    out = replace(raw, temperature=T)
    out.calibration = {
        "estimator": out.label,
        "temperature": T,
        "validation": where,
        "n_validation": int(ok.sum()),
        "n_correct": int(y[ok].sum()),
    }
    return out


def _inputs_key(inputs: Any) -> dict[str, Any]:
    """A registry ``Inputs`` in score keys (``text="answer"``, the default, left out: the keys
    of scores cached before the field existed stay valid)."""
    out = asdict(inputs)
    if out.get("text") == "answer":
        del out["text"]
    return out


def _save_activations(acts: Any, d: Any) -> None:
    import json

    np.save(d / "values.npy", np.ascontiguousarray(acts.values))
    np.save(d / "mask.npy", acts.mask)
    np.save(d / "positions.npy", acts.positions)
    fields = {"layers": acts.layers, "tokens": acts.tokens, "example_ids": acts.example_ids}
    (d / "activations.json").write_text(json.dumps({**fields, "meta": acts.meta}, default=str))


def _load_activations(d: Any) -> Any:
    import json

    from knowlens._types import ActivationSet

    rec = json.loads((d / "activations.json").read_text())
    return ActivationSet(
        values=np.load(d / "values.npy"),
        mask=np.load(d / "mask.npy"),
        layers=list(rec["layers"]),
        tokens=rec["tokens"],
        example_ids=list(rec["example_ids"]),
        positions=np.load(d / "positions.npy"),
        meta=dict(rec["meta"]) | {"cache_hit": True},
    )
