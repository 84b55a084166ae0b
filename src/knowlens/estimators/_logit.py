"""Logit baselines: P(correct) from the answering model's own token probabilities.

No model call: everything comes from ``GenerationSet`` rows (``token_logprobs``,
``token_entropies``, ``exact_answer_tokens``). FIGURES.md section 3 uses the mean
log-probability of the exact-answer tokens as the default baseline, oriented so that higher
means "correct".

    base = LogitBaseline(statistic="mean_logprob", span="exact_answer")
    p = base.fit(gens_train).predict_proba(gens_test)     # fit is a no-op unless calibrate
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

__all__ = ["SPANS", "STATISTICS", "LogitBaseline"]

STATISTICS = ("mean_logprob", "min_logprob", "last_logprob", "mean_entropy", "seq_prob")
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
        out = np.empty(len(gens))
        fallback = 0
        for i, g in enumerate(gens.rows):
            lp = np.asarray(g.token_logprobs, dtype=np.float64)
            ent = np.asarray(g.token_entropies, dtype=np.float64)
            if self.span == "exact_answer":
                sp = g.exact_answer_tokens
                if sp is not None and sp[1] > sp[0]:
                    lp, ent = lp[sp[0] : sp[1]], ent[sp[0] : sp[1]]
                else:
                    fallback += 1
            if len(lp) == 0:
                out[i] = -np.inf
            elif self.statistic == "mean_logprob":
                out[i] = lp.mean()
            elif self.statistic == "min_logprob":
                out[i] = lp.min()
            elif self.statistic == "last_logprob":
                out[i] = lp[-1]
            elif self.statistic == "seq_prob":
                out[i] = lp.sum()
            else:
                out[i] = -ent.mean() if len(ent) else -np.inf
        self._last_fallback = fallback
        return out

    def fit(self, gens: GenerationSet, y: Any = None) -> LogitBaseline:
        """No-op unless ``calibrate`` (then fits Platt scaling on ``gens``' labels, or ``y``)."""
        self._validate()
        check_gens(gens, "LogitBaseline.fit")
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

    def predict_proba(self, gens: GenerationSet) -> np.ndarray:
        """P(correct), shape (n,). Usable without ``fit`` when ``calibrate`` is False."""
        if self.calibrate:
            self._check_fitted()
        s = self.score(gens)
        if self.calibrate and self.platt_ is not None:
            a, b = self.platt_
            x = np.maximum(np.nan_to_num(s, neginf=self.score_floor_ - 1.0), -1e6)
            return 1.0 / (1.0 + np.exp(-(a * x + b)))
        return np.exp(s)

    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        if not self.calibrate:
            return None  # exp(score) learns nothing from data
        check_gens(X, "LogitBaseline.fit")
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
        self.platt_ = None if state["platt"] is None else tuple(state["platt"])
        if state.get("score_floor") is not None:
            self.score_floor_ = state["score_floor"]
        self.n_fallback_ = state["n_fallback"]
        self.train_key_ = state["train_key"]


def _finite(x: np.ndarray) -> np.ndarray:
    """-inf scores (empty answers) mapped just below the smallest finite score."""
    fin = x[np.isfinite(x)]
    floor = (fin.min() if len(fin) else 0.0) - 1.0
    return np.where(np.isfinite(x), x, floor)
