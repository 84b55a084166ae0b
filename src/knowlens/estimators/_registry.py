"""The estimator registry: one entry per estimator, declared next to its class.

An entry names the estimator in configs, gives its display name (tables, figures) and
declares what it reads, so an analysis never switches on estimator names: it asks the entry
what to prepare, builds the estimator, and calls ``fit`` / ``predict_proba`` the same way
for every one (lm-polygraph's declared statistics, lm-evaluation-harness's registry)::

    @register_estimator(
        "probe",
        display_name="Probe",
        inputs=activations(layer="last", tokens="last"),
        settings={"epochs": "probe_epochs"},
        aliases=("Probe",),
    )
    class MLPProbe(Estimator): ...

    spec = get_estimator("probe")          # by config name, alias or class name
    spec.inputs                            # Inputs(source='activations', layer='last', ...)
    est = spec.make(model=reader, settings=train_settings, seed=0)

``inputs`` is one of:

* ``generations(model=False)``: the ``GenerationSet`` itself (answers, labels, token
  log-probs); ``model=True`` when the estimator runs a model (it is passed as ``model=``,
  the *reader*, which may differ from the model that answered);
* ``activations(layer=, tokens=)``: the reader's hidden states of the answers (re-read with
  the reader's tokenizer, ``retokenize``) at one layer (HF ``hidden_states`` index,
  ``"last"`` = ``n_layers``, negatives count from ``n_layers``) and token selector;
  ``text="query"``: of the Zero-Shot Classifier query of each answer instead (last token;
  the bench reads it in the pass the query estimators share, ``QueryReads``);
* ``samples(model=False)``: a ``SampledGenerations`` (the greedy ``GenerationSet`` plus
  ``k`` sampled answers per example from the model that answered, aligned row by row;
  the bench draws them once per run and shares them); ``model=True`` when the estimator
  also runs the reader (EigenScore's hidden states, P(True) over the samples).

``settings`` maps constructor parameters to the analyses' shared training settings
(``TrainSettings`` field names, e.g. ``{"steps": "lora_steps"}``); ``train_limit`` names the
setting that caps the estimator's training answers (``"max_train"``; ``None`` = never capped).
``make`` also passes ``seed=`` and ``progress=False`` when the constructor takes them, and
``layer=`` (the resolved layer) for activation estimators that take a ``layer``.

Entries may be lazy (``register_estimator("x", "package.module:Class", ...)``): the module
is imported on first use. Every module of this package is imported on the first lookup, so
a new estimator is one new file here (plus its test), with no edit anywhere else.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from knowlens.errors import ConfigError, KnowlensError, did_you_mean
from knowlens.estimators._base import Estimator

__all__ = [
    "EstimatorSpec",
    "Inputs",
    "activations",
    "canonical_estimator_names",
    "estimator_names",
    "generations",
    "get_estimator",
    "register_estimator",
    "samples",
]

C = TypeVar("C", bound=type)


@dataclass(frozen=True)
class Inputs:
    """What an estimator reads; build with :func:`generations`, :func:`activations` or
    :func:`samples`."""

    source: Literal["generations", "activations", "samples"]
    layer: int | Literal["last"] | None = None
    tokens: str | None = None
    model: bool = False
    #: activations only: read on prompt + answer ("answer") or on the Zero-Shot Classifier
    #: query of the answer ("query": last token, shared with the query estimators' reads)
    text: Literal["answer", "query"] = "answer"

    def resolve_layer(self, n_layers: int) -> int:
        """The hidden-state index for a model with ``n_layers`` blocks."""
        if self.layer == "last":
            return n_layers
        if not isinstance(self.layer, int):
            raise KnowlensError(f"Inputs.resolve_layer: {self} reads no layer.")
        layer = n_layers + 1 + self.layer if self.layer < 0 else self.layer
        if not 0 <= layer <= n_layers:
            raise KnowlensError(
                f"An estimator reads layer {self.layer}, out of range for a model with "
                f"{n_layers} layers (allowed 0..{n_layers} or -{n_layers + 1}..-1); register "
                "it with a layer the model has."
            )
        return layer

    def describe(self) -> str:
        if self.source in ("generations", "samples"):
            return self.source + (" + model" if self.model else "")
        on = " of the query" if self.text == "query" else ""
        return f"activations{on} (layer {self.layer}, tokens {self.tokens})"


def generations(*, model: bool = False) -> Inputs:
    """The estimator reads the ``GenerationSet`` (and runs the reader model if ``model``)."""
    return Inputs("generations", model=model)


def samples(*, model: bool = False) -> Inputs:
    """The estimator reads a ``SampledGenerations`` (answers + their sampled answers) and
    runs the reader model if ``model``."""
    if not isinstance(model, bool):
        raise KnowlensError(f"samples(model=...) must be True or False; got {model!r}.")
    return Inputs("samples", model=model)


def activations(
    *,
    layer: int | Literal["last"] = "last",
    tokens: str = "last",
    text: Literal["answer", "query"] = "answer",
) -> Inputs:
    """The estimator reads the reader's hidden states at ``layer`` under selector ``tokens``,
    of prompt + answer (``text="answer"``) or of the Zero-Shot Classifier query of the answer
    (``text="query"``, ``tokens="last"`` only; ``knowlens.estimators.query_activations``)."""
    if text not in ("answer", "query"):
        raise KnowlensError(f"activations(text=...) must be 'answer' or 'query'; got {text!r}.")
    if text == "query" and tokens != "last":
        raise KnowlensError(
            f"activations(text='query') reads the query's last token; got tokens={tokens!r}. "
            "Use tokens='last' (or text='answer' for other selectors)."
        )
    if not (layer == "last" or (isinstance(layer, int) and not isinstance(layer, bool))):
        raise KnowlensError(
            f"activations(layer=...) must be an int (hidden-state index) or 'last'; got {layer!r}."
        )
    if not isinstance(tokens, str) or not tokens:
        raise KnowlensError(
            f"activations(tokens=...) must name a token selector (e.g. 'last'); got {tokens!r}."
        )
    return Inputs("activations", layer=layer, tokens=tokens, text=text)


@dataclass(frozen=True)
class EstimatorSpec:
    """One registry entry (see the module docstring)."""

    name: str
    target: type[Estimator] | str
    display_name: str
    inputs: Inputs
    aliases: tuple[str, ...] = ()
    settings: Mapping[str, str] = field(default_factory=dict)
    train_limit: str | None = None

    @property
    def cls(self) -> type[Estimator]:
        """The estimator class (a lazy entry is imported and checked on first use)."""
        if isinstance(self.target, str):
            _ENTRIES[self.name] = resolved = _checked(self, _import(self))
            _ALIASES.setdefault(resolved.cls.__name__, self.name)
            return resolved.cls
        return self.target

    def make(
        self,
        *,
        model: Any = None,
        settings: Any = None,
        seed: int | None = None,
        **params: Any,
    ) -> Estimator:
        """An unfitted estimator: ``params``, plus ``settings`` (an object with the
        analyses' training settings) mapped through :attr:`settings`, ``model=`` for model
        readers, the resolved ``layer=`` for activation readers, ``seed=`` and
        ``progress=False`` where the constructor takes them."""
        cls = self.cls
        names = set(cls._param_names())
        kw: dict[str, Any] = {}
        if self.inputs.model:
            if model is None:
                raise ConfigError(
                    f"Estimator '{self.name}' runs a model; pass model=<ModelHandle> to make()."
                )
            kw["model"] = model
        if self.inputs.source == "activations" and "layer" in names:
            if model is None:
                raise ConfigError(
                    f"Estimator '{self.name}' reads activations of a layer given relative to "
                    "the model; pass model=<ModelHandle> (the reader) to make()."
                )
            kw["layer"] = self.inputs.resolve_layer(int(model.n_layers))
        if "seed" in names and seed is not None:
            kw["seed"] = seed
        if "progress" in names:
            kw["progress"] = False  # the runner's live display is the only progress bar
        for param, setting in self.settings.items():
            if settings is None or not hasattr(settings, setting):
                raise ConfigError(
                    f"Estimator '{self.name}' takes {param} from the training setting "
                    f"'{setting}', which {type(settings).__name__} lacks; pass settings with "
                    f"a '{setting}' field."
                )
            kw[param] = getattr(settings, setting)
        kw.update(params)
        unknown = sorted(set(kw) - names)
        if unknown:
            raise ConfigError(
                f"Estimator '{self.name}' ({cls.__name__}) has no parameter "
                f"'{unknown[0]}'; allowed: {', '.join(sorted(names))}."
            )
        return cls(**kw)


# config name -> entry; alias / class name -> config name
_ENTRIES: dict[str, EstimatorSpec] = {}
_ALIASES: dict[str, str] = {}
_DISCOVERED = False


def register_estimator(
    name: str,
    target: type[Estimator] | str | None = None,
    *,
    display_name: str,
    inputs: Inputs,
    aliases: tuple[str, ...] = (),
    settings: Mapping[str, str] | None = None,
    train_limit: str | None = None,
    overwrite: bool = False,
) -> Any:
    """Register an estimator under config name ``name``.

    As a class decorator (``target`` omitted) next to the class, or with a class or a lazy
    ``"module:Class"`` string. A class must subclass ``Estimator`` and implement ``fit`` and
    ``predict_proba``; ``settings`` keys must be constructor parameters; ``inputs.model``
    must match whether the class takes a live ``model``. Names and aliases are unique
    unless ``overwrite``.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise KnowlensError(
            f"register_estimator: name must be an identifier such as 'my_probe'; got {name!r}."
        )
    if not isinstance(inputs, Inputs):
        raise KnowlensError(
            f"register_estimator('{name}'): inputs must be generations(...), "
            f"activations(...) or samples(...); got {type(inputs).__name__}."
        )

    def add(tgt: type[Estimator] | str) -> EstimatorSpec:
        spec = EstimatorSpec(
            name=name,
            target=tgt,
            display_name=display_name,
            inputs=inputs,
            aliases=tuple(aliases),
            settings=dict(settings or {}),
            train_limit=train_limit,
        )
        if not isinstance(tgt, str):
            spec = _checked(spec, tgt)
        clashes = [n for n in (name, *spec.aliases) if n in _ENTRIES or n in _ALIASES]
        if clashes and not overwrite:
            raise KnowlensError(
                f"register_estimator: '{clashes[0]}' is already registered (for "
                f"'{_owner(clashes[0])}'); choose another name or pass overwrite=True."
            )
        _forget(name)
        _ENTRIES[name] = spec
        for a in spec.aliases:
            _ALIASES[a] = name
        if not isinstance(tgt, str):
            _ALIASES.setdefault(tgt.__name__, name)  # lookups by class name work too
        return spec

    if target is None:

        def decorator(cls: C) -> C:
            add(cls)
            return cls

        return decorator
    return add(target)


def get_estimator(name: str) -> EstimatorSpec:
    """The entry registered as ``name`` (a config name, an alias or a class name)."""
    _discover()
    key = name if name in _ENTRIES else _ALIASES.get(name)
    if key is None:
        raise ConfigError(did_you_mean(str(name), estimator_names(), what="estimator"))
    spec = _ENTRIES[key]
    if isinstance(spec.target, str):
        spec.cls  # noqa: B018 - resolves the lazy entry (import + checks)
        spec = _ENTRIES[key]
    return spec


def estimator_names() -> list[str]:
    """Config names of every registered estimator, in registration order."""
    _discover()
    return list(_ENTRIES)


def canonical_estimator_names(names: list[str]) -> list[str]:
    """Config names for ``names`` (aliases resolved); ``ValueError`` (one line, for
    pydantic field validators) on an unknown or repeated name."""
    _discover()
    out: list[str] = []
    for n in names:
        key = n if n in _ENTRIES else _ALIASES.get(n)
        if key is None:
            close = difflib.get_close_matches(str(n), list(_ENTRIES), n=3, cutoff=0.5)
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"names an unknown estimator '{n}'{hint}; allowed: {', '.join(estimator_names())}"
            )
        if key in out:
            raise ValueError(f"lists estimator '{key}' twice (as '{n}'); list each once")
        out.append(key)
    return out


# -- internals --------------------------------------------------------------------------------
def _owner(n: str) -> str:
    return n if n in _ENTRIES else _ALIASES.get(n, n)


def _forget(name: str) -> None:
    for a in [a for a, o in _ALIASES.items() if o == name]:
        del _ALIASES[a]
    _ENTRIES.pop(name, None)


def _import(spec: EstimatorSpec) -> type:
    mod_name, _, obj = str(spec.target).partition(":")
    if not obj:
        raise KnowlensError(
            f"Estimator '{spec.name}': lazy target must be 'module:Class'; got '{spec.target}'."
        )
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise KnowlensError(
            f"Estimator '{spec.name}' is registered as '{spec.target}', but module "
            f"'{e.name}' cannot be imported; install it or fix the registration."
        ) from None
    if not hasattr(module, obj):
        raise KnowlensError(
            f"Estimator '{spec.name}': module '{mod_name}' has no '{obj}'; fix the registration."
        )
    return getattr(module, obj)


def _checked(spec: EstimatorSpec, cls: Any) -> EstimatorSpec:
    """Base-class and declaration checks; returns the entry bound to the class."""
    who = f"register_estimator('{spec.name}')"
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise KnowlensError(
            f"{who}: {cls!r} is not a subclass of knowlens.estimators.Estimator; subclass it "
            "and implement fit(X, y) and predict_proba(X)."
        )
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise KnowlensError(f"{who}: {cls.__name__} does not implement {missing}.")
    names = set(cls._param_names())
    bad = sorted(set(spec.settings) - names)
    if bad:
        raise KnowlensError(
            f"{who}: settings name '{bad[0]}', which is not a keyword-only parameter of "
            f"{cls.__name__}.__init__ ({', '.join(sorted(names)) or 'none'})."
        )
    takes_model = "model" in cls._OBJECT_PARAMS
    if spec.inputs.source == "activations" and takes_model:
        raise KnowlensError(
            f"{who}: {cls.__name__} takes a live model, but activation estimators get the "
            "reader's hidden states, not the model; use generations(model=True) or "
            "samples(model=True)."
        )
    if spec.inputs.source != "activations" and spec.inputs.model != takes_model:
        raise KnowlensError(
            f"{who}: inputs say model={spec.inputs.model}, but {cls.__name__} "
            f"{'takes' if takes_model else 'does not take'} a live model; use "
            f"{spec.inputs.source}(model={takes_model})."
        )
    cls.display_name = spec.display_name
    cls.estimator_name = spec.name
    return EstimatorSpec(
        name=spec.name,
        target=cls,
        display_name=spec.display_name,
        inputs=spec.inputs,
        aliases=spec.aliases,
        settings=spec.settings,
        train_limit=spec.train_limit,
    )


def _discover() -> None:
    """Import every module of this package once, so their decorators have run."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{m.name}")
