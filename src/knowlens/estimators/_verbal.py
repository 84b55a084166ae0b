"""Verbalised confidence: the model is asked how likely its answer is to be correct.

Tian et al. (2023), "Just ask for calibration: strategies for eliciting calibrated
confidence scores from language models fine-tuned with human feedback" (EMNLP), and
LM-Polygraph's ``Verbalized1S`` / ``Verbalized2S`` (``uncertainty = 1 - stated
probability``, NaN where the regex finds none). The answer already exists (the
``GenerationSet`` row), so the model is shown the question and that answer in one user turn
and asked only for the probability, with the wording of Tian et al.'s probability prompt
(``VERBAL_TEMPLATE``); it answers through knowlens's one greedy decoder,
``knowlens.generation.generate_texts`` (cached like every generation).

    verb = VerbalizedConfidence(model=handle).fit(gens_train)   # median fallback + Platt
    p = verb.predict_proba(gens_test)
    verb.n_unparsed_, verb.last_n_unparsed                       # statements not understood

Parsing (``parse_confidence``), first rule that applies:

1. a number after "probability" / "confidence" (``"Probability: 0.7"``,
   ``"confidence of 85%"``), else the first number in the text;
   a number is a decimal (``0.8``, ``.8``, ``0,8``, ``1``), a percentage (``80%``, ``80 percent``) or a
   fraction (``4/5``, ``8 out of 10``); a plain number in (1, 100] is read as a percentage
   (``"80"`` = 0.8); a value outside [0, 1] after that, or a negative one, is unparsed;
2. otherwise a verbal expression of Sherman Kent's "Words of estimative probability" (1964):
   certain 1.0, almost certain 0.93, probable 0.75, chances about even 0.5, probably not 0.3,
   almost certainly not 0.07, impossible 0.0, with common synonyms assigned to those
   categories (``WORDS``);

(``<...>`` placeholders, e.g. the prompt's example repeated back, are ignored.)
3. otherwise unparsed.

Unparsed statements are never given a silent value: ``fit`` records ``n_unparsed_`` on the
training split and ``fallback_confidence_`` = the median stated probability of the parsed
training statements; ``uncertainty`` scores unparsed rows with that median, counts them in
``last_n_unparsed`` and warns with the count and an example. When no training statement
parses (a model that does not follow the prompt, e.g. a small base model), the fallback is
the training accuracy, the best constant P(correct), with a warning that the estimator
carries no information (``n_unparsed_ == n_train_``; AUROC 0.5); without labels that is a
``DataError``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from knowlens._types import GenerationSet
from knowlens.errors import ConfigError, DataError, KnowlensError
from knowlens.estimators._base import Features, check_gens
from knowlens.estimators._registry import generations, register_estimator
from knowlens.estimators._score import ScoreEstimator
from knowlens.estimators._text import questions_for

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = ["VERBAL_TEMPLATE", "WORDS", "VerbalizedConfidence", "parse_confidence", "verbal_texts"]

#: The user turn (Tian et al.'s probability prompt, the guess given as ``{answer}``).
VERBAL_TEMPLATE = (
    "Question: {question}\nAnswer: {answer}\n\n"
    "Provide the probability that the answer is correct (0.0 to 1.0). Give ONLY the "
    "probability, no other words or explanation.\n\nFor example:\n\n"
    "Probability: <the probability between 0.0 and 1.0 that the answer is correct, without "
    "any extra commentary whatsoever; just the probability!>"
)
#: Appended for models read without a chat template, so a base model continues with it.
COMPLETION_CUE = "\n\nProbability:"

#: Kent (1964) categories; synonyms (knowlens's assignment) share their category's value.
WORDS: dict[str, float] = {
    "certain": 1.0,
    "certainly": 1.0,
    "definitely": 1.0,
    "almost certain": 0.93,
    "almost certainly": 0.93,
    "very likely": 0.93,
    "highly likely": 0.93,
    "very probable": 0.93,
    "probable": 0.75,
    "probably": 0.75,
    "likely": 0.75,
    "chances about even": 0.5,
    "about even": 0.5,
    "fifty-fifty": 0.5,
    "fifty fifty": 0.5,
    "50-50": 0.5,
    "probably not": 0.3,
    "unlikely": 0.3,
    "not likely": 0.3,
    "improbable": 0.3,
    "almost certainly not": 0.07,
    "very unlikely": 0.07,
    "highly unlikely": 0.07,
    "impossible": 0.0,
}

_NUM = r"(0,\d+|\d+(?:\.\d+)?|\.\d+)"  # "0,8": a decimal comma
# a fraction, or a number with an optional percent sign / word; not preceded by a minus,
# a letter or a digit, nor glued to a following letter (so "-0.5", "x2", "0ct" and the "5"
# of "2.5" are not read)
_NUMBER = re.compile(
    r"(?<![\w.\-])" + _NUM + r"\s*(?:/|out of)\s*" + _NUM + r"(?!\w)"
    r"|(?<![\w.\-])" + _NUM + r"(?:\s*(%|percent\b|per cent\b)|(?![^\W_]|\.\d))",
    re.I,
)
# a template placeholder the model repeats ("<the probability between 0.0 and 1.0 ...>")
_PLACEHOLDER = re.compile(r"<[^<>]*>")
_LABEL = re.compile(r"\b(?:probability|confidence)\b", re.I)
_WORDS = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(WORDS, key=len, reverse=True)) + r")"
    r"(?![\w-])",
    re.I,
)


def _value(m: re.Match[str]) -> float | None:
    num, den, plain, pct = m.group(1), m.group(2), m.group(3), m.group(4)
    if num is not None:
        d = float(den.replace(",", "."))
        v = float(num.replace(",", ".")) / d if d > 0 else float("nan")
    else:
        v = float(plain.replace(",", "."))
        if pct or 1.0 < v <= 100.0:  # "80%", or "80" for a stated percentage
            v /= 100.0
    return v if 0.0 <= v <= 1.0 else None


def parse_confidence(text: str) -> float | None:
    """The probability stated in ``text`` (in [0, 1]), or None if none is found (module
    docstring: labelled number, first number, Kent's words)."""
    text = _PLACEHOLDER.sub(" ", str(text))
    label = _LABEL.search(text)
    if label is not None:
        after = _NUMBER.search(text, label.end())
        if after is not None:
            return _value(after)
    first = _NUMBER.search(text)
    if first is not None:
        return _value(first)
    word = _WORDS.search(text)
    if word is not None:
        return WORDS[word.group(1).lower()]
    return None


def verbal_texts(
    handle: ModelHandle,
    gens: GenerationSet,
    questions: Sequence[str] | None = None,
    *,
    use_chat_template: bool = True,
) -> list[str]:
    """The user turn asking for the probability of every row's answer (the cue for base
    models appended when the model is read without a chat template)."""
    qs = questions_for(gens, questions)
    chat = use_chat_template and handle.has_chat_template
    return [
        VERBAL_TEMPLATE.format(question=q, answer=g.answer.strip())
        + ("" if chat else COMPLETION_CUE)
        for g, q in zip(gens.rows, qs, strict=True)
    ]


@register_estimator(
    "verbalized",
    display_name="Verbalised confidence",
    inputs=generations(model=True),
    aliases=("verbalized_1s", "Verbalized1S", "verbal"),
)
class VerbalizedConfidence(ScoreEstimator):
    """Verbalised confidence (Tian et al. 2023; LM-Polygraph ``Verbalized1S``).

    ``uncertainty = 1 - c``, where ``c`` is the probability ``model`` states for the answer
    when asked ``VERBAL_TEMPLATE`` (greedy, ``max_new_tokens`` tokens) and
    ``parse_confidence`` reads it; unparsed statements get the training median
    ``fallback_confidence_`` (counted, warned; module docstring).

    Args:
        model: the ``ModelHandle`` that is asked (the reader; may differ from the model that
            answered: it judges the text).
        use_chat_template: ask in the model's chat template when it has one.
        max_new_tokens: longest statement.
        batch_size: prompts per decoding batch.
        calibrate: Platt scaling of ``c`` on the training labels (ScoreEstimator); with False,
            P(correct) = ``c`` itself.
        progress: show a progress bar while the model answers.

    Questions are each row's user turn (``statements(gens, questions=...)`` overrides them).
    """

    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(
        self,
        *,
        model: Any = None,
        use_chat_template: bool = True,
        max_new_tokens: int = 16,
        batch_size: int = 16,
        calibrate: bool = True,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.use_chat_template = use_chat_template
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.calibrate = calibrate
        self.progress = progress

    def statements(self, gens: GenerationSet, questions: Sequence[str] | None = None) -> list[str]:
        """The model's answer to the probability question for every row (cached decoding)."""
        from knowlens.generation import generate_texts

        who = type(self).__name__
        if self.model is None:
            raise ConfigError(f"{who} needs model=ModelHandle (the model that is asked).")
        for name in ("max_new_tokens", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{who}: {name} must be an integer >= 1; got {v!r}.")
        check_gens(gens, who)
        texts = verbal_texts(self.model, gens, questions, use_chat_template=self.use_chat_template)
        out = generate_texts(
            self.model,
            texts,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            use_chat_template=self.use_chat_template,
            stop_on_newline=False,
            progress=self.progress,
        )
        return [r.answer for r in out.rows]

    def confidences(
        self, gens: GenerationSet, questions: Sequence[str] | None = None
    ) -> np.ndarray:
        """Parsed stated probabilities, shape (n,), NaN where unparsed (no fallback)."""
        said = self.statements(gens, questions)
        self.last_statements = said
        return np.array([np.nan if (c := parse_confidence(s)) is None else c for s in said])

    def _fit_statistics(self, X: Features, y: np.ndarray | None) -> None:
        who = type(self).__name__
        c = self.confidences(check_gens(X, f"{who}.fit"))
        bad = np.isnan(c)
        if bad.all():
            labelled = np.array([]) if y is None else y[~np.isnan(y)]
            if not len(labelled):
                raise DataError(
                    f"{who}.fit: none of the {len(c)} training statements states a probability "
                    f"(e.g. {self.last_statements[0][:60]!r}) and there are no labels to fall "
                    "back on; pass y, or use an instruction-tuned model."
                )
            self.fallback_confidence_ = float(labelled.mean())
            warnings.warn(
                f"{who}: none of the {len(c)} training statements states a probability (e.g. "
                f"{self.last_statements[0][:60]!r}); every answer gets the training accuracy "
                f"{self.fallback_confidence_:.3g} (fallback_confidence_): this estimator carries "
                "no information for this model.",
                stacklevel=3,
            )
        else:
            self.fallback_confidence_ = float(np.median(c[~bad]))
        self.n_unparsed_ = int(bad.sum())
        self.n_train_ = len(c)
        self.model_id_ = self.model.target_id

    def uncertainty(self, X: Features) -> np.ndarray:
        """``1 - stated probability`` of every row, shape (n,); unparsed rows use
        ``fallback_confidence_`` (counted in ``last_n_unparsed``, warned)."""
        self._check_fitted()
        c = self.confidences(check_gens(X, f"{type(self).__name__}.uncertainty"))
        bad = np.isnan(c)
        self.last_n_unparsed = int(bad.sum())
        if bad.any():
            example = self.last_statements[int(np.flatnonzero(bad)[0])]
            warnings.warn(
                f"{type(self).__name__}: {int(bad.sum())} of {len(c)} statements give no "
                f"probability (e.g. {example[:60]!r}); scored with the training median "
                f"{self.fallback_confidence_:.3g} (fallback_confidence_).",
                stacklevel=2,
            )
            c = np.where(bad, self.fallback_confidence_, c)
        return 1.0 - c

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - u, 0.0, 1.0)

    def _state(self) -> dict[str, Any]:
        return super()._state() | {
            "n_unparsed": self.n_unparsed_,
            "n_train": self.n_train_,
            "fallback_confidence": self.fallback_confidence_,
            "model_id": self.model_id_,
        }

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        if state["model_id"] != self.model.target_id:
            raise KnowlensError(
                f"This VerbalizedConfidence was fitted with model {state['model_id']}; got "
                f"{self.model.name} ({self.model.target_id}). Load it with the same model."
            )
        super()._restore(state, weights)
        self.n_unparsed_ = int(state["n_unparsed"])
        self.n_train_ = int(state["n_train"])
        self.fallback_confidence_ = float(state["fallback_confidence"])
        self.model_id_ = state["model_id"]
