"""Logit baselines: P(correct) from the answering model's own token probabilities.

No model call: everything comes from ``GenerationSet`` rows (``token_logprobs``,
``token_entropies``, ``exact_answer_tokens``). FIGURES.md section 3 uses the mean
log-probability of the exact-answer tokens as the default baseline, oriented so that higher
means "correct".

    base = LogitBaseline(statistic="mean_logprob", span="exact_answer")
    p = base.fit(gens_train).predict_proba(gens_test)     # fit is a no-op unless calibrate

Named token statistics (``ScoreEstimator``s, Platt-calibrated by default, usable from
configs by name), each LM-Polygraph's white-box estimator of the same name over the answer
tokens: ``max_sequence_prob`` (-sum log p), ``perplexity`` (-mean log p), ``mean_entropy``,
``max_entropy`` (mean / max token entropy).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from knowlens._types import GenerationSet
from knowlens.errors import ConfigError
from knowlens.estimators._base import (
    Estimator,
    Features,
    Labels,
    check_gens,
    check_training_labels,
    data_key,
    labels_for,
)
from knowlens.estimators._registry import generations, register_estimator
from knowlens.estimators._score import ScoreEstimator

__all__ = [
    "SPANS",
    "STATISTICS",
    "LogitBaseline",
    "MaxTokenEntropy",
    "MaximumSequenceProbability",
    "MeanTokenEntropy",
    "Perplexity",
    "token_scores",
]

STATISTICS = (
    "mean_logprob",
    "min_logprob",
    "last_logprob",
    "mean_entropy",
    "max_entropy",
    "seq_prob",
)
SPANS = ("answer", "exact_answer")


@register_estimator(
    "logit",
    display_name="Logit baseline",
    inputs=generations(),
    aliases=("logit_baseline",),
)
class LogitBaseline(Estimator):
    """Token-probability baseline (no training).

    Scores, each oriented so that higher means "more likely correct":

    ========================  ==============================  ====================
    ``statistic``             score                           P(correct)
    ========================  ==============================  ====================
    ``mean_logprob``          mean log p(token)               exp(score) (geometric mean prob)
    ``min_logprob``           min log p(token)                exp(score)
    ``last_logprob``          log p(last token)               exp(score)
    ``seq_prob``              sum log p(token)                exp(score) (sequence prob)
    ``mean_entropy``          -mean entropy (nats)            exp(score)
    ``max_entropy``           -max entropy (nats)             exp(score)
    ========================  ==============================  ====================

    Args:
        statistic: one of the rows above.
        span: ``"answer"`` (all answer tokens) or ``"exact_answer"`` (the tokens of the
            exact-answer span, ``Generation.exact_answer_tokens``; rows without a located
            span fall back to the whole answer, counted in ``n_fallback_``).
        calibrate: if True, ``fit`` learns a Platt scaling ``sigmoid(a * score + b)`` on
            the training labels (monotone, so AUROC is unchanged when ``a > 0``) and
            ``predict_proba`` returns it; otherwise P(correct) = exp(score), no labels needed.

    An empty answer (or span) has no tokens: its score is -inf and P(correct) = 0.
    """

    platt_: tuple[float, float] | None
    train_key_: str | None

    def __init__(
        self,
        *,
        statistic: str = "mean_logprob",
        span: str = "exact_answer",
        calibrate: bool = False,
    ) -> None:
        self.statistic = statistic
        self.span = span
        self.calibrate = calibrate

    def _validate(self) -> None:
        if self.statistic not in STATISTICS:
            raise ConfigError(
                f"LogitBaseline: statistic must be one of {', '.join(STATISTICS)}; got "
                f"'{self.statistic}'."
            )
        if self.span not in SPANS:
            raise ConfigError(
                f"LogitBaseline: span must be 'answer' or 'exact_answer'; got '{self.span}'."
            )

    @property
    def name(self) -> str:
        return f"{self.statistic}[{self.span}]"

    def score(self, gens: GenerationSet) -> np.ndarray:
        """Raw oriented scores, shape (n,): higher = more likely correct."""
        self._validate()
        check_gens(gens, "LogitBaseline.score")
        out, self._last_fallback = token_scores(gens, self.statistic, self.span)
        return out

    def fit(self, X: Features, y: Labels = None) -> LogitBaseline:
        """No-op unless ``calibrate`` (then fits Platt scaling on ``X``'s labels, or ``y``)."""
        self._validate()
        gens = check_gens(X, "LogitBaseline.fit")
        s = self.score(gens)
        self.n_fallback_ = self._last_fallback
        if self.calibrate:
            from sklearn.linear_model import LogisticRegression

            yy = labels_for(gens if y is None else y, len(gens), gens.example_ids, "LogitBaseline")
            keep = check_training_labels(yy, "LogitBaseline")
            x = _finite(s[keep])
            lr = LogisticRegression().fit(x[:, None], yy[keep].astype(int))
            self.platt_ = (float(lr.coef_[0, 0]), float(lr.intercept_[0]))
            self.score_floor_ = float(x.min())
            self.train_key_ = data_key(gens, yy)
        else:
            self.platt_ = None
            self.train_key_ = None
        return self

    def predict_proba(self, X: Features) -> np.ndarray:
        """P(correct), shape (n,). Usable without ``fit`` when ``calibrate`` is False."""
        if self.calibrate:
            self._check_fitted()
        s = self.score(check_gens(X, "LogitBaseline.predict_proba"))
        if self.calibrate and self.platt_ is not None:
            a, b = self.platt_
            x = np.maximum(np.nan_to_num(s, neginf=self.score_floor_ - 1.0), -1e6)
            return 1.0 / (1.0 + np.exp(-(a * x + b)))
        return np.exp(s)

    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        if not self.calibrate:
            return None  # exp(score) learns nothing from data
        X = check_gens(X, "LogitBaseline.fit")
        return data_key(
            X, labels_for(X if y is None else y, len(X), X.example_ids, "LogitBaseline")
        )

    def _state(self) -> dict[str, Any]:
        return {
            "platt": self.platt_,
            "score_floor": getattr(self, "score_floor_", None),
            "n_fallback": self.n_fallback_,
            "train_key": self.train_key_,
        }

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        platt = state["platt"]
        self.platt_ = None if platt is None else (float(platt[0]), float(platt[1]))
        if state.get("score_floor") is not None:
            self.score_floor_ = state["score_floor"]
        self.n_fallback_ = state["n_fallback"]
        self.train_key_ = state["train_key"]


def _finite(x: np.ndarray) -> np.ndarray:
    """-inf scores (empty answers) mapped just below the smallest finite score."""
    fin = x[np.isfinite(x)]
    floor = (fin.min() if len(fin) else 0.0) - 1.0
    return np.where(np.isfinite(x), x, floor)


def token_scores(gens: GenerationSet, statistic: str, span: str) -> tuple[np.ndarray, int]:
    """``(scores, n_fallback)``: the statistic of every row's answer tokens (``span``),
    oriented so that higher = more likely correct (log-probs as they are, entropies
    negated); -inf for a row without tokens; ``n_fallback`` counts ``exact_answer`` rows
    whose span was not located (scored on the whole answer)."""
    out = np.empty(len(gens))
    fallback = 0
    for i, g in enumerate(gens.rows):
        lp = np.asarray(g.token_logprobs, dtype=np.float64)
        ent = np.asarray(g.token_entropies, dtype=np.float64)
        if span == "exact_answer":
            sp = g.exact_answer_tokens
            if sp is not None and sp[1] > sp[0]:
                lp, ent = lp[sp[0] : sp[1]], ent[sp[0] : sp[1]]
            else:
                fallback += 1
        if statistic in ("mean_entropy", "max_entropy"):
            if len(ent) == 0:
                out[i] = -np.inf
            else:
                out[i] = -ent.mean() if statistic == "mean_entropy" else -ent.max()
        elif len(lp) == 0:
            out[i] = -np.inf
        elif statistic == "mean_logprob":
            out[i] = lp.mean()
        elif statistic == "min_logprob":
            out[i] = lp.min()
        elif statistic == "last_logprob":
            out[i] = lp[-1]
        else:  # seq_prob
            out[i] = lp.sum()
    return out, fallback


class _TokenStatistic(ScoreEstimator):
    """A named token statistic of the answering model's own answer (LM-Polygraph's
    white-box sequence estimators): ``uncertainty`` is LM-Polygraph's value (higher = less
    confident), ``exp(-uncertainty)`` the uncalibrated P(correct).

    Args:
        span: ``"answer"`` (default: every answer token, as LM-Polygraph) or
            ``"exact_answer"`` (the located exact-answer tokens; rows without a span use the
            whole answer, counted in ``n_fallback_`` / ``last_n_fallback``).
        calibrate: Platt scaling on the training labels (ScoreEstimator); False: exp(-u).

    Tokens are ``Generation.token_logprobs`` / ``token_entropies``: the answer tokens up to
    and excluding the stop token (LM-Polygraph's greedy statistics include a generated EOS).
    An answer without tokens has uncertainty +inf (P(correct) -> 0).
    """

    #: LogitBaseline statistic whose negation is the uncertainty
    STATISTIC: str = ""

    def __init__(self, *, span: str = "answer", calibrate: bool = True) -> None:
        self.span = span
        self.calibrate = calibrate

    def uncertainty(self, X: Features) -> np.ndarray:
        """The statistic of every answer, shape (n,): higher = less confident."""
        who = type(self).__name__
        if self.span not in SPANS:
            raise ConfigError(f"{who}: span must be 'answer' or 'exact_answer'; got '{self.span}'.")
        gens = check_gens(X, f"{who}.uncertainty")
        s, self.last_n_fallback = token_scores(gens, self.STATISTIC, self.span)
        return -s

    def _fit_statistics(self, X: Features, y: np.ndarray | None) -> None:
        self.uncertainty(X)  # validates span and input before any calibration fit
        self.n_fallback_ = self.last_n_fallback

    def _state(self) -> dict[str, Any]:
        return super()._state() | {"n_fallback": self.n_fallback_}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        super()._restore(state, weights)
        self.n_fallback_ = state["n_fallback"]


@register_estimator(
    "max_sequence_prob",
    display_name="Max. sequence probability",
    inputs=generations(),
    # not "max_seq_prob" as the config name: it would be a did-you-mean for "prob"
    aliases=("msp", "max_seq_prob"),
)
class MaximumSequenceProbability(_TokenStatistic):
    """Maximum sequence probability (LM-Polygraph ``MaximumSequenceProbability``; Fadeeva et
    al. 2023, "LM-Polygraph: uncertainty estimation for language models").

    ``uncertainty = -sum_t log p(y_t | y_<t, x)`` over the answer tokens; uncalibrated
    P(correct) = exp(-u), the greedy answer's probability."""

    STATISTIC = "seq_prob"


@register_estimator(
    "perplexity",
    display_name="Perplexity",
    inputs=generations(),
)
class Perplexity(_TokenStatistic):
    """Log-perplexity of the answer (LM-Polygraph ``Perplexity``; Fomicheva et al. 2020,
    "Unsupervised quality estimation for neural machine translation").

    ``uncertainty = -mean_t log p(y_t | y_<t, x)``; uncalibrated P(correct) = exp(-u), the
    geometric-mean token probability (the ``logit`` entry's statistic, on the whole answer)."""

    STATISTIC = "mean_logprob"


@register_estimator(
    "mean_entropy",
    display_name="Mean token entropy",
    inputs=generations(),
)
class MeanTokenEntropy(_TokenStatistic):
    """Mean token entropy (LM-Polygraph ``MeanTokenEntropy``; Fomicheva et al. 2020).

    ``uncertainty = mean_t H(p(. | y_<t, x))`` in nats, the entropy of the full next-token
    distribution at each answer step (``Generation.token_entropies``)."""

    STATISTIC = "mean_entropy"


@register_estimator(
    "max_entropy",
    display_name="Max. token entropy",
    inputs=generations(),
)
class MaxTokenEntropy(_TokenStatistic):
    """Maximum token entropy (LM-Polygraph ``MaxTokenEntropyClaim`` with one claim spanning
    the whole answer; Fadeeva et al. 2024, "Fact-checking the output of large language
    models via token-level uncertainty quantification").

    ``uncertainty = max_t H(p(. | y_<t, x))`` in nats over the answer tokens."""

    STATISTIC = "max_entropy"
