"""Progress for long steps: a rich bar on a terminal, plain log lines anywhere else.

    with progress_bar(len(items), "extract smollm2 · all") as advance:
        for batch in batches:
            ...
            advance(len(batch))

When stderr is not a terminal (``make demo > log``, CI, a notebook's captured output) a bar
would show one frozen line for minutes, so a line ``description: done/total (pct) elapsed``
is written at every 10 % and at least every 30 s instead.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["progress_bar"]

LOG_EVERY_S = 30.0
LOG_FRACTION = 0.1


@contextlib.contextmanager
def progress_bar(
    total: int,
    description: str,
    enabled: bool = True,
    *,
    log_every_s: float = LOG_EVERY_S,
    log_fraction: float = LOG_FRACTION,
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1)``. Disabled (or nothing to do): a no-op callable."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        with _log_lines(total, description, log_every_s, log_fraction) as advance:
            yield advance
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as prog:
        tid = prog.add_task(description, total=total)
        yield lambda n=1: prog.advance(tid, n)


@contextlib.contextmanager
def _log_lines(
    total: int, description: str, every_s: float, fraction: float
) -> Iterator[Callable[..., None]]:
    t0 = time.perf_counter()
    state = {"done": 0, "logged": -1, "last": t0}
    lock, stop = threading.Lock(), threading.Event()

    def line() -> None:  # caller holds the lock
        done, now = state["done"], time.perf_counter()
        print(
            f"{description}: {done}/{total} ({100 * done / total:.0f}%) {now - t0:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        state["logged"], state["last"] = done, now

    def advance(n: int = 1) -> None:
        with lock:
            state["done"] += n
            step = max(1, int(total * fraction))
            if state["done"] >= total or state["done"] - max(state["logged"], 0) >= step:
                line()

    def ticker() -> None:  # a line at least every `every_s`, even inside one long step
        while not stop.wait(every_s / 4):
            with lock:
                if time.perf_counter() - state["last"] >= every_s:
                    line()

    with lock:
        line()  # 0/total: the step has started
    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        yield advance
    finally:
        stop.set()
        thread.join()
        with lock:
            if state["logged"] != state["done"]:
                line()
