"""The concrete `Task`: examples of one split, a prompt template, a grader, provenance.

Prompt rendering (the same logical prompt for every model; the generation stage adds the chat
template for chat models)::

    {instruction}                      <- once, optional
    {template with shot 1}{answer 1}   <- k shots from the train split (k_shot)
    {template with shot 2}{answer 2}
    {template with the example}        <- ends with e.g. "A:"; the model continues

Template placeholders: ``{question} {context} {options} {topic} {letters}`` and any key of
``Example.metadata``; an unknown placeholder is rejected when the task is built.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from knowlens.errors import ConfigError, DataError
from knowlens.tasks._types import Example, GradeResult, TaskLike

__all__ = [
    "PLACEHOLDERS",
    "SPLITS",
    "SPLIT_FRACTIONS",
    "Task",
    "check_template",
    "format_options",
    "placeholders",
    "split_examples",
]

PLACEHOLDERS = ("question", "context", "options", "topic", "letters")
SPLITS = ("train", "validation", "test")
# Fractions used when a source has no native splits.
SPLIT_FRACTIONS = {"train": 0.6, "validation": 0.1, "test": 0.3}


def placeholders(template: str) -> list[str]:
    """Field names used in a ``str.format`` template."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"Malformed prompt template {template!r}: {e}.") from None


def check_template(template: str, extra: Sequence[str] = (), *, task: str = "") -> None:
    """Raise a one-line error naming any placeholder the task cannot fill."""
    allowed = [*PLACEHOLDERS, *extra]
    bad = [f for f in placeholders(template) if f.split(".")[0].split("[")[0] not in allowed]
    if bad:
        raise ConfigError(
            f"Prompt template of task '{task}' uses unknown placeholder(s) "
            f"{', '.join('{' + b + '}' for b in bad)}; allowed: "
            f"{', '.join('{' + a + '}' for a in allowed)}. Fix the template."
        )


def format_options(options: Sequence[str]) -> str:
    """MMLU layout: one "A. option" line per option."""
    return "\n".join(f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options))


def split_examples(
    examples: Sequence[Example], seed: int = 0, fractions: dict[str, float] | None = None
) -> dict[str, list[Example]]:
    """Deterministic, disjoint train/validation/test split: order examples by a hash of
    (seed, id) and cut by ``fractions``. The same seed always gives the same split."""
    fr = fractions or SPLIT_FRACTIONS
    keyed = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.id}".encode()).hexdigest())
    n = len(keyed)
    n_train = round(n * fr["train"])
    n_val = round(n * fr["validation"])
    return {
        "train": keyed[:n_train],
        "validation": keyed[n_train : n_train + n_val],
        "test": keyed[n_train + n_val :],
    }


@dataclass
class Task(TaskLike):
    """A loaded task split: what generation needs (``TaskLike``) plus how it was made.

    Attributes:
        name, version: part of every cache key (the version changes with content/template).
        kind: "qa", "multiple_choice", "two_option", "classification", "numeric", "yes_no".
        grader: callable ``(example, answer) -> GradeResult`` with a ``name``.
        template: per-example prompt text with placeholders (see module doc).
        examples: the examples of ``split`` (after ``limit``).
        split: which split this is; ``seed`` made it.
        instruction: text put once before the shots.
        shots: few-shot examples (from the train split), rendered before each question; with
            ``shots_per_topic`` only the shots of the example's own topic are used.
        answer_format: how a shot's answer is written: "answer" (the first gold) or
            "letter" (multiple choice).
        max_new_tokens: a sensible answer length for this task.
        source, licence, description: provenance shown by ``knowlens tasks``.
        sizes: number of examples per split.
    """

    name: str
    version: str
    kind: str
    grader: Callable[[Example, str], GradeResult]
    template: str
    examples: list[Example]
    split: str = "test"
    seed: int = 0
    instruction: str = ""
    shots: list[Example] = field(default_factory=list)
    shot_separator: str = "\n\n"
    shots_per_topic: bool = False
    answer_format: str = "answer"
    max_new_tokens: int = 16
    source: str = ""
    licence: str = ""
    description: str = ""
    sizes: dict[str, int] = field(default_factory=dict)
    metadata_placeholders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_template(self.template, self.metadata_placeholders, task=self.name)
        check_template(self.instruction, (), task=self.name)

    def __len__(self) -> int:
        return len(self.examples)

    def __repr__(self) -> str:
        return (
            f"Task(name={self.name!r}, version={self.version!r}, split={self.split!r}, "
            f"n={len(self.examples)}, kind={self.kind!r}, grader={self.grader_name!r})"
        )

    @property
    def grader_name(self) -> str:
        return str(getattr(self.grader, "name", type(self.grader).__name__))

    @property
    def topics(self) -> list[str]:
        return sorted({e.topic for e in self.examples if e.topic})

    def _fields(self, ex: Example) -> dict[str, Any]:
        letters = "".join(chr(ord("A") + i) for i in range(len(ex.options)))
        f: dict[str, Any] = {k: v for k, v in ex.metadata.items() if isinstance(k, str)}
        f.update(
            question=ex.question,
            context=ex.context or "",
            options=format_options(ex.options),
            topic=(ex.topic or "").replace("_", " "),
            letters=", ".join(letters),
        )
        return f

    def render(self, ex: Example) -> str:
        """The per-example block (no instruction, no shots)."""
        try:
            return self.template.format(**self._fields(ex))
        except KeyError as e:
            raise DataError(
                f"Task '{self.name}': example {ex.id!r} has no metadata field {e} used by the "
                "template. Add it to every example or drop it from the template."
            ) from None

    def shot_answer(self, ex: Example) -> str:
        if self.answer_format == "letter" and ex.options:
            gold = ex.answers[0]
            if len(gold) == 1 and gold.isupper():
                return gold
            return chr(ord("A") + [o.lower() for o in ex.options].index(gold.lower()))
        return ex.answers[0] if ex.answers else ""

    def prompt(self, example: Example) -> str:
        """User-turn text: instruction, k shots (never the example itself), the question."""
        parts = []
        if self.instruction:
            parts.append(self.instruction.format(**self._fields(example)))
        for s in self.shots:
            if self.shots_per_topic and s.topic != example.topic:
                continue
            if s.id != example.id:
                parts.append(f"{self.render(s)} {self.shot_answer(s)}")
        parts.append(self.render(example))
        return self.shot_separator.join(parts)

    def grade(self, example: Example, answer: str) -> GradeResult:
        return self.grader(example, answer)

    def describe(self) -> dict[str, Any]:
        """What a cache key / manifest should record about this task."""
        return {
            "name": self.name,
            "version": self.version,
            "split": self.split,
            "seed": self.seed,
            "n": len(self.examples),
            "kind": self.kind,
            "grader": self.grader_name,
            "template": self.template,
            "instruction": self.instruction,
            "shots": [s.id for s in self.shots],
            "source": self.source,
            "licence": self.licence,
        }
