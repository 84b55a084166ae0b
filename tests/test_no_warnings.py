"""Our own calls into torch / transformers raise no warnings (e.g. deprecated keywords)."""

from __future__ import annotations

import warnings


def test_generation_and_extraction_run_with_warnings_as_errors(tiny_model):
    from knowlens.activations import extract
    from knowlens.generation import cache_kwarg, generate_texts

    assert cache_kwarg(tiny_model.model) in ("cache", "past_key_values")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gens = generate_texts(
            tiny_model, ["What is the capital of France?"] * 3, max_new_tokens=4, progress=False
        )
        acts = extract(tiny_model, gens, layers="all", tokens="last", progress=False)
    assert len(gens) == 3 and acts.values.shape[0] == 3
