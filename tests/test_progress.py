"""Progress in a log file: plain lines every 10 % and at least every 30 s when not a terminal."""

from __future__ import annotations

import re
import time

from knowlens._progress import progress_bar


def _lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_redirected_output_gets_a_line_every_tenth(capsys):
    with progress_bar(50, "extract tiny · all") as advance:
        for _ in range(50):
            advance(1)
    lines = _lines(capsys)
    assert lines[0].startswith("extract tiny · all: 0/50 (0%)")
    assert lines[-1].startswith("extract tiny · all: 50/50 (100%)")
    done = [int(re.search(r": (\d+)/50", ln).group(1)) for ln in lines]
    assert done == sorted(done) and len(lines) == 11  # 0, 5, 10, ..., 50


def test_a_long_step_still_logs_every_interval(capsys):
    with progress_bar(3, "train", log_every_s=0.2) as advance:
        time.sleep(0.7)  # one step longer than the interval
        advance(3)
    lines = _lines(capsys)
    assert sum(ln.startswith("train: 0/3") for ln in lines) >= 3  # start + >= 2 ticks
    assert lines[-1].startswith("train: 3/3 (100%)")


def test_disabled_is_silent(capsys):
    with progress_bar(10, "quiet", enabled=False) as advance:
        advance(10)
    assert _lines(capsys) == []
