"""Base of the unsupervised estimators: a raw uncertainty score, mapped to P(correct).

Sampling, density, verbalised and logit estimators compute one number per answer from the
paper's definition (``uncertainty(X)``, higher = less confident, the value LM-Polygraph's
class of the same name returns). ``predict_proba`` maps it to P(correct):

* ``calibrate=True`` (default): Platt scaling ``sigmoid(a * (-u) + b)`` fitted on the
  training split's labels. The slope is constrained to ``a >= 0`` so that calibration can
  never invert the method's orientation (an estimator whose uncertainty *rises* with
  correctness on the training split gets a constant P(correct) = the training accuracy and
  AUROC 0.5, instead of a silently flipped score); ``calibration_`` records ``a``, ``b``
  and whether the slope was clipped. When the score itself is fitted on the training split
  (``CROSS_FIT``: the Mahalanobis distances), Platt is fitted on out-of-fold scores
  (``CALIBRATION_FOLDS``-fold stratified cross-fitting: each fold's scores come from
  statistics fitted on the other folds), then the statistics are refitted on every training
  answer. In-sample scores would mislead the calibration: with no more training answers
  than hidden dimensions every training answer lies in the fit's span and gets nearly the
  same distance, so Platt's slope would be 0 and P(correct) a constant.
* ``calibrate=False``: the class's fixed map ``_uncalibrated(u)`` (``exp(-u)`` for
  non-negative uncertainties unless a subclass says otherwise); ``fit`` learns nothing.

Subclasses implement ``uncertainty(X)`` (and ``_fit_statistics(X, y)`` when the score itself
is fitted on the training split, as Mahalanobis distances are).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, TypeVar

import numpy as np

from knowlens.estimators._base import (
    Estimator,
    Features,
    Labels,
    check_training_labels,
    data_key,
    labels_for,
)

__all__ = ["CALIBRATION_FOLDS", "ScoreEstimator", "platt_fit"]

#: folds of the cross-fitted calibration of scores with fitted statistics (``CROSS_FIT``)
CALIBRATION_FOLDS = 5

S = TypeVar("S", bound="ScoreEstimator")


def platt_fit(score: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """``(a, b, clipped)`` of ``P(correct) = sigmoid(a * score + b)`` with ``a >= 0``.

    Fitted by scikit-learn's logistic regression (unregularised) on the finite scores; when
    the fitted slope is negative the slope is clipped to 0 and ``b`` is the training
    log-odds (the best constant)."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=int)
    x = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(x)
    x, y = x[ok], y[ok]
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6)) if len(y) else 0.5
    const = float(np.log(rate / (1 - rate)))
    if len(np.unique(y)) < 2 or np.ptp(x) == 0:
        return 0.0, const, False
    lr = LogisticRegression(C=np.inf).fit(x[:, None], y)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a < 0:
        return 0.0, const, True
    return a, b, False


class ScoreEstimator(Estimator):
    """An estimator whose P(correct) is a monotone map of one raw uncertainty score."""

    calibrate: bool
    #: the score is fitted on the training split: calibrate on out-of-fold scores
    CROSS_FIT: ClassVar[bool] = False
    #: Platt parameters (``a``, ``b``, ``slope_clipped``, ``base_logit``); None if uncalibrated
    calibration_: dict[str, Any] | None

    @abstractmethod
    def uncertainty(self, X: Features) -> np.ndarray:
        """The method's raw uncertainty of every example, shape (n,): higher = less confident."""

    def _fit_statistics(self, X: Features, y: np.ndarray | None) -> None:
        """Fit what ``uncertainty`` needs from the training split (override; default none)."""
        return None

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        """P(correct) without a calibration fit (override for scores not in [0, inf))."""
        return np.exp(-np.clip(u, 0.0, None))

    def _labels(self, X: Features, y: Labels) -> np.ndarray | None:
        if y is None and not hasattr(X, "rows") and not hasattr(X, "gens"):
            return None
        src: Any = y if y is not None else getattr(X, "gens", X)
        return labels_for(src, len(X), getattr(X, "example_ids", None), type(self).__name__)

    def fit(self: S, X: Features, y: Labels = None) -> S:
        """Fit the score's statistics, then (``calibrate``) Platt scaling on the labels."""
        yy = self._labels(X, y)
        keep = None if yy is None else ~np.isnan(yy)
        self._fit_statistics(X, yy)
        if self.calibrate:
            if yy is None:
                from knowlens.errors import DataError

                raise DataError(
                    f"{type(self).__name__}(calibrate=True).fit needs labels: pass y, or "
                    "answers whose correctness is graded, or calibrate=False."
                )
            keep = check_training_labels(yy, type(self).__name__)
            u = self._out_of_fold(X, yy, keep) if self.CROSS_FIT else self.uncertainty(X)
            a, b, clipped = platt_fit(-u[keep], yy[keep])
            rate = float(np.clip(yy[keep].mean(), 1e-6, 1 - 1e-6))
            self.calibration_ = {
                "a": a,
                "b": b,
                "slope_clipped": clipped,
                "base_logit": float(np.log(rate / (1 - rate))),
            }
        else:
            self.calibration_ = None
        self.train_key_ = self._train_key(X, y)
        return self

    def _out_of_fold(self, X: Features, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Out-of-fold training scores for a ``CROSS_FIT`` class (it overrides this)."""
        raise NotImplementedError  # pragma: no cover

    def predict_proba(self, X: Features) -> np.ndarray:
        """P(correct), shape (n,). An example whose score is undefined (NaN: e.g. no
        non-empty sample) gets the uninformative value, the training accuracy when
        calibrated and 0.5 otherwise; how many did is ``n_undefined_`` (and logged)."""
        self._check_fitted()
        u = np.asarray(self.uncertainty(X), dtype=np.float64)
        undefined = np.isnan(u)
        self.n_undefined_ = int(undefined.sum())
        if self.n_undefined_:
            import logging

            logging.getLogger("knowlens.estimators").warning(
                "%s: %d of %d examples have an undefined score; they get the uninformative "
                "P(correct) (training accuracy if calibrated, else 0.5)",
                type(self).__name__,
                self.n_undefined_,
                len(u),
            )
        if self.calibration_ is None:
            p = self._uncalibrated(np.where(undefined, 0.0, u))
            return np.where(undefined, 0.5, p)
        a, b = self.calibration_["a"], self.calibration_["b"]
        z = a * np.nan_to_num(-u, posinf=1e6, neginf=-1e6) + b
        z = np.where(undefined, self.calibration_.get("base_logit", b), z)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def _state(self) -> dict[str, Any]:
        return {"calibration": self.calibration_, "train_key": self.train_key_}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        self.calibration_ = state["calibration"]
        self.train_key_ = state["train_key"]

    def _train_key(self, X: Features, y: Labels = None) -> str | None:
        yy = self._labels(X, y)
        if not self.calibrate and not self._learns_statistics():
            return None
        return data_key(getattr(X, "gens", X), yy)

    def _learns_statistics(self) -> bool:
        """Whether ``_fit_statistics`` learns from data (then the fit is keyed by it)."""
        return type(self)._fit_statistics is not ScoreEstimator._fit_statistics
