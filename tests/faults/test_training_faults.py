"""Organism training under SIGKILL: killed at seeded random points, rerun, the saved weights
are byte-identical to an uninterrupted run.

Each run is a real process killed with SIGKILL (no Python cleanup, no ``finally``). Runs are
forked from a forkserver that imported torch / transformers / peft / knowlens once, so a run
costs ~1 s instead of ~10 s of imports. A child announces every training step by appending a
line to a file (and sleeps a little per step, so the parent can aim); the parent kills it
after a seeded number of steps plus a seeded delay, which lands anywhere in a step: in the
forward / backward pass, the optimizer step, or while a checkpoint is being written.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

import pytest

from knowlens._cache import CHECKSUMS

SETTINGS = dict(
    steps=30, batch_size=4, n_benign=8, benign_max_new_tokens=4, extra_harmful=4, max_len=48
)
EVERY = 3
STEP_SLEEP = 0.03  # seconds per step, so kills can be aimed inside training

CHILD = """
import os, sys, time
os.environ["KNOWLENS_CACHE"] = CACHE
import torch
torch.set_num_threads(1)  # the same in every run: CPU kernels are then deterministic
import knowlens.training as T
from knowlens.jailbreak import organisms as O

real = T.response_loss

def announced(*a, **k):
    out = real(*a, **k)
    with open(STEPS_LOG, "a") as f:
        f.write("step\\n")
    time.sleep(SLEEP)
    return out

T.response_loss = announced
O.train_refusal_organism(
    BASE, O.OrganismSettings(**SETTINGS), device="cpu", progress=False, evaluate=False,
    checkpoint_every=EVERY,
)
"""


@pytest.fixture(scope="module")
def ctx():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        [
            "torch",
            "transformers",
            "transformers.models.llama.modeling_llama",
            "peft",
            "safetensors.torch",
            "knowlens.generation",
            "knowlens.models",
            "knowlens.training",
            "knowlens.jailbreak.organisms",
            "knowlens.jailbreak.corpora",
        ]
    )
    return ctx


def start(ctx, base: Path, cache: Path, log: Path):
    log.unlink(missing_ok=True)
    env = {
        "CACHE": str(cache),
        "STEPS_LOG": str(log),
        "SLEEP": STEP_SLEEP,
        "BASE": str(base),
        "SETTINGS": SETTINGS,
        "EVERY": EVERY,
    }
    p = ctx.Process(target=exec, args=(CHILD, env), daemon=True)
    p.start()
    return p


def steps_done(log: Path) -> int:
    try:
        return log.read_text().count("step\n")
    except FileNotFoundError:
        return 0


def organism(cache: Path) -> Path:
    found = [p for p in (cache / "organisms").glob("refusal-*") if p.is_dir()]
    assert len(found) == 1, found
    return found[0]


def published(d: Path) -> dict:
    sums = json.loads((d / CHECKSUMS).read_text())
    return {k: v for k, v in sums.items() if k != "knowlens.json"}  # timings differ


def kill_and_resume(ctx, base: Path, tmp: Path, n_kills: int, seed: int) -> None:
    ref_cache, cache, log = tmp / "reference", tmp / "killed", tmp / "steps.log"
    p = start(ctx, base, ref_cache, log)
    p.join(120)
    assert p.exitcode == 0, "uninterrupted run failed"
    ref = organism(ref_cache)

    rng = random.Random(seed)
    # absolute kill steps, ascending and before the last step: every kill lands in training
    targets = sorted(rng.sample(range(1, SETTINGS["steps"]), n_kills))
    resumed_at = []
    ckpt_root = cache / "organism-checkpoints"
    for target in targets:
        # a run resumes at the newest checkpoint; it dies once it reaches its target step
        # (at least one step in), after a delay anywhere inside that step: the forward /
        # backward pass, the optimizer update or the checkpoint being written
        found = sorted(ckpt_root.glob("*/step-*"))
        first = int(found[-1].name.split("-")[1]) if found else 0
        need = max(1, target - first)
        delay = rng.uniform(0, 1.5 * STEP_SLEEP)
        p = start(ctx, base, cache, log)
        deadline = time.monotonic() + 120
        while steps_done(log) < need:
            assert p.is_alive(), f"run ended before its kill point (exit {p.exitcode})"
            assert time.monotonic() < deadline, "run never reached its kill point"
            time.sleep(0.002)
        time.sleep(delay)
        p.kill()  # SIGKILL
        p.join(30)
        assert p.exitcode == -9
        found = sorted(ckpt_root.glob("*/step-*"))
        resumed_at.append(int(found[-1].name.split("-")[1]) if found else 0)
        assert not list((cache / "organisms").glob("refusal-*")), "published before the end"
    p = start(ctx, base, cache, log)
    p.join(120)
    assert p.exitcode == 0, "the rerun after the kills failed"
    out = organism(cache)
    info = json.loads((out / "knowlens.json").read_text())
    assert out.name == ref.name
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert published(out) == published(ref)
    # the kills did leave checkpoints behind and the final run resumed from the newest
    assert resumed_at == sorted(resumed_at) and resumed_at[-1] > 0
    assert len(set(resumed_at) - {0}) >= 2, resumed_at  # resumed from several checkpoints
    assert info["resumed_from_step"] == resumed_at[-1]
    assert not list(ckpt_root.glob("*/step-*")), "checkpoints left after publishing"


@pytest.mark.timeout(300)
def test_sigkill_organism_training_then_rerun_is_byte_identical(ctx, tiny_model_dir, tmp_path):
    kill_and_resume(ctx, tiny_model_dir, tmp_path, n_kills=5, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_many_times(ctx, tiny_model_dir, tmp_path, seed):
    kill_and_resume(ctx, tiny_model_dir, tmp_path, n_kills=12, seed=seed)
