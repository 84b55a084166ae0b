"""Uncertainty / error-detection estimators: P(correct) of a model's own answer.

Definitions follow ``FIGURES.md`` sections 1-3. All share scikit-learn's shape: keyword-only
``__init__``, ``fit(...) -> self``, ``predict_proba(...) -> (n,) P(correct)``, learned state
ending in ``_``, ``save(path)`` / ``load(path)`` (safetensors + JSON, never pickle) and a
stable ``cache_key()``.

=======================  ===============  ==========================  ==========================  ===========
estimator                 config name      reads                       trains                      runs model
=======================  ===============  ==========================  ==========================  ===========
``LogitBaseline``         ``logit``        GenerationSet log-probs     no (optional Platt)         no
``ZeroShotClassifier``    ``zero_shot``    GenerationSet text          no                          yes
``PTrue``                 ``p_true``       GenerationSet text          no                          yes
``LogisticProbe``         ``logistic``     ActivationSet (any layer)   sklearn LogisticRegression  no
``MLPProbe``              ``probe``        ActivationSet (last layer)  MLP d-256-128-64-2          no
``LoRAProbe`` ("LoRA")    ``lora``         GenerationSet               LoRA + MLP head             yes
``LoRAPrompt``            ``lora_prompt``  GenerationSet               LoRA, query CE + JS         yes
=======================  ===============  ==========================  ==========================  ===========

Scores that need no sampling (``ScoreEstimator``: the paper's / LM-Polygraph's raw
``uncertainty``, Platt-calibrated on the training split by default): ``max_sequence_prob``,
``perplexity``, ``mean_entropy``, ``max_entropy`` (token statistics, ``_logit.py``);
``mahalanobis``, ``relative_mahalanobis`` (Gaussian fits of hidden states, ``_density.py``);
``verbalized`` (the model states a probability, ``_verbal.py``; these classes are package
attributes through the registry, ``__getattr__`` below, so the built-in entries stay first
in ``estimator_names()``). Scores of K sampled answers
(``samples()`` input, ``SampledGenerations``): ``mc_entropy``, ``mc_normalized_entropy``,
``lexical_similarity``, ``eigenscore``, ``p_true_sampling`` (``_sampling.py``) and the
semantic ones (``_semantic.py``). ``TemperatureScaled(estimator)`` adds temperature scaling
fitted on a validation split to any of them (``fit_temperature`` / ``apply_temperature``,
``_calibrate.py``).

    import knowlens as kl
    from knowlens.estimators import LogisticProbe, ZeroShotClassifier, fit_cached
    probe = LogisticProbe(layer=12).fit(acts_train, gens_train)
    p = probe.predict_proba(acts_test)
    kl.metrics.auroc(gens_test.correct, p)
    probe = fit_cached(LogisticProbe(layer=12), acts_train, gens_train)  # stored once

Every estimator is declared once, next to its class, with ``@register_estimator(name,
display_name=, inputs=)`` (``_registry.py``); ``get_estimator(name)`` returns the entry
(config name, alias or class name), ``estimator_names()`` lists them. Adding an estimator is
one new module in this package (its decorator registers it; the registry imports every
module of the package) plus its test.

Cross-model use (FIGURES.md section 2, "Trained On" model A judging model B's answers):
model-running estimators take ``model=A`` and accept B's GenerationSet directly (texts are
re-read with A's tokenizer / chat template). Probes read A's features of B's answers:
``acts = kl.extract(A, retokenize(gens_B, A), ...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from knowlens.errors import KnowlensError
from knowlens.estimators._base import (
    CACHE_KIND,
    ESTIMATORS_VERSION,
    REGISTRY,
    Estimator,
    Features,
    Labels,
    NotFittedError,
    clone,
    fit_cached,
)
from knowlens.estimators._calibrate import (
    TemperatureScaled,
    apply_temperature,
    fit_temperature,
)
from knowlens.estimators._entailment import load_judge
from knowlens.estimators._logit import (
    SPANS,
    STATISTICS,
    LogitBaseline,
    MaximumSequenceProbability,
    MaxTokenEntropy,
    MeanTokenEntropy,
    Perplexity,
)
from knowlens.estimators._lora import LoRAProbe, LoRAPrompt, js_divergence, lora_attached
from knowlens.estimators._probe import (
    LogisticProbe,
    MLPProbe,
    ProbeSweep,
    fit_logistic,
    mlp_head,
    sweep_probes,
)
from knowlens.estimators._query import (
    PTRUE_TEMPLATE,
    QUERY_READS_VERSION,
    ZSC_TEMPLATE,
    PTrue,
    Query,
    QueryRead,
    QueryReads,
    ZeroShotClassifier,
    label_token_ids,
    query_activations,
    zsc_queries,
)
from knowlens.estimators._registry import (
    EstimatorSpec,
    Inputs,
    activations,
    canonical_estimator_names,
    estimator_names,
    generations,
    get_estimator,
    register_estimator,
    samples,
)
from knowlens.estimators._sampling import (
    EigenScore,
    LexicalSimilarity,
    MonteCarloNormalizedSequenceEntropy,
    MonteCarloSequenceEntropy,
    PTrueSampling,
)
from knowlens.estimators._semantic import NumSemSets, SemanticEntropy
from knowlens.estimators._text import cross_model_texts, retokenize, user_turn

#: FIGURES.md names -> classes (also registry aliases: get_estimator("Probe")).
Probe = MLPProbe
LoRA = LoRAProbe


def load(path: str | Path, **objects: Any) -> Estimator:
    """Load any saved estimator; pass ``model=handle`` for those that run a model."""
    return Estimator.load(path, **objects)


def __getattr__(name: str) -> Any:
    """Classes of registered estimators that this file does not import (new modules)."""
    if name[:1].isupper():
        try:
            return get_estimator(name).cls
        except KnowlensError:
            pass
    raise AttributeError(f"module 'knowlens.estimators' has no attribute '{name}'")


__all__ = [
    "CACHE_KIND",
    "ESTIMATORS_VERSION",
    "PTRUE_TEMPLATE",
    "QUERY_READS_VERSION",
    "REGISTRY",
    "SPANS",
    "STATISTICS",
    "ZSC_TEMPLATE",
    "EigenScore",
    "Estimator",
    "EstimatorSpec",
    "Features",
    "Inputs",
    "Labels",
    "LexicalSimilarity",
    "LoRA",
    "LoRAProbe",
    "LoRAPrompt",
    "LogisticProbe",
    "LogitBaseline",
    "MLPProbe",
    "MaxTokenEntropy",
    "MaximumSequenceProbability",
    "MeanTokenEntropy",
    "MonteCarloNormalizedSequenceEntropy",
    "MonteCarloSequenceEntropy",
    "NotFittedError",
    "NumSemSets",
    "PTrue",
    "PTrueSampling",
    "Perplexity",
    "Probe",
    "ProbeSweep",
    "Query",
    "QueryRead",
    "QueryReads",
    "SemanticEntropy",
    "TemperatureScaled",
    "ZeroShotClassifier",
    "activations",
    "apply_temperature",
    "canonical_estimator_names",
    "clone",
    "cross_model_texts",
    "estimator_names",
    "fit_cached",
    "fit_logistic",
    "fit_temperature",
    "generations",
    "get_estimator",
    "js_divergence",
    "label_token_ids",
    "load",
    "load_judge",
    "lora_attached",
    "mlp_head",
    "query_activations",
    "register_estimator",
    "retokenize",
    "samples",
    "sweep_probes",
    "user_turn",
    "zsc_queries",
]
