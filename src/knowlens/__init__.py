"""knowlens: what a language model knows about its own answers and behaviour.

    import knowlens as kl
    model = kl.load_model("smollm2-135m-instruct")
    task = kl.load_task("capitals", split="train", limit=200)
    gens = kl.generate(model, task)
    samples = kl.sample(model, gens, k=10, temperature=1.0, top_p=0.95, seed=0)
    acts = kl.extract(model, gens, layers="all", tokens="exact_answer")
    gens, acts = kl.generate(model, task, layers="all", tokens="exact_answer")  # one pass

Names are resolved lazily ("module:object"), so ``import knowlens`` stays fast and does not
import torch until a model is touched.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "load_model": "knowlens.models:load_model",
    "ModelHandle": "knowlens.models:ModelHandle",
    "load_task": "knowlens.tasks:load_task",
    "Task": "knowlens.tasks:Task",
    "Example": "knowlens.tasks:Example",
    "generate": "knowlens.activations:generate",  # generation, + hidden states with layers=
    "generate_texts": "knowlens.generation:generate_texts",
    "Generation": "knowlens.generation:Generation",
    "GenerationSet": "knowlens.generation:GenerationSet",
    "sample": "knowlens.generation:sample",
    "SampleSet": "knowlens.generation:SampleSet",
    "extract": "knowlens.activations:extract",
    "extract_texts": "knowlens.activations:extract_texts",
    "ActivationSet": "knowlens.activations:ActivationSet",
    "KnowlensError": "knowlens.errors:KnowlensError",
    "run": "knowlens.experiments:run",
}
_SUBMODULES = {
    "models",
    "tasks",
    "generation",
    "activations",
    "estimators",
    "metrics",
    "experiments",
    "plots",
    "report",
    "config",
    "jailbreak",
    "executors",
    "errors",
}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, obj = _LAZY[name].split(":")
        value = getattr(importlib.import_module(module), obj)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"knowlens.{name}")
    raise AttributeError(f"module 'knowlens' has no attribute '{name}'")
