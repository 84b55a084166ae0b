"""LoRA estimators (Kapoor et al. 2024, calibration tuning; FIGURES.md section 1).

* ``LoRAProbe`` ("LoRA"): LoRA adapters + the MLP head (d -> 256 -> 128 -> 64 -> 2) trained
  jointly with cross-entropy on correctness; features = last hidden state (after the final
  norm) at the last token of prompt + answer, computed by the *adapted* model.
* ``LoRAPrompt`` ("LoRA + Prompt"): LoRA adapters trained so that the Zero-Shot Classifier
  query predicts correctness: cross-entropy on the two query-token logits ("i" = wrong,
  "ii" = correct) + ``js_weight`` x Jensen-Shannon divergence between the adapted and the
  frozen model's next-token distributions at the answer tokens (the frozen distribution is
  the same network with adapters disabled). The answer tokens are those of the answer as it
  appears inside the query ("{question} {answer}"), so one adapted pass (with gradients)
  serves both terms; a separate prompt + answer pass would double the cost on CPU. The
  frozen states at those tokens do not change during training: they are read once per
  training query before the adapters go in (``QueryReads``; with the analyses' shared reads
  they are the probe's / Zero-Shot Classifier's pass), not once per step. The LM head is
  applied only at those positions (full-vocabulary JS, no truncation).

Paper defaults: r=8, alpha=32, dropout 0.1, AdamW lr 1e-4 with cosine decay, batch 4.

Trained to convergence on a validation split: ``validation_fraction`` of the training
answers (stratified by label, seeded) is held out; every ``eval_every`` steps the loop
computes the training loss (dropout off) on it and its AUROC, keeps the adapters (and head)
with the lowest validation loss, stops after ``patience`` evaluations without one lower by more
than ``min_delta``, and
ends with the best ones (``training.EarlyStopping``); ``steps`` (default 400) is only the
budget. The learning curve (``learning_curve_``: step, mean training loss since the
previous evaluation, validation loss, validation AUROC), ``best_step_`` and ``stopped_step_``
are kept with the fit, and the best step's validation scores (``validation_scores_``,
``validation_labels_``) are what temperature scaling fits on. ``validation_fraction=0``
trains exactly ``steps`` steps on every answer (no curve). Adapters are injected into the shared model only inside
``fit`` / ``predict_proba`` and always removed on exit (``knowlens.training.lora_attached``:
peft ``unload()`` in a ``finally``), so other code keeps seeing the base model.

Training is ``knowlens.training.train_loop`` (shared with the refusal organisms): every
``checkpoint_every`` steps adapters, head, AdamW state, RNG states and the loss history are
written atomically (checksummed) under ``cache_root()/estimator-checkpoints/<key>/``; a rerun
of the same fit (same model, data, parameters) continues from the newest intact checkpoint.
Batches (length-bucketed: ``training.batch_schedule``, ``length_window``) and dropout
masks are derived from ``(seed, step)``, so a resumed run reproduces the uninterrupted one
exactly. Finished fits are cached by ``knowlens.estimators.fit_cached``
(``cache_root()/estimators/<key>/``, the one estimator cache), not by ``fit``.
Neither loss is a next-token loss on response tokens (a head / two label logits / a JS term),
so ``training.response_loss`` is not used here.

A prefix the queries share (the chat template's system turn, a few-shot block) runs once:
per training batch with its gradients (``generation.prefix_once_forward``; the batch's rows
then share that prefix's LoRA dropout mask), and per validation or ``predict_proba`` pass
(``generation.SharedPrefixes``) under the current adapters.

Token layout of one LoRA + Prompt query (left-padded by ``off`` = width - length)::

    [pad | template + question " " | answer s .. e-1 | "\\n\\nIs the proposed ..." Answer:]
                                ^ positions s-1 .. e-2 predict the answer tokens (JS term)
                                                                            ^ last: "i" / "ii"
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from knowlens._cache import entry_dir, entry_lock
from knowlens._types import GenerationSet
from knowlens.errors import ConfigError, KnowlensError
from knowlens.estimators._base import (
    Estimator,
    Labels,
    check_gens,
    check_training_labels,
    data_key,
    labels_for,
)
from knowlens.estimators._probe import mlp_head
from knowlens.estimators._query import (
    ZSC_LABELS,
    Query,
    QueryReads,
    answer_token_span,
    batched_label_probs,
    label_probs,
    label_token_ids,
    zsc_queries,
    zsc_texts,
)
from knowlens.estimators._registry import generations, register_estimator
from knowlens.estimators._text import retokenize
from knowlens.models._batch import pad_batch, pad_id
from knowlens.training import (
    LENGTH_WINDOW,
    EarlyStopping,
    ParamGroup,
    adapter_state,
    batch_schedule,
    discard_checkpoints,
    lora_attached,
    train_loop,
    trainable_parameters,
    unfilled_fraction,
)

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = ["LoRAProbe", "LoRAPrompt", "answer_token_span", "js_divergence", "lora_attached"]


L = TypeVar("L", bound="_LoRABase")


class _LoRABase(Estimator[GenerationSet]):
    """Training loop, checkpoints, caching and adapter bookkeeping shared by both."""

    _OBJECT_PARAMS: ClassVar[tuple[str, ...]] = ("model",)
    #: 2: training batches, validation and scoring passes run shared prefixes once (``_run``)
    code_version: ClassVar[str] = "2"

    model: ModelHandle | None
    r: int
    alpha: int
    dropout: float
    lr: float
    steps: int
    batch_size: int
    target_modules: tuple[str, ...]
    max_length: int
    seed: int
    length_window: int
    checkpoint_every: int
    validation_fraction: float
    eval_every: int
    patience: int
    min_delta: float
    cache: bool
    progress: bool
    use_chat_template: bool
    #: share of the training batches' token slots that were padding, in the plain padded
    #: layout (a shared prefix then runs once; None: fit predates it)
    train_padding_: float | None

    # -- hooks for subclasses ---------------------------------------------------------------
    def _prepare(self, gens: GenerationSet, questions: Sequence[str] | None) -> list[Any]:
        raise NotImplementedError  # pragma: no cover

    def _make_head(self) -> Any:
        return None

    def _loss(self, pm: Any, head: Any, items: list[Any], y: Any) -> Any:
        return self._loss_and_scores(pm, head, items, y)[0]

    def _loss_and_scores(
        self, pm: Any, head: Any, items: list[Any], y: Any, shared: Any = None, rows: Any = None
    ) -> tuple[Any, Any]:
        """(training loss of the batch, P(correct) per row) from one forward pass (``_run``)."""
        raise NotImplementedError  # pragma: no cover

    def _ids(self, item: Any) -> list[int]:
        """The tokens one prepared item feeds to the model."""
        raise NotImplementedError  # pragma: no cover

    def _length(self, item: Any) -> int:
        """Tokens of one prepared item as the forward pass sees it (padding is per batch)."""
        return len(self._ids(item))

    def _keep_from(self, item: Any) -> int:
        """First token whose output the loss reads: a shared prefix ends before it."""
        return len(self._ids(item))

    def _run(self, pm: Any, items: list[Any], shared: Any, rows: Any, **kw: Any) -> tuple[Any, int]:
        """The forward of ``items`` and its width (a row's token ``t`` sits in column ``width -
        len + t``). A training batch: its rows' common prefix (the chat template's system
        turn) runs once, gradients flowing through it (``prefix_once_forward``), else one
        left-padded batch. Passes without gradients (validation, scoring): rows ``rows`` of
        ``shared``, a ``SharedPrefixes`` whose prefixes run once per pass under the current
        adapters."""
        from knowlens.generation import prefix_once_forward

        if shared is not None:
            out, mask, *_ = shared.forward(rows, **kw)
            return out, int(mask.shape[1])
        seqs = [self._ids(it) for it in items]
        once = prefix_once_forward(self._handle, seqs, [self._keep_from(it) for it in items], **kw)
        if once is not None:
            return once
        ids, mask, pos = pad_batch(seqs, pad_id(self._handle.tokenizer))
        dev = self._handle.device
        out = pm(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            position_ids=pos.to(dev),
            use_cache=False,
            **kw,
        )
        return out, int(ids.shape[1])

    def _shared(self, items: list[Any]) -> Any:
        """``SharedPrefixes`` over ``items`` (in this order) for one gradient-free pass."""
        from knowlens.generation import SharedPrefixes

        return SharedPrefixes(
            self._handle,
            [self._ids(it) for it in items],
            cap=[self._keep_from(it) for it in items],
        )

    def _before_training(self, items: list[Any], schedule: list[np.ndarray]) -> None:
        """Read what the frozen model contributes, before adapters are attached."""
        return None

    def _after_training(self) -> None:
        return None

    def _head_lr(self) -> float:
        return self.lr

    # -- validation ---------------------------------------------------------------------------
    @property
    def _handle(self) -> ModelHandle:
        """``model``, required: the handle that gets the adapters."""
        if self.model is None:
            raise ConfigError(
                f"{type(self).__name__} needs model=ModelHandle (the model that gets adapters)."
            )
        return self.model

    def _validate(self) -> None:
        who = type(self).__name__
        if self.model is None:
            raise ConfigError(f"{who} needs model=ModelHandle (the model that gets adapters).")
        for name in (
            "r",
            "steps",
            "batch_size",
            "checkpoint_every",
            "max_length",
            "length_window",
            "eval_every",
            "patience",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{who}: {name} must be an integer >= 1; got {v!r}.")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError(
                f"{who}: validation_fraction must be in [0, 1) (0: no early stopping); got "
                f"{self.validation_fraction}."
            )
        if not self.min_delta >= 0:
            raise ConfigError(f"{who}: min_delta must be >= 0; got {self.min_delta!r}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{who}: dropout must be in [0, 1); got {self.dropout}.")
        if not self.lr > 0:
            raise ConfigError(f"{who}: lr must be > 0; got {self.lr}.")

    def _lora_kwargs(self) -> dict[str, Any]:
        return {
            "r": int(self.r),
            "alpha": int(self.alpha),
            "dropout": float(self.dropout),
            "target_modules": tuple(self.target_modules),
        }

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, validation rows): stratified by label, seeded; no validation rows when
        ``validation_fraction`` is 0."""
        n = len(y)
        if self.validation_fraction == 0:
            return np.arange(n), np.arange(0)
        from sklearn.model_selection import train_test_split

        n_val = max(2, round(self.validation_fraction * n))
        counts = np.bincount(y.astype(np.int64), minlength=2)
        if n - n_val < 2 or counts.min() < 2:
            raise ConfigError(
                f"{type(self).__name__}: {n} training answers ({counts[1]} correct, "
                f"{counts[0]} wrong) are too few to hold out a validation split with both "
                "labels for early stopping; give more answers or pass validation_fraction=0 "
                "(a fixed number of steps)."
            )
        tr, va = train_test_split(
            np.arange(n), test_size=n_val, stratify=y, random_state=int(self.seed)
        )
        return np.sort(tr), np.sort(va)

    def _evaluate(
        self, pm: Any, head: Any, items: list[Any], y: Any, order: np.ndarray
    ) -> dict[str, float]:
        """Validation loss (dropout off, batches in ``order``: by length; shared prefixes
        once) and AUROC of ``items``."""
        from sklearn.metrics import roc_auc_score

        pm.eval()
        if head is not None:
            head.eval()
        total, scores = 0.0, np.empty(len(items))
        shared = self._shared([items[j] for j in order])
        try:
            for i in range(0, len(order), int(self.batch_size)):
                idx = order[i : i + int(self.batch_size)]
                rows = range(i, i + len(idx))
                batch = [items[j] for j in idx]
                loss, p = self._loss_and_scores(pm, head, batch, y[idx], shared, rows)
                total += float(loss) * len(idx)
                scores[idx] = p.double().cpu().numpy()
        finally:
            pm.train()
            if head is not None:
                head.train()
        self._val_scores.append(scores)
        yv = y.numpy()
        auroc = float(roc_auc_score(yv, scores)) if 0 < yv.sum() < len(yv) else math.nan
        return {"loss": total / len(items), "auroc": auroc}

    # -- fit ------------------------------------------------------------------------------------
    def fit(
        self: L, gens: GenerationSet, y: Labels = None, questions: Sequence[str] | None = None
    ) -> L:
        """Train on the answers in ``gens`` (labels: ``gens.correct`` or ``y``).

        ``gens`` may come from another model (FIGURES.md section 2): they are re-read with
        ``model``'s tokenizer and chat template (``retokenize``). ``questions`` overrides the
        question texts recovered from the prompts.
        """
        import torch

        self._validate()
        who = type(self).__name__
        check_gens(gens, f"{who}.fit")
        yy = labels_for(gens if y is None else y, len(gens), gens.example_ids, who)
        keep = check_training_labels(yy, who)
        gens = gens.subset(keep)
        yy = yy[keep]
        qs = None if questions is None else [q for q, k in zip(questions, keep, strict=True) if k]
        items = self._prepare(gens, qs)
        tr, va = self._split(yy)
        self.train_key_ = data_key(gens, yy)
        key = self.cache_key()
        # one writer of this fit's checkpoints across processes
        lock = entry_lock("estimator-checkpoints", key) if self.cache else contextlib.nullcontext()
        with lock:
            t0 = time.perf_counter()
            all_lengths = [self._length(it) for it in items]
            lengths = [all_lengths[i] for i in tr]
            # length-bucketed batches: little padding, same seed -> same batches (resumable)
            schedule = [
                tr[b]
                for b in batch_schedule(
                    len(tr),
                    self.batch_size,
                    self.steps,
                    self.seed,
                    lengths=lengths,
                    window=int(self.length_window),
                )
            ]
            yt = torch.as_tensor(yy, dtype=torch.long)
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                head = self._make_head()
            ckpt_root = entry_dir("estimator-checkpoints", key) if self.cache else None
            self._before_training(items, [*schedule, va])
            self._val_scores: list[np.ndarray] = []
            try:
                with lora_attached(self._handle, **self._lora_kwargs(), train=True) as pm:
                    groups = [ParamGroup(trainable_parameters(pm), self.lr)]
                    if head is not None:
                        head.train()
                        groups.append(
                            ParamGroup(trainable_parameters(head, "head."), self._head_lr())
                        )
                    stopping = None
                    if len(va):
                        val_items, y_val = [items[i] for i in va], yt[va]
                        # one length order for every evaluation: batches with little padding
                        val_order = np.argsort([all_lengths[i] for i in va], kind="stable")
                        stopping = EarlyStopping(
                            lambda m: self._evaluate(m, head, val_items, y_val, val_order),
                            every=int(self.eval_every),
                            patience=int(self.patience),
                            min_delta=float(self.min_delta),
                        )
                    result = train_loop(
                        pm,
                        lambda m, idx: self._loss(m, head, [items[i] for i in idx], yt[idx]),
                        lambda start: iter(schedule[start:]),
                        groups=groups,
                        steps=int(self.steps),
                        lr_lambda=lambda step: 0.5 * (1 + math.cos(math.pi * step / self.steps)),
                        weight_decay=0.0,
                        step_seed=lambda step: self.seed * 1_000_003 + step,  # dropout: resumable
                        checkpoint_dir=ckpt_root,
                        checkpoint_every=int(self.checkpoint_every),
                        progress=self.progress,
                        description=f"{self.display_name} training",
                        early_stopping=stopping,
                    )
                    self.adapter_ = adapter_state(pm)
                    best = None
                    if stopping is not None:  # the scores of the parameters kept (the best)
                        # this process' evaluations are the curve's last ones (a resumed
                        # fit did not score those before its checkpoint)
                        steps_scored = [int(e["step"]) for e in result.evals][
                            len(result.evals) - len(self._val_scores) :
                        ]
                        if result.best_step in steps_scored:
                            best = self._val_scores[steps_scored.index(result.best_step)]
                        else:
                            with torch.no_grad():
                                self._evaluate(pm, head, val_items, y_val, val_order)
                            best = self._val_scores[-1]
            finally:
                self._after_training()
            self.resumed_from_ = result.resumed_from
            if head is not None:
                head.eval()
                self.head_ = head
            self.loss_history_ = result.history
            self.learning_curve_ = result.evals
            self.best_step_ = result.best_step
            self.stopped_step_ = result.stopped_step
            self.validation_scores_ = None if best is None else best.tolist()
            self.validation_labels_ = None if best is None else yy[va].astype(int).tolist()
            self._val_scores = []
            self.n_train_ = len(tr)
            self.n_validation_ = len(va)
            used = schedule[: result.stopped_step]
            self.train_padding_ = unfilled_fraction(all_lengths, used if used else schedule)
            self.train_time_s_ = time.perf_counter() - t0
            self.model_id_ = self._handle.target_id
            if ckpt_root is not None:  # set exactly when self.cache
                discard_checkpoints(ckpt_root)
        return self

    # -- persistence -------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id_,
            "train_key": self.train_key_,
            "loss_history": self.loss_history_,
            "n_train": self.n_train_,
            "n_validation": self.n_validation_,
            "learning_curve": self.learning_curve_,
            "best_step": self.best_step_,
            "stopped_step": self.stopped_step_,
            "validation_scores": self.validation_scores_,
            "validation_labels": self.validation_labels_,
            "train_time_s": self.train_time_s_,
            "train_padding": self.train_padding_,
            "d_model": int(self._handle.d_model),
        }

    def _weights(self) -> dict[str, np.ndarray]:
        w = {f"adapter.{k}": v for k, v in self.adapter_.items()}
        head = getattr(self, "head_", None)
        if head is not None:
            w.update({f"head.{k}": v.detach().numpy() for k, v in head.state_dict().items()})
        return w

    def _restore(self, state: dict[str, Any], weights: dict[str, np.ndarray]) -> None:
        import torch

        if state["model_id"] != self._handle.target_id:
            raise KnowlensError(
                f"This {type(self).__name__} holds adapters for model {state['model_id']}; got "
                f"{self._handle.name} ({self._handle.target_id}). Load it with the same model."
            )
        self.model_id_ = state["model_id"]
        self.train_key_ = state["train_key"]
        self.loss_history_ = state["loss_history"]
        self.n_train_ = state["n_train"]
        self.n_validation_ = state.get("n_validation", 0)
        self.learning_curve_ = state.get("learning_curve", [])
        self.best_step_ = state.get("best_step")
        self.stopped_step_ = state.get("stopped_step")
        self.validation_scores_ = state.get("validation_scores")
        self.validation_labels_ = state.get("validation_labels")
        self.train_time_s_ = state["train_time_s"]
        self.train_padding_ = state.get("train_padding")  # None in fits saved before it
        self.adapter_ = {k[8:]: v for k, v in weights.items() if k.startswith("adapter.")}
        head_w = {k[5:]: torch.from_numpy(v) for k, v in weights.items() if k.startswith("head.")}
        if head_w:
            head = self._make_head()
            head.load_state_dict(head_w)
            self.head_ = head.eval()


# Config field (TrainSettings) behind each LoRA estimator parameter, shared by both entries.
_LORA_SETTINGS = {
    "steps": "lora_steps",
    "r": "lora_r",
    "alpha": "lora_alpha",
    "lr": "lora_lr",
    "batch_size": "batch_size",
    "validation_fraction": "lora_validation_fraction",
    "eval_every": "lora_eval_every",
    "patience": "lora_patience",
    "min_delta": "lora_min_delta",
}


# -- LoRA (adapters + MLP head) ----------------------------------------------------------------
@register_estimator(
    "lora",
    display_name="LoRA",
    inputs=generations(model=True),
    settings=_LORA_SETTINGS,
    train_limit="max_train",
    aliases=("LoRA", "lora_probe"),
)
class LoRAProbe(_LoRABase):
    """FIGURES.md section 1 "LoRA": LoRA adapters and the Kapoor MLP head trained jointly.

    The head reads the adapted model's last hidden state (after the final norm) at the last
    token of prompt + answer. P(correct) = softmax(head)[correct].

    Args:
        model: ``ModelHandle`` that gets the adapters (for cross-model use, the "Trained On"
            model; answers of other models are re-tokenised for it).
        r, alpha, dropout, target_modules: LoRA settings (paper: 8, 32, 0.1; q/v projections,
            peft's default for Llama).
        lr: AdamW learning rate of the adapters (paper 1e-4), cosine decay over ``steps``.
        head_lr: learning rate of the freshly initialised head (default 1e-3: with CPU-sized
            step counts the head would barely move at 1e-4).
        steps, batch_size: most optimisation steps (early stopping usually ends sooner) and
            examples per step (paper batch 4).
        max_length: longest prompt + answer in tokens (longer keep their last tokens).
        seed: batch order, dropout and head initialisation.
        length_window: batches per length-sorting window (``training.batch_schedule``):
            rows of similar length are batched together, so little compute goes to padding;
            1 = plain shuffled batches.
        checkpoint_every: steps between resumable checkpoints.
        validation_fraction: share of the training answers held out for early stopping
            (stratified, seeded); 0 = train exactly ``steps`` steps on all of them.
        eval_every, patience: steps between validation evaluations, and evaluations without
            a lower validation loss before training stops (5 x 20 steps by default).
        min_delta: how much lower than the best so far a validation loss must be to count as
            lower (nats per answer; 0 = any decrease): a loss still creeping down by less
            ends the training instead of running to ``steps``.
        cache: write resumable checkpoints (under the cache); finished fits are cached by
            ``knowlens.estimators.fit_cached``.
        progress: rich progress bar with the running loss.
        use_chat_template: chat template for re-tokenised (cross-model) prompts.
    """

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        r: int = 8,
        alpha: int = 32,
        dropout: float = 0.1,
        lr: float = 1e-4,
        head_lr: float = 1e-3,
        steps: int = 400,
        batch_size: int = 4,
        target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
        max_length: int = 384,
        seed: int = 0,
        length_window: int = LENGTH_WINDOW,
        checkpoint_every: int = 20,
        validation_fraction: float = 0.2,
        eval_every: int = 20,
        patience: int = 5,
        min_delta: float = 0.0,
        cache: bool = True,
        progress: bool = True,
        use_chat_template: bool = True,
    ) -> None:
        self.model = model
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.lr = lr
        self.head_lr = head_lr
        self.steps = steps
        self.batch_size = batch_size
        self.target_modules = target_modules
        self.max_length = max_length
        self.seed = seed
        self.length_window = length_window
        self.checkpoint_every = checkpoint_every
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.min_delta = min_delta
        self.cache = cache
        self.progress = progress
        self.use_chat_template = use_chat_template

    def _head_lr(self) -> float:
        return self.head_lr

    def _make_head(self) -> Any:
        return mlp_head(int(self._handle.d_model))

    def _prepare(self, gens: GenerationSet, questions: Sequence[str] | None) -> list[Any]:
        g2 = retokenize(
            gens, self._handle, questions=questions, use_chat_template=self.use_chat_template
        )
        return [list(g.prompt_ids) + list(g.answer_ids) for g in g2.rows]

    def _ids(self, item: Any) -> list[int]:
        return list(item[-int(self.max_length) :])  # a long one keeps its last tokens

    def _forward(
        self, pm: Any, head: Any, seqs: list[list[int]], shared: Any = None, rows: Any = None
    ) -> Any:
        out, _ = self._run(pm, seqs, shared, rows, output_hidden_states=True, logits_to_keep=1)
        return head(out.hidden_states[-1][:, -1, :].float())

    def _loss_and_scores(
        self, pm: Any, head: Any, items: list[Any], y: Any, shared: Any = None, rows: Any = None
    ) -> tuple[Any, Any]:
        import torch

        logits = self._forward(pm, head, items, shared, rows)
        p = torch.softmax(logits.detach(), -1)[:, 1]
        return torch.nn.functional.cross_entropy(logits, y), p

    def predict_proba(
        self,
        gens: GenerationSet,
        questions: Sequence[str] | None = None,
        *,
        batch_size: int = 8,
    ) -> np.ndarray:
        """P(correct), shape (n,)."""
        import torch

        self._check_fitted()
        check_gens(gens, "LoRAProbe.predict_proba")
        seqs = self._prepare(gens, questions)
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.empty(len(seqs))
        with (
            lora_attached(self._handle, **self._lora_kwargs(), adapter=self.adapter_) as pm,
            torch.inference_mode(),
        ):
            shared = self._shared([seqs[j] for j in order])  # a chat template's opening once
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                rows = range(i, i + len(idx))
                logits = self._forward(pm, self.head_, [seqs[j] for j in idx], shared, rows)
                out[idx] = torch.softmax(logits, -1)[:, 1].double().cpu().numpy()
        return out


# -- LoRA + Prompt (calibration tuning) ----------------------------------------------------------
def _answer_positions(items: list[Any], width: int) -> tuple[list[int], list[int]]:
    """(rows, columns) of a left-padded batch ``width`` wide whose next-token distributions
    generated the answer tokens of ``items`` (``(ids, s, e)``): columns ``off + s - 1 ..
    off + e - 2``, ``off = width - len(ids)``."""
    rows: list[int] = []
    cols: list[int] = []
    for b, (seq, s, e) in enumerate(items):
        off = width - len(seq)
        rows += [b] * (e - s)
        cols += range(off + s - 1, off + e - 1)
    return rows, cols


def js_divergence(logp: Any, logq: Any) -> Any:
    """Jensen-Shannon divergence (nats) between rows of two log-distributions, (..., V) -> (...)."""
    import torch

    logm = torch.logsumexp(torch.stack([logp, logq]), 0) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


@register_estimator(
    "lora_prompt",
    display_name="LoRA + Prompt",
    inputs=generations(model=True),
    settings=_LORA_SETTINGS,
    train_limit="max_train",
)
class LoRAPrompt(_LoRABase):
    """FIGURES.md section 1 "LoRA + Prompt" (Kapoor et al. calibration tuning).

    Loss per batch = CE(two-way softmax over the "i" / "ii" logits after the Zero-Shot
    Classifier query, label) + ``js_weight`` x mean JS divergence, over the answer tokens
    (inside the query, see the module docstring), between the adapted model and the frozen
    model (adapters disabled).
    P(correct) = p("ii") of the adapted model on the query (as ``ZeroShotClassifier``).

    The frozen model's states at the answer tokens do not change while training, so they
    are read once per training query before the adapters go in (``QueryReads``, batched in
    length order), not once per step; with ``reads`` (a run's shared reads, passed by the
    analyses) queries the probe or the Zero-Shot Classifier already read are not run again.

    Args: as ``LoRAProbe`` (no head), plus ``js_weight`` (default 1.0) and ``reads``.
    """

    reads: QueryReads | None

    def __init__(
        self,
        *,
        model: ModelHandle | None = None,
        r: int = 8,
        alpha: int = 32,
        dropout: float = 0.1,
        lr: float = 1e-4,
        js_weight: float = 1.0,
        steps: int = 400,
        batch_size: int = 4,
        target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
        max_length: int = 512,
        seed: int = 0,
        length_window: int = LENGTH_WINDOW,
        checkpoint_every: int = 20,
        validation_fraction: float = 0.2,
        eval_every: int = 20,
        patience: int = 5,
        min_delta: float = 0.0,
        cache: bool = True,
        progress: bool = True,
        use_chat_template: bool = True,
        reads: QueryReads | None = None,
    ) -> None:
        self.model = model
        self.reads = reads
        self.r = r
        self.alpha = alpha
        self.dropout = dropout
        self.lr = lr
        self.js_weight = js_weight
        self.steps = steps
        self.batch_size = batch_size
        self.target_modules = target_modules
        self.max_length = max_length
        self.seed = seed
        self.length_window = length_window
        self.checkpoint_every = checkpoint_every
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.patience = patience
        self.min_delta = min_delta
        self.cache = cache
        self.progress = progress
        self.use_chat_template = use_chat_template

    def _validate(self) -> None:
        super()._validate()
        if not self.js_weight >= 0:
            raise ConfigError(f"LoRAPrompt: js_weight must be >= 0; got {self.js_weight}.")
        label_token_ids(self._handle.tokenizer, ("i", "ii"))

    def _json_params(self) -> dict[str, Any]:
        # ``reads`` is a run's shared cache (a live object), not a setting: out of keys / JSON
        return {k: v for k, v in super()._json_params().items() if k != "reads"}

    def _prepare(self, gens: GenerationSet, questions: Sequence[str] | None) -> list[Any]:
        """``(ids, s, e)`` per row: the ZSC query's tokens (left-truncated to ``max_length``)
        and the answer's token span in them."""
        qs = zsc_queries(
            self._handle,
            gens,
            questions,
            use_chat_template=self.use_chat_template,
            max_length=self.max_length,
        )
        return [(list(q.ids), *q.span) for q in qs]

    def _ids(self, item: Any) -> list[int]:
        return list(item[0])

    def _keep_from(self, item: Any) -> int:
        _, s, e = item
        return s - 1 if e > s else len(item[0])  # positions s-1 .. e-2 feed the JS term

    def _before_training(self, items: list[Any], schedule: list[np.ndarray]) -> None:
        import torch

        self._frozen: dict[tuple[Any, ...], Any] = {}
        if self.js_weight == 0:
            return
        used = sorted({int(i) for b in schedule for i in b})  # a fit reads only these
        qs = [Query(tuple(items[i][0]), (items[i][1], items[i][2])) for i in used]
        reads = self.reads if self.reads is not None else QueryReads()
        got = reads.read(self._handle, qs, ZSC_LABELS, progress=self.progress, description="frozen")
        for q, a in zip(qs, got.answer, strict=True):
            self._frozen[(q.ids, q.span[0], q.span[1])] = torch.from_numpy(a)

    def _after_training(self) -> None:
        self._frozen = {}

    def _loss_and_scores(
        self, pm: Any, head: Any, items: list[Any], y: Any, shared: Any = None, rows: Any = None
    ) -> tuple[Any, Any]:
        import torch

        label_ids = label_token_ids(self._handle.tokenizer, ("i", "ii"))
        kw = {"logits_to_keep": 1, "output_hidden_states": True}
        out, width = self._run(pm, items, shared, rows, **kw)
        probs = label_probs(out.logits[:, -1, :], label_ids)
        ce = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), y)
        p = probs.detach()[:, 1]
        at = _answer_positions(items, width)
        if self.js_weight == 0 or not at[0]:
            return ce, p
        head_w = self._handle.model.get_output_embeddings()
        hidden = out.hidden_states[-1]
        logp = torch.log_softmax(head_w(hidden[at]).float(), -1)
        read = getattr(self, "_frozen", {})
        keys = [(tuple(seq), s, e) for seq, s, e in items]
        with torch.no_grad():
            if all(k in read for k in keys):  # read before training (_before_training)
                frozen = torch.cat([read[k] for k in keys]).to(hidden.device, hidden.dtype)
            else:  # called outside fit: the frozen pass of this batch
                with pm.disable_adapter():
                    plain, w = self._run(pm, items, None, None, **kw)
                frozen = plain.hidden_states[-1][_answer_positions(items, w)]
            logq = torch.log_softmax(head_w(frozen).float(), -1)
        return ce + self.js_weight * js_divergence(logp, logq).mean(), p

    def predict_proba(
        self,
        gens: GenerationSet,
        questions: Sequence[str] | None = None,
        *,
        batch_size: int = 8,
    ) -> np.ndarray:
        """P(correct) = p("ii") under the adapted model, shape (n,)."""
        self._check_fitted()
        check_gens(gens, "LoRAPrompt.predict_proba")
        texts = zsc_texts(self._handle, gens, questions, use_chat_template=self.use_chat_template)
        with lora_attached(self._handle, **self._lora_kwargs(), adapter=self.adapter_):
            probs = batched_label_probs(
                self._handle,
                texts,
                ("i", "ii"),
                batch_size=batch_size,
                max_length=self.max_length,
                progress=self.progress,
                description="LoRA + Prompt",
            )
        return probs[:, 1]
