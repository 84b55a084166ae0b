"""The one training module: LoRA injection, a resumable AdamW loop, the response-only loss.

Used by the LoRA estimators (``estimators/_lora.py``: ``LoRAProbe``, ``LoRAPrompt``) and
the refusal organisms (``jailbreak/organisms.py``); both keep their own losses, schedules
and data, and share everything else::

    with lora_attached(handle, r=8, alpha=16, dropout=0.0, target_modules=["q_proj"],
                       train=True, merge=True) as pm:          # merged on success, else unloaded
        groups = [ParamGroup(trainable_parameters(pm), lr=2e-3)]
        result = train_loop(pm, loss_fn, lambda start: batches_from(start), groups=groups,
                            steps=160, lr_lambda=warmup_linear, weight_decay=0.01,
                            clip_grad_norm=1.0, checkpoint_dir=ckpt, checkpoint_every=20)

Resume: every ``checkpoint_every`` steps (and after the last one) the loop writes
``<checkpoint_dir>/step-<n>/`` with ``atomic_dir`` (checksums included): the trainable
parameters by name, the AdamW state, the torch / CUDA / python / numpy RNG states, the step,
the learning rates and the loss history. A rerun validates the newest checkpoint (checksums,
names, shapes, step), skips a damaged one with a one-line warning (an earlier one, else step
0), restores it and continues with the batches ``batches(start)`` yields from that step. The
schedule is a pure function of the step (``lr = initial lr x lr_lambda(step)``, what torch's
``LambdaLR`` computes), so the step is the whole scheduler state; the result is bit-identical
to an uninterrupted run.

Early stopping (``EarlyStopping``): the loop evaluates ``evaluate(model)`` on a validation
split before the first step, every ``every`` steps and after the last, keeps a copy of the
parameters with the lowest validation loss, stops once ``patience`` evaluations in a row have
not lowered it by more than ``min_delta``, and puts the best parameters back. The evaluations
(the learning curve), the best parameters and the patience counter are part of every
checkpoint, so a resumed run stops where the uninterrupted one stops.

Imports torch / peft, knowlens' foundation (``_cache``, ``_progress``, ``errors``) and, for
``response_loss(handle=)``, ``generation.prefix_once_forward``; the "training" stage of
docs/ARCHITECTURE.md, right of generation, below estimators and jailbreak.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from knowlens._cache import (
    DamagedEntryError,
    atomic_dir,
    atomic_write_json,
    clean_stale_tmp,
    verify_entry,
)
from knowlens._progress import progress_bar
from knowlens.errors import ConfigError, KnowlensError

if TYPE_CHECKING:
    from knowlens.models import ModelHandle

__all__ = [
    "CHECKPOINT_FORMAT",
    "LENGTH_WINDOW",
    "EarlyStopping",
    "ParamGroup",
    "TrainResult",
    "adapter_state",
    "batch_schedule",
    "discard_checkpoints",
    "latest_checkpoint",
    "lora_attached",
    "response_loss",
    "train_loop",
    "trainable_parameters",
    "unfilled_fraction",
]

CHECKPOINT_FORMAT = 2  # 2: early-stopping state (evaluations, best parameters)
_log = logging.getLogger("knowlens.training")


# -- adapters ----------------------------------------------------------------------------------
@contextlib.contextmanager
def lora_attached(
    handle: ModelHandle | torch.nn.Module,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: Sequence[str],
    layers_to_transform: Sequence[int] | None = None,
    task_type: str | None = None,
    init_seed: int = 0,
    adapter: Mapping[str, Any] | None = None,
    train: bool = False,
    merge: bool = False,
) -> Iterator[Any]:
    """Inject peft LoRA adapters into ``handle.model`` (or a bare module) for the block.

    Yields the peft model. On exit the adapters leave the model in a ``finally``:
    ``merge=True`` merges them into the weights if the block succeeded (the model object now
    holds the fine-tuned weights); otherwise, and on any error, they are unloaded and the model
    is the base model again, bit for bit. ``requires_grad`` flags and train / eval mode are
    restored either way. Adapter init draws from a forked RNG seeded with ``init_seed``
    (``lora_B`` starts at 0; ``lora_A`` is random), so it never consumes the caller's RNG.
    ``adapter`` loads saved adapter weights (``adapter_state``).
    """
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    # a ModelHandle, or the module itself (HF CausalLMs have a `.model` attribute too)
    model = handle if isinstance(handle, torch.nn.Module) else handle.model
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    if not names & set(target_modules):
        raise ConfigError(
            f"LoRA target_modules {list(target_modules)} match no module of "
            f"{type(model).__name__}; pass target_modules=[...] naming its attention "
            "projections (e.g. 'q_proj', 'v_proj')."
        )
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    kw: dict[str, Any] = {}
    if layers_to_transform is not None:
        kw["layers_to_transform"] = list(layers_to_transform)
    if task_type is not None:
        kw["task_type"] = task_type
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        bias="none",
        **kw,
    )
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(init_seed)
        warnings.simplefilter("ignore", FutureWarning)  # peft <-> transformers deprecations
        pm = get_peft_model(model, cfg)
    ok = False
    try:
        if adapter is not None:
            set_peft_model_state_dict(pm, {k: torch.as_tensor(v) for k, v in adapter.items()})
        pm.train(train)
        yield pm
        ok = True
    finally:
        if merge and ok:
            pm.merge_and_unload()
        else:
            pm.unload()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, p.requires_grad))
        model.train(was_training)


def adapter_state(pm: Any) -> dict[str, np.ndarray]:
    """The adapter weights of a peft model (float32 numpy, peft's key names)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().float().numpy() for k, v in get_peft_model_state_dict(pm).items()}


def trainable_parameters(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``{prefix + name: parameter}`` of the parameters that require grad, in module order."""
    return {f"{prefix}{n}": p for n, p in module.named_parameters() if p.requires_grad}


# -- the response-only next-token loss -----------------------------------------------------------
def response_loss(
    model: Callable[..., Any],
    ids: torch.Tensor,
    labels: torch.Tensor,
    attention: torch.Tensor,
    device: torch.device | str,
    weights: torch.Tensor | None = None,
    *,
    handle: ModelHandle | None = None,
) -> torch.Tensor:
    """Weighted mean next-token cross-entropy over response tokens (labels != -100) of a
    right-padded batch.

    ``weights`` (same shape as ``labels``) weight each response token; positions whose label
    is -100 never count. With ``weights=None`` this is exactly HF's ``labels=`` loss. Only
    positions that predict a response token go through the LM head (``logits_to_keep``): the
    head is much of the compute for big vocabularies (Gemma's 262k), and prompts are most of
    the positions.

    With ``handle`` (the handle whose model ``model`` wraps, adapters attached) the tokens all
    rows start with before their first predicting position (a chat template's system turn)
    run once, gradients flowing through them (``generation.prefix_once_forward``); the loss
    and its gradients are those of the plain batch up to float rounding. Where nothing is
    shared, the plain batch runs.
    """
    if handle is not None:
        shared = _prefix_once_loss(handle, ids, labels, attention, device, weights)
        if shared is not None:
            return shared
    target = labels[:, 1:]
    keep = (target != -100).any(0).nonzero().squeeze(1)
    logits = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        logits_to_keep=keep.to(device),
    ).logits
    return _weighted_ce(
        logits, target[:, keep], None if weights is None else weights[:, 1:][:, keep], device
    )


def _weighted_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    device: torch.device | str,
) -> torch.Tensor:
    """Weighted mean cross-entropy of ``logits`` ``[B, T, V]`` against ``target`` ``[B, T]``
    (-100: not counted); ``weights`` ``[B, T]`` are aligned with ``target``."""
    ce = torch.nn.functional.cross_entropy(
        logits.float().flatten(0, 1),
        target.flatten().to(device),
        ignore_index=-100,
        reduction="none",
    )
    w = (target != -100).float()
    if weights is not None:  # weights count on response positions only (x 0/1: exact)
        w = weights * w
    w = w.flatten().to(device)
    return (ce * w).sum() / w.sum()


def _prefix_once_loss(
    handle: ModelHandle,
    ids: torch.Tensor,
    labels: torch.Tensor,
    attention: torch.Tensor,
    device: torch.device | str,
    weights: torch.Tensor | None,
) -> torch.Tensor | None:
    """``response_loss`` through ``prefix_once_forward``, or None where it runs a plain batch
    (a row without response tokens, a batch that is not right-padded, nothing shared)."""
    from knowlens.generation import prefix_once_forward

    n = attention.sum(1).long()
    width = ids.shape[1]
    resp = labels != -100
    if not bool(resp.any(1).all()) or not bool(
        (attention.bool() == (torch.arange(width)[None, :] < n[:, None])).all()
    ):
        return None
    first = resp.long().argmax(1)  # each row's first response token
    # left-padded, every row ends in the last column; row b's predicting positions
    # first_b - 1 .. n_b - 2 lie within its last n_b - first_b + 1 columns, so the last K hold all
    K = int((n - first).max()) + 1
    seqs = [ids[b, : int(n[b])].tolist() for b in range(len(n))]
    once = prefix_once_forward(handle, seqs, (first - 1).tolist(), logits_to_keep=K)
    if once is None:
        return None
    logits = once[0].logits  # [B, K, V]: column j holds row b's position j - K + n_b
    nxt = torch.arange(K)[None, :] - K + n[:, None] + 1  # the token each column predicts
    ok = (nxt >= 1) & (nxt < n[:, None])
    nxt = nxt.clamp(0, width - 1)
    target = labels.gather(1, nxt).masked_fill(~ok, -100)
    return _weighted_ce(logits, target, None if weights is None else weights.gather(1, nxt), device)


# -- batches ------------------------------------------------------------------------------------
#: batches per length-sorting window of ``batch_schedule`` (HF's ``LengthGroupedSampler``
#: sorts megabatches of 50; fewer here: CPU runs take tens of steps, and a window should
#: not cover the whole run)
LENGTH_WINDOW = 16


def batch_schedule(
    n: int,
    batch_size: int,
    steps: int,
    seed: int,
    *,
    lengths: Sequence[int] | None = None,
    window: int = LENGTH_WINDOW,
) -> list[np.ndarray]:
    """Row indices of every step's batch: shuffled epochs, concatenated, cut into batches of
    ``min(batch_size, n)`` rows.

    With ``lengths`` (tokens per row) and ``window > 1`` the batches are length-bucketed, as
    HF's ``LengthGroupedSampler``: the rows the plain schedule consumes are cut into windows
    of ``window`` batches' worth of rows (a window never spans two epochs), each window is
    sorted by length (longest first) and cut into batches, and each run of ``window``
    consecutive batches is shuffled among itself. A batch then holds rows of similar length,
    so padding it to its longest row costs little, while the rows trained on (and their
    order beyond a window) are exactly the plain schedule's, and a row repeats within a batch
    only where an epoch ends, as without bucketing. Without ``lengths`` (or with
    ``window <= 1``) these are the plain shuffled batches.

    A pure function of its arguments (numpy generators seeded by ``seed``): a resumed
    ``train_loop`` asks for ``schedule[start:]`` and gets the batches of the first run.
    """
    rng = np.random.default_rng(seed)
    bs = min(batch_size, n)
    need = steps * bs
    order = np.concatenate([rng.permutation(n) for _ in range(need // n + 1)])[:need]
    if lengths is not None and window > 1:
        lens = np.asarray(lengths)
        if len(lens) != n:
            raise KnowlensError(f"batch_schedule: got {len(lens)} lengths for {n} rows.")
        w = window * bs
        pos = np.arange(need)
        segment = (pos // n) * (-(-n // w)) + (pos % n) // w  # (epoch, window in the epoch)
        order = order[np.lexsort((-lens[order], segment))]  # stable: ties keep the shuffle
    out = [order[i * bs : (i + 1) * bs] for i in range(steps)]
    if lengths is not None and window > 1:
        # a second stream, so the rows of each window do not depend on it
        shuffle = np.random.default_rng([seed, 1])
        for g in range(0, steps, window):
            group = out[g : g + window]
            out[g : g + window] = [group[j] for j in shuffle.permutation(len(group))]
    return out


def unfilled_fraction(
    lengths: Sequence[int], batches: Sequence[Sequence[int] | np.ndarray]
) -> float:
    """Share of the token slots of ``batches`` (each padded to its longest row) that are
    padding; ``lengths`` are the rows' token counts."""
    lens = np.asarray(lengths)
    real = padded = 0
    for b in batches:
        bl = lens[np.asarray(b, dtype=np.int64)]
        real += int(bl.sum())
        padded += int(bl.max()) * len(bl) if len(bl) else 0
    return 1.0 - real / padded if padded else 0.0


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class ParamGroup:
    """One AdamW parameter group: named parameters (names key the checkpoints) + initial lr."""

    params: Mapping[str, torch.Tensor]
    lr: float


@dataclass
class EarlyStopping:
    """Stop when the validation loss stops improving (see the module docstring).

    ``evaluate(model) -> {"loss": float, ...}`` runs under ``torch.no_grad`` in a forked RNG
    (it never moves the training's random stream); it puts modules in eval mode itself if it
    wants dropout off. Extra keys (e.g. ``"auroc"``) go into the learning curve as they are.
    ``patience`` counts evaluations, so the run trains at least ``patience x every`` steps past
    its best one before it stops (unless ``steps`` ends it first).
    """

    evaluate: Callable[[Any], Mapping[str, float]]
    every: int = 20
    patience: int = 3
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class TrainResult:
    history: list[float]
    resumed_from: int
    steps: int
    seconds: float
    checkpoints_skipped: list[str] = field(default_factory=list)
    #: one dict per evaluation: step, train_loss (mean since the previous one; not at step
    #: 0), loss and what ``evaluate`` returned
    evals: list[dict[str, float]] = field(default_factory=list)
    #: step whose parameters the model holds at the end (the best evaluation's, or ``steps``)
    best_step: int | None = None
    #: steps actually taken (< ``steps`` when early stopping ended the run)
    stopped_step: int | None = None


def train_loop(
    model: Any,
    loss_fn: Callable[[Any, Any], Any],
    batches: Callable[[int], Iterator[Any]],
    *,
    groups: Sequence[ParamGroup],
    steps: int,
    lr_lambda: Callable[[int], float] | None = None,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    step_seed: Callable[[int], int] | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    keep_checkpoints: int = 2,
    progress: bool = False,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
    early_stopping: EarlyStopping | None = None,
) -> TrainResult:
    """AdamW over ``groups`` for ``steps`` steps of ``loss_fn(model, batch)``; resumable.

    Args:
        model: passed to ``loss_fn`` (e.g. the peft model).
        loss_fn: ``(model, batch) -> scalar loss tensor``.
        batches: factory ``start_step -> iterator`` of the batches of steps ``start_step``,
            ``start_step + 1``, ...: a resumed run asks for the batches from its checkpoint.
        groups: parameter groups (named parameters + initial lr).
        steps: optimisation steps in total (including those of a resumed checkpoint).
        lr_lambda: ``step -> factor``; each group's lr at step i is ``lr x lr_lambda(i)``
            (torch ``LambdaLR``'s rule). None: constant.
        weight_decay: AdamW weight decay (torch's default is 0.01; pass it explicitly).
        clip_grad_norm: max total gradient norm over all groups' parameters, or None.
        step_seed: ``step -> seed``: each step's forward / backward runs in a forked torch RNG
            seeded with it (dropout masks independent of history). None: one continuing RNG
            stream (its state is checkpointed and restored).
        checkpoint_dir: where checkpoints go (None: no checkpoints, no resume).
        checkpoint_every: steps between checkpoints (0: only after the last step).
        keep_checkpoints: newest checkpoints kept (older ones are the fallback for a damaged
            newest one).
        progress: show a progress bar (``knowlens._progress.progress_bar``, as generation).
        on_step: called as ``on_step(step_done, loss)`` after each step (and its checkpoint).
        early_stopping: validation-loss early stopping (``EarlyStopping``); ``steps`` is then
            the most steps the run may take.
    """
    _check_int("steps", steps, 1)
    _check_int("checkpoint_every", checkpoint_every, 0)
    _check_int("keep_checkpoints", keep_checkpoints, 1)
    es = early_stopping
    if es is not None:
        _check_int("early_stopping.every", es.every, 1)
        _check_int("early_stopping.patience", es.patience, 1)
    names: list[str] = []
    params: list[Any] = []
    for g in groups:
        names += list(g.params)
        params += list(g.params.values())
    if not params:
        raise KnowlensError("train_loop got no parameters to train; pass ParamGroup(s) with some.")
    if len(set(names)) != len(names):
        raise KnowlensError("train_loop: parameter names must be unique across groups.")
    opt = torch.optim.AdamW(
        [{"params": list(g.params.values()), "lr": g.lr, "initial_lr": g.lr} for g in groups],
        weight_decay=weight_decay,
    )
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = 0
    history: list[float] = []
    skipped: list[str] = []
    stop = _StopState()
    if ckpt is not None:
        clean_stale_tmp(ckpt)  # checkpoint folders cut off mid-write by a kill
        start, history, skipped = _resume(ckpt, names, params, opt, steps, stop)
    t0 = time.perf_counter()

    def evaluate(done: int) -> None:
        assert es is not None
        with torch.random.fork_rng(), torch.no_grad():
            got = {k: float(v) for k, v in es.evaluate(model).items()}
        if "loss" not in got:
            raise KnowlensError("early_stopping.evaluate must return a dict with a 'loss' key.")
        since = history[stop.last_eval_step : done]
        row = {"step": float(done)}
        if since:  # none before the first step
            row["train_loss"] = float(np.mean(since))
        stop.evals.append(row | got)
        stop.last_eval_step = done
        if stop.best_loss is None or got["loss"] < stop.best_loss - es.min_delta:
            stop.best_loss, stop.best_step, stop.bad = got["loss"], done, 0
            stop.best = [p.detach().clone() for p in params]
        else:
            stop.bad += 1
            stop.stopped = stop.bad >= es.patience

    if es is not None and start == 0:
        evaluate(0)  # the untrained model: where the curve starts
    it = batches(start)
    what = description if start == 0 else f"{description} (resumed at step {start})"
    with progress_bar(steps - start, what, progress) as advance:
        for step in range(start, steps):
            if stop.stopped:
                break
            factor = 1.0 if lr_lambda is None else lr_lambda(step)
            for pg in opt.param_groups:
                pg["lr"] = pg["initial_lr"] * factor
            try:
                batch = next(it)
            except StopIteration:
                raise KnowlensError(
                    f"train_loop: the batch iterator ended at step {step} of {steps}; make "
                    "batches(start) yield one batch per remaining step (e.g. cycle the data)."
                ) from None
            rng = torch.random.fork_rng() if step_seed is not None else contextlib.nullcontext()
            with rng:
                if step_seed is not None:
                    torch.manual_seed(step_seed(step))
                loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
            opt.step()
            history.append(float(loss.detach()))
            done = step + 1
            if es is not None and (done % es.every == 0 or done == steps):
                evaluate(done)
            if ckpt is not None and (
                done == steps or stop.stopped or (checkpoint_every and done % checkpoint_every == 0)
            ):
                _save(ckpt, done, steps, names, params, opt, history, keep_checkpoints, stop)
            advance(1)
            if on_step is not None:
                on_step(done, history[-1])
    opt.zero_grad(set_to_none=True)
    best_step: int | None = len(history)
    if es is not None and es.restore_best and stop.best is not None:
        with torch.no_grad():
            for p, b in zip(params, stop.best, strict=True):
                p.copy_(b)
        best_step = stop.best_step
    return TrainResult(
        history,
        start,
        steps,
        time.perf_counter() - t0,
        skipped,
        evals=list(stop.evals),
        best_step=best_step,
        stopped_step=len(history),
    )


@dataclass
class _StopState:
    """Early stopping's state: what a checkpoint has to carry for an exact resume."""

    evals: list[dict[str, float]] = field(default_factory=list)
    best: list[torch.Tensor] | None = None
    best_loss: float | None = None
    best_step: int = 0
    bad: int = 0
    last_eval_step: int = 0
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "evals": self.evals,
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "bad": self.bad,
            "last_eval_step": self.last_eval_step,
            "stopped": self.stopped,
        }

    def load(self, js: Mapping[str, Any], best: list[torch.Tensor] | None) -> None:
        self.evals = [dict(e) for e in js.get("evals", [])]
        self.best_loss = js.get("best_loss")
        self.best_step = int(js.get("best_step", 0))
        self.bad = int(js.get("bad", 0))
        self.last_eval_step = int(js.get("last_eval_step", 0))
        self.stopped = bool(js.get("stopped", False))
        self.best = best


def _check_int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ConfigError(f"train_loop: {name} must be an integer >= {lo}; got {v!r}.")


# -- checkpoints --------------------------------------------------------------------------------
def _rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors, JSON) of every RNG a loss function may draw from."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    v, state, gauss = random.getstate()
    # legacy=True (the default) returns the tuple form, never the dict
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state(legacy=True))
    name, keys, pos, has_gauss, cached = np_state
    js = {
        "python": [v, list(state), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, js


def _set_rng_state(tensors: Mapping[str, Any], js: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    v, state, gauss = js["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def _save(
    root: Path,
    step: int,
    steps: int,
    names: list[str],
    params: list[Any],
    opt: Any,
    history: list[float],
    keep: int,
    stop: _StopState,
) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"param.{n}": p.detach().cpu().clone().contiguous()
        for n, p in zip(names, params, strict=True)
    }
    if stop.best is not None:
        tensors.update(
            {
                f"best.{n}": b.detach().cpu().clone().contiguous()
                for n, b in zip(names, stop.best, strict=True)
            }
        )
    scalars: dict[str, Any] = {}
    for pid, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().cpu().clone().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    rng_t, rng_js = _rng_state()
    tensors.update({k: v.clone().contiguous() for k, v in rng_t.items()})
    final = root / f"step-{step:07d}"
    with atomic_dir(final) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        atomic_write_json(
            tmp / "progress.json",
            {
                "format": CHECKPOINT_FORMAT,
                "step": step,
                "steps": steps,
                "names": names,
                "history": history,
                "lrs": [g["lr"] for g in opt.param_groups],
                "opt_scalars": scalars,
                "rng": rng_js,
                "early_stopping": stop.to_json(),
            },
        )
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _load(
    d: Path, names: list[str], params: list[Any], steps: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and fully validate one checkpoint; raises ``DamagedEntryError`` with the reason."""
    from safetensors.torch import load_file

    verify_entry(d, deep=True)
    try:
        prog = json.loads((d / "progress.json").read_text())
        tensors = load_file(str(d / "state.safetensors"))
    except Exception as e:  # any unreadable file: skip this one
        raise DamagedEntryError(f"unreadable ({type(e).__name__})") from None
    if prog.get("format") != CHECKPOINT_FORMAT:
        raise DamagedEntryError(f"format {prog.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    step = prog.get("step")
    if prog.get("names") != names:
        raise DamagedEntryError("its parameter names differ from this run's")
    if not isinstance(step, int) or not 0 < step <= steps or prog.get("steps") != steps:
        raise DamagedEntryError(f"step {step!r} of {prog.get('steps')!r} does not fit {steps}")
    if len(prog.get("history", ())) != step or "rng.torch" not in tensors:
        raise DamagedEntryError("loss history or RNG state incomplete")
    has_best = f"best.{names[0]}" in tensors
    for n, p in zip(names, params, strict=True):
        for kind in ("param", "best") if has_best else ("param",):
            t = tensors.get(f"{kind}.{n}")
            if t is None or t.shape != p.shape or t.dtype != p.dtype:
                raise DamagedEntryError(f"{kind} {n} missing or of another shape / dtype")
    return prog, tensors


def _resume(
    root: Path, names: list[str], params: list[Any], opt: Any, steps: int, stop: _StopState
) -> tuple[int, list[float], list[str]]:
    """Restore the newest valid checkpoint; (0, [], skipped) if there is none."""
    skipped = []
    for d in sorted(root.glob("step-*"), reverse=True):
        try:
            prog, tensors = _load(d, names, params, steps)
        except DamagedEntryError as e:
            _log.warning(
                "knowlens training: skipping damaged checkpoint %s (%s); trying an earlier one.",
                d,
                e,
            )
            skipped.append(d.name)
            shutil.rmtree(d, ignore_errors=True)
            continue
        with torch.no_grad():
            for n, p in zip(names, params, strict=True):
                p.copy_(tensors[f"param.{n}"])
        best = [tensors[f"best.{n}"] for n in names] if f"best.{names[0]}" in tensors else None
        stop.load(prog.get("early_stopping", {}), best)
        sd = opt.state_dict()
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, key = k.split(".", 2)
                state.setdefault(int(pid), {})[key] = v
        for k, v in prog.get("opt_scalars", {}).items():
            pid, key = k.split(".", 1)
            state.setdefault(int(pid), {})[key] = v
        sd["state"] = state
        opt.load_state_dict(sd)
        _set_rng_state(tensors, prog["rng"])
        return int(prog["step"]), [float(x) for x in prog["history"]], skipped
    return 0, [], skipped


def latest_checkpoint(root: str | Path) -> int:
    """Step of the newest checkpoint folder under ``root`` (0 if none; not validated)."""
    found = sorted(Path(root).glob("step-*")) if Path(root).is_dir() else []
    return int(found[-1].name.split("-")[1]) if found else 0


def discard_checkpoints(root: str | Path) -> None:
    """Remove a finished run's checkpoints (after its result has been published)."""
    root = Path(root)
    if not root.exists():
        return
    # rename first so a concurrent reader never sees a half-deleted checkpoint folder
    gone = root.with_name(f".tmp-{root.name}~{os.getpid()}~{socket.gethostname()}~gone")
    try:
        os.replace(root, gone)
    except OSError:
        gone = root
    shutil.rmtree(gone, ignore_errors=True)
