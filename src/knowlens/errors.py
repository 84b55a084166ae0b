"""User-facing errors.

Every mistake a user can make (unknown model, corrupt GGUF, layer out of range, empty or
one-class dataset, malformed config) raises a :class:`KnowlensError` whose message is one
line naming what was wrong, what is allowed, and the fix. The CLI prints it without a
traceback; the Python API lets it propagate as a normal exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["ConfigError", "DataError", "KnowlensError", "ModelLoadError", "did_you_mean"]


class KnowlensError(Exception):
    """An error caused by the user's input, with a one-line message that names the fix."""


class ConfigError(KnowlensError, ValueError):
    """A malformed or inconsistent configuration value."""


class ModelLoadError(KnowlensError):
    """A model spec that cannot be resolved or loaded."""


class DataError(KnowlensError, ValueError):
    """Empty, one-class, or otherwise unusable data."""


def did_you_mean(name: str, choices: Iterable[str], *, what: str) -> str:
    """Format "Unknown {what} 'x'. Did you mean: y? Available: a, b, c." (lm-eval style)."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"Unknown {what} '{name}'.{hint} Available: {', '.join(choices)}."
