"""Kill -9 at seeded random points, rerun, and the result equals an uninterrupted run's bytes.

Each job (``generate``, ``extract``, ``run``) runs in a child process on the tiny model; the
parent kills it with SIGKILL after a delay drawn from a seeded schedule over the job's measured
duration, possibly more than once, then reruns it to completion in the same cache, sometimes
with other options (batch sizes), and compares the published files with those of a clean run
of the final options in a fresh cache. The default run tries a few kill points per job; the
``slow`` test tries 20 per job.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = Path(__file__).with_name("_kill_child.py")
SEED = 13


def _spawn(job: str, model_dir: Path, cache: Path, out: Path, opts: dict) -> subprocess.Popen:
    env = {**os.environ, "KNOWLENS_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen(
        [sys.executable, str(CHILD), job, str(model_dir), str(out), json.dumps(opts)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=str(CHILD.parent),
    )


def _finish(p: subprocess.Popen, timeout: float = 300) -> None:
    _, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()[-3000:]


def _clean_run(job, model_dir, tmp, opts) -> tuple[dict, float]:
    """Digests of a clean run's result, and how long its work took (after start-up)."""
    out = tmp / f"clean-{job}-{len(list(tmp.glob('clean-*.json')))}.json"
    _finish(_spawn(job, model_dir, tmp / f"clean-cache-{out.stem}", out, opts))
    return json.loads(out.read_text()), float(Path(f"{out}.seconds").read_text())


def _wait_started(p: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    marker = Path(f"{out}.started")
    t = time.perf_counter()
    while not marker.exists() and p.poll() is None and time.perf_counter() - t < timeout:
        time.sleep(0.02)
    marker.unlink(missing_ok=True)


def _opts(job: str, tmp: Path, variant: int) -> dict:
    o: dict = {"output": str(tmp / "runs")} if job == "run" else {}
    if job == "extract" and variant:  # another batch size on the rerun: a different plan
        o |= {"batch_size": 3, "shard_size": 6}
    return o


def _kill_and_resume(job, model_dir, tmp, n_points, rng) -> dict:
    """Returns counts: kill points tried, kills that landed mid-job, reruns that matched."""
    refs: dict[int, dict] = {}
    duration = None
    stats = {"tried": 0, "landed": 0, "matched": 0}
    for point in range(n_points):
        variant = point % 2 if job == "extract" else 0
        final_opts = _opts(job, tmp, variant)
        if variant not in refs:
            refs[variant], duration = _clean_run(job, model_dir, tmp, final_opts)
        cache = tmp / f"cache-{job}-{point}"
        out = tmp / f"out-{job}-{point}.json"
        # 1-2 kills per point, each after a seeded fraction of a clean run's work time; the
        # first attempt uses the other variant's options, so a changed plan meets old records.
        for _k in range(rng.choice((1, 1, 2))):
            p = _spawn(job, model_dir, cache, out, _opts(job, tmp, 1 - variant))
            _wait_started(p, out)  # model loaded: the job's work begins
            time.sleep(rng.uniform(0.05, 1.0) * duration)
            stats["tried"] += 1
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                stats["landed"] += 1
            p.wait(60)
        out.unlink(missing_ok=True)
        _finish(_spawn(job, model_dir, cache, out, final_opts))
        got = json.loads(out.read_text())
        assert got == refs[variant], f"{job}: kill point {point} resumed to different bytes"
        stats["matched"] += 1
    return stats


@pytest.mark.parametrize(
    "job",
    [
        pytest.param("generate", marks=pytest.mark.slow),  # also in test_generation_faults.py
        "extract",
        pytest.param("run", marks=pytest.mark.slow),  # ~80 s: generation + probes + report
    ],
)
def test_killed_job_resumes_to_identical_bytes(job, tiny_model_dir, tmp_path):
    # extract: the one point kills a run of the other batching, then resumes the default
    stats = _kill_and_resume(job, tiny_model_dir, tmp_path, 1, random.Random(f"{SEED}-{job}"))
    assert stats["matched"] == 1 and stats["tried"] >= 1
    print(f"\n{job}: {stats}")


@pytest.mark.slow
@pytest.mark.parametrize("job", ["generate", "extract", "run"])
def test_twenty_kill_points_per_job(job, tiny_model_dir, tmp_path):
    stats = _kill_and_resume(job, tiny_model_dir, tmp_path, 20, random.Random(f"{SEED}+{job}"))
    assert stats["matched"] == 20 and stats["tried"] >= 20
    print(f"\n{job}: {stats}")


@pytest.mark.slow  # in the default run: 3 processes extract at once (test_activation_faults),
# 2 threads generate at once (test_generation_faults), local + Ray at once (test_executors)
@pytest.mark.parametrize("job", ["generate", "extract"])
def test_identical_jobs_at_once_all_succeed_identically(job, tiny_model_dir, tmp_path):
    ref, _ = _clean_run(job, tiny_model_dir, tmp_path, _opts(job, tmp_path, 0))
    cache = tmp_path / "shared-cache"
    outs = [tmp_path / f"c{i}.json" for i in range(3)]
    procs = [_spawn(job, tiny_model_dir, cache, o, _opts(job, tmp_path, 0)) for o in outs]
    for p in procs:
        _finish(p)
    assert [json.loads(o.read_text()) for o in outs] == [ref] * 3
