"""Forward hooks on unmodified HF modules (after baukit's ``nethook``).

    points = [HookPoint(blocks[0], "input"), HookPoint(blocks[3], "output")]
    with Trace(points, on_output=save, stop_after=1):
        run_until_stop(lambda: trunk(input_ids=ids))   # StopForward ends the pass early

Hooks are global state on the modules: ``Trace`` is a context manager that always removes
them, also when the forward pass raises. ``StopForward`` is raised by the hook of the
deepest module needed, so later layers (and the LM head) never run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class StopForward(Exception):
    """Raised inside a hook to end the forward pass once the last needed output exists."""


#: ``on_output(index, hidden)``, called positionally (writers name their arguments freely)
OutputFn = Callable[[int, torch.Tensor], None]


def first_tensor(output: Any) -> torch.Tensor:
    """The hidden states of a module output (HF layers return a tensor or a tuple)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hs = getattr(output, "last_hidden_state", None)
    if isinstance(hs, torch.Tensor):
        return hs
    raise TypeError(f"Cannot find the hidden states in a {type(output).__name__} output.")


@dataclass(frozen=True)
class HookPoint:
    """A module and which side of it is read: its ``"output"`` or its first ``"input"``."""

    module: torch.nn.Module
    side: str = "output"


class Trace:
    """Call ``on_output(i, hidden)`` at hook point ``points[i]``; optionally stop early.

    Args:
        points: where to read (their order defines ``i``).
        on_output: receives the hidden-state tensor (first element of tuple outputs). It must
            copy what it keeps: the tensor is reused by the network.
        stop_after: index into ``modules`` whose hook raises ``StopForward`` after
            ``on_output`` ran (None: let the forward pass finish).
        counter: optional list; every hooked call appends its index (tests count calls).
    """

    def __init__(
        self,
        points: Sequence[HookPoint],
        on_output: OutputFn,
        *,
        stop_after: int | None = None,
        counter: list[int] | None = None,
    ) -> None:
        self.points = list(points)
        self.on_output = on_output
        self.stop_after = stop_after
        self.counter = counter
        self._handles: list[Any] = []

    def _hook(self, index: int) -> Callable:
        def fire(value: Any) -> None:
            if self.counter is not None:
                self.counter.append(index)
            self.on_output(index, first_tensor(value))
            if index == self.stop_after:
                raise StopForward

        def out_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            fire(output)

        def in_hook(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            fire(args[0] if args else kwargs["hidden_states"])

        return in_hook if self.points[index].side == "input" else out_hook

    def __enter__(self) -> Trace:
        try:
            for i, p in enumerate(self.points):
                if p.side == "input":
                    h = p.module.register_forward_pre_hook(self._hook(i), with_kwargs=True)
                else:
                    h = p.module.register_forward_hook(self._hook(i))
                self._handles.append(h)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc: Any) -> None:
        self.close()


def run_until_stop(fn: Callable[[], Any]) -> bool:
    """Run a forward pass; True if it was ended early by ``StopForward``."""
    try:
        fn()
    except StopForward:
        return True
    return False
