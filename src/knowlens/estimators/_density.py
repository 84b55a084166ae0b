"""Density estimators on hidden states: Mahalanobis and relative Mahalanobis distance.

Both need no sampling and no model call: they read the reader's hidden states of each
question + answer (an ``ActivationSet``, one layer, positions reduced to one vector) and fit
Gaussians on the training split's answers.

    md = MahalanobisDistance(layer=-1).fit(acts_train, gens_train)   # labels: calibration
    u = md.uncertainty(acts_test)                                     # raw distance
    p = md.predict_proba(acts_test)                                   # P(correct)

Definitions (those of LM-Polygraph 0.7.0, ``estimators/mahalanobis_distance.py`` and
``relative_mahalanobis_distance.py``, which the parity test feeds the same features):

* Gaussian fit of training features ``h_1..h_m`` (rows, dimension d): centroid
  ``mu = mean(h)``, covariance ``S = cov(h)`` (unbiased, divisor m - 1, as ``torch.cov``)
  plus a jitter ``eps * I``, where ``eps`` is the first of 1e-15, 1e-14, ..., 1e-1 for which
  every eigenvalue of ``S + eps * I`` is >= 0 (the last one if none is).
* ``MD(h) = sqrt((h - mu)^T (S + eps * I)^{-1} (h - mu))``: LM-Polygraph's value, the square
  root of the quadratic form of Lee et al. (2018) (a monotone map of it, so the ranking is
  the same).
* ``RMD(h) = MD_fg(h) - MD_bg(h)`` (Ren et al. 2023): the distance to a foreground fit minus
  the distance to a background fit. LM-Polygraph takes the difference of the square roots;
  Ren et al. of the quadratic forms. The two are not monotone maps of each other; knowlens
  follows LM-Polygraph.

What the fits use (``fit_on``): LM-Polygraph fits MD on every training input's greedy answer,
whatever its correctness, and RMD's background on a separate general-domain corpus. knowlens
has the training split and its labels, no general corpus: MD (``fit_on="all"``) fits every
training answer, as LM-Polygraph; RMD fits its foreground on the training answers graded
correct and its background on all training answers (Ren et al. 2021's pooled background), so
RMD is large when an answer is far from the correct ones relative to answers in general.
``fit_on="correct"`` for MD fits the correct answers only.

The covariance is singular when a fit has no more answers than hidden dimensions (m <= d, the
usual case for 4096-wide models and a few hundred answers); LM-Polygraph's jitter then makes
the distance dominated by the part of ``h - mu`` outside the training answers' span. knowlens
computes the quadratic form through the eigendecomposition of ``S + eps * I`` (a sum of
non-negative terms, no cancellation against 1/eps-sized entries), records ``jitter_`` and
``n_fit_``, and warns once per fit when m <= d. The fit stores d x d float64 eigenvectors
(128 MiB at d = 4096).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from knowlens.errors import ConfigError, DataError
from knowlens.estimators._base import Features, layer_features
from knowlens.estimators._registry import activations, register_estimator
from knowlens.estimators._score import CALIBRATION_FOLDS, ScoreEstimator

__all__ = [
    "JITTERS",
    "GaussianFit",
    "MahalanobisDistance",
    "RelativeMahalanobisDistance",
    "fit_gaussian",
    "mahalanobis",
]

#: LM-Polygraph's jitter ladder (``mahalanobis_distance.JITTERS``)
JITTERS = tuple(10.0**e for e in range(-15, 0))
FIT_ON = ("all", "correct")


class GaussianFit:
    """Centroid and eigendecomposition of ``S + eps * I`` of one set of training features."""

    def __init__(self, mean: np.ndarray, eigvals: np.ndarray, eigvecs: np.ndarray, jitter: float):
        self.mean = mean
        self.eigvals = eigvals
        self.eigvecs = eigvecs
        self.jitter = jitter


def fit_gaussian(h: np.ndarray) -> GaussianFit:
    """Centroid, unbiased covariance and LM-Polygraph's jitter of features ``h`` (m, d)."""
    h = np.asarray(h, dtype=np.float64)
    mean = h.mean(axis=0)
    cov = np.atleast_2d(np.cov(h, rowvar=False))
    cov = np.nan_to_num(cov, nan=0.0, posinf=0.0, neginf=0.0)
    eye = np.eye(cov.shape[0])
    for eps in JITTERS:  # as LM-Polygraph: the first jitter that leaves no negative eigenvalue
        vals, vecs = np.linalg.eigh(cov + eps * eye)
        if (vals >= 0).all():
            break
    # an eigenvalue of exactly 0 (only possible with no jitter left) would divide by zero
    vals = np.maximum(vals, np.finfo(np.float64).tiny)
    return GaussianFit(mean, vals, vecs, float(eps))


def mahalanobis(h: np.ndarray, fit: GaussianFit) -> np.ndarray:
    """``sqrt((h - mu)^T (S + eps I)^{-1} (h - mu))`` for every row of ``h`` (n, d)."""
    z = (np.asarray(h, dtype=np.float64) - fit.mean) @ fit.eigvecs
    return np.sqrt(np.sum(z * z / fit.eigvals, axis=1))


class _DensityEstimator(ScoreEstimator):
    """Shared plumbing: features at (layer, reduce), fits, save / load."""

    CROSS_FIT = True  # Platt on out-of-fold distances (ScoreEstimator)
    layer: int
    reduce: str
    fit_on: str
    _FITS: tuple[str, ...] = ()

    def _out_of_fold(self, X: Features, y: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Each labelled training answer's score under statistics fitted without its fold
        (stratified, seeded); NaN for unlabelled rows."""
        from sklearn.model_selection import StratifiedKFold

        from knowlens.estimators._base import clone
        from knowlens.estimators._calibrate import subset_rows  # features: an ActivationSet

        rows = np.flatnonzero(keep)
        labels = y[rows].astype(int)
        folds = int(min(CALIBRATION_FOLDS, np.bincount(labels, minlength=2).min()))
        if folds < 2:  # a class with one answer: nothing to hold out
            return np.asarray(self.uncertainty(X), dtype=np.float64)
        u = np.full(len(y), np.nan)
        split = StratifiedKFold(folds, shuffle=True, random_state=0).split(rows, labels)
        for fit_i, held_i in split:
            part = clone(self)
            with warnings.catch_warnings():  # the fit on every answer below warns, once
                warnings.simplefilter("ignore", UserWarning)
                part._fit_statistics(subset_rows(X, rows[fit_i]), y[rows[fit_i]])
            u[rows[held_i]] = part.uncertainty(subset_rows(X, rows[held_i]))
        return u

    def _features(self, acts: Any, who: str) -> np.ndarray:
        n = getattr(self, "n_features_in_", None)
        return layer_features(acts, self.layer, self.reduce, who, n).astype(np.float64)

    def _rows(self, x: np.ndarray, y: np.ndarray | None, which: str, who: str) -> np.ndarray:
        """Training rows of one fit: all answers, or those graded correct."""
        if which == "all":
            rows = x if y is None else x[~np.isnan(y)]
        else:
            if y is None:
                raise DataError(
                    f"{who}.fit fits answers graded correct and needs labels: pass y (0/1) "
                    "or the GenerationSet."
                )
            rows = x[y == 1]
        if len(rows) < 2:
            raise DataError(
                f"{who}.fit: the '{which}' fit has {len(rows)} training answer(s); a "
                "covariance needs at least 2. Use more training answers."
            )
        d = rows.shape[1]
        if len(rows) <= d:
            warnings.warn(
                f"{who}: the '{which}' Gaussian is fitted on {len(rows)} answers of dimension "
                f"{d}: its covariance is singular and the distance is dominated by the part "
                "outside the training answers' span (LM-Polygraph's jitter); use more answers "
                "for a full-rank fit.",
                stacklevel=4,
            )
        return rows

    def _check_params(self, who: str) -> None:
        if self.fit_on not in FIT_ON:
            raise ConfigError(f"{who}: fit_on must be 'all' or 'correct'; got '{self.fit_on}'.")

    def _store(self, name: str, fit: GaussianFit, n: int) -> None:
        self.fits_ = {**getattr(self, "fits_", {}), name: fit}
        self.n_fit_ = {**getattr(self, "n_fit_", {}), name: n}
        self.jitter_ = {**getattr(self, "jitter_", {}), name: fit.jitter}

    def _distance(self, x: np.ndarray, name: str) -> np.ndarray:
        return mahalanobis(x, self.fits_[name])

    def _state(self) -> dict[str, Any]:
        return super()._state() | {
            "n_fit": self.n_fit_,
            "jitter": self.jitter_,
            "n_features_in": self.n_features_in_,
        }

    def _weights(self) -> dict[str, np.ndarray]:
        out = {}
        for name, f in self.fits_.items():
            out[f"{name}.mean"] = f.mean
            out[f"{name}.eigvals"] = f.eigvals
            out[f"{name}.eigvecs"] = f.eigvecs
        return out

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        super()._restore(state, weights)
        self.n_fit_ = dict(state["n_fit"])
        self.jitter_ = dict(state["jitter"])
        self.n_features_in_ = int(state["n_features_in"])
        self.fits_ = {
            name: GaussianFit(
                weights[f"{name}.mean"],
                weights[f"{name}.eigvals"],
                weights[f"{name}.eigvecs"],
                float(self.jitter_[name]),
            )
            for name in self.jitter_
        }


@register_estimator(
    "mahalanobis",
    display_name="Mahalanobis distance",
    inputs=activations(layer="last", tokens="last"),
    aliases=("md", "MD"),
)
class MahalanobisDistance(_DensityEstimator):
    """Mahalanobis distance of an answer's hidden state to the training answers (Lee et al.,
    2018, "A simple unified framework for detecting out-of-distribution samples and
    adversarial attacks"; LM-Polygraph ``MahalanobisDistanceSeq``).

    ``uncertainty(acts) = sqrt((h - mu)^T (S + eps I)^{-1} (h - mu))`` with ``mu``, ``S`` and
    ``eps`` fitted on the training answers' features (module docstring); higher = further
    from the training answers = less confident.

    Args:
        layer: hidden-state index held in the ActivationSet (negative = from the last held;
            the registry passes the resolved last layer).
        reduce: positions -> one vector: ``"last"`` (default; the entry reads the last token
            of question + answer, shared with the MLP probe), ``"first"`` or ``"mean"``
            (LM-Polygraph's ``embeddings_decoder`` is the mean over every prompt and answer
            token of the last layer: register a variant with ``tokens="all"`` and
            ``reduce="mean"`` for it).
        fit_on: ``"all"`` training answers (LM-Polygraph) or only those graded ``"correct"``.
        calibrate: Platt scaling of ``-MD`` on the training labels, fitted on 5-fold
            out-of-fold distances (ScoreEstimator); with False, P(correct) = exp(-MD).
    """

    def __init__(
        self, *, layer: int = -1, reduce: str = "last", fit_on: str = "all", calibrate: bool = True
    ) -> None:
        self.layer = layer
        self.reduce = reduce
        self.fit_on = fit_on
        self.calibrate = calibrate

    def _fit_statistics(self, X: Features, y: np.ndarray | None) -> None:
        self._check_params("MahalanobisDistance")
        x = self._features(X, "MahalanobisDistance.fit")
        rows = self._rows(x, y, self.fit_on, "MahalanobisDistance")
        self.n_features_in_ = int(x.shape[1])
        self._store("fit", fit_gaussian(rows), len(rows))

    def uncertainty(self, X: Features) -> np.ndarray:
        """MD of every example, shape (n,)."""
        self._check_fitted()
        return self._distance(self._features(X, "MahalanobisDistance.uncertainty"), "fit")


@register_estimator(
    "relative_mahalanobis",
    display_name="Relative Mahalanobis distance",
    inputs=activations(layer="last", tokens="last"),
    aliases=("rmd", "RMD"),
)
class RelativeMahalanobisDistance(_DensityEstimator):
    """Relative Mahalanobis distance (Ren et al., 2023, "Out-of-distribution detection and
    selective generation for conditional language models"; Ren et al., 2021, "A simple fix
    to Mahalanobis distance for improving near-OOD detection"; LM-Polygraph
    ``RelativeMahalanobisDistanceSeq``).

    ``uncertainty(acts) = MD_fg(h) - MD_bg(h)``: the Mahalanobis distance (as
    ``MahalanobisDistance``) to the foreground fit minus the one to the background fit. The
    foreground fits the training answers graded correct (``fit_on="correct"``, default), the
    background every training answer (module docstring); ``fit_on="all"`` makes both fits the
    same and is refused. Can be negative, so ``calibrate=False`` maps it by
    ``sigmoid(-RMD)``.

    Args: ``layer``, ``reduce``, ``calibrate`` as ``MahalanobisDistance``; ``fit_on`` must be
    ``"correct"``.
    """

    def __init__(
        self,
        *,
        layer: int = -1,
        reduce: str = "last",
        fit_on: str = "correct",
        calibrate: bool = True,
    ) -> None:
        self.layer = layer
        self.reduce = reduce
        self.fit_on = fit_on
        self.calibrate = calibrate

    def _fit_statistics(self, X: Features, y: np.ndarray | None) -> None:
        who = "RelativeMahalanobisDistance"
        self._check_params(who)
        if self.fit_on != "correct":
            raise ConfigError(
                f"{who}: fit_on must be 'correct' (foreground = correct training answers, "
                f"background = all of them); got '{self.fit_on}', which would make both fits "
                "the same Gaussian (RMD = 0)."
            )
        x = self._features(X, f"{who}.fit")
        fg = self._rows(x, y, "correct", who)
        bg = self._rows(x, y, "all", who)
        self.n_features_in_ = int(x.shape[1])
        self._store("foreground", fit_gaussian(fg), len(fg))
        self._store("background", fit_gaussian(bg), len(bg))

    def uncertainty(self, X: Features) -> np.ndarray:
        """RMD of every example, shape (n,)."""
        self._check_fitted()
        x = self._features(X, "RelativeMahalanobisDistance.uncertainty")
        return self._distance(x, "foreground") - self._distance(x, "background")

    def _uncalibrated(self, u: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(np.clip(u, -500, 500)))
