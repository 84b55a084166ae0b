"""Data model of the task library: `Example`, `GradeResult`, `Task`.

The contract other stages rely on:

* ``task.prompt(example) -> str``: the user-turn text (zero/k-shot already applied). The
  generation stage wraps it in the model's chat template (or uses it as-is for base models).
* ``task.grade(example, answer) -> GradeResult``: correctness of a generated answer, the
  grader's name, and the *exact answer span* (character offsets into ``answer``).
* ``task.name``, ``task.version``: part of every cache key; bump the version when content or
  template changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Example", "GradeResult", "TaskLike"]


@dataclass(frozen=True)
class Example:
    """One question.

    Attributes:
        id: stable identifier, unique within the task (used to align tables across stages).
        question: the question / instruction text (without few-shot context).
        answers: gold answers; the first is canonical, the rest are aliases.
        options: multiple-choice options (empty for open-ended tasks).
        topic: subject / category, e.g. an MMLU subject (used by per-topic analyses).
        context: supporting passage for "with context" tasks (prepended by the template).
        metadata: anything else (source row, difficulty, wrong option for two-option tasks).
    """

    id: str
    question: str
    answers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    topic: str | None = None
    context: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class GradeResult:
    """A grader's verdict on one answer.

    Attributes:
        correct: the verdict (``None`` if the grader could not decide, e.g. an LLM judge error).
        grader: name of the grader that decided (recorded on every graded row).
        span: ``(start, end)`` character offsets in the answer of the exact answer (the
            earliest gold alias for correct answers; the extracted short answer otherwise),
            or ``None`` if no span was found.
        extracted: the text of the span (or the extracted short answer).
    """

    correct: bool | None
    grader: str
    span: tuple[int, int] | None = None
    extracted: str | None = None


class TaskLike:
    """What the generation stage needs from a task (``knowlens.tasks.Task`` implements it).

    Attributes: ``name: str``, ``version: str``, ``examples: list[Example]``,
    ``max_new_tokens: int`` (a sensible answer length for this task).
    Methods: ``prompt(example) -> str`` and ``grade(example, answer) -> GradeResult``.
    """

    name: str
    version: str
    examples: list[Example]
    max_new_tokens: int

    def prompt(self, example: Example) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def grade(self, example: Example, answer: str) -> GradeResult:  # pragma: no cover
        raise NotImplementedError
