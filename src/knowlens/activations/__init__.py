"""Activations: hidden states of a model at chosen layers and token positions.

    acts = extract(model, gens, layers="all", tokens="exact_answer")   # graded generations
    acts = extract_texts(model, ["Paris is in France."], tokens="all")  # raw texts
    acts.values[example, layer, position, hidden]; acts.features(16)

Layer indices follow HF ``output_hidden_states``: 0 = embedding output (input of block 0),
i = output of decoder block i (``hidden_states[i]``), ``n_layers`` = HF's last entry, which is
*after the final norm*. Forward hooks read the unmodified HF model and the pass stops right
after the deepest requested layer (the LM head never runs). Results are ``.npy`` memmaps in
the content-addressed cache, float16 unless ``dtype="auto"`` (the default) finds values
beyond the float16 range (then float32), written shard by shard, resumable and checksummed
(see ``_store``). Token selectors and alignment: see ``_extract``. Statistics over many
texts without storing them: ``reduce_texts`` / ``reduce_items`` (see ``_reduce``).
Hidden states while generating, into the same entries as ``extract``:
``generate_with_activations`` / ``knowlens.generate(..., layers=...)`` (see ``_capture``).
"""

from knowlens._types import ActivationSet
from knowlens.activations._api import (
    ACTIVATIONS_VERSION,
    ExtractionPlan,
    extract,
    extract_texts,
    items_from_generations,
    items_from_texts,
    plan_extraction,
    run_extraction,
)
from knowlens.activations._capture import (
    CaptureRequest,
    HiddenStateCapture,
    SpoolLayout,
    assemble,
    capture_options,
    capture_requests,
    extract_reusing,
    finish_capture,
    generate,
    generate_capturing,
    generate_with_activations,
    new_spool_dir,
    spool_layout,
)
from knowlens.activations._extract import (
    SELECTORS,
    TEXT_SELECTORS,
    ExtractItem,
    ExtractSpec,
    extract_batch,
    final_norm,
    hook_points,
    plan_positions,
    resolve_layers,
)
from knowlens.activations._hooks import HookPoint, StopForward, Trace
from knowlens.activations._reduce import PositionMoments, Reducer, reduce_items, reduce_texts

__all__ = [
    "ACTIVATIONS_VERSION",
    "SELECTORS",
    "TEXT_SELECTORS",
    "ActivationSet",
    "CaptureRequest",
    "ExtractItem",
    "ExtractSpec",
    "ExtractionPlan",
    "HiddenStateCapture",
    "HookPoint",
    "PositionMoments",
    "Reducer",
    "SpoolLayout",
    "StopForward",
    "Trace",
    "assemble",
    "capture_options",
    "capture_requests",
    "extract",
    "extract_batch",
    "extract_reusing",
    "extract_texts",
    "final_norm",
    "finish_capture",
    "generate",
    "generate_capturing",
    "generate_with_activations",
    "hook_points",
    "items_from_generations",
    "items_from_texts",
    "new_spool_dir",
    "plan_extraction",
    "plan_positions",
    "reduce_items",
    "reduce_texts",
    "resolve_layers",
    "run_extraction",
    "spool_layout",
]
