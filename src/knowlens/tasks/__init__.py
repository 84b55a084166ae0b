"""Tasks: questions, prompt templates, graders, built-in offline tasks, benchmark loaders.

    >>> from knowlens.tasks import load_task
    >>> task = load_task("capitals", split="test", limit=50)
    >>> task.prompt(task.examples[0]), task.grade(task.examples[0], "Paris")

``knowlens tasks`` (or :func:`list_tasks`) lists every task with size, kind, topics, source
and licence.
"""

from knowlens.tasks._load import get_spec, load_task, splits_of
from knowlens.tasks._registry import TaskSpec, list_tasks, register_task, task_names
from knowlens.tasks._task import Task, format_options, split_examples
from knowlens.tasks._types import Example, GradeResult, TaskLike
from knowlens.tasks.graders import extract_short_answer, find_alias, make_grader, normalize

__all__ = [
    "Example",
    "GradeResult",
    "Task",
    "TaskLike",
    "TaskSpec",
    "extract_short_answer",
    "find_alias",
    "format_options",
    "get_spec",
    "list_tasks",
    "load_task",
    "make_grader",
    "normalize",
    "register_task",
    "split_examples",
    "splits_of",
    "task_names",
]
