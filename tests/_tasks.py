"""Tiny in-code tasks shared by the generation, sampling, capture and fault tests.

``QUESTIONS`` are prompts that exercise the tiny tokenizer (a one-token prompt, a few-shot
line, a refusal-like sentence); ``RecordingTask`` is a ``TaskLike`` over given examples that
records what it graded, so tests can check which rows were (re)graded; subclasses say how.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knowlens.tasks import Example, GradeResult

QUESTIONS = [
    "What is the capital of France?",
    "Hi",
    "Q: Which country is Lyon in? A: France. Q: 12 plus 30?",
    "Sure, here is how to bake bread.",
    "Is the proposed answer correct?",
    "The quick brown fox",
    "Berlin",
]


def examples(
    n: int, gold: str = "e", question: str | None = None, topic: str | None = None
) -> list[Example]:
    """``n`` examples ``q0..q{n-1}`` cycling through ``QUESTIONS`` (or all ``question``)."""
    extra: dict[str, Any] = {} if topic is None else {"topic": topic}
    return [
        Example(
            id=f"q{i}",
            question=question or QUESTIONS[i % len(QUESTIONS)],
            answers=(gold,),
            **extra,
        )
        for i in range(n)
    ]


@dataclass
class RecordingTask:
    """A TaskLike: prompt = the question; ``grade`` records ``record(example, answer)`` in
    ``graded`` and returns ``_grade``'s result."""

    examples: list[Example]
    name: str = "tiny"
    version: str = "1"
    max_new_tokens: int = 8
    graded: list[Any] = field(default_factory=list)

    def prompt(self, example: Example) -> str:
        return example.question

    def record(self, example: Example, answer: str) -> Any:
        return example.id

    def grade(self, example: Example, answer: str) -> GradeResult:
        self.graded.append(self.record(example, answer))
        return self._grade(example, answer)

    def _grade(self, example: Example, answer: str) -> GradeResult:
        raise NotImplementedError
