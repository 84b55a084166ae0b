"""The one response type every target (local model or API endpoint) returns."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Response"]


@dataclass
class Response:
    """One response: ``text`` is None when the request failed (``error`` says why)."""

    prompt_id: str
    text: str | None
    error: str | None = None
    cached: bool = False
