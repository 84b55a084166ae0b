"""Semantic sets and semantic entropy over sampled answers (Kuhn et al. 2023; Farquhar et al. 2024).

Both read the K sampled answers of every example (``inputs=samples()``: X is a
``SampledGenerations``, ``SampledGenerations.of(gens, knowlens.sample(model, gens))``) and
group them into *semantic clusters* by bidirectional entailment under a configurable judge
(``_entailment.py``: ``"normalized"``, ``"model:<spec>"``, ``"nli:<model>"``)::

    se = SemanticEntropy(judge="model:smollm2-135m-instruct").fit(sg_train)
    p = se.predict_proba(sg_test)                  # P(correct), Platt-calibrated
    u = se.uncertainty(sg_test)                    # the paper's value, higher = less sure

Clustering (Kuhn et al. 2023, Algorithm 1; lm-polygraph ``SemanticClassesCalculator``): the
samples are visited in order; each joins the first existing cluster whose *first member* it
is equivalent to (premise entails hypothesis in both directions), else opens a new
cluster. Identical strings are equivalent without asking the judge. A pair of distinct
texts is judged at most once per direction per ``fit`` / ``predict_proba`` call (cached by
judge, question and pair), all examples' pairs in two batched passes (forward, then
backward only where the forward entailment holds; :func:`semantic_clusters`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from knowlens._cache import stable_hash
from knowlens.errors import ConfigError, DataError
from knowlens.estimators._base import Features, Labels
from knowlens.estimators._entailment import EntailmentJudge, load_judge, parse_judge
from knowlens.estimators._registry import register_estimator, samples
from knowlens.estimators._sampling import check_sampled, samples_key
from knowlens.estimators._score import ScoreEstimator
from knowlens.estimators._text import user_turn

__all__ = [
    "ESTIMATES",
    "PROBABILITIES",
    "NumSemSets",
    "SemanticEntropy",
    "cluster_ids",
    "semantic_clusters",
    "semantic_entropy",
]

PROBABILITIES = ("likelihood", "frequency")
ESTIMATES = ("mean", "rao")
#: the default judge: no model, so a default-built estimator is cheap and offline; pass
#: judge="model:<spec>" or "nli:<model>" for answers that are not short (see _entailment.py)
DEFAULT_JUDGE = "normalized"

#: memo of judged pairs: (judge spec, question or None, premise, hypothesis) -> entailed
PairMemo = dict[tuple[str, str | None, str, str], bool]


def cluster_ids(texts: Sequence[str], entails: Callable[[str, str], bool]) -> list[int]:
    """Greedy semantic clustering by bidirectional entailment: cluster id of each text.

    Text ``i`` joins the first cluster ``c`` (in creation order) whose first member ``r``
    satisfies ``texts[i] == r`` or ``entails(r, texts[i]) and entails(texts[i], r)``;
    otherwise it opens cluster ``max + 1``. Ids are 0, 1, ... in order of first appearance.
    """
    reps: list[str] = []
    out: list[int] = []
    for t in texts:
        for c, r in enumerate(reps):
            if t == r or (entails(r, t) and entails(t, r)):
                out.append(c)
                break
        else:
            out.append(len(reps))
            reps.append(t)
    return out


def semantic_clusters(
    judge: EntailmentJudge,
    texts: Sequence[Sequence[str]],
    questions: Sequence[str | None] | None = None,
    *,
    batch_size: int = 16,
    memo: PairMemo | None = None,
) -> list[list[int]]:
    """:func:`cluster_ids` of every example's sampled texts under ``judge``.

    Two batched ``judge.entails`` calls over all examples: first every pair of distinct
    texts ``(earlier, later)`` in order of first appearance, then the reverse direction only
    for the pairs whose forward direction holds (equivalence needs both; this halves the
    judged pairs when most differ). Each ordered pair (with its question, for judges that
    read it) is judged at most once; pairs already in ``memo`` are not judged again, and
    ``memo`` is filled with the new ones. The decisions are those of the full pairwise
    matrix, so the clusters are too.
    """
    memo = {} if memo is None else memo
    qs: list[str | None] = [None] * len(texts) if questions is None else list(questions)
    if len(qs) != len(texts):
        raise DataError(
            f"semantic_clusters: got {len(qs)} questions for {len(texts)} examples; pass one "
            "question per example (or none)."
        )

    def key(q: str | None, a: str, b: str) -> tuple[str, str | None, str, str]:
        return (judge.spec, q if judge.uses_question else None, a, b)

    def run(pairs: list[tuple[str, str, str | None]]) -> None:
        todo: dict[tuple[str, str | None, str, str], tuple[str, str, str | None]] = {}
        for a, b, q in pairs:
            k = key(q, a, b)
            if k not in memo and k not in todo:
                todo[k] = (a, b, q)
        if todo:
            prem, hyp, qq = zip(*todo.values(), strict=True)
            decided = judge.entails(prem, hyp, qq, batch_size=batch_size)
            memo.update(zip(todo, (bool(d) for d in decided), strict=True))

    forward: list[tuple[str, str, str | None]] = []
    for row, q in zip(texts, qs, strict=True):
        uniq = list(dict.fromkeys(row))
        forward += [(b, a, q) for i, a in enumerate(uniq) for b in uniq[:i]]
    run(forward)
    run([(a, b, q) for b, a, q in forward if memo[key(q, b, a)]])
    # cluster_ids asks entails(first member, later text) first: a forward pair, always judged
    return [
        cluster_ids(row, lambda a, b, q=q: memo[key(q, a, b)])  # type: ignore[misc]
        for row, q in zip(texts, qs, strict=True)
    ]


def semantic_entropy(
    ids: Sequence[int],
    log_likelihoods: Sequence[float] | None = None,
    *,
    probabilities: str = "likelihood",
    estimate: str = "mean",
) -> float:
    """Semantic entropy of one example's K samples with cluster ids ``ids``.

    ``probabilities="likelihood"`` (Kuhn et al. 2023): cluster probability
    ``p(C|x) = sum_{s in C} p(s|x)``, ``log p(s|x)`` = ``log_likelihoods`` (unnormalised,
    as sampled), and

    * ``estimate="mean"``: ``SE = -(1/K) sum_{j=1..K} log p(C(s_j)|x)``, the Monte Carlo
      estimate over the samples (lm-polygraph ``SemanticEntropy()``, "mean");
    * ``estimate="rao"``: ``SE = -sum_C pbar(C) log pbar(C)`` with
      ``pbar(C) = p(C|x) / sum_C' p(C'|x)`` (Farquhar et al. 2024, ``semantic_uncertainty``
      ``logsumexp_by_id(agg="sum_normalized")`` + ``predictive_entropy_rao``).

    ``probabilities="frequency"`` (Farquhar et al. 2024's discrete semantic entropy,
    ``cluster_assignment_entropy``): ``SE = -sum_C (|C|/K) log(|C|/K)`` (both estimates
    coincide; lm-polygraph ``SemanticEntropy(class_probability_estimation="frequency")``).
    """
    c = np.asarray(ids, dtype=int)
    if c.size == 0:
        raise DataError("semantic_entropy: got 0 samples; pass at least one sampled answer.")
    if probabilities == "frequency":
        p = np.bincount(c) / c.size
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
    if log_likelihoods is None or len(log_likelihoods) != c.size:
        raise DataError(
            "semantic_entropy(probabilities='likelihood') needs one log-likelihood per "
            f"sample; got {None if log_likelihoods is None else len(log_likelihoods)} for "
            f"{c.size} samples."
        )
    ll = np.asarray(log_likelihoods, dtype=np.float64)
    class_lp = np.array([np.logaddexp.reduce(ll[c == k]) for k in range(c.max() + 1)])
    if estimate == "mean":
        return float(-class_lp[c].mean())
    norm = class_lp - np.logaddexp.reduce(class_lp)
    return float(-(np.exp(norm) * norm).sum())


def _choice(value: Any, allowed: Sequence[str], what: str, who: str) -> str:
    if value not in allowed:
        raise ConfigError(
            f"{who}: {what} must be one of {', '.join(map(repr, allowed))}; got {value!r}."
        )
    return str(value)


class _SemanticEstimator(ScoreEstimator):
    """Shared parts: reading the samples, judging and clustering them.

    As for every sample estimator (``_sampling.py``), a sample with no answer tokens is left
    out; an example with no sample left gets NaN uncertainty (one warning per call)."""

    judge: str
    batch_size: int

    def _check_params(self) -> None:
        parse_judge(self.judge)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError(
                f"{type(self).__name__}: batch_size must be an int >= 1; got {self.batch_size!r}."
            )
        if self.batch_size < 1:
            raise ConfigError(
                f"{type(self).__name__}: batch_size must be an int >= 1; got {self.batch_size}."
            )

    def _used(self, X: Features) -> list[tuple[Any, list[int]]]:
        """Each example's Sample and the indices of its non-empty samples."""
        sg = check_sampled(X, type(self).__name__)
        return [(s, [j for j, a in enumerate(s.answer_ids) if len(a) > 0]) for s in sg.samples.rows]

    def clusters(self, X: Features) -> list[list[int]]:
        """Cluster id of every non-empty sample of every example (:func:`cluster_ids`)."""
        self._check_params()
        used = self._used(X)
        gens = X.gens  # type: ignore[union-attr]
        qs = [
            s.user_turn if s.user_turn is not None else user_turn(g)
            for (s, _), g in zip(used, gens.rows, strict=True)
        ]
        return semantic_clusters(
            load_judge(self.judge),
            [[s.texts[j] for j in js] for s, js in used],
            qs,
            batch_size=self.batch_size,
        )

    def _undefined(self, u: np.ndarray) -> np.ndarray:
        n = int(np.isnan(u).sum())
        if n:
            warnings.warn(
                f"{type(self).__name__}: {n} of {len(u)} examples have no non-empty sample; "
                "their uncertainty is NaN.",
                stacklevel=3,
            )
        return u

    def fit(self, X: Features, y: Labels = None) -> Any:
        check_sampled(X, f"{type(self).__name__}.fit")
        self._check_params()
        return super().fit(X, y)

    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        # the Platt fit depends on the samples, not only on the greedy answers
        base = super()._train_key(X, y)
        if base is None:
            return None
        return stable_hash({"answers": base, "samples": samples_key(X.samples)})  # type: ignore[union-attr]


@register_estimator(
    "num_sem_sets",
    display_name="NumSemSets",
    inputs=samples(),
    aliases=("num_semantic_sets",),
)
class NumSemSets(_SemanticEstimator):
    """Number of semantic sets (Lin, Trivedi & Sun 2024, "Generating with Confidence",
    TMLR, arXiv:2305.19187; over the clusters of Kuhn et al. 2023).

    ``uncertainty`` = the number of semantic clusters among an example's K samples (1..K):
    the clusters of :func:`cluster_ids` (greedy, each sample compared with the first member
    of each cluster, by bidirectional entailment under ``judge``). ``calibrate=False`` maps it
    to P(correct) = 1 / n_sets.

    lm-polygraph's ``NumSemSets`` counts the connected components of the bidirectional-
    entailment graph instead; the two agree whenever the judge's equivalence is transitive
    (always for the ``"normalized"`` judge); otherwise greedy clustering can give more sets
    (a~b, b~c, a!~c: greedy {a, b}, {c} = 2 sets; components {a, b, c} = 1).

    Args:
        judge: entailment judge config string (``_entailment.JUDGE_FORMS``), loaded lazily
            and cached per process; default ``"normalized"`` (short-answer tasks).
        batch_size: judged pairs per forward pass.
        calibrate: Platt-scale ``-uncertainty`` on the training labels (``ScoreEstimator``).
    """

    def __init__(
        self, *, judge: str = DEFAULT_JUDGE, batch_size: int = 16, calibrate: bool = True
    ) -> None:
        self.judge = judge
        self.batch_size = batch_size
        self.calibrate = calibrate

    def uncertainty(self, X: Features) -> np.ndarray:
        """Number of semantic sets of every example, shape (n,)."""
        u = np.array([float(max(ids) + 1) if ids else np.nan for ids in self.clusters(X)])
        return self._undefined(u)

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        return 1.0 / np.maximum(np.nan_to_num(u, nan=np.inf), 1.0)


@register_estimator(
    "semantic_entropy",
    display_name="Semantic Entropy",
    inputs=samples(),
    aliases=("se",),
)
class SemanticEntropy(_SemanticEstimator):
    """Semantic entropy (Kuhn, Gal & Farquhar 2023, ICLR; Farquhar et al. 2024, Nature).

    The entropy of the distribution over the semantic clusters of an example's K samples
    (clusters as in :class:`NumSemSets`; :func:`semantic_entropy` gives the formulas):

    * ``probabilities="likelihood"`` (default, Kuhn et al.): ``p(C|x) = sum_{s in C} p(s|x)``
      from the samples' sequence likelihoods (``Sample.token_logprobs``, the model's raw
      T=1 distribution, summed over the answer tokens; ``length_normalized=True`` uses the
      per-token mean, as both papers' released code does). ``estimate="mean"`` (default,
      lm-polygraph's ``SemanticEntropy()``) is ``-(1/K) sum_j log p(C(s_j)|x)``;
      ``estimate="rao"`` is the entropy of the normalised cluster distribution, Farquhar et
      al.'s ``semantic_entropy`` (with ``length_normalized=True``).
    * ``probabilities="frequency"`` (Farquhar et al.'s discrete semantic entropy):
      ``-sum_C (|C|/K) log(|C|/K)``; reads no likelihoods.

    ``calibrate=False`` maps SE to P(correct) = exp(-max(SE, 0)) (the "mean" estimate is
    negative when duplicated samples' probabilities sum past 1, as in lm-polygraph).

    Args:
        judge: entailment judge config string (``_entailment.JUDGE_FORMS``); default
            ``"normalized"`` (short-answer tasks).
        probabilities: ``"likelihood"`` or ``"frequency"``.
        estimate: ``"mean"`` or ``"rao"`` (the two coincide for ``"frequency"``).
        length_normalized: per-token mean instead of the sum of token log-probs.
        batch_size: judged pairs per forward pass.
        calibrate: Platt-scale ``-uncertainty`` on the training labels.
    """

    def __init__(
        self,
        *,
        judge: str = DEFAULT_JUDGE,
        probabilities: str = "likelihood",
        estimate: str = "mean",
        length_normalized: bool = False,
        batch_size: int = 16,
        calibrate: bool = True,
    ) -> None:
        self.judge = judge
        self.probabilities = probabilities
        self.estimate = estimate
        self.length_normalized = length_normalized
        self.batch_size = batch_size
        self.calibrate = calibrate

    def _check_params(self) -> None:
        super()._check_params()
        who = type(self).__name__
        _choice(self.probabilities, PROBABILITIES, "probabilities", who)
        _choice(self.estimate, ESTIMATES, "estimate", who)

    def log_likelihoods(self, X: Features) -> list[np.ndarray]:
        """``log p(s|x)`` of every non-empty sample of every example (sum of the token
        log-probs, or their mean with ``length_normalized``)."""
        agg = np.mean if self.length_normalized else np.sum
        return [
            np.array([float(agg(np.asarray(s.token_logprobs[j], dtype=np.float64))) for j in js])
            for s, js in self._used(X)
        ]

    def uncertainty(self, X: Features) -> np.ndarray:
        """Semantic entropy of every example, shape (n,)."""
        ids = self.clusters(X)
        lls: list[Any] = (
            self.log_likelihoods(X) if self.probabilities == "likelihood" else [None] * len(ids)
        )
        u = np.array(
            [
                semantic_entropy(c, ll, probabilities=self.probabilities, estimate=self.estimate)
                if c
                else np.nan
                for c, ll in zip(ids, lls, strict=True)
            ]
        )
        return self._undefined(u)
