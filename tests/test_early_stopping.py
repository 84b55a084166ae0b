"""Early stopping in knowlens.training.train_loop and the LoRA estimators: the validation
curve, the stopping rule, the best parameters restored, exact resume after a kill."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from knowlens.errors import ConfigError
from knowlens.estimators import LoRAProbe, LoRAPrompt
from knowlens.training import EarlyStopping, ParamGroup, train_loop

MAX_STEPS, EVERY, PATIENCE = 200, 4, 3
W = torch.tensor([[1.0, -2.0, 0.5]])


class Killed(BaseException):
    pass


def batches(start):
    # the training target is 2 x the validation's: the weights pass the validation optimum
    # (W) on their way to 2 W, so the validation loss falls, then rises
    for i in range(start, MAX_STEPS):
        g = np.random.default_rng(i)
        x = torch.from_numpy(g.normal(size=(8, 3)).astype(np.float32))
        yield x, x @ (2 * W).T


X_VAL = torch.from_numpy(np.random.default_rng(999).normal(size=(32, 3)).astype(np.float32))


def val_loss(model):
    return {"loss": float(torch.nn.functional.mse_loss(model(X_VAL), X_VAL @ W.T)), "extra": 1.5}


def run(ckpt=None, kill_at=None, **kw):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    calls = {"n": 0}

    def loss(m, b):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed
        return torch.nn.functional.mse_loss(m(b[0]), b[1])

    res = train_loop(
        model,
        loss,
        batches,
        groups=[ParamGroup(dict(model.named_parameters()), 0.02)],
        steps=MAX_STEPS,
        checkpoint_dir=ckpt,
        checkpoint_every=5,
        early_stopping=EarlyStopping(val_loss, every=EVERY, patience=PATIENCE, **kw),
    )
    return model, res


def test_stops_after_patience_and_keeps_the_best_parameters():
    model, res = run()
    steps = [e["step"] for e in res.evals]
    assert steps[0] == 0 and steps == [EVERY * i for i in range(len(steps))]
    losses = [e["loss"] for e in res.evals]
    best = int(np.argmin(losses))
    assert 0 < best < len(losses) - 1  # it fell, then rose
    assert res.best_step == steps[best]
    # stopped exactly `patience` evaluations after the best one, well before the budget
    assert res.stopped_step == res.best_step + PATIENCE * EVERY == len(res.history) < MAX_STEPS
    # the model holds the best evaluation's parameters
    with torch.no_grad():
        assert val_loss(model)["loss"] == losses[best]
    # curve rows: the mean training loss since the previous evaluation, extra keys kept
    for prev, e in zip(res.evals, res.evals[1:], strict=False):
        span = res.history[int(prev["step"]) : int(e["step"])]
        assert e["train_loss"] == pytest.approx(float(np.mean(span)), rel=1e-12)
        assert e["extra"] == 1.5
    assert "train_loss" not in res.evals[0]  # nothing trained yet


def test_min_delta_and_keep_last():
    _, strict = run(min_delta=1e9)  # nothing counts as better: stops `patience` evals in
    assert strict.best_step == 0 and strict.stopped_step == PATIENCE * EVERY
    model, last = run(restore_best=False)
    ref, best = run()
    assert last.stopped_step == best.stopped_step and last.best_step == last.stopped_step
    assert not torch.equal(model.weight, ref.weight)


@pytest.mark.parametrize("kill_at", [3, 9, 27])
def test_resume_after_kill_stops_where_the_uninterrupted_run_stops(tmp_path, kill_at):
    ref_model, ref = run()
    with pytest.raises(Killed):
        run(tmp_path, kill_at=kill_at)
    model, res = run(tmp_path)
    assert res.resumed_from == (kill_at - 1) // 5 * 5
    assert res.evals == ref.evals and res.history == ref.history
    assert (res.best_step, res.stopped_step) == (ref.best_step, ref.stopped_step)
    assert torch.equal(model.weight, ref_model.weight)
    # the stopped run's last checkpoint is final: a rerun trains nothing and agrees
    again_model, again = run(tmp_path)
    assert again.resumed_from == ref.stopped_step and again.evals == ref.evals
    assert torch.equal(again_model.weight, ref_model.weight)


# -- the LoRA estimators -------------------------------------------------------------------------
def lora_gens(model, n=20):
    from test_training_schedule import varied_gens

    return varied_gens(model, n)  # half correct, questions of varied length


@pytest.mark.parametrize("cls", [LoRAProbe, LoRAPrompt])
def test_lora_learning_curve_and_validation_scores(cls, tiny_model, tmp_path):
    gens = lora_gens(tiny_model)
    kw = dict(model=tiny_model, steps=12, eval_every=4, patience=2, batch_size=4, lr=3e-3)
    est = cls(**kw, progress=False, cache=False).fit(gens)
    curve = est.learning_curve_
    assert [e["step"] for e in curve][:2] == [0, 4] and est.n_validation_ == 4
    assert est.n_train_ == 16 and est.best_step_ in [e["step"] for e in curve]
    losses = {e["step"]: e["loss"] for e in curve}
    assert losses[est.best_step_] == min(losses.values())
    assert all(0 <= e["auroc"] <= 1 for e in curve)
    # the validation rows: stratified (2 correct, 2 wrong), and the scores kept are the
    # estimator's own predictions for them (the best step's adapters, dropout off)
    tr, va = est._split(np.asarray(gens.correct, dtype=float))
    assert sorted(est.validation_labels_) == [0, 0, 1, 1] and not set(tr) & set(va)
    np.testing.assert_allclose(
        est.validation_scores_, est.predict_proba(gens.subset(va)), rtol=0, atol=1e-5
    )
    # the curve survives save / load
    back = cls.load(est.save(tmp_path / "est"), model=tiny_model)
    assert back.learning_curve_ == curve and back.best_step_ == est.best_step_
    assert back.validation_scores_ == est.validation_scores_


def test_lora_validation_split_needs_both_labels(tiny_model):
    gens = lora_gens(tiny_model, n=20)
    y = np.zeros(20)
    y[:1] = 1
    with pytest.raises(ConfigError, match="validation_fraction=0"):
        LoRAProbe(model=tiny_model, steps=2, progress=False, cache=False).fit(gens, y)
    with pytest.raises(ConfigError, match="validation_fraction must be in"):
        LoRAProbe(model=tiny_model, validation_fraction=1.0, progress=False).fit(gens)


def test_lora_min_delta_ends_a_creeping_curve(tiny_model):
    # min_delta larger than any change: no evaluation after step 0 counts as lower, so the fit
    # keeps the untrained adapters and stops `patience` evaluations in, not at `steps`
    gens = lora_gens(tiny_model)
    kw = dict(model=tiny_model, steps=40, eval_every=4, patience=2, batch_size=4, lr=3e-3)
    est = LoRAProbe(**kw, min_delta=1e9, progress=False, cache=False).fit(gens)
    assert est.best_step_ == 0 and est.stopped_step_ == 8
    assert [e["step"] for e in est.learning_curve_] == [0, 4, 8]
    free = LoRAProbe(**kw, progress=False, cache=False).fit(gens)
    assert free.stopped_step_ > 8 or free.best_step_ > 0  # the default keeps what improves
    with pytest.raises(ConfigError, match="min_delta must be >= 0"):
        LoRAProbe(**kw, min_delta=-1.0, progress=False).fit(gens)


def test_train_settings_reach_the_lora_min_delta(tiny_model):
    from knowlens.estimators import get_estimator
    from knowlens.experiments._estimators import TrainSettings

    est = get_estimator("lora_prompt").make(
        model=tiny_model, settings=TrainSettings(lora_min_delta=0.01), seed=0
    )
    assert est.get_params()["min_delta"] == 0.01
