"""Entailment judges: does one answer entail another? (semantic entropy's equivalence test)

Semantic clustering (Kuhn et al. 2023; Farquhar et al. 2024) calls two answers equivalent
when each entails the other (*bidirectional entailment*). A judge answers the one-way
question for a batch of (premise, hypothesis) pairs, optionally given the question that was
asked; it is chosen by a config string::

    judge = load_judge("normalized")                       # short answers, string rules
    judge = load_judge("model:smollm2-135m-instruct")      # any local causal LM, prompted
    judge = load_judge("nli:microsoft/deberta-large-mnli") # NLI cross-encoder (hub id / dir)
    judge.entails(["Paris"], ["It is Paris."])             # bool array, shape (1,)
    judge.entails(["Paris"], ["It is Paris."], probs=True) # P(entailment), shape (1,)
    judge.equivalent("Paris", "paris.")                    # True (both directions)

* ``"normalized"``: the task graders' normalisation (``knowlens.tasks.graders``): the short
  answer of each text (``extract_short_answer``, question echo removed, else the first
  line), SQuAD-normalised (``normalize``); entailment = equal normalised short answers.
  Only meaningful for short-answer tasks; needs no model.
* ``"model:<spec>"`` (``"model"`` alone = ``model:smollm2-135m-instruct``): a causal LM
  loaded by ``knowlens.models.load_model(spec)`` is asked :data:`ENTAILMENT_PROMPT`, the
  prompt of Farquhar et al.'s released code (``semantic_uncertainty``,
  ``EntailmentLlama.equivalence_prompt``), whose three-way "entailment, contradiction, or
  neutral" reply is replaced by yes / no so that one next-token forward reads the answer:
  P(entails) = P("yes") / (P("yes") + P("no")), the case variants ``yes``/``Yes`` (and
  their space-prefixed forms) pooled, through the query estimators' forward
  (``_query.batched_label_probs``). Entailed iff P(entails) > 0.5.
* ``"nli:<hub id or local dir>"``: an NLI cross-encoder (``AutoModelForSequenceClassification``,
  e.g. ``microsoft/deberta-large-mnli`` as Kuhn et al. used); the entailment and
  contradiction classes are found by name in ``config.id2label``. P(entails) = the softmax
  probability of the entailment class; entailed iff it is the argmax class (as
  lm-polygraph's semantic classes and Farquhar et al.'s ``strict_entailment``).

Judges are loaded lazily and cached per process by config string (:func:`load_judge`).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from knowlens.errors import ConfigError, KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "DEFAULT_JUDGE_MODEL",
    "ENTAILMENT_PROMPT",
    "JUDGE_FORMS",
    "EntailmentJudge",
    "ModelJudge",
    "NLIJudge",
    "NormalizedJudge",
    "load_judge",
    "parse_judge",
]

#: the causal LM of ``"model"`` without a spec
DEFAULT_JUDGE_MODEL = "smollm2-135m-instruct"

#: the allowed config strings, for error messages
JUDGE_FORMS = (
    "'normalized', 'model:<model spec>' (e.g. 'model:smollm2-135m-instruct'; 'model' alone = "
    f"'model:{DEFAULT_JUDGE_MODEL}') or 'nli:<hub id or local dir>' (e.g. "
    "'nli:microsoft/deberta-large-mnli')"
)

#: Farquhar et al. (2024), semantic_uncertainty ``EntailmentLlama.equivalence_prompt``, with
#: the reply restricted to yes / no (one next token instead of a parsed three-way answer).
ENTAILMENT_PROMPT = (
    'We are evaluating answers to the question "{question}"\n'
    "Here are two possible answers:\n"
    "Possible Answer 1: {premise}\nPossible Answer 2: {hypothesis}\n"
    "Does Possible Answer 1 semantically entail Possible Answer 2? "
    "Respond only with yes or no."
)


class EntailmentJudge(ABC):
    """Decides whether a premise entails a hypothesis, in batches.

    Subclasses implement :meth:`_judge`, returning P(entails) and the decision for each pair.
    """

    #: the config string this judge was loaded from (part of every cache key of its pairs)
    spec: str = ""
    #: whether decisions depend on the question (then pairs are cached per question)
    uses_question: bool = False

    @abstractmethod
    def _judge(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        questions: Sequence[str | None],
        batch_size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(P(entails) float (n,), entailed bool (n,)) of each (premise, hypothesis)."""

    def entails(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        questions: Sequence[str | None] | None = None,
        *,
        probs: bool = False,
        batch_size: int = 16,
    ) -> np.ndarray:
        """Whether each premise entails its hypothesis (bool (n,)), or P(entails) (float
        (n,)) with ``probs=True``. ``questions``: the question asked, per pair (used by the
        model judge's prompt)."""
        p, h, q = _pairs(premises, hypotheses, questions)
        if not p:
            return np.zeros(0, dtype=np.float64 if probs else bool)
        prob, decided = self._judge(p, h, q, int(batch_size))
        return np.asarray(prob if probs else decided)

    @overload
    def equivalent(  # type: ignore[overload-overlap]  # a str is also a Sequence[str]
        self, a: str, b: str, question: str | None = None
    ) -> bool: ...
    @overload
    def equivalent(
        self, a: Sequence[str], b: Sequence[str], question: Sequence[str | None] | None = None
    ) -> np.ndarray: ...
    def equivalent(self, a: Any, b: Any, question: Any = None) -> Any:
        """Bidirectional entailment: ``a`` entails ``b`` and ``b`` entails ``a``. Strings
        give a bool; sequences a bool array (both directions judged in one batch)."""
        if isinstance(a, str) and isinstance(b, str):
            return bool(self.equivalent([a], [b], None if question is None else [question])[0])
        p, h, q = _pairs(a, b, question)
        both = self.entails(p + h, h + p, q + q)
        return both[: len(p)] & both[len(p) :]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def _pairs(
    premises: Sequence[str], hypotheses: Sequence[str], questions: Any
) -> tuple[list[str], list[str], list[str | None]]:
    p, h = list(premises), list(hypotheses)
    q = [None] * len(p) if questions is None else list(questions)
    if not len(p) == len(h) == len(q):
        raise KnowlensError(
            f"Entailment judge: premises, hypotheses and questions must have one entry per "
            f"pair; got {len(p)}, {len(h)} and {len(q)}."
        )
    return p, h, q


class NormalizedJudge(EntailmentJudge):
    """Entailment = equal normalised short answers (the task graders' normalisation)."""

    spec = "normalized"
    uses_question = True  # the question echo ("The capital of Peru is Lima") is cut

    @staticmethod
    def key(text: str, question: str | None = None) -> str:
        """The normalised short answer of ``text`` (``extract_short_answer`` span, else the
        first line, then ``normalize``)."""
        from knowlens.tasks.graders import extract_short_answer, normalize

        span = extract_short_answer(text, question)
        short = text[span[0] : span[1]] if span else text.split("\n", 1)[0]
        return normalize(short)

    def _judge(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        questions: Sequence[str | None],
        batch_size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        same = np.array(
            [
                self.key(a, q) == self.key(b, q)
                for a, b, q in zip(premises, hypotheses, questions, strict=True)
            ],
            dtype=bool,
        )
        return same.astype(np.float64), same


# Reply words of the model judge: case variants pooled (chat models start "Yes", base models
# continue "Response:" with " yes"); each counts only if the tokenizer has it as one token.
_YES = ("yes", "Yes")
_NO = ("no", "No")


class ModelJudge(EntailmentJudge):
    """A causal LM asked :data:`ENTAILMENT_PROMPT`; P(entails) = P(yes) vs P(no)."""

    uses_question = True

    def __init__(
        self,
        handle: ModelHandle,
        spec: str,
        *,
        use_chat_template: bool = True,
        max_length: int = 1024,
    ) -> None:
        from knowlens.estimators._query import label_token_ids

        self.handle = handle
        self.spec = spec
        self.use_chat_template = use_chat_template
        self.max_length = max_length
        usable = []
        for label in _YES + _NO:
            try:
                label_token_ids(handle.tokenizer, [label])
                usable.append(label)
            except KnowlensError:
                continue  # this case variant is several tokens for this tokenizer
        self.labels = tuple(usable)
        self._is_yes = np.array([label in _YES for label in self.labels])
        if not self._is_yes.any() or self._is_yes.all():
            raise KnowlensError(
                f"Entailment judge '{spec}': the tokenizer of {handle.name} has no single-"
                f"token 'yes' and 'no' (tried {', '.join(_YES + _NO)}, with and without a "
                "leading space); use another model, 'nli:<model>' or 'normalized'."
            )
        label_token_ids(handle.tokenizer, self.labels)  # the variants must be distinct

    def prompts(
        self, premises: Sequence[str], hypotheses: Sequence[str], questions: Sequence[str | None]
    ) -> list[str]:
        """The rendered query of each pair (chat template applied for chat models; a plain
        model continues ``"\\nResponse:"``, as in Farquhar et al.'s Llama prompt)."""
        chat = self.use_chat_template and self.handle.has_chat_template
        out = []
        for a, b, q in zip(premises, hypotheses, questions, strict=True):
            body = ENTAILMENT_PROMPT.format(
                question="" if q is None else q.strip(), premise=a.strip(), hypothesis=b.strip()
            )
            text = self.handle.format_prompt(body, use_chat_template=self.use_chat_template)
            out.append(text if chat else text + "\nResponse:")
        return out

    def _judge(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        questions: Sequence[str | None],
        batch_size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        from knowlens.estimators._query import batched_label_probs

        probs = batched_label_probs(
            self.handle,
            self.prompts(premises, hypotheses, questions),
            self.labels,
            batch_size=batch_size,
            max_length=self.max_length,
            progress=False,
            description="entailment judge",
        )
        p_yes = probs[:, self._is_yes].sum(axis=1)  # softmax over all variants: pooled yes
        return p_yes, p_yes > 0.5


class NLIJudge(EntailmentJudge):
    """An NLI cross-encoder: P(entails) = P(entailment class) of (premise, hypothesis)."""

    def __init__(self, source: str, spec: str, *, device: str = "auto", max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from knowlens.models import resolve_device

        self.spec = spec
        self.max_length = max_length
        dev = resolve_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model = AutoModelForSequenceClassification.from_pretrained(source).to(dev).eval()
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise KnowlensError(
                f"Entailment judge '{spec}': cannot load an NLI model from '{source}' "
                f"({reason}); pass a local directory with a sequence-classification model or "
                "a hub id reachable from this machine."
            ) from None
        labels = {int(i): str(n).lower() for i, n in self.model.config.id2label.items()}
        ent = [i for i, n in labels.items() if n.startswith("entail")]
        con = [i for i, n in labels.items() if n.startswith("contradict")]
        if len(ent) != 1 or len(con) != 1:
            raise KnowlensError(
                f"Entailment judge '{spec}': config.id2label must name one entailment and one "
                f"contradiction class; got {dict(sorted(labels.items()))}. Use an NLI model "
                "(e.g. microsoft/deberta-large-mnli) or set id2label in its config.json."
            )
        self.entail_id, self.contradict_id = ent[0], con[0]

    def _judge(
        self,
        premises: Sequence[str],
        hypotheses: Sequence[str],
        questions: Sequence[str | None],
        batch_size: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        dev = next(self.model.parameters()).device
        probs = np.empty((len(premises), self.model.config.num_labels))
        with torch.inference_mode():
            for i in range(0, len(premises), batch_size):
                # the tokenizer pads the pair encodings (token type ids included)
                enc = self.tokenizer(
                    list(premises[i : i + batch_size]),
                    list(hypotheses[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(dev)
                logits = self.model(**enc).logits
                probs[i : i + batch_size] = torch.softmax(logits.float(), -1).cpu().numpy()
        return probs[:, self.entail_id], probs.argmax(axis=1) == self.entail_id


def parse_judge(spec: Any) -> tuple[str, str | None]:
    """``(kind, argument)`` of a judge config string; one-line ``ConfigError`` otherwise."""
    if isinstance(spec, str):
        kind, sep, arg = spec.strip().partition(":")
        arg = arg.strip()
        if kind == "normalized" and not sep:
            return "normalized", None
        if kind == "model" and (not sep or arg):
            return "model", arg or DEFAULT_JUDGE_MODEL
        if kind == "nli" and arg:
            return "nli", arg
    raise ConfigError(
        f"Unknown entailment judge {spec!r}; allowed: {JUDGE_FORMS}. Pass one of these as judge=..."
    )


_JUDGES: dict[str, EntailmentJudge] = {}
_LOCK = threading.Lock()


def load_judge(spec: str) -> EntailmentJudge:
    """The judge of config string ``spec`` (see the module docstring), loaded on first use
    and cached for the process."""
    kind, arg = parse_judge(spec)
    key = f"{kind}:{arg}" if arg else kind
    with _LOCK:
        judge = _JUDGES.get(key)
        if judge is None:
            if kind == "normalized":
                judge = NormalizedJudge()
            elif kind == "model":
                from knowlens.models import load_model

                judge = ModelJudge(load_model(str(arg)), key)
            else:
                judge = NLIJudge(str(arg), key)
            _JUDGES[key] = judge
    return judge
