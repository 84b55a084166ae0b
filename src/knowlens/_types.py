"""Typed records passed between stages: `Generation`, `GenerationSet`, `ActivationSet`,
`Sample`, `SampleSet`, `SampledGenerations`.

They live here (not in their producing modules) so that estimators, experiments and
executors can depend on the *data* without importing the code that makes it.

Token alignment of one generation (teacher-forced extraction runs over prompt + answer)::

    position:  0 ........... P-1 | P ............ P+A-1
    tokens:    prompt_ids        | answer_ids
                         ^ last_prompt          ^ last
                                   [exact_answer_tokens) = [s, e) inside answer_ids
                                    -> absolute positions P+s .. P+e-1
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "ActivationSet",
    "Generation",
    "GenerationSet",
    "Sample",
    "SampleSet",
    "SampledGenerations",
]


@dataclass
class Generation:
    """One example's greedy answer, its token statistics and its grade.

    Attributes:
        example_id: the task example's id.
        task: task name.
        prompt: the exact text fed to the model (chat template applied when used).
        answer: decoded answer text (special tokens and the stop token removed).
        prompt_ids: token ids of ``prompt`` (no padding), shape (P,).
        answer_ids: generated token ids up to and excluding the stop token, shape (A,).
        token_logprobs: log p(token) for each answer token under the model, shape (A,).
        token_entropies: entropy (nats) of the next-token distribution at each step, (A,).
        correct: graded correctness (None if undecided).
        grader: name of the grader that decided.
        gold: gold answers (canonical first).
        exact_answer: text of the exact answer span (None if not located).
        exact_answer_chars: (start, end) character offsets of the span in ``answer``.
        exact_answer_tokens: (start, end) token offsets of the span in ``answer_ids``
            (end exclusive); None if not located.
        topic: the example's topic.
        stop_reason: "eos", "newline" or "length".
        user_turn: the user-turn text the model was asked (``prompt`` before the chat
            template); None for rows made before it was recorded (``knowlens.estimators.
            user_turn`` then recovers it from ``prompt``).
    """

    example_id: str
    task: str
    prompt: str
    answer: str
    prompt_ids: list[int]
    answer_ids: list[int]
    token_logprobs: list[float]
    token_entropies: list[float]
    correct: bool | None
    grader: str
    gold: list[str] = field(default_factory=list)
    exact_answer: str | None = None
    exact_answer_chars: tuple[int, int] | None = None
    exact_answer_tokens: tuple[int, int] | None = None
    topic: str | None = None
    stop_reason: str = "eos"
    user_turn: str | None = None


_LIST_COLS = ("prompt_ids", "answer_ids", "token_logprobs", "token_entropies", "gold")
_PAIR_COLS = ("exact_answer_chars", "exact_answer_tokens")


@dataclass
class GenerationSet:
    """All generations of one model on one task (split), plus how they were made.

    ``meta`` records model name + fingerprint, task name + version + split, decoding
    settings and the cache key, so every downstream number can name its inputs.
    """

    rows: list[Generation]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Generation]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> Generation:
        return self.rows[i]

    @property
    def example_ids(self) -> list[str]:
        return [r.example_id for r in self.rows]

    @property
    def correct(self) -> np.ndarray:
        """Labels, shape (n,), float: 1.0 correct, 0.0 wrong, NaN undecided."""
        return np.array([np.nan if r.correct is None else float(r.correct) for r in self.rows])

    @property
    def accuracy(self) -> float:
        y = self.correct
        y = y[~np.isnan(y)]
        return float(y.mean()) if len(y) else float("nan")

    def subset(self, ids: Sequence[str] | np.ndarray) -> GenerationSet:
        """Rows selected by example ids (in the given order) or by a boolean/int index array."""
        if isinstance(ids, np.ndarray) and ids.dtype != object:
            idx = np.flatnonzero(ids) if ids.dtype == bool else ids
            return GenerationSet([self.rows[int(i)] for i in idx], dict(self.meta))
        pos = {r.example_id: r for r in self.rows}
        return GenerationSet([pos[i] for i in ids], dict(self.meta))

    def to_frame(self) -> pd.DataFrame:
        """One row per generation; list columns stay lists (parquet stores them natively)."""
        df = pd.DataFrame(
            [asdict(r) for r in self.rows], columns=[f.name for f in fields(Generation)]
        )
        for c in _PAIR_COLS:
            df[c] = df[c].map(lambda v: None if v is None else list(v))
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, meta: dict[str, Any] | None = None) -> GenerationSet:
        rows = []
        for rec in df.to_dict("records"):
            for c in _LIST_COLS:
                v = rec.get(c)
                rec[c] = [] if v is None else [x.item() if hasattr(x, "item") else x for x in v]
            for c in _PAIR_COLS:
                v = rec.get(c)
                rec[c] = (
                    None
                    if v is None or (isinstance(v, float) and np.isnan(v))
                    else (int(v[0]), int(v[1]))
                )
            if rec.get("correct") is not None and not (
                isinstance(rec["correct"], float) and np.isnan(rec["correct"])
            ):
                rec["correct"] = bool(rec["correct"])
            else:
                rec["correct"] = None
            # NaN: a merged frame where some shards predate the column; missing -> default
            for c in ("exact_answer", "topic", "user_turn"):
                if isinstance(rec.get(c), float):
                    rec[c] = None
            rows.append(Generation(**rec))
        return cls(rows, dict(meta or {}))

    def save(self, directory: str | Path) -> None:
        """Write ``generations.parquet`` + ``meta.json`` into ``directory`` (not atomic by itself)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_parquet(d / "generations.parquet", index=False)
        (d / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True, default=str))

    @classmethod
    def load(cls, directory: str | Path) -> GenerationSet:
        """Read a folder written by :meth:`save`; a missing, truncated or garbled file raises a
        one-line ``DataError`` (never a pyarrow / json traceback)."""
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
            if not isinstance(meta, dict):
                raise ValueError("meta.json does not hold a JSON object")
            return cls.from_frame(pd.read_parquet(d / "generations.parquet"), meta)
        except Exception as e:  # pyarrow, json and pandas raise many types for a bad file
            from knowlens.errors import DataError

            why = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
            raise DataError(
                f"Cannot read generations from {d} ({type(e).__name__}: {why}); the folder is "
                "damaged or incomplete: delete it and generate again."
            ) from None


@dataclass
class Sample:
    """K sampled answers of one example (the same prompt as its greedy ``Generation``).

    Attributes:
        example_id, task, prompt, user_turn, prompt_ids: as in ``Generation``.
        texts: the K decoded answers (special tokens and the stop token removed).
        answer_ids: the K generated token id lists (stop token excluded).
        token_logprobs: log p(token) under the model's raw distribution (T=1, no top-p).
        sampling_logprobs: log p(token) under the distribution sampled from (temperature and
            top-p applied, renormalised); equal to ``token_logprobs`` at T=1, top_p=1.
        token_entropies: entropy (nats) of the raw next-token distribution at each step.
        stop_reasons: "eos", "newline" or "length" per sample.
        correct: each sample graded by the task's grader (None: undecided or no grader).
        gold: gold answers (canonical first).
    """

    example_id: str
    task: str
    prompt: str
    user_turn: str | None
    prompt_ids: list[int]
    texts: list[str]
    answer_ids: list[list[int]]
    token_logprobs: list[list[float]]
    sampling_logprobs: list[list[float]]
    token_entropies: list[list[float]]
    stop_reasons: list[str]
    correct: list[bool | None]
    gold: list[str] = field(default_factory=list)


def _plain(v: Any) -> Any:
    """Parquet's nested numpy arrays -> Python lists of Python scalars."""
    if isinstance(v, (np.ndarray, list, tuple)):
        return [_plain(x) for x in v]
    return v.item() if isinstance(v, np.generic) else v


def _missing_ids(missing: list[str], have: int, what: str, fix: str) -> Any:
    from knowlens.errors import DataError

    shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
    return DataError(
        f"{len(missing)} example id(s) are not in the {what} ({have} rows): {shown}; {fix}"
    )


@dataclass
class SampleSet:
    """Sampled answers of one model to a set of prompts, plus how they were drawn.

    ``meta`` holds the cache key, model name + fingerprint, task, and the sampling settings
    (``k``, ``temperature``, ``top_p``, ``seed``, ``max_new_tokens``, ...).
    """

    rows: list[Sample]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.rows)

    def __getitem__(self, i: int) -> Sample:
        return self.rows[i]

    @property
    def example_ids(self) -> list[str]:
        return [r.example_id for r in self.rows]

    @property
    def k(self) -> int:
        """Samples per example."""
        if "k" in self.meta:
            return int(self.meta["k"])
        return len(self.rows[0].texts) if self.rows else 0

    def subset(self, ids: Sequence[str] | np.ndarray) -> SampleSet:
        """Rows selected by example ids (in the given order) or by a boolean/int index array."""
        if isinstance(ids, np.ndarray) and ids.dtype != object:
            idx = np.flatnonzero(ids) if ids.dtype == bool else ids
            return SampleSet([self.rows[int(i)] for i in idx], dict(self.meta))
        pos = {r.example_id: r for r in self.rows}
        missing = [str(i) for i in ids if i not in pos]
        if missing:
            raise _missing_ids(missing, len(self), "samples", "sample those examples too.")
        return SampleSet([pos[i] for i in ids], dict(self.meta))

    def align(self, gens: GenerationSet) -> SampleSet:
        """These samples in the row order of ``gens`` (extra rows dropped). An example of
        ``gens`` without samples, or sampled from another prompt, is a one-line ``DataError``."""
        from knowlens.errors import DataError

        pos = {r.example_id: r for r in self.rows}
        missing = [g.example_id for g in gens.rows if g.example_id not in pos]
        if missing:
            raise _missing_ids(
                missing, len(self), "samples", "draw them with kl.sample(model, gens, ...)."
            )
        for g in gens.rows:
            s = pos[g.example_id]
            if g.prompt_ids and s.prompt_ids and list(g.prompt_ids) != list(s.prompt_ids):
                raise DataError(
                    f"Example '{g.example_id}' was sampled from another prompt than its answer "
                    f"({len(s.prompt_ids)} vs {len(g.prompt_ids)} prompt tokens); draw the "
                    "samples from these answers: kl.sample(model, gens, ...)."
                )
        return SampleSet([pos[g.example_id] for g in gens.rows], dict(self.meta))

    def to_frame(self) -> pd.DataFrame:
        """One row per example; the per-sample columns are lists of length k."""
        return pd.DataFrame(
            [asdict(r) for r in self.rows], columns=[f.name for f in fields(Sample)]
        )

    @classmethod
    def from_frame(cls, df: pd.DataFrame, meta: dict[str, Any] | None = None) -> SampleSet:
        rows = []
        for rec in df.to_dict("records"):
            rec = {k: _plain(v) for k, v in rec.items()}
            if isinstance(rec.get("user_turn"), float):  # NaN from a merged frame
                rec["user_turn"] = None
            rec["correct"] = [None if c is None else bool(c) for c in rec["correct"]]
            rows.append(Sample(**rec))
        return cls(rows, dict(meta or {}))

    def save(self, directory: str | Path) -> None:
        """Write ``samples.parquet`` + ``meta.json`` into ``directory`` (not atomic by itself)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.to_frame().to_parquet(d / "samples.parquet", index=False)
        (d / "meta.json").write_text(json.dumps(self.meta, indent=2, sort_keys=True, default=str))

    @classmethod
    def load(cls, directory: str | Path) -> SampleSet:
        """Read a folder written by :meth:`save`; a missing or damaged file is a one-line
        ``DataError``."""
        d = Path(directory)
        try:
            meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
            if not isinstance(meta, dict):
                raise ValueError("meta.json does not hold a JSON object")
            return cls.from_frame(pd.read_parquet(d / "samples.parquet"), meta)
        except Exception as e:  # pyarrow, json and pandas raise many types for a bad file
            from knowlens.errors import DataError

            why = (str(e).splitlines() or [""])[0][:160] or type(e).__name__
            raise DataError(
                f"Cannot read samples from {d} ({type(e).__name__}: {why}); the folder is "
                "damaged or incomplete: delete it and sample again."
            ) from None


@dataclass
class SampledGenerations:
    """What a sample-reading estimator gets as X: greedy answers and their samples, aligned
    (``samples.rows[i].example_id == gens.rows[i].example_id``, checked on construction).

    ``SampledGenerations.of(gens, samples)`` aligns the samples first."""

    gens: GenerationSet
    samples: SampleSet

    def __post_init__(self) -> None:
        if self.samples.example_ids != self.gens.example_ids:
            from knowlens.errors import DataError

            raise DataError(
                f"SampledGenerations needs samples in the answers' row order ({len(self.gens)} "
                f"answers, {len(self.samples)} sampled rows, ids differ); build it with "
                "SampledGenerations.of(gens, samples), which aligns them."
            )

    @classmethod
    def of(cls, gens: GenerationSet, samples: SampleSet) -> SampledGenerations:
        return cls(gens, samples.align(gens))

    def __len__(self) -> int:
        return len(self.gens)

    @property
    def example_ids(self) -> list[str]:
        return self.gens.example_ids

    @property
    def correct(self) -> np.ndarray:
        """The greedy answers' labels (``gens.correct``)."""
        return self.gens.correct

    def subset(self, idx: Sequence[str] | np.ndarray) -> SampledGenerations:
        """Both sides selected by example ids or a boolean/int index array."""
        return SampledGenerations(self.gens.subset(idx), self.samples.subset(idx))


@dataclass
class ActivationSet:
    """Hidden states indexed as ``[example, layer, position, hidden]``.

    Attributes:
        values: array of shape (n_examples, n_layers, n_positions, d_model), float16 when the
            model's values fit in it, else float32 (``dtype="auto"``); usually a read-only ``np.memmap`` over the cache, so it never has to fit
            in RAM. Ragged positions (selector ``all`` or ``exact_answer`` spans) are padded.
        mask: bool array (n_examples, n_positions): True where a position holds a real token.
        layers: hidden-state indices held along axis 1 (0 = embedding output, i = output of
            decoder block i; the last one, n_layers, is *after* the final norm in HF's
            ``hidden_states``; see ``knowlens.activations`` docs).
        tokens: the token selector that produced it (``last_prompt``, ``last``,
            ``exact_answer``, ``exact_answer_first``, ``exact_answer_mean``, ``all``).
        example_ids: ids aligned with axis 0.
        positions: int array (n_examples, n_positions): absolute token index of each kept
            position in the example's prompt+answer sequence, -1 for padding.
        meta: model fingerprint, cache key, dtype, extraction settings.
    """

    values: np.ndarray
    mask: np.ndarray
    layers: list[int]
    tokens: str
    example_ids: list[str]
    positions: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def __getitem__(self, idx: Any) -> np.ndarray:
        return self.values[idx]

    def layer_index(self, layer: int) -> int:
        """Axis-1 index of hidden-state layer ``layer`` (negative counts from the last held)."""
        if layer < 0:
            layer = self.layers[layer]
        try:
            return self.layers.index(layer)
        except ValueError:
            from knowlens.errors import KnowlensError

            raise KnowlensError(
                f"Layer {layer} was not extracted; this ActivationSet holds layers {self.layers}. "
                "Extract it with layers=[...] including it."
            ) from None

    def features(self, layer: int, reduce: str = "last") -> np.ndarray:
        """Float32 matrix (n_examples, d_model) at one layer, reducing positions by
        ``last`` (last real position), ``first`` or ``mean`` over real positions."""
        li = self.layer_index(layer)
        x = np.asarray(self.values[:, li], dtype=np.float32)  # (n, pos, d)
        m = self.mask.astype(bool)
        if reduce == "mean":
            w = m[..., None].astype(np.float32)
            return (x * w).sum(1) / np.maximum(w.sum(1), 1.0)
        if reduce not in {"last", "first"}:
            from knowlens.errors import KnowlensError

            raise KnowlensError(f"reduce must be 'last', 'first' or 'mean'; got '{reduce}'.")
        has = m.any(1)
        if reduce == "first":
            pos = np.argmax(m, axis=1)
        else:
            pos = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1)
        out = x[np.arange(len(x)), pos]
        out[~has] = np.nan
        return out
