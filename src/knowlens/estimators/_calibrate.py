"""Temperature scaling of any estimator's P(correct), fitted on a validation split.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides a
classifier's logit by one scalar ``T > 0`` fitted by NLL on held-out data; ``T > 1`` softens
an overconfident estimator, ``T < 1`` sharpens an underconfident one, and the ranking (AUROC,
PRR) is unchanged since the map is monotone. Kapoor et al. (2024, "Large Language Models Must
Be Taught to Know What They Don't Know") report ECE of their uncertainty estimators with and
without it. Here the logit is that of the estimator's P(correct):

    p_TS = sigmoid(logit(clip(p, 1e-12, 1 - 1e-12)) / T)

- :func:`fit_temperature` / :func:`apply_temperature`: the scalar fit and the map.
- :class:`TemperatureScaled`: a scikit-learn-shaped wrapper around any estimator. It uses the
  validation split the base held out from its own training (``validation_scores_`` /
  ``validation_labels_`` after ``fit``: P(correct) and 0/1 labels of answers the base did not
  train on) when the base has one; otherwise it holds out a stratified seeded
  ``validation_fraction`` of the training answers, fits a clone of the base on the rest and
  ``T`` on the held-out part's predictions.
- :func:`validation_split`, :func:`subset_rows`, :func:`own_validation`,
  :func:`declares_validation`: the pieces, shared with ``experiments._estimators``
  (``TrainSettings.temperature_scaling``), which scores "<name> + TS" next to each estimator
  from one base fit.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike

from knowlens._cache import stable_hash
from knowlens._types import ActivationSet, GenerationSet, SampledGenerations
from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators._base import (
    ESTIMATORS_VERSION,
    REGISTRY,
    Estimator,
    Features,
    Labels,
    clone,
    data_key,
    labels_for,
)

__all__ = [
    "EPS",
    "LOG_T_BOUNDS",
    "TemperatureScaled",
    "apply_temperature",
    "declares_validation",
    "fit_temperature",
    "own_validation",
    "subset_rows",
    "validation_split",
]

#: probabilities are clipped to [EPS, 1 - EPS] before the logit (p = 0 or 1 has none)
EPS = 1e-12  # small: saturated scores keep their order (AUROC unchanged)
#: the search interval of log T (T in [0.0067, 148]); a separable validation set ends at 0.0067
LOG_T_BOUNDS = (-5.0, 5.0)


def _logit(p: ArrayLike) -> np.ndarray:
    from scipy.special import logit

    return np.asarray(logit(np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)))


def fit_temperature(p: ArrayLike, y: ArrayLike) -> float:
    """The temperature ``T > 0`` minimising the mean binary NLL of
    ``sigmoid(logit(p) / T)`` against labels ``y`` (0/1): validation P(correct) in, ``T``
    out. Minimised over ``log T`` in :data:`LOG_T_BOUNDS` by bounded Brent
    (``scipy.optimize.minimize_scalar``; deterministic). Rows with a NaN label or score are
    left out; all-0.5 scores carry no scale and give ``T = 1``. Empty or one-class
    validation data is a one-line ``ConfigError``."""
    from scipy.optimize import minimize_scalar

    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(pp) != len(yy):
        raise DataError(
            f"fit_temperature: got {len(pp)} scores and {len(yy)} labels; pass one label "
            "per validation answer."
        )
    keep = np.isfinite(pp) & np.isfinite(yy)
    pp, yy = pp[keep], yy[keep]
    if not np.isin(yy, (0.0, 1.0)).all():
        raise DataError(f"fit_temperature: labels must be 0/1; got {np.unique(yy)}.")
    if len(yy) == 0 or yy.min() == yy.max():
        what = "no" if len(yy) == 0 else f"{len(yy)} {'correct' if yy[0] else 'wrong'} only"
        raise ConfigError(
            f"Temperature scaling needs both correct and wrong validation answers; got {what}: "
            "use more training answers (or a larger validation_fraction)."
        )
    z = _logit(pp)
    if not np.any(z):
        return 1.0

    def nll(log_t: float) -> float:
        s = z * math.exp(-log_t)
        # -[y log sigmoid(s) + (1 - y) log(1 - sigmoid(s))] = log(1 + e^s) - y s
        return float(np.mean(np.logaddexp(0.0, s) - yy * s))

    res = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-9})
    return float(math.exp(float(res.x)))


def apply_temperature(p: ArrayLike, T: float) -> np.ndarray:
    """``sigmoid(logit(clip(p)) / T)`` as float64 of ``p``'s shape (``T = 1``: ``clip(p)``)."""
    from scipy.special import expit

    if not (isinstance(T, (int, float, np.floating)) and math.isfinite(T) and T > 0):
        raise ConfigError(f"apply_temperature: T must be a finite number > 0; got {T!r}.")
    pp = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    if T == 1:
        return pp
    return np.asarray(expit(_logit(pp) / float(T)))


def validation_split(
    y: ArrayLike, fraction: float, seed: int, who: str = "Temperature scaling"
) -> tuple[np.ndarray, np.ndarray]:
    """``(fit_rows, validation_rows)``: sorted row indices, a stratified seeded hold-out of
    ``fraction`` of the labelled rows (``sklearn.model_selection.train_test_split(stratify=
    y)``); rows with a NaN label stay on the fit side (fits drop them)."""
    from sklearn.model_selection import train_test_split

    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ConfigError(f"{who}: validation_fraction must be in (0, 1); got {fraction!r}.")
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    labelled = np.flatnonzero(~np.isnan(yy))
    try:
        _, val = train_test_split(
            labelled, test_size=fraction, stratify=yy[labelled], random_state=seed
        )
    except ValueError as e:  # too few answers of a class to stratify
        n_ok = int(np.nansum(yy))
        raise ConfigError(
            f"{who}: cannot hold out a stratified {fraction:.0%} validation split of "
            f"{len(labelled)} answers ({n_ok} correct, {len(labelled) - n_ok} wrong; "
            f"{str(e).splitlines()[0][:100]}); needs at least 2 correct and 2 wrong answers "
            "on each side: use more training answers."
        ) from None
    val = np.sort(np.asarray(val, dtype=np.int64))
    fit = np.setdiff1d(np.arange(len(yy)), val)
    return fit, val


@overload
def subset_rows(X: GenerationSet, idx: np.ndarray) -> GenerationSet: ...
@overload
def subset_rows(X: ActivationSet, idx: np.ndarray) -> ActivationSet: ...
@overload
def subset_rows(X: SampledGenerations, idx: np.ndarray) -> SampledGenerations: ...
@overload
def subset_rows(X: Any, idx: np.ndarray) -> Any: ...
def subset_rows(X: Any, idx: np.ndarray) -> Any:
    """Rows ``idx`` of a GenerationSet, ActivationSet or SampledGenerations, with a
    ``meta["cache_key"]`` naming the subset: the parent's key must not key a fit (or scores)
    of a part of it (``data_key`` reads it)."""
    idx = np.asarray(idx, dtype=np.int64)
    key = stable_hash({"subset_of": _parent_key(X), "idx": idx.tolist()})
    if isinstance(X, GenerationSet):
        out = X.subset(idx)
        out.meta["cache_key"] = key
        return out
    if isinstance(X, SampledGenerations):
        return SampledGenerations(subset_rows(X.gens, idx), X.samples.subset(idx))
    if isinstance(X, ActivationSet):
        meta = dict(X.meta)
        meta["cache_key"] = key
        found = meta.get("exact_answer_found")
        if isinstance(found, list) and len(found) == len(X):
            meta["exact_answer_found"] = [found[int(i)] for i in idx]
        return ActivationSet(
            values=np.asarray(X.values[idx]),
            mask=np.asarray(X.mask)[idx],
            layers=list(X.layers),
            tokens=X.tokens,
            example_ids=[X.example_ids[int(i)] for i in idx],
            positions=np.asarray(X.positions)[idx],
            meta=meta,
        )
    raise DataError(
        "Temperature scaling splits a GenerationSet, ActivationSet or SampledGenerations; "
        f"got {type(X).__name__}."
    )


def _parent_key(X: Any) -> str:
    if isinstance(X, SampledGenerations):
        from knowlens.estimators._sampling import samples_key

        return stable_hash({"answers": _parent_key(X.gens), "samples": samples_key(X.samples)})
    return data_key(X)


def declares_validation(est: Estimator | type[Estimator]) -> bool:
    """Whether an estimator's fits may carry their own validation split, so temperature
    scaling fits it on all training answers first and looks for ``validation_scores_``: its
    class declares that attribute (an annotation or class attribute anywhere in its MRO)
    or takes a ``validation_fraction`` (the LoRA estimators' early-stopping split); an
    instance whose ``validation_fraction`` is 0 has none."""
    cls = est if isinstance(est, type) else type(est)
    if issubclass(cls, TemperatureScaled):  # its split is spent on its own temperature
        return False
    declared = any(
        "validation_scores_" in vars(c) or "validation_scores_" in inspect.get_annotations(c)
        for c in cls.__mro__
    )
    if not declared and "validation_fraction" not in cls._param_names():
        return False
    fraction = getattr(est, "validation_fraction", None) if est is not cls else None
    return not (isinstance(fraction, (int, float)) and fraction <= 0)


def own_validation(est: Estimator) -> tuple[np.ndarray, np.ndarray] | None:
    """``(validation_scores_, validation_labels_)`` of a fitted estimator: P(correct) and
    labels of answers it held out from its own training; None when it has none."""
    s = getattr(est, "validation_scores_", None)
    y = getattr(est, "validation_labels_", None)
    if s is None or y is None:
        return None
    s, y = np.asarray(s, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64)
    if len(s) != len(y.reshape(-1)):
        raise KnowlensError(
            f"{type(est).__name__}: validation_scores_ ({len(s)}) and validation_labels_ "
            f"({y.size}) differ in length; set one label per held-out score."
        )
    return s, y.reshape(-1)


def _labels(X: Any, y: Labels, who: str) -> np.ndarray:
    if y is None and isinstance(X, SampledGenerations):
        y = X.gens
    elif y is None and isinstance(X, GenerationSet):
        y = X
    return labels_for(y, len(X), getattr(X, "example_ids", None), who)


class TemperatureScaled(Estimator):
    """Any estimator followed by temperature scaling (Guo et al. 2017; reported with and
    without by Kapoor et al. 2024), fitted on a validation split.

    ``fit(X, y)``: when the base's class declares ``validation_scores_`` it is fitted on all
    of ``X``; if the fit then holds ``validation_scores_`` / ``validation_labels_`` (answers
    it held out from its own training), ``T`` is fitted on those (``validation_ ==
    "estimator"``). Otherwise a clone of the base is fitted on a stratified seeded
    ``1 - validation_fraction`` of the labelled answers and ``T`` on its predictions for the
    rest (``validation_ == "held_out"``). ``predict_proba(X) = apply_temperature(
    estimator_.predict_proba(X), temperature_)``.

    Saved and cached (``save`` / ``load`` / ``fit_cached``) like any estimator when the base
    holds no live object; a base that needs ``model=`` at load time (LoRA, P(True), ...)
    cannot be restored from the file alone, which is a one-line error: save
    ``estimator_`` and keep ``temperature_``.

    Args:
        estimator: the base estimator (unfitted; it is cloned, never fitted in place).
        validation_fraction: share of the labelled answers held out when the base has no
            validation split of its own.
        seed: seed of that split.
    """

    #: the fitted clone of ``estimator``
    estimator_: Estimator
    #: the fitted temperature (> 1: the base was overconfident on the validation answers)
    temperature_: float
    #: where ``T`` was fitted: "estimator" (the base's own split) or "held_out" (this split)
    validation_: str
    #: validation answers ``T`` was fitted on, and how many of them were correct
    n_validation_: int
    n_validation_correct_: int

    def __init__(
        self, estimator: Estimator, *, validation_fraction: float = 0.2, seed: int = 0
    ) -> None:
        self.estimator = estimator
        self.validation_fraction = validation_fraction
        self.seed = seed

    @classmethod
    def _param_names(cls) -> list[str]:
        return ["estimator", *super()._param_names()]

    def _base(self) -> Estimator:
        if not isinstance(self.estimator, Estimator):
            raise ConfigError(
                "TemperatureScaled wraps a knowlens Estimator, e.g. TemperatureScaled("
                f"LogisticProbe()); got {type(self.estimator).__name__}."
            )
        return self.estimator

    def fit(self, X: Features, y: Labels = None) -> TemperatureScaled:
        """Fit the base and ``T`` (see the class docstring); returns self."""
        who = "TemperatureScaled"
        base = clone(self._base())
        if not isinstance(X, (GenerationSet, ActivationSet, SampledGenerations)):
            raise DataError(
                f"{who} takes a GenerationSet, ActivationSet or SampledGenerations; got "
                f"{type(X).__name__}."
            )
        yy = _labels(X, y, who)
        if declares_validation(base):
            base.fit(X, yy)
            own = own_validation(base)
            if own is not None:
                return self._set(base, *own, "estimator")
            base = clone(self._base())  # no split of its own this time: hold one out
        fit_rows, val_rows = validation_split(yy, self.validation_fraction, self.seed, who)
        base.fit(subset_rows(X, fit_rows), yy[fit_rows])
        p_val = base.predict_proba(subset_rows(X, val_rows))
        return self._set(base, p_val, yy[val_rows], "held_out")

    def _set(self, base: Estimator, p: np.ndarray, y: np.ndarray, where: str) -> TemperatureScaled:
        self.temperature_ = fit_temperature(p, y)
        self.estimator_ = base
        self.validation_ = where
        labelled = y[np.isfinite(y) & np.isfinite(p)]
        self.n_validation_ = len(labelled)
        self.n_validation_correct_ = int(labelled.sum())
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """Temperature-scaled P(correct) of the base, shape (n,)."""
        self._check_fitted()
        return apply_temperature(self.estimator_.predict_proba(X), self.temperature_)

    # -- keys and persistence ----------------------------------------------------------------
    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        # T always learns from the labels, even over a base that learns nothing from data
        yy = _labels(X, y, "TemperatureScaled")
        if isinstance(X, SampledGenerations):
            return stable_hash(
                {"data": _parent_key(X), "labels": np.nan_to_num(yy, nan=-1).tolist()}
            )
        return data_key(X, yy)

    def cache_key(self, X: Features | None = None, y: Labels = None) -> str:
        """Class, split parameters, the base's unfitted key (class, parameters, model),
        training data and code version."""
        self._check_persistable()
        data = self._train_key(X, y) if X is not None else getattr(self, "train_key_", None)
        return stable_hash(
            {
                "class": type(self).__name__,
                "params": {"validation_fraction": self.validation_fraction, "seed": self.seed},
                "base": clone(self._base()).cache_key(),
                "data": data,
                "code": ESTIMATORS_VERSION,
            }
        )

    def _check_persistable(self) -> None:
        base = self._base()
        live = type(base)._OBJECT_PARAMS
        if live:
            raise KnowlensError(
                f"TemperatureScaled cannot save or cache a {type(base).__name__}: it needs "
                f"{', '.join(f'{p}=' for p in live)} at load time, which the file cannot carry; "
                "save ts.estimator_ and keep ts.temperature_ (apply_temperature) instead."
            )

    def _json_params(self) -> dict[str, Any]:
        base = self._base()
        return {
            "estimator": {"class": type(base).__name__, "params": base._json_params()},
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
        }

    def _write(self, directory: Any) -> None:
        self._check_persistable()
        super()._write(directory)

    def _state(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature_,
            "validation": self.validation_,
            "n_validation": self.n_validation_,
            "n_validation_correct": self.n_validation_correct_,
            "base_state": self.estimator_._state(),
            "base_train_key": getattr(self.estimator_, "train_key_", None),
        }

    def _weights(self) -> dict[str, np.ndarray]:
        return {f"base.{k}": v for k, v in self.estimator_._weights().items()}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        # ``load`` passes the saved {"class", "params"} of the base as ``estimator``
        spec = self.estimator
        if isinstance(spec, dict):
            self.estimator = _rebuild(spec)
        base = clone(self._base())
        base._restore(
            state["base_state"],
            {k[len("base.") :]: v for k, v in weights.items() if k.startswith("base.")},
        )
        if state.get("base_train_key") is not None and getattr(base, "train_key_", None) is None:
            base.train_key_ = state["base_train_key"]
        self.estimator_ = base
        self.temperature_ = float(state["temperature"])
        self.validation_ = state["validation"]
        self.n_validation_ = int(state["n_validation"])
        self.n_validation_correct_ = int(state["n_validation_correct"])


def _rebuild(spec: dict[str, Any]) -> Estimator:
    cls = REGISTRY.get(str(spec.get("class")))
    if cls is None:
        raise KnowlensError(
            f"Saved TemperatureScaled wraps an unknown estimator class '{spec.get('class')}'; "
            "import the module that defines it before loading."
        )
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["params"].items()}
    return cls(**params)
