"""Graders: decide whether a generated answer is correct and where the exact answer is.

Every grader is a small frozen dataclass with a ``name`` and ``__call__(example, answer) ->
GradeResult``; the name is recorded on every graded row. Matching works on *words*, never on
raw substrings, so "4" does not match inside "42" and "Nice" does not match inside "Venice".

Normalisation (SQuAD style, applied to both gold and answer): lower case, accents folded,
punctuation removed (so "D.C." == "DC"), articles (a, an, the) dropped, whitespace collapsed.
Character offsets always point into the *original* answer text.

    >>> from knowlens.tasks import Example
    >>> ex = Example("1", "What is the capital of France?", ("Paris",))
    >>> AliasGrader()(ex, "It is Paris.").span
    (6, 11)
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from knowlens.errors import ConfigError, did_you_mean
from knowlens.tasks._types import Example, GradeResult

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "GRADERS",
    "NLI_LABELS",
    "SENTIMENT_LABELS",
    "YES_NO",
    "AliasGrader",
    "ExactMatchGrader",
    "ExtractingGrader",
    "JudgeGrader",
    "LLMExtractor",
    "LabelGrader",
    "MultipleChoiceGrader",
    "NumericGrader",
    "TwoOptionGrader",
    "extract_short_answer",
    "find_alias",
    "find_numbers",
    "make_grader",
    "model_judge",
    "normalize",
]

_ARTICLES = {"a", "an", "the"}
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "«", "»", "–", "—", "…", "¿", "¡"}


def _fold(s: str) -> str:
    """Lower case + strip accents ("Brasília" -> "brasilia")."""
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).lower()


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lower, fold accents, drop punctuation and articles."""
    return " ".join(w for w, _, _ in _words(text))


def _words(text: str) -> list[tuple[str, int, int]]:
    """Normalised words of ``text`` with their (start, end) char offsets in ``text``.

    Whitespace and hyphen/slash split words; other punctuation is deleted inside a word
    ("D.C." -> "dc", "U.S." -> "us"); articles are dropped.
    """
    out = []
    for m in re.finditer(r"[^\s\-/–—]+", text):
        raw = m.group()
        # trim punctuation at both ends so offsets point at the word itself
        a, b = 0, len(raw)
        while a < b and raw[a] in _PUNCT:
            a += 1
        while b > a and raw[b - 1] in _PUNCT:
            b -= 1
        if a == b:
            continue
        w = "".join(c for c in _fold(raw[a:b]) if c not in _PUNCT)
        if not w or w in _ARTICLES:
            continue
        out.append((w, m.start() + a, m.start() + b))
    return out


def find_alias(answer: str, aliases: Sequence[str]) -> tuple[int, int, str] | None:
    """Earliest occurrence (word-aligned, normalised) of any alias in ``answer``.

    Returns ``(start, end, alias)`` with char offsets into ``answer``; on ties the longest
    alias wins ("New York City" over "New York"). ``None`` when no alias occurs.
    """
    words = _words(answer)
    toks = [w for w, _, _ in words]
    best: tuple[int, int, str] | None = None
    for alias in aliases:
        aw = [w for w, _, _ in _words(alias)]
        if not aw:
            continue
        n = len(aw)
        for i in range(len(toks) - n + 1):
            if toks[i : i + n] == aw:
                s, e = words[i][1], words[i + n - 1][2]
                if best is None or s < best[0] or (s == best[0] and e > best[1]):
                    best = (s, e, alias)
                break
    return best


# --- short-answer extraction (span of a wrong answer) ---------------------------------------

_LEAD = re.compile(
    r"\s*(?:(?:final\s+)?answer\s*[:\-]|a\s*:|the\s+answer\s+is\s*:?|it\s+is\s+|it's\s+)\s*",
    re.IGNORECASE,
)


# sentence end / clause break, but not after initials or "St." ("U.S. Virgin", "St. Croix")
_CLAUSE_END = re.compile(
    r"(?:(?<!\b[A-Z])(?<!\b(?:St|Mt|Ft|Dr|Mr|Ms))[.!?;](?:\s|$)"
    r"|,\s|\s\(|\s(?:because|which|and it)\s)"
)
_COPULA = re.compile(r"\s(?:is|are|was|were)\s(?:called\s|named\s)?", re.IGNORECASE)


def extract_short_answer(answer: str, question: str | None = None) -> tuple[int, int] | None:
    """Rule-based extractor: the first line's first clause, minus a leading "Answer:" and
    trailing punctuation. With ``question``, a sentence answer that echoes it is cut at its
    last copula: "The capital of Peru is Quito." -> "Quito"; "Quito is the capital of Peru"
    -> "Quito". Returns char offsets into ``answer`` (``None`` if empty)."""
    m = re.search(r"\S", answer)
    if not m:
        return None
    start = m.start()
    line_end = answer.find("\n", start)
    end = len(answer) if line_end < 0 else line_end
    lead = _LEAD.match(answer, start)
    if lead and lead.end() < end:
        start = lead.end()
    # cut at the first sentence end / clause break (not after initials such as "U.S.")
    cut = _CLAUSE_END.search(answer[start:end])
    if cut and cut.start() > 0:
        end = start + cut.start()
    if question:
        start, end = _after_echo(answer, start, end, question)
    while end > start and (answer[end - 1].isspace() or answer[end - 1] in _PUNCT):
        end -= 1
    while start < end and answer[start] in "\"'“‘(*":
        start += 1
    return (start, end) if end > start else None


def _after_echo(answer: str, start: int, end: int, question: str) -> tuple[int, int]:
    """Split "A is B" at its last copula and keep the side that echoes the question less
    (ties: the shorter side), e.g. "Guam is the capital of Guam" -> "Guam"."""
    cops = list(_COPULA.finditer(answer, start, end))
    if not cops:
        return start, end
    c = cops[-1]
    q = {w for w, _, _ in _words(question)}
    left = [w for w, _, _ in _words(answer[start : c.start()])]
    right = [w for w, _, _ in _words(answer[c.end() : end])]
    if not left or not right:
        return start, end
    f_left = sum(w in q for w in left) / len(left)
    f_right = sum(w in q for w in right) / len(right)
    if f_left == f_right == 0:
        return start, end  # no echo: keep the whole clause
    if (f_left, len(left)) < (f_right, len(right)):
        return start, c.start()
    s = c.end()
    art = re.match(r"(?:the|a|an)\s+", answer[s:end], re.IGNORECASE)
    return (s + art.end() if art else s), end


def _result(
    name: str,
    correct: bool | None,
    answer: str,
    span: tuple[int, int] | None,
    question: str | None = None,
) -> GradeResult:
    if span is None and correct is not True:
        span = extract_short_answer(answer, question)
    return GradeResult(correct, name, span, answer[span[0] : span[1]] if span else None)


# --- graders --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExactMatchGrader:
    """Normalised exact match of the answer's first line (or the extracted short answer)
    against any alias."""

    name: str = "exact_match"

    def __call__(self, example: Example, answer: str) -> GradeResult:
        golds = {normalize(a) for a in example.answers}
        span = extract_short_answer(answer)
        cands = [answer.split("\n", 1)[0]]
        if span:
            cands.append(answer[span[0] : span[1]])
        ok = any(normalize(c) in golds for c in cands)
        if ok:
            hit = find_alias(answer, example.answers)
            span = (hit[0], hit[1]) if hit else span
        return _result(self.name, ok, answer, span)


@dataclass(frozen=True)
class AliasGrader:
    """LLMsKnow rule for TriviaQA / HotpotQA / Movies: correct iff any gold alias occurs in
    the answer (normalised, word-aligned). Span: earliest alias occurrence."""

    name: str = "alias_substring"

    def __call__(self, example: Example, answer: str) -> GradeResult:
        hit = find_alias(answer, example.answers)
        if hit:
            return _result(self.name, True, answer, (hit[0], hit[1]))
        return _result(self.name, False, answer, None, example.question)


_NUM = re.compile(r"(?<![\w.])[-−]?\$?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])|(?<![\w.])[-−]?\.\d+(?!\w)")


def _parse_number(s: str) -> float | None:
    s = s.replace(",", "").replace("$", "").replace("−", "-").strip()
    try:
        return float(s)
    except ValueError:
        frac = re.fullmatch(r"(-?\d+)\s*/\s*(\d+)", s)
        if frac and int(frac.group(2)) != 0:
            return int(frac.group(1)) / int(frac.group(2))
        return None


def find_numbers(answer: str) -> list[tuple[float, int, int]]:
    """Standalone numbers in ``answer`` (not inside words like "covid19" or "3rd")."""
    out = []
    for m in _NUM.finditer(answer):
        v = _parse_number(m.group())
        if v is not None:
            out.append((v, m.start(), m.end()))
    return out


@dataclass(frozen=True)
class NumericGrader:
    """Numeric answer within ``tol`` (absolute, plus ``rel_tol`` relative).

    ``mode="first"`` compares the first number in the answer; ``mode="any"`` (the LLMsKnow
    Math rule, "numeric containment") accepts any number in the answer.
    """

    tol: float = 1e-6
    rel_tol: float = 0.0
    mode: str = "first"
    name: str = "numeric"

    def __post_init__(self) -> None:
        if self.mode not in {"first", "any"}:
            raise ConfigError(f"NumericGrader mode must be 'first' or 'any'; got '{self.mode}'.")

    def __call__(self, example: Example, answer: str) -> GradeResult:
        golds = [g for g in (_parse_number(a) for a in example.answers) if g is not None]
        nums = find_numbers(answer)
        if not nums:
            return GradeResult(False, self.name, None, None)
        pool = nums if self.mode == "any" else nums[:1]
        for v, s, e in pool:
            if any(abs(v - g) <= self.tol + self.rel_tol * abs(g) for g in golds):
                return GradeResult(True, self.name, (s, e), answer[s:e])
        _, s, e = nums[0]
        return GradeResult(False, self.name, (s, e), answer[s:e])


_LETTER = re.compile(
    r"(?:^|(?<=\s)|(?<=\())(?:answer\s*(?:is)?\s*:?\s*)?\(?([A-J])(?:[).:,]|\s|$)",
)


@dataclass(frozen=True)
class MultipleChoiceGrader:
    """Multiple choice: the answer names a letter ("B", "(B)", "B.", "Answer: B") or an option's
    text; the earliest such mention decides. Gold is ``answers[0]`` (a letter or the option
    text)."""

    name: str = "multiple_choice"

    def __call__(self, example: Example, answer: str) -> GradeResult:
        opts = list(example.options)
        letters = [chr(ord("A") + i) for i in range(len(opts))]
        gold = example.answers[0] if example.answers else ""
        gold_i = letters.index(gold) if gold in letters else _index_norm(opts, gold)
        picks: list[tuple[int, int, int]] = []  # (start, end, option index)
        for m in _LETTER.finditer(answer):
            L = m.group(1)
            if L in letters:
                # a bare capital "A" starting a sentence ("A cat ...") is not a choice
                after = answer[m.end(1) : m.end(1) + 2]
                if L == "A" and re.match(r"\s[a-z]", after):
                    continue
                picks.append((m.start(1), m.end(1), letters.index(L)))
                break
        for i, o in enumerate(opts):
            hit = find_alias(answer, [o])
            if hit:
                picks.append((hit[0], hit[1], i))
        if not picks:
            return _result(self.name, False, answer, None, example.question)
        s, e, i = min(picks, key=lambda p: (p[0], -p[1]))
        return GradeResult(i == gold_i, self.name, (s, e), answer[s:e])


def _index_norm(options: Sequence[str], text: str) -> int:
    n = normalize(text)
    for i, o in enumerate(options):
        if normalize(o) == n:
            return i
    return -1


@dataclass(frozen=True)
class TwoOptionGrader:
    """WinoBias / Winogrande rule: correct iff the correct option occurs and, if the wrong
    option also occurs, the correct one occurs first. The wrong option is
    ``metadata["wrong_answer"]`` or the option that is not gold."""

    name: str = "option_order"

    def __call__(self, example: Example, answer: str) -> GradeResult:
        wrong = example.metadata.get("wrong_answer")
        if wrong is None:
            golds = {normalize(a) for a in example.answers}
            rest = [o for o in example.options if normalize(o) not in golds]
            wrong = rest[0] if rest else None
        good = find_alias(answer, example.answers)
        bad = find_alias(answer, [wrong]) if wrong else None
        if good and (bad is None or good[0] < bad[0] or (good[0] == bad[0] and good[1] > bad[1])):
            return GradeResult(True, self.name, (good[0], good[1]), answer[good[0] : good[1]])
        if bad:
            return GradeResult(False, self.name, (bad[0], bad[1]), answer[bad[0] : bad[1]])
        return _result(self.name, False, answer, None, example.question)


@dataclass(frozen=True)
class LabelGrader:
    """First label word with synonyms (NLI, sentiment, yes/no): the earliest synonym of any
    label in the answer decides. Gold is ``answers[0]`` (a label name)."""

    labels: Mapping[str, Sequence[str]] = field(default_factory=dict)
    name: str = "label_word"

    def __call__(self, example: Example, answer: str) -> GradeResult:
        best: tuple[int, int, str] | None = None
        for label, syns in self.labels.items():
            hit = find_alias(answer, [label, *syns])
            if hit and (best is None or hit[0] < best[0]):
                best = (hit[0], hit[1], label)
        if best is None:
            return _result(self.name, False, answer, None, example.question)
        gold = normalize(example.answers[0]) if example.answers else ""
        return GradeResult(
            normalize(best[2]) == gold, self.name, (best[0], best[1]), answer[best[0] : best[1]]
        )


YES_NO = {"yes": ("true", "correct", "right"), "no": ("false", "incorrect", "wrong", "not")}
NLI_LABELS = {
    "entailment": ("entails", "entailed", "entail", "yes", "true"),
    "contradiction": ("contradicts", "contradict", "contradictory", "no", "false"),
    "neutral": ("neither", "maybe", "unknown", "undetermined", "cannot be determined"),
}
SENTIMENT_LABELS = {
    "positive": ("pos", "good", "favorable", "favourable"),
    "negative": ("neg", "bad", "unfavorable", "unfavourable"),
}


@dataclass(frozen=True)
class JudgeGrader:
    """LLM judge: asks a judge whether the answer is equivalent to the gold answer.

    ``judge`` is any callable ``prompt -> str`` ("yes"/"no" text), e.g. a local model wrapped
    by :func:`model_judge` or an API client. Verdicts are cached on disk
    keyed by (judge_id, question, gold, answer); the grader name records the judge identity
    (``llm_judge:<judge_id>``). Unparseable verdicts give ``correct=None``.
    """

    judge: Callable[[str], str] = field(compare=False, repr=False, default=lambda p: "")
    judge_id: str = "unknown"
    cache: bool = True
    name: str = "llm_judge"

    PROMPT = (
        "Question: {question}\nGold answer: {gold}\nProposed answer: {answer}\n"
        "Does the proposed answer mean the same as the gold answer? Answer yes or no.\nAnswer:"
    )

    def __call__(self, example: Example, answer: str) -> GradeResult:
        from knowlens._cache import atomic_write_text, cache_root, stable_hash

        gold = " / ".join(example.answers)
        prompt = self.PROMPT.format(question=example.question, gold=gold, answer=answer.strip())
        path = cache_root() / "judge" / f"{stable_hash({'j': self.judge_id, 'p': prompt})}.txt"
        if self.cache and path.exists():
            verdict = path.read_text()
        else:
            verdict = str(self.judge(prompt))
            if self.cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, verdict)
        yes, no = find_alias(verdict, ["yes"]), find_alias(verdict, ["no"])
        correct: bool | None = None
        if yes or no:  # the earlier of "yes" / "no" decides
            correct = no is None or (yes is not None and yes[0] < no[0])
        name = f"{self.name}:{self.judge_id}"
        hit = find_alias(answer, example.answers)
        return _result(name, correct, answer, (hit[0], hit[1]) if hit and correct else None)


def model_judge(handle: ModelHandle) -> Callable[[str], str]:
    """A judge callable from a local ``ModelHandle``: the model's chat-formatted prompt, then
    "yes" if the next-token logit of "yes" beats that of "no" (one forward pass, no sampling).
    Use with ``JudgeGrader(judge=model_judge(h), judge_id=h.fingerprint)``."""
    import torch

    tok = handle.tokenizer

    def first_id(word: str) -> list[int]:
        ids = {
            tok.encode(v, add_special_tokens=False)[0]
            for v in (word, " " + word, word.capitalize(), " " + word.capitalize())
        }
        return sorted(ids)

    yes, no = first_id("yes"), first_id("no")

    def judge(prompt: str) -> str:
        text = handle.format_prompt(prompt)
        enc = tok(text, return_tensors="pt", add_special_tokens=not handle.has_chat_template)
        with torch.inference_mode():
            logits = handle.model(**enc.to(handle.model.device)).logits[0, -1]
        return "yes" if logits[yes].max() > logits[no].max() else "no"

    return judge


@dataclass(frozen=True)
class LLMExtractor:
    """Optional LLM extractor of the exact answer (Orgad et al. 2024): asks ``extract``
    (any ``prompt -> str`` callable) for the short answer inside a long generation and
    locates its text in the answer. Wrap a grader with :class:`ExtractingGrader` to use it
    when the rule-based extractor is not enough."""

    extract: Callable[[str], str] = field(compare=False, repr=False, default=lambda p: "")

    PROMPT = (
        "Extract from the following long answer the short answer, only the relevant tokens. "
        "If the long answer does not answer the question, output NO ANSWER.\n"
        "Q: {question}\nA: {answer}\nExact answer:"
    )

    def __call__(self, example: Example, answer: str) -> tuple[int, int] | None:
        out = str(self.extract(self.PROMPT.format(question=example.question, answer=answer)))
        out = out.strip().split("\n")[0].strip().strip(".\"'")
        if not out or "no answer" in out.lower():
            return None
        hit = find_alias(answer, [out])
        return (hit[0], hit[1]) if hit else None


@dataclass(frozen=True)
class ExtractingGrader:
    """A grader whose span for *wrong* answers comes from an :class:`LLMExtractor` (falling
    back to the rule-based span when the extractor's text is not in the answer)."""

    grader: Callable[[Example, str], GradeResult] = field(default_factory=lambda: AliasGrader())
    extractor: LLMExtractor = field(default_factory=LLMExtractor)

    @property
    def name(self) -> str:
        return str(getattr(self.grader, "name", "grader"))

    def __call__(self, example: Example, answer: str) -> GradeResult:
        r = self.grader(example, answer)
        if r.correct:
            return r
        span = self.extractor(example, answer) or r.span
        return GradeResult(r.correct, r.grader, span, answer[span[0] : span[1]] if span else None)


GRADERS: dict[str, Callable[..., Callable[[Example, str], GradeResult]]] = {
    "exact_match": ExactMatchGrader,
    "alias_substring": AliasGrader,
    "numeric": NumericGrader,
    "multiple_choice": MultipleChoiceGrader,
    "option_order": TwoOptionGrader,
    "label_word": LabelGrader,
    "yes_no": lambda **kw: LabelGrader(labels=kw.pop("labels", YES_NO), name="yes_no", **kw),
    "nli": lambda **kw: LabelGrader(labels=kw.pop("labels", NLI_LABELS), name="nli_label", **kw),
    "sentiment": lambda **kw: LabelGrader(
        labels=kw.pop("labels", SENTIMENT_LABELS), name="sentiment_label", **kw
    ),
}


def make_grader(name: str, **kwargs: object) -> Callable[[Example, str], GradeResult]:
    """Grader by name (YAML tasks): exact_match, alias_substring, numeric, multiple_choice,
    option_order, label_word (needs labels=), yes_no, nli, sentiment."""
    if name not in GRADERS:
        raise ConfigError(did_you_mean(name, GRADERS, what="grader"))
    try:
        return GRADERS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"Bad arguments for grader '{name}': {e}. Given: {kwargs}.") from None
