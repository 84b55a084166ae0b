"""Asking the model: the Zero-Shot Classifier (Kapoor et al.) and P(True) (Kadavath et al.).

Both read only the *text* of a question and an answer, so they judge any model's answers
(cross-model use, FIGURES.md section 2, needs nothing extra: the judging model is ``model``).

    zsc = ZeroShotClassifier(model=handle).fit(gens_train)   # no training; fit validates
    p = zsc.predict_proba(gens_test)                          # (n,) P(correct) = p("ii")

Answer-token ids are chosen robustly across tokenizers: for a label such as ``"ii"`` every
variant among ``"ii"`` and ``" ii"`` that encodes to exactly one token counts, and the label's
logit is the logsumexp over its variants (BPE tokenizers usually continue ``"Answer:"`` with
``" ii"``, chat templates start the assistant turn with ``"ii"``). The two labels' variant
sets must be disjoint and non-empty, else a ``KnowlensError`` names the tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from knowlens._types import GenerationSet
from knowlens.errors import ConfigError, KnowlensError
from knowlens.estimators._base import Estimator, Features, Labels, check_gens
from knowlens.estimators._registry import generations, register_estimator
from knowlens.estimators._text import encode, questions_for
from knowlens.models._batch import pad_batch, pad_id

if TYPE_CHECKING:
    import torch

    from knowlens.models import ModelHandle

__all__ = [
    "PTRUE_TEMPLATE",
    "ZSC_TEMPLATE",
    "PTrue",
    "ZeroShotClassifier",
    "batched_label_probs",
    "label_probs",
    "label_token_ids",
    "last_token_logits",
    "zsc_texts",
]

#: FIGURES.md section 1, "Zero-Shot Classifier" (verbatim).
ZSC_TEMPLATE = (
    "{question} {answer}\n\nIs the proposed answer correct?\nChoices:\n(i): no\n(ii): yes\nAnswer:"
)

#: Kadavath et al. (2022) P(True) prompt; ``{first}`` / ``{second}`` are "True" / "False"
#: (and swapped for the order-reversed query).
PTRUE_TEMPLATE = (
    "Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n"
    " (A) {first}\n (B) {second}\nThe proposed answer is:"
)


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[list[int]]:
    """Single-token ids of each label's variants (``label`` and ``" " + label``)."""
    out: list[list[int]] = []
    for label in labels:
        ids: list[int] = []
        for variant in (label, " " + label):
            enc = tokenizer.encode(variant, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(int(enc[0]))
        out.append(ids)
    flat = [i for ids in out for i in ids]
    if any(not ids for ids in out) or len(flat) != len(set(flat)):
        raise KnowlensError(
            f"The tokenizer ({type(tokenizer).__name__}) has no distinct single-token encoding "
            f"of the answer labels {list(labels)} (got {out}); this query-based estimator "
            "cannot be used with it. Use a probe or a logit baseline instead."
        )
    return out


def label_probs(logits: torch.Tensor, label_ids: list[list[int]]) -> torch.Tensor:
    """Softmax over the labels, each label's logit = logsumexp of its variants' logits.
    ``logits``: (B, V) tensor -> (B, n_labels)."""
    import torch

    per_label = torch.stack([torch.logsumexp(logits[:, ids], dim=-1) for ids in label_ids], -1)
    return torch.softmax(per_label.float(), dim=-1)


def last_token_logits(
    lm: Any, seqs: Sequence[Sequence[int]], pad: int, max_length: int | None
) -> torch.Tensor:
    """Next-token logits after each sequence, (B, V), one left-padded forward pass."""
    ids, mask, pos = pad_batch(seqs, pad, max_length=max_length)
    dev = next(lm.parameters()).device
    out = lm(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=pos.to(dev),
        logits_to_keep=1,
        use_cache=False,
    )
    return out.logits[:, -1, :]


def batched_label_probs(
    handle: ModelHandle,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int,
    max_length: int | None,
    progress: bool,
    description: str,
) -> np.ndarray:
    """P(label) for every text under ``handle.model`` (inference mode), (n, n_labels).
    Batches are formed in length order (less padding) and results returned in input order."""
    import torch
    from rich.progress import Progress

    tok = handle.tokenizer
    label_ids = label_token_ids(tok, labels)
    seqs = [encode(tok, t) for t in texts]
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), len(labels)))
    pad = pad_id(tok)
    with (
        torch.inference_mode(),
        Progress(disable=not progress, transient=True) as bar,
    ):
        task = bar.add_task(description, total=len(seqs))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            logits = last_token_logits(handle.model, [seqs[j] for j in idx], pad, max_length)
            out[idx] = label_probs(logits, label_ids).double().cpu().numpy()
            bar.advance(task, len(idx))
    return out


def zsc_texts(
    handle: ModelHandle,
    gens: GenerationSet,
    questions: Sequence[str] | None = None,
    *,
    use_chat_template: bool = True,
) -> list[str]:
    """The Zero-Shot Classifier query of every row, rendered for ``handle`` (chat template
    applied for chat models)."""
    qs = questions_for(gens, questions)
    return [
        handle.format_prompt(
            ZSC_TEMPLATE.format(question=q, answer=g.answer.strip()),
            use_chat_template=use_chat_template,
        )
        for g, q in zip(gens.rows, qs, strict=True)
    ]


Q = TypeVar("Q", bound="_QueryEstimator")


class _QueryEstimator(Estimator[GenerationSet]):
    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ("model",)

    model: ModelHandle | None
    batch_size: int

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        use_chat_template: bool = True,
        batch_size: int = 8,
        max_length: int = 1024,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.use_chat_template = use_chat_template
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress

    @property
    def _handle(self) -> ModelHandle:
        """``model``, required: the handle that is asked."""
        if self.model is None:
            raise ConfigError(
                f"{type(self).__name__} needs model=ModelHandle (the model that is asked)."
            )
        return self.model

    def fit(self: Q, gens: GenerationSet | None = None, y: Labels = None) -> Q:
        """No training: checks the model's tokenizer supports the query and marks fitted."""
        handle = self._handle
        if int(self.batch_size) < 1:
            raise ConfigError(f"{type(self).__name__}: batch_size must be >= 1.")
        if gens is not None:
            check_gens(gens, f"{type(self).__name__}.fit")
        label_token_ids(handle.tokenizer, self._labels())
        self.model_id_ = handle.target_id
        return self

    def _labels(self) -> tuple[str, str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _train_key(self, X: Features, y: Labels = None) -> None:
        return None  # fit learns nothing from data

    def _state(self) -> dict[str, Any]:
        return {"model_id": self.model_id_}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        handle = self._handle
        if state["model_id"] != handle.target_id:
            raise KnowlensError(
                f"This {type(self).__name__} was saved for model {state['model_id']}; got "
                f"{handle.name} ({handle.target_id}). Load it with the same model."
            )
        self.model_id_ = state["model_id"]


@register_estimator(
    "zero_shot",
    display_name="Zero-Shot Classifier",
    inputs=generations(model=True),
    aliases=("zsc",),
)
class ZeroShotClassifier(_QueryEstimator):
    """Kapoor et al. (2024) Zero-Shot Classifier (FIGURES.md section 1).

    Asks ``model`` ``ZSC_TEMPLATE`` (``"{question} {answer}\\n\\nIs the proposed answer
    correct?\\nChoices:\\n(i): no\\n(ii): yes\\nAnswer:"``), in its chat template for chat
    models, and returns P(correct) = softmax(logit["i"], logit["ii"])["ii"].

    Args:
        model: the ``ModelHandle`` that is asked (the judging model; may differ from the
            model that answered).
        use_chat_template: wrap the query in the chat template when the model has one.
        batch_size: queries per forward pass.
        max_length: longest query in tokens (longer ones keep their last tokens).
        progress: show a progress bar.

    ``predict_proba(gens, questions=None)``: questions default to the user turn of each
    generation's prompt (``knowlens.estimators.user_turn``).
    """

    def _labels(self) -> tuple[str, str]:
        return ("i", "ii")

    def predict_proba(
        self, gens: GenerationSet, questions: Sequence[str] | None = None
    ) -> np.ndarray:
        """P(correct) = p("ii"), shape (n,)."""
        self._check_fitted()
        check_gens(gens, "ZeroShotClassifier.predict_proba")
        texts = zsc_texts(self._handle, gens, questions, use_chat_template=self.use_chat_template)
        probs = batched_label_probs(
            self._handle,
            texts,
            self._labels(),
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            description="zero-shot classifier",
        )
        return probs[:, 1]


@register_estimator(
    "p_true",
    display_name="P(True)",
    inputs=generations(model=True),
    aliases=("ptrue",),
)
class PTrue(_QueryEstimator):
    """Kadavath et al. (2022) P(True) with option-order reversal.

    Asks ``PTRUE_TEMPLATE`` twice, with "(A) True (B) False" and with "(A) False (B) True",
    each followed by an opening parenthesis (``" ("``, or ``"("`` at the start of a chat
    assistant turn) so the next token is the option letter; P(True) from each query is the
    two-way softmax over the letters "A"/"B" (variants as in the module docstring), and
    P(correct) is the mean of the two, cancelling the model's letter bias.

    Args: as ``ZeroShotClassifier``.
    """

    def _labels(self) -> tuple[str, str]:
        return ("A", "B")

    def _texts(self, gens: GenerationSet, questions: Sequence[str] | None, swap: bool) -> list[str]:
        qs = questions_for(gens, questions)
        handle = self._handle
        chat = self.use_chat_template and handle.has_chat_template
        first, second = ("False", "True") if swap else ("True", "False")
        out = []
        for g, q in zip(gens.rows, qs, strict=True):
            body = PTRUE_TEMPLATE.format(
                question=q, answer=g.answer.strip(), first=first, second=second
            )
            rendered = handle.format_prompt(body, use_chat_template=self.use_chat_template)
            out.append(rendered + ("(" if chat else " ("))
        return out

    def predict_proba(
        self, gens: GenerationSet, questions: Sequence[str] | None = None
    ) -> np.ndarray:
        """P(correct) = mean of p(True) over the two option orders, shape (n,)."""
        self._check_fitted()
        check_gens(gens, "PTrue.predict_proba")
        n = len(gens)
        texts = self._texts(gens, questions, False) + self._texts(gens, questions, True)
        probs = batched_label_probs(
            self._handle,
            texts,
            self._labels(),
            batch_size=self.batch_size,
            max_length=self.max_length,
            progress=self.progress,
            description="P(True)",
        )
        return 0.5 * (probs[:n, 0] + probs[n:, 1])
