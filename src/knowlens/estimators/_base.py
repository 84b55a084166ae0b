"""Estimator base class: parameters, fitted checks, validation, save/load, cache keys.

Follows scikit-learn's conventions (``sklearn/base.py``): ``__init__`` only stores its
keyword-only arguments, validation happens in ``fit``, ``fit`` returns ``self``, learned
state ends in ``_``, ``predict_proba`` starts with a fitted check and returns P(correct) of
shape (n,). ``get_params`` / ``set_params`` / ``clone`` behave as scikit-learn's.

On disk an estimator is a directory (never pickle)::

    estimator.json       {"class", "version", "params", "state", "train_key", "knowlens"}
    weights.safetensors  every learned array (probe weights, LoRA adapters, optimiser state)

Fitted estimators are cached in one place, ``cache_root()/estimators/<cache_key>/``, by
``fit_cached(estimator, X, y)``; ``fit`` itself never reads or writes that cache.
"""

from __future__ import annotations

import copy
import inspect
import json
import platform
import shutil
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from knowlens._cache import (
    atomic_dir,
    entry_dir,
    entry_lock,
    quarantine,
    stable_hash,
    verified_entry,
)
from knowlens._types import ActivationSet, GenerationSet
from knowlens.errors import ConfigError, DataError, KnowlensError, did_you_mean

__all__ = [
    "CACHE_KIND",
    "ESTIMATORS_VERSION",
    "REDUCE",
    "REGISTRY",
    "Estimator",
    "Features",
    "FeaturesT",
    "Labels",
    "NotFittedError",
    "check_acts",
    "check_gens",
    "check_nonempty",
    "check_training_labels",
    "clone",
    "data_key",
    "fit_cached",
    "labels_for",
    "layer_features",
]

ESTIMATORS_VERSION = "2"  # 2: early-stopped LoRA, cross-fitted density calibration
#: cache kind of fitted estimators: ``cache_root()/estimators/<Estimator.cache_key()>/``
CACHE_KIND = "estimators"

#: what ``fit`` / ``predict_proba`` read: answers (``GenerationSet``) or hidden states
Features = GenerationSet | ActivationSet
#: labels: 0/1 (NaN = undecided) per example, or the ``GenerationSet`` holding them
Labels = ArrayLike | GenerationSet | None
#: the features one estimator class reads: ``class LogisticProbe(Estimator[ActivationSet])``
FeaturesT = TypeVar("FeaturesT", bound=Features)
E = TypeVar("E", bound="Estimator")

# parameters that do not change what is learned
_NOT_IN_KEY = ("progress", "cache", "checkpoint_every", "batch_size_predict")

# class name -> class, filled by ``Estimator.__init_subclass__`` (used by ``load``).
REGISTRY: dict[str, type[Estimator]] = {}


class NotFittedError(KnowlensError):
    """``predict_proba`` / ``save`` called before ``fit``."""


class Estimator(ABC, Generic[FeaturesT]):
    """Base of every knowlens uncertainty estimator (P(correct) of a model's own answer).

    Subclasses implement ``fit`` and ``predict_proba`` and are registered with
    ``@register_estimator(...)`` (config name, display name, inputs), see ``_registry.py``.
    The type parameter is what they read (``Estimator[GenerationSet]``,
    ``Estimator[ActivationSet]``; a bare ``Estimator`` takes either, ``Features``).
    """

    #: key of the training data of this fit (``fit_cached`` sets it; None: learns nothing)
    train_key_: str | None
    #: whether ``fit_cached`` loaded this fit from the cache instead of fitting
    from_cache_: bool

    #: parameters that are live objects, kept out of JSON and cache keys (e.g. ``model``).
    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ()
    #: display name used in tables ("Probe", "LoRA + Prompt", ...): set by the registry.
    display_name: ClassVar[str] = ""
    #: config name ("probe", ...): set by the registry.
    estimator_name: ClassVar[str] = ""
    #: version of this class' fit, part of its cache key: bump it when what ``fit`` computes
    #: changes, so fits cached by older code are recomputed (empty: never bumped, and the key
    #: is the one ``ESTIMATORS_VERSION`` alone gives)
    code_version: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        REGISTRY[cls.__name__] = cls

    # -- the estimator interface -------------------------------------------------------------
    @abstractmethod
    def fit(self: E, X: FeaturesT, y: Labels = None) -> E:
        """Learn from ``X`` (a ``GenerationSet`` or an ``ActivationSet`` of shape
        ``(n_examples, n_layers, n_positions, d_model)``, as the registry entry declares)
        and labels ``y`` (0/1 of shape (n_examples,), or a ``GenerationSet``); returns self."""

    @abstractmethod
    def predict_proba(self, X: FeaturesT) -> np.ndarray:
        """P(correct) of every example of ``X``, float array of shape (n_examples,)."""

    # -- parameters ------------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments (sklearn ``get_params``; no nested estimators, so
        ``deep`` changes nothing)."""
        return {n: getattr(self, n) for n in self._param_names()}

    def set_params(self: E, **params: Any) -> E:
        """Set constructor arguments (sklearn ``set_params``); returns self. Learned state
        is kept: refit after changing parameters."""
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise ConfigError(
                    f"{type(self).__name__}.set_params: "
                    + did_you_mean(k, names, what="parameter").rstrip(".")
                    + ". Pass one of its constructor's keyword arguments."
                )
            setattr(self, k, v)
        return self

    def _json_params(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in self.get_params().items()
            if k not in self._OBJECT_PARAMS
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._json_params().items())
        return f"{type(self).__name__}({args})"

    # -- fitted state ----------------------------------------------------------------------
    def _is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def _check_fitted(self) -> None:
        if not self._is_fitted():
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call .fit(...) first "
                f"(or {type(self).__name__}.load(path))."
            )

    def _state(self) -> dict[str, Any]:
        """JSON-able learned state (override). Arrays go to ``_weights``."""
        return {}

    def _weights(self) -> dict[str, np.ndarray]:
        """Learned arrays saved to safetensors (override)."""
        return {}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        """Inverse of ``_state`` + ``_weights`` (override)."""
        return None  # stateless estimators have nothing to restore

    # -- persistence -----------------------------------------------------------------------
    def _write(self, directory: Path) -> None:
        """``estimator.json`` + ``weights.safetensors`` into an existing, empty directory."""
        from safetensors.numpy import save_file

        record = {
            "class": type(self).__name__,
            "version": ESTIMATORS_VERSION,
            "params": self._json_params(),
            "state": self._state(),
            "train_key": getattr(self, "train_key_", None),
            "knowlens": _versions(),
        }
        weights = {k: np.ascontiguousarray(v) for k, v in self._weights().items()}
        (directory / "estimator.json").write_text(
            json.dumps(record, indent=2, sort_keys=True, default=_json_default)
        )
        save_file(weights, str(directory / "weights.safetensors"))

    def save(self, path: str | Path) -> Path:
        """Write ``estimator.json`` + ``weights.safetensors`` into directory ``path`` atomically
        (an existing directory is replaced)."""
        self._check_fitted()
        path = Path(path)
        # write a complete sibling first, then swap it in: a killed save leaves the old one
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            self._write(tmp)
            if path.exists():
                old = path.with_name(f".old-{path.name}-{uuid.uuid4().hex[:8]}")
                path.rename(old)
                shutil.rmtree(old, ignore_errors=True)
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, **objects: Any) -> Estimator:
        """Rebuild a saved estimator. Pass live objects the class needs, e.g. ``model=handle``
        for estimators that run a model (zero-shot, P(True), LoRA, LoRA + Prompt)."""
        from safetensors.numpy import load_file

        path = Path(path)
        meta_file = path / "estimator.json"
        if not meta_file.exists():
            raise KnowlensError(
                f"No saved estimator at '{path}' (missing estimator.json); pass the directory "
                "given to .save()."
            )
        record = json.loads(meta_file.read_text())
        target = REGISTRY.get(record["class"])
        if target is None:
            raise KnowlensError(
                f"Saved estimator class '{record['class']}' is unknown; known: "
                f"{', '.join(sorted(REGISTRY))}."
            )
        if cls is not Estimator and not issubclass(target, cls):
            raise KnowlensError(
                f"'{path}' holds a {record['class']}, not a {cls.__name__}; load it with "
                f"{record['class']}.load() or knowlens.estimators.load()."
            )
        missing = [p for p in target._OBJECT_PARAMS if p not in objects]
        if missing:
            raise KnowlensError(
                f"Loading a {record['class']} needs {', '.join(missing)}=...; e.g. "
                f"{record['class']}.load(path, model=knowlens.load_model(...))."
            )
        params = dict(record["params"])
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
        est = target(**params, **{k: objects[k] for k in target._OBJECT_PARAMS})
        weights = load_file(str(path / "weights.safetensors"))
        est._restore(record["state"], weights)
        if record.get("train_key") is not None and getattr(est, "train_key_", None) is None:
            est.train_key_ = record["train_key"]
        return est

    # -- cache key -------------------------------------------------------------------------
    def cache_key(self, X: FeaturesT | None = None, y: Labels = None) -> str:
        """Stable key of a fitted estimator: class, parameters (minus progress / cache
        settings), model ``target_id``, training-data key and code version (same inputs ->
        same key, across processes).

        ``cache_key()`` keys this fitted estimator; ``cache_key(X, y)`` is the key that
        ``fit(X, y)`` will have, computed without fitting (``fit_cached`` looks it up)."""
        data = self._train_key(X, y) if X is not None else getattr(self, "train_key_", None)
        key = {
            "class": type(self).__name__,
            "params": {k: v for k, v in self._json_params().items() if k not in _NOT_IN_KEY},
            "model": _model_id(getattr(self, "model", None)),
            "data": data,
            "code": ESTIMATORS_VERSION,
        }
        if self.code_version:
            key["class_code"] = self.code_version
        return stable_hash(key)

    def _train_key(self, X: FeaturesT, y: Labels = None) -> str | None:
        """Key of the training data ``fit(X, y)`` learns from (``train_key_`` after fit);
        ``None`` for estimators whose fit learns nothing from data (override).

        Default: ``data_key`` of ``X`` and the labels; a ``GenerationSet`` is keyed without
        its undecided rows (labels default to its own ``correct``), as fit drops them."""
        who = type(self).__name__
        if isinstance(X, GenerationSet):
            yy = labels_for(X if y is None else y, len(X), X.example_ids, who)
            keep = ~np.isnan(yy)
            return data_key(X.subset(keep), yy[keep])
        return data_key(X, labels_for(y, len(X), getattr(X, "example_ids", None), who))


def clone(estimator: E) -> E:
    """An unfitted estimator with the same parameters (``sklearn.base.clone``): parameters
    are deep-copied, except live objects such as ``model``, which are shared."""
    if not isinstance(estimator, Estimator):
        raise KnowlensError(f"clone() takes a knowlens Estimator; got {type(estimator).__name__}.")
    shared = type(estimator)._OBJECT_PARAMS
    # a nested estimator (TemperatureScaled's base) is cloned, so its live objects stay shared
    params = {
        k: v if k in shared else clone(v) if isinstance(v, Estimator) else copy.deepcopy(v)
        for k, v in estimator.get_params().items()
    }
    new = type(estimator)(**params)
    for k, v in new.get_params().items():
        if v is not params[k]:
            raise KnowlensError(
                f"Cannot clone {type(estimator).__name__}: its __init__ changes parameter "
                f"'{k}'; __init__ must only store its keyword arguments (validate in fit)."
            )
    return new


def fit_cached(estimator: E, X: Features, y: Labels = None, *, cache: bool = True) -> E:
    """``estimator.fit(X, y)``, once: the fitted estimator is stored under
    ``cache_root()/estimators/<estimator.cache_key(X, y)>/`` (checksummed, published
    atomically, computed under the entry's lock so concurrent runs fit it once) and later
    identical fits load it. Fits ``estimator`` in place and returns it; ``from_cache_`` says
    whether it was loaded. ``cache=False`` refits (and stores it only if the entry is
    missing or damaged)."""
    key = estimator.cache_key(X, y)
    if cache and _adopt(estimator, key):
        return estimator
    with entry_lock(CACHE_KIND, key):
        # another process may have published it while this one waited for the lock
        if cache and _adopt(estimator, key):
            return estimator
        estimator.fit(X, y)
        if getattr(estimator, "train_key_", None) is None:
            estimator.train_key_ = estimator._train_key(X, y)
        if estimator.cache_key() != key:
            raise KnowlensError(
                f"{type(estimator).__name__}: fit recorded train_key_ "
                f"{estimator.train_key_!r}, but _train_key(X, y) gives another key; make "
                "fit set train_key_ = self._train_key(X, y) (or override _train_key)."
            )
        estimator.from_cache_ = False
        if verified_entry(CACHE_KIND, key) is None:
            with atomic_dir(entry_dir(CACHE_KIND, key)) as tmp:
                estimator._write(tmp)
    return estimator


def _adopt(estimator: Estimator, key: str) -> bool:
    """Copy the learned state of the cached fit ``key`` onto ``estimator``; False if there
    is none (a damaged entry, or intact bytes that do not load, is moved aside: refit)."""
    entry = verified_entry(CACHE_KIND, key)
    if entry is None:
        return False
    objects = {p: getattr(estimator, p) for p in type(estimator)._OBJECT_PARAMS}
    try:
        loaded = type(estimator).load(entry, **objects)
    except Exception as e:
        quarantine(entry, f"does not load: {type(e).__name__}: {str(e)[:120]}")
        return False
    estimator.__dict__.update(
        {k: v for k, v in vars(loaded).items() if k.endswith("_") and not k.startswith("_")}
    )
    estimator.from_cache_ = True
    return True


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _versions() -> dict[str, str]:
    import sklearn

    import knowlens

    out = {
        "knowlens": knowlens.__version__,
        "estimators": ESTIMATORS_VERSION,
        "numpy": np.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch

        out["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def _model_id(model: Any) -> str | None:
    if model is None:
        return None
    return getattr(model, "target_id", None) or getattr(model, "fingerprint", None)


# -- input validation ------------------------------------------------------------------------
def labels_for(y: Labels, n: int, ids: Sequence[str] | None, who: str) -> np.ndarray:
    """Labels as float (n,) with NaN = undecided, aligned to ``ids`` when ``y`` is a
    ``GenerationSet`` (its rows may be in another order than the ActivationSet)."""
    if isinstance(y, GenerationSet):
        if ids is not None and list(ids) != y.example_ids:
            by_id = {r.example_id: r.correct for r in y.rows}
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise DataError(
                    f"{who}: {len(missing)} example ids of the features have no generation "
                    f"(e.g. '{missing[0]}'); pass the GenerationSet the features came from."
                )
            return np.array([np.nan if (c := by_id[i]) is None else float(c) for i in ids])
        out = y.correct
    else:
        if y is None:
            raise DataError(f"{who}.fit needs labels: pass y (array of 0/1) or a GenerationSet.")
        out = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(out) != n:
        raise DataError(
            f"{who}: features and labels must have the same length; got {n} examples and "
            f"{len(out)} labels. Pass labels for exactly the extracted examples."
        )
    if not np.isin(out[~np.isnan(out)], (0.0, 1.0)).all():
        raise DataError(f"{who}: labels must be 0/1 (NaN = undecided); got {np.unique(out)}.")
    return out


def check_training_labels(y: np.ndarray, who: str) -> np.ndarray:
    """Boolean mask of usable rows; raises on empty or one-class data."""
    keep = ~np.isnan(y)
    if (~keep).any():
        warnings.warn(
            f"{who}: ignoring {int((~keep).sum())} examples with an undecided label.",
            stacklevel=3,
        )
    yk = y[keep]
    if len(yk) == 0:
        raise DataError(f"{who}.fit: got 0 labelled examples; need examples of both classes.")
    if yk.min() == yk.max():
        raise DataError(
            f"{who}.fit: all {len(yk)} labels are {int(yk[0])} (one class); need both correct "
            "and wrong answers. Use more examples or a harder/easier task."
        )
    return keep


def check_nonempty(n: int, who: str, what: str = "examples") -> None:
    if n == 0:
        raise DataError(f"{who}: got 0 {what}; pass at least one.")


def check_acts(acts: object, who: str) -> ActivationSet:
    if not isinstance(acts, ActivationSet):
        raise DataError(
            f"{who} takes an ActivationSet (knowlens.extract(...)); got {type(acts).__name__}."
        )
    check_nonempty(len(acts), who)
    return acts


#: how an activation estimator reduces the position axis (``ActivationSet.features``)
REDUCE = ("last", "first", "mean")


def layer_features(
    acts: object, layer: int, reduce: str, who: str, n_features: int | None = None
) -> np.ndarray:
    """``(n, d_model)`` features of ``acts`` at ``layer`` reduced over positions, checked: an
    ActivationSet, a known ``reduce``, no example without an extracted position, and (when
    ``n_features`` is given, i.e. after a fit) the fitted width."""
    acts = check_acts(acts, who)
    if reduce not in REDUCE:
        raise ConfigError(f"{who}: reduce must be one of {', '.join(REDUCE)}; got '{reduce}'.")
    x = acts.features(layer, reduce)
    bad = np.isnan(x).any(1)
    if bad.any():
        raise DataError(
            f"{who}: {int(bad.sum())} examples have no extracted position (e.g. "
            f"'{acts.example_ids[int(np.flatnonzero(bad)[0])]}': no exact-answer span?); "
            "drop them or extract with tokens='last'."
        )
    if n_features is not None and x.shape[1] != n_features:
        raise DataError(
            f"{who}: features have d_model={x.shape[1]} but the fit has {n_features}; use "
            "activations of the model (reader) it was fitted with."
        )
    return x


def check_gens(gens: object, who: str) -> GenerationSet:
    if not isinstance(gens, GenerationSet):
        raise DataError(
            f"{who} takes a GenerationSet (knowlens.generate(...)); got {type(gens).__name__}."
        )
    check_nonempty(len(gens), who, "generations")
    return gens


def data_key(obj: Any, y: np.ndarray | None = None) -> str:
    """Content key of training data: the stage cache key when recorded, else a hash of ids
    and contents; plus the labels actually used."""
    if isinstance(obj, ActivationSet):
        base: Any = obj.meta.get("cache_key")
        if base is None:
            base = [obj.example_ids, obj.layers, obj.tokens, _array_digest(obj.values)]
    elif isinstance(obj, GenerationSet):
        base = obj.meta.get("cache_key")
        if base is None:
            base = [[r.example_id, r.prompt, r.answer] for r in obj.rows]
    else:
        base = _array_digest(np.asarray(obj))
    labels = None if y is None else np.nan_to_num(y, nan=-1).astype(int).tolist()
    return stable_hash({"data": base, "labels": labels})


def _array_digest(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a)
    h = hashlib.sha256(str((a.shape, a.dtype.str)).encode())
    h.update(a.reshape(-1).view(np.uint8).data)
    return h.hexdigest()[:20]
