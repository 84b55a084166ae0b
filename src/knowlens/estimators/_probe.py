"""Probes on frozen hidden states: the Kapoor MLP probe and the Orgad logistic probe.

Input is an ``ActivationSet`` with ``values`` of shape
``(n_examples, n_layers, n_positions, d_model)``; a probe reads one layer, reducing the
positions of each example to one vector (``ActivationSet.features(layer, reduce)``).

    acts = knowlens.extract(model, gens, layers="all", tokens="exact_answer")
    probe = LogisticProbe(layer=12).fit(acts, gens)       # labels = gens.correct
    p = probe.predict_proba(acts_test)                     # (n,) P(correct)
    sweep = sweep_probes([acts_exact, acts_last], gens)    # layer x selector validation AUROC
    sweep.table, sweep.best                                 # DataFrame, {"layer", "tokens", ...}

FIGURES.md section 1 (Probe): last layer, last token of prompt + answer (extract with
``tokens="last"``, ``layers=[model.n_layers]``), MLP d -> 256 -> 128 -> 64 -> 2 (ReLU),
cross-entropy. Section 3: scikit-learn ``LogisticRegression`` with its defaults on the
exact-answer token at a chosen layer (picked by a layer x token sweep on the training split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from knowlens._types import ActivationSet
from knowlens.errors import ConfigError, DataError
from knowlens.estimators._base import (
    Estimator,
    Labels,
    check_training_labels,
    data_key,
    labels_for,
    layer_features,
)
from knowlens.estimators._registry import activations, register_estimator

__all__ = ["LogisticProbe", "MLPProbe", "ProbeSweep", "fit_logistic", "mlp_head", "sweep_probes"]


class _FeatureProbe(Estimator[ActivationSet]):
    """Shared plumbing: features at (layer, reduce), label alignment, NaN checks."""

    layer: int
    reduce: str

    def _features(self, acts: ActivationSet, who: str) -> np.ndarray:
        n = getattr(self, "n_features_in_", None)
        return layer_features(acts, self.layer, self.reduce, who, n)

    def _train_xy(self, acts: ActivationSet, y: Labels) -> tuple[np.ndarray, np.ndarray]:
        who = type(self).__name__
        x = self._features(acts, f"{who}.fit")
        yy = labels_for(y, len(x), acts.example_ids, who)
        keep = check_training_labels(yy, who)
        self.layer_ = acts.layers[acts.layer_index(self.layer)]
        self.tokens_ = acts.tokens
        self.train_key_ = data_key(acts, yy)
        self.n_features_in_ = int(x.shape[1])
        return x[keep], yy[keep].astype(np.int64)


def _logistic(C: float, max_iter: int) -> Any:
    """sklearn's logistic regression (defaults but the solver, see ``LogisticProbe``)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, solver="newton-cholesky", max_iter=max_iter)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, C: float = 1.0, max_iter: int = 100) -> Any:
    """A fitted logistic regression on raw hidden states ``x`` (n, d): Newton, in float64
    (in float32 the Hessian of raw states, condition number ~1e8, fails its Cholesky
    factorisation and sklearn falls back to a truncated lbfgs). See ``LogisticProbe``."""
    return _logistic(C, max_iter).fit(np.asarray(x, dtype=np.float64), y)


@register_estimator(
    "logistic",
    display_name="Logistic probe",
    inputs=activations(layer="last", tokens="exact_answer"),
    aliases=("logistic_probe",),
)
class LogisticProbe(_FeatureProbe):
    """Orgad et al. (2024) error-detection probe (FIGURES.md section 3).

    scikit-learn ``LogisticRegression`` with its default objective (L2, C=1, unpenalised
    intercept), fitted on raw hidden states of one layer, as LLMsKnow's probe. The solver is
    Newton (``newton-cholesky``, exact Hessian, about 10 iterations, in float64), not
    sklearn's default lbfgs: raw residual-stream states have a few outlier dimensions and
    large means, on which lbfgs stops short of the optimum or warns that it did not converge
    (SmolLM2, 3 tasks x 6 layers: above Newton's objective in 17 of 18 fits at 1,000
    iterations, 3 warnings). Newton reaches the same objective's optimum; its d x d Hessian
    is 2.6 MB at d=576 and 134 MB at d=4096.

    Args:
        layer: hidden-state index held in the ActivationSet (negative = from the last held).
        reduce: how to reduce an example's positions: ``"last"`` (for ``exact_answer`` this is
            the last token of the span), ``"first"`` or ``"mean"``.
        C: inverse regularisation strength (sklearn default 1.0).
        max_iter: most Newton iterations (sklearn's default 100; it converges in about 10).
    """

    code_version = "2"  # 2: Newton in float64 (1: lbfgs in float32, stopped short)

    def __init__(
        self, *, layer: int = -1, reduce: str = "last", C: float = 1.0, max_iter: int = 100
    ) -> None:
        self.layer = layer
        self.reduce = reduce
        self.C = C
        self.max_iter = max_iter

    def fit(self, acts: ActivationSet, y: Labels = None) -> LogisticProbe:
        """Fit on ``acts.features(layer, reduce)`` (n, d) against ``y`` (0/1 or GenerationSet)."""
        if not self.C > 0:
            raise ConfigError(f"LogisticProbe: C must be > 0; got {self.C}.")
        x, yy = self._train_xy(acts, y)
        self.clf_ = fit_logistic(x, yy, C=self.C, max_iter=self.max_iter)
        return self

    def predict_proba(self, acts: ActivationSet) -> np.ndarray:
        """P(correct), shape (n,)."""
        self._check_fitted()
        x = self._features(acts, "LogisticProbe.predict_proba")
        col = int(np.flatnonzero(self.clf_.classes_ == 1)[0])
        return self.clf_.predict_proba(x)[:, col]

    def _state(self) -> dict[str, Any]:
        return {
            "layer": self.layer_,
            "tokens": self.tokens_,
            "train_key": self.train_key_,
            "n_features_in": self.n_features_in_,
        }

    def _weights(self) -> dict[str, np.ndarray]:
        return {
            "coef": self.clf_.coef_,
            "intercept": self.clf_.intercept_,
            "classes": self.clf_.classes_.astype(np.int64),
        }

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        clf = _logistic(self.C, self.max_iter)
        clf.coef_ = weights["coef"]
        clf.intercept_ = weights["intercept"]
        clf.classes_ = weights["classes"]
        clf.n_features_in_ = int(weights["coef"].shape[1])
        self.clf_ = clf
        self.layer_ = state["layer"]
        self.tokens_ = state["tokens"]
        self.train_key_ = state["train_key"]
        self.n_features_in_ = state["n_features_in"]


def mlp_head(d: int, hidden: Sequence[int] = (256, 128, 64)) -> Any:
    """Kapoor et al. head: Linear(d, 256) ReLU Linear(256, 128) ReLU Linear(128, 64) ReLU
    Linear(64, 2); logits of (wrong, correct)."""
    import torch

    layers: list[torch.nn.Module] = []
    prev = d
    for h in hidden:
        layers += [torch.nn.Linear(prev, h), torch.nn.ReLU()]
        prev = h
    layers.append(torch.nn.Linear(prev, 2))
    return torch.nn.Sequential(*layers)


@register_estimator(
    "probe",
    display_name="Probe",
    inputs=activations(layer="last", tokens="last", text="query"),
    settings={"epochs": "probe_epochs"},
    aliases=("Probe", "mlp_probe"),
)
class MLPProbe(_FeatureProbe):
    """Kapoor et al. (2024) probe (FIGURES.md section 1, "Probe").

    MLP d -> 256 -> 128 -> 64 -> 2 with ReLU, cross-entropy, on frozen features (default:
    the last held layer, last position). Any ActivationSet works; the ``probe`` entry the
    analyses use reads the last layer at the last token of the answer's Zero-Shot Classifier
    query (calibration-tuning's classifier ``with_query``: ``query_activations``), which is the
    forward pass the Zero-Shot Classifier reads too, so the two share it; for prompt +
    answer features extract with ``tokens="last"`` and ``layers=[model.n_layers]``. Features
    are standardised with the training mean / std (stored). AdamW, full passes over shuffled
    mini-batches, seeded.

    Args:
        layer, reduce: as in ``LogisticProbe``.
        hidden: hidden widths.
        epochs, batch_size, lr, weight_decay: optimiser settings.
        seed: torch / shuffling seed.
    """

    def __init__(
        self,
        *,
        layer: int = -1,
        reduce: str = "last",
        hidden: tuple[int, ...] = (256, 128, 64),
        epochs: int = 100,
        batch_size: int = 64,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        seed: int = 0,
    ) -> None:
        self.layer = layer
        self.reduce = reduce
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    def fit(self, acts: ActivationSet, y: Labels = None) -> MLPProbe:
        """Train the head on ``acts.features(layer, reduce)`` (n, d); loss per epoch in
        ``loss_history_``."""
        import torch

        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"MLPProbe: {name} must be >= 1; got {getattr(self, name)}.")
        x, yy = self._train_xy(acts, y)
        self.mean_ = x.mean(0)
        self.std_ = x.std(0) + 1e-6
        xt = torch.from_numpy((x - self.mean_) / self.std_).float()
        yt = torch.from_numpy(yy)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            head = mlp_head(xt.shape[1], self.hidden)
        opt = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        history: list[float] = []
        head.train()
        for _ in range(self.epochs):
            perm = torch.randperm(len(xt), generator=gen)
            total = 0.0
            for i in range(0, len(xt), self.batch_size):
                idx = perm[i : i + self.batch_size]
                loss = torch.nn.functional.cross_entropy(head(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / len(xt))
        head.eval()
        self.head_ = head
        self.loss_history_ = history
        return self

    def predict_proba(self, acts: ActivationSet) -> np.ndarray:
        """P(correct), shape (n,): softmax of the head's two logits, column "correct"."""
        import torch

        self._check_fitted()
        x = self._features(acts, "MLPProbe.predict_proba")
        xt = torch.from_numpy((x - self.mean_) / self.std_).float()
        with torch.inference_mode():
            return torch.softmax(self.head_(xt), -1)[:, 1].double().numpy()

    def _state(self) -> dict[str, Any]:
        return {
            "layer": self.layer_,
            "tokens": self.tokens_,
            "train_key": self.train_key_,
            "n_features_in": self.n_features_in_,
            "loss_history": self.loss_history_,
        }

    def _weights(self) -> dict[str, np.ndarray]:
        w = {f"head.{k}": v.detach().numpy() for k, v in self.head_.state_dict().items()}
        return {**w, "mean": self.mean_, "std": self.std_}

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        import torch

        self.n_features_in_ = state["n_features_in"]
        head = mlp_head(self.n_features_in_, self.hidden)
        head.load_state_dict(
            {k[5:]: torch.from_numpy(v) for k, v in weights.items() if k.startswith("head.")}
        )
        self.head_ = head.eval()
        self.mean_, self.std_ = weights["mean"], weights["std"]
        self.layer_ = state["layer"]
        self.tokens_ = state["tokens"]
        self.train_key_ = state["train_key"]
        self.loss_history_ = state["loss_history"]


# -- layer x token sweep -----------------------------------------------------------------------
@dataclass
class ProbeSweep:
    """Result of ``sweep_probes``.

    Attributes:
        table: one row per (tokens, layer): ``tokens, layer, auroc, n_train, n_val``.
        best: the row with the highest validation AUROC, as a dict.
    """

    table: pd.DataFrame
    best: dict[str, Any]

    def best_probe(
        self,
        train: ActivationSet | Sequence[ActivationSet] | Mapping[str, ActivationSet],
        y: Labels,
    ) -> Estimator[ActivationSet]:
        """A probe of the winning kind refitted on all of ``train`` at the best cell."""
        sets = _as_sets(train)
        est = self.best["estimator"]
        return est.fit(sets[self.best["tokens"]], y)


def _as_sets(
    train: ActivationSet | Sequence[ActivationSet] | Mapping[str, ActivationSet],
) -> dict[str, ActivationSet]:
    if isinstance(train, ActivationSet):
        return {train.tokens: train}
    if isinstance(train, Mapping):
        return dict(train)
    return {a.tokens: a for a in train}


def sweep_probes(
    train: ActivationSet | Sequence[ActivationSet] | Mapping[str, ActivationSet],
    y: Labels,
    *,
    val: ActivationSet | Sequence[ActivationSet] | Mapping[str, ActivationSet] | None = None,
    y_val: Labels = None,
    layers: Sequence[int] | None = None,
    val_fraction: float = 0.25,
    seed: int = 0,
    probe: type[LogisticProbe] | type[MLPProbe] = LogisticProbe,
    progress: bool = True,
    **probe_params: Any,
) -> ProbeSweep:
    """Validation AUROC of a probe at every (token selector, layer) and the best pick.

    Args:
        train: activations, one ActivationSet per token selector (a list, a dict keyed by
            selector, or a single set). All must hold the same examples in the same order.
        y: labels for ``train`` (0/1 array or the GenerationSet).
        val, y_val: held-out activations / labels; if omitted, a stratified
            ``val_fraction`` of ``train`` (seeded) is held out.
        layers: layers to try (default: every layer held by the first set).
        probe: ``LogisticProbe`` (default, Orgad et al.) or ``MLPProbe``.
        probe_params: passed to the probe (e.g. ``C=0.1``).

    Returns:
        ``ProbeSweep(table, best)``; ``best`` holds ``tokens``, ``layer``, ``auroc`` and an
        unfitted ``estimator`` configured for that cell.
    """
    from sklearn.model_selection import train_test_split

    from knowlens.metrics import auroc

    sets = _as_sets(train)
    if not sets:
        raise DataError("sweep_probes: got no ActivationSets; pass at least one.")
    first = next(iter(sets.values()))
    n = len(first)
    yy = labels_for(y, n, first.example_ids, "sweep_probes")
    keep = check_training_labels(yy, "sweep_probes")
    if val is None:
        idx = np.flatnonzero(keep)
        if np.bincount(yy[idx].astype(int), minlength=2).min() < 2:
            raise DataError(
                "sweep_probes: need at least 2 examples of each class to hold out a "
                "validation split; pass val=... or more data."
            )
        tr, va = train_test_split(
            idx, test_size=val_fraction, random_state=seed, stratify=yy[idx].astype(int)
        )
        tr_sets = {k: _subset(a, tr) for k, a in sets.items()}
        va_sets = {k: _subset(a, va) for k, a in sets.items()}
        y_tr, y_va = yy[tr], yy[va]
    else:
        tr_sets, va_sets = sets, _as_sets(val)
        y_tr = yy
        va_first = next(iter(va_sets.values()))
        y_va = labels_for(y_val, len(va_first), va_first.example_ids, "sweep_probes")
    missing = set(tr_sets) - set(va_sets)
    if missing:
        raise DataError(f"sweep_probes: validation sets lack selectors {sorted(missing)}.")
    layers = list(first.layers if layers is None else layers)
    rows = []
    cells = [(tok, layer) for tok in tr_sets for layer in layers]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("probe sweep", total=len(cells))
        for tok, layer in cells:
            est = probe(layer=layer, **probe_params)
            est.fit(tr_sets[tok], y_tr)
            score = auroc(y_va, est.predict_proba(va_sets[tok]))
            rows.append(
                {
                    "tokens": tok,
                    "layer": int(tr_sets[tok].layers[tr_sets[tok].layer_index(layer)]),
                    "auroc": score,
                    "n_train": int((~np.isnan(y_tr)).sum()),
                    "n_val": int((~np.isnan(y_va)).sum()),
                }
            )
            bar.advance(task)
    table = pd.DataFrame(rows)
    best_row = table.loc[table["auroc"].fillna(-np.inf).idxmax()].to_dict()
    best_row["estimator"] = probe(layer=int(best_row["layer"]), **probe_params)
    return ProbeSweep(table=table, best=best_row)


def _subset(acts: ActivationSet, idx: np.ndarray) -> ActivationSet:
    return ActivationSet(
        values=np.asarray(acts.values[idx]),
        mask=np.asarray(acts.mask[idx]),
        layers=list(acts.layers),
        tokens=acts.tokens,
        example_ids=[acts.example_ids[int(i)] for i in idx],
        positions=np.asarray(acts.positions[idx]),
        # the parent's cache key must not name the subset (it keys trained estimators)
        meta={k: v for k, v in acts.meta.items() if k != "cache_key"}
        | {"subset_of": acts.meta.get("cache_key")},
    )
