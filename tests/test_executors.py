"""Executors: the Ray executor gives the local path's results (greedy answers, samples,
hidden states), survives a killed worker and resumes from finished shards; the local path
works without Ray installed. Keys include the
numerics (CPU thread count / device type); shards and merged entries are verified, damaged
ones recomputed; a local and a sharded run of one entry at once compute it once."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from knowlens._cache import cache_root, entry_dir, verify_entry
from knowlens.errors import ConfigError, KnowlensError
from knowlens.executors import Executor, LocalExecutor, get_executor
from knowlens.executors import extract as ex_extract
from knowlens.executors import generate as ex_generate
from knowlens.executors import sample as ex_sample
from knowlens.generation import compute_numerics
from knowlens.tasks._types import Example, GradeResult

WORKER_THREADS = 1  # torch threads of each Ray CPU worker (get_executor's default)

COUNTRIES = [
    "France",
    "Germany",
    "Italy",
    "the United Kingdom of Great Britain",
    "Spain",
    "Portugal",
    "the Republic of Ireland",
    "Poland",
    "Austria",
    "the Czech Republic",
    "Greece",
    "Norway",
    "Sweden",
    "Denmark and its islands",
    "Finland",
    "Belgium",
    "the Netherlands",
    "Switzerland",
    "Hungary",
    "Iceland",
    "Romania",
    "Bulgaria",
    "Croatia",
    "Slovenia",
]


@dataclass
class ToyTask:
    """A TaskLike with prompts of varied lengths; the span is the first word of the answer."""

    examples: list[Example]
    name: str = "toy-capitals"
    version: str = "1"
    split: str = "test"
    max_new_tokens: int = 6
    delay: float = 0.0
    graded: list[str] = field(default_factory=list)

    def prompt(self, ex: Example) -> str:
        return f"What is the capital of {ex.question}?"

    def grade(self, ex: Example, answer: str) -> GradeResult:
        if self.delay:
            time.sleep(self.delay)  # slow blocks, so a worker can be killed mid-run
        words = answer.split()
        if not words:
            return GradeResult(False, "toy")
        start = answer.index(words[0])
        return GradeResult(ex.answers[0] in answer, "toy", (start, start + len(words[0])), words[0])


def toy_task(n: int = 24, delay: float = 0.0) -> ToyTask:
    ex = [Example(f"q{i:02d}", c, (c.split()[-1],)) for i, c in enumerate(COUNTRIES[:n])]
    return ToyTask(ex, delay=delay)


@pytest.fixture(scope="module")
def ray_cluster():
    """One local 2-CPU Ray instance for the module; always shut down."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # Workers cannot import this test module: ship ToyTask by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@contextlib.contextmanager
def torch_threads(n: int):
    """Compute in this process with ``n`` intra-op threads (CPU results depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_batch_windows(monkeypatch):
    """Decode windows of one batch here, so blocks (whole windows) stay one batch long and the
    block counts below small; Ray workers decode each such block as one window of their own.
    tests/test_continuous_batching.py checks blocks of default windows."""
    from knowlens import generation

    monkeypatch.setattr(generation, "_WINDOW_BATCHES", 1)


@pytest.fixture
def worker_threads():
    """The local reference runs with the Ray workers' thread count, so it computes the same
    numbers and shares their cache key (conftest runs tests with 2 threads)."""
    with torch_threads(WORKER_THREADS):
        yield WORKER_THREADS


class BlocksHere(Executor):
    """The sharded path (blocks, shards, merge) computed in this process: no Ray needed."""

    name = "blocks-here"

    def run_blocks(self, stage, model, blocks, root, on_done) -> None:
        LocalExecutor().run_blocks(stage, model, blocks, root, on_done)

    def describe(self) -> dict:
        return {"executor": self.name, "nodes": 1, "workers": 1}

    def numerics(self, model) -> dict:
        return compute_numerics(model.device)


def scramble(path: Path) -> None:
    """Same size, other bytes: only a checksum can tell."""
    size = path.stat().st_size
    path.write_bytes(np.random.default_rng(0).bytes(size))


def damaged_warnings(caplog) -> list[str]:
    msgs = [r.getMessage() for r in caplog.records if r.name == "knowlens.cache"]
    assert all("\n" not in m for m in msgs)  # one line each
    return [m for m in msgs if "damaged entry" in m]


def assert_same_generations(a, b) -> None:
    fa, fb = a.to_frame(), b.to_frame()
    assert list(fa["example_id"]) == list(fb["example_id"])
    assert fa.equals(fb), "generation tables differ"


def assert_same_samples(a, b) -> None:
    fa, fb = a.to_frame(), b.to_frame()
    assert list(fa["example_id"]) == list(fb["example_id"])
    assert fa.equals(fb), "sample tables differ"


SAMPLING = {"k": 3, "temperature": 0.8, "top_p": 0.9, "seed": 11, "batch_size": 4}


def assert_same_activations(a, b) -> None:
    assert a.example_ids == b.example_ids
    assert a.layers == b.layers and a.tokens == b.tokens
    assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
    assert np.asarray(a.values).tobytes() == np.asarray(b.values).tobytes()
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.positions, b.positions)


# -- no Ray needed ---------------------------------------------------------------------------
def test_get_executor_errors():
    with pytest.raises(ConfigError, match=r"Unknown executor 'rey'\. Did you mean: ray\?"):
        get_executor("rey")
    with pytest.raises(ConfigError, match="only applies to the Ray executor"):
        get_executor("local", ray_address="127.0.0.1:6379")
    ex = get_executor("local")
    assert ex.name == "local" and ex.describe()["nodes"] == 1


def test_local_works_without_ray(tmp_path, tiny_model_dir):
    """The local path never imports ray; asking for Ray names the extra to install."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["ray"] = None  # any `import ray` now raises ImportError
        import torch
        torch.set_num_threads(1)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_executors import toy_task
        from knowlens.errors import KnowlensError
        from knowlens.executors import extract, generate, get_executor
        from knowlens.models import load_model
        m = load_model({str(tiny_model_dir)!r}, device="cpu")
        gens = generate(m, toy_task(6), executor="local", progress=False)
        acts = extract(m, gens, layers=[1, 2], executor=get_executor("local"), progress=False)
        assert len(gens) == 6 and acts.values.shape[:2] == (6, 2)
        assert "ray" not in [k for k, v in sys.modules.items() if v is not None]
        try:
            get_executor("ray")
        except KnowlensError as e:
            print("ERR", e)
        """
    )
    env = {**os.environ, "KNOWLENS_CACHE": str(tmp_path / "c")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        "ERR The Ray executor requires optional dependencies. Install with: "
        "pip install 'knowlens[ray]'" in out.stdout
    )


def test_unreachable_ray_address_fails_fast():
    pytest.importorskip("ray")
    t = time.perf_counter()
    with pytest.raises(KnowlensError, match=r"Cannot reach the Ray cluster at 127\.0\.0\.1:9"):
        get_executor("ray", ray_address="127.0.0.1:9")
    with pytest.raises(KnowlensError, match="must look like host:port"):
        get_executor("ray", ray_address="not-an-address")
    assert time.perf_counter() - t < 10


# -- Ray -------------------------------------------------------------------------------------
def test_ray_equals_local(ray_cluster, tiny_model, worker_threads):
    from knowlens.activations import extract as local_extract
    from knowlens.generation import generate as local_generate

    task = toy_task()
    ref = local_generate(tiny_model, task, batch_size=4, cache=False, progress=False)
    ex = get_executor("ray", num_workers=2, threads_per_worker=worker_threads)
    gens = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=4)
    assert_same_generations(gens, ref)
    numerics = {"device": "cpu", "threads": worker_threads}
    assert gens.meta["numerics"] == ref.meta["numerics"] == numerics
    run = gens.meta["executor"]
    assert run["executor"] == "ray" and run["nodes"] == 1 and run["workers"] == 2
    assert run["blocks"] == 6 and run["computed"] == 6 and run["reused"] == 0
    # Two replicas in the pool; a slow-starting one may get no block on a busy machine.
    assert 1 <= len(run["worker_ids"]) <= 2 and run["devices"] == ["cpu x1"]
    assert run["tokens"] == sum(len(g.answer_ids) for g in ref) > 0
    # The local front end finds the entry the Ray run stored (same key, same files).
    hit = local_generate(tiny_model, task, batch_size=4, progress=False)
    assert hit.meta["cache_hit"] and hit.meta["cache_key"] == gens.meta["cache_key"]

    # Every layer at every position (ragged, padded): byte-identical, and cached for extract().
    kw = {"layers": "all", "tokens": "all", "max_positions": 40, "batch_size": 4}
    ref_a = local_extract(tiny_model, ref, cache=False, progress=False, **kw)
    acts = ex_extract(tiny_model, gens, executor=ex, block_size=8, **kw)
    assert_same_activations(acts, ref_a)
    assert acts.values.shape == (24, 3, ref_a.values.shape[2], 32)
    assert acts.meta["executor"]["blocks"] == 3 and not acts.meta["cache_hit"]
    assert acts.meta["numerics"] == ref_a.meta["numerics"] == numerics
    hit_a = local_extract(tiny_model, gens, progress=False, **kw)
    assert hit_a.meta["cache_hit"] and hit_a.meta["cache_key"] == acts.meta["cache_key"]
    assert_same_activations(hit_a, ref_a)

    # Without the cache: the exact-answer token, merged in memory, nothing left on disk.
    kw = {"layers": [1, 2], "tokens": "exact_answer", "batch_size": 4}
    ref_e = local_extract(tiny_model, ref, cache=False, progress=False, **kw)
    acts_e = ex_extract(
        tiny_model, gens, executor=ex, cache=False, progress=False, block_size=24, **kw
    )  # one block: one actor to start
    assert_same_activations(acts_e, ref_e)
    assert not any((cache_root() / "shards" / "activations").glob("*.nocache-*"))

    # ... and the Ray front end finds an entry the local path stored (no block is computed).
    small = toy_task(8)
    local = local_generate(tiny_model, small, batch_size=4, progress=False)
    reused = ex_generate(tiny_model, small, executor=ex, batch_size=4, block_size=4)
    assert reused.meta["cache_hit"] and reused.meta["cache_key"] == local.meta["cache_key"]
    assert "executor" not in reused.meta  # written by the local path
    assert_same_generations(reused, local)


def test_ray_sample_equals_local(ray_cluster, tiny_model, worker_threads):
    """Ray draws the local samples (same tokens, log-probs, grades) into the local entry."""
    from knowlens.generation import generate as local_generate
    from knowlens.generation import sample as local_sample

    task = toy_task()
    ref = local_sample(tiny_model, task, cache=False, progress=False, **SAMPLING)
    ex = get_executor("ray", num_workers=2, threads_per_worker=worker_threads)
    smp = ex_sample(tiny_model, task, executor=ex, block_size=4, **SAMPLING)
    assert_same_samples(smp, ref)
    assert smp.meta["numerics"] == ref.meta["numerics"] == {"device": "cpu", "threads": 1}
    run = smp.meta["executor"]
    assert run["executor"] == "ray" and (run["blocks"], run["computed"]) == (6, 6)
    assert 1 <= len(run["worker_ids"]) <= 2 and run["devices"] == ["cpu x1"]
    hit = local_sample(tiny_model, task, progress=False, **SAMPLING)
    assert hit.meta["cache_hit"] and hit.meta["cache_key"] == smp.meta["cache_key"]
    assert_same_samples(hit, ref)
    # From greedy answers, without the cache: merged in memory, equal to the local draw.
    gens = local_generate(tiny_model, task, batch_size=4, cache=False, progress=False)
    other = {**SAMPLING, "seed": 3, "k": 2, "task": task}
    mem = ex_sample(tiny_model, gens, executor=ex, block_size=8, cache=False, **other)
    assert_same_samples(mem, local_sample(tiny_model, gens, cache=False, progress=False, **other))
    assert not entry_dir("samples", mem.meta["cache_key"]).exists()


def _kill_one_worker_after_first_shard(root: Path, killed: list[str]) -> None:
    """SIGKILL the actor that wrote the first shard: it is busy with its next block.

    The deadline is generous: on a loaded 2-core machine starting the actors alone can take
    more than a minute, and a killer that gave up before the first shard made the test flaky.
    """
    deadline = time.time() + 600
    while time.time() < deadline:
        done = [p for p in root.glob("[0-9]*")] if root.is_dir() else []
        if done:
            worker = json.loads((done[0] / "info.json").read_text())["worker"]
            os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)
            killed.append(worker)
            return
        time.sleep(0.02)


def test_killed_worker_and_killed_job(ray_cluster, tiny_model, worker_threads):
    from knowlens.generation import generate as local_generate

    ref = local_generate(tiny_model, toy_task(), batch_size=4, cache=False, progress=False)
    slow = toy_task(delay=0.1)  # same name/version/prompts: same key and rows, slower blocks
    key = ref.meta["cache_key"]
    root = cache_root() / "shards" / "generations" / key
    killed: list[str] = []
    killer = threading.Thread(
        target=_kill_one_worker_after_first_shard, args=(root, killed), daemon=True
    )
    killer.start()
    ex = get_executor("ray", num_workers=2)
    gens = ex_generate(tiny_model, slow, executor=ex, batch_size=4, block_size=4)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert_same_generations(gens, ref)
    run = gens.meta["executor"]
    assert run["blocks"] == 6 and run["computed"] + run["reused"] == 6
    # Others (the restarted actor, the second replica) finished the killed actor's blocks.
    assert [w for w in run["worker_ids"] if w != killed[0]]
    entries = sorted(p.name for p in root.iterdir())
    assert len(entries) == 6 and not [e for e in entries if e.startswith(".")]

    # The whole job "killed": the merged entry and one shard are gone; a rerun computes
    # only that block and reuses the other five.
    shutil.rmtree(cache_root() / "generations" / key)
    shutil.rmtree(root / entries[3])
    again = ex_generate(tiny_model, toy_task(), executor=ex, batch_size=4, block_size=4)
    assert again.meta["executor"]["computed"] == 1 and again.meta["executor"]["reused"] == 5
    assert not again.meta["cache_hit"]
    assert_same_generations(again, ref)


@pytest.mark.slow  # the same checks run in-process in test_sharded_path_verifies_entries_and_shards
def test_ray_damaged_entry_or_shard_is_detected_and_recomputed(
    ray_cluster, tiny_model, worker_threads, caplog
):
    """A Ray-written merged entry or shard with other bytes (same size) is reported in one
    line, moved aside and recomputed: only the damaged block runs again, same bytes."""
    from knowlens.activations import extract as local_extract

    caplog.set_level(logging.WARNING, logger="knowlens.cache")
    task = toy_task()
    ex = get_executor("ray", num_workers=2, threads_per_worker=worker_threads)
    gens = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=8)
    key = gens.meta["cache_key"]
    entry, root = entry_dir("generations", key), cache_root() / "shards" / "generations" / key
    table = (entry / "generations.parquet").read_bytes()
    shard = sorted(root.iterdir())[1]
    scramble(entry / "generations.parquet")
    scramble(shard / "generations.parquet")
    again = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=8)
    run = again.meta["executor"]
    assert not again.meta["cache_hit"] and (run["computed"], run["reused"]) == (1, 2)
    assert_same_generations(again, gens)
    assert (entry / "generations.parquet").read_bytes() == table
    verify_entry(entry)
    verify_entry(shard)
    assert len(damaged_warnings(caplog)) == 2
    assert len(list((cache_root() / ".damaged").iterdir())) == 2

    kw = {"layers": "all", "tokens": "all", "max_positions": 40, "batch_size": 4}
    acts = ex_extract(tiny_model, gens, executor=ex, block_size=8, progress=False, **kw)
    values = np.array(acts.values)
    a_entry = Path(acts.meta["path"])
    a_shard = sorted((cache_root() / "shards" / "activations" / acts.meta["cache_key"]).iterdir())
    del acts
    scramble(a_entry / "values.npy")
    scramble(a_shard[2] / "values.npy")
    acts2 = ex_extract(tiny_model, gens, executor=ex, block_size=8, progress=False, **kw)
    run = acts2.meta["executor"]
    assert not acts2.meta["cache_hit"] and (run["computed"], run["reused"]) == (1, 2)
    assert np.asarray(acts2.values).tobytes() == values.tobytes()
    assert len(damaged_warnings(caplog)) == 4
    hit = local_extract(tiny_model, gens, progress=False, **kw)  # verified deep, no warning
    assert hit.meta["cache_hit"] and np.asarray(hit.values).tobytes() == values.tobytes()
    assert len(damaged_warnings(caplog)) == 4


def test_local_and_ray_runs_at_once_compute_once(
    ray_cluster, tiny_model, worker_threads, monkeypatch
):
    """Both orders: the run that holds the entry's lock computes, the other waits and reuses
    its verified entry; both succeed with identical output."""
    from knowlens.activations import _api
    from knowlens.activations import extract as local_extract
    from knowlens.generation import generate as local_generate

    ref = local_generate(tiny_model, toy_task(), batch_size=4, cache=False, progress=False)
    ex = get_executor("ray", num_workers=2, threads_per_worker=worker_threads)

    # Ray computes; a local run started once Ray's first shard landed waits for its entry.
    slow = toy_task(delay=0.25)  # same key and rows as toy_task(), slower blocks
    root = cache_root() / "shards" / "generations" / ref.meta["cache_key"]
    local: dict = {}

    def local_run_when_ray_started() -> None:
        deadline = time.time() + 120
        while not (root.is_dir() and any(root.glob("[0-9]*"))) and time.time() < deadline:
            time.sleep(0.02)
        local["gens"] = local_generate(tiny_model, toy_task(), batch_size=4, progress=False)

    t = threading.Thread(target=local_run_when_ray_started, daemon=True)
    t.start()
    gens = ex_generate(tiny_model, slow, executor=ex, batch_size=4, block_size=4)
    t.join(timeout=120)
    assert local["gens"].meta["cache_hit"], "the local run computed instead of waiting"
    assert not gens.meta["cache_hit"] and gens.meta["executor"]["computed"] == 6
    assert local["gens"].meta["executor"]["executor"] == "ray"  # it read Ray's entry
    assert_same_generations(local["gens"], ref)
    assert_same_generations(gens, ref)

    # The local path computes (slowed inside its lock); a Ray run started meanwhile waits.
    kw = {"layers": [0, 2], "tokens": "all", "max_positions": 40, "batch_size": 4}
    started = threading.Event()
    real = _api.extract_batch

    def slow_batch(*a, **k):
        started.set()
        time.sleep(0.5)
        return real(*a, **k)

    monkeypatch.setattr(_api, "extract_batch", slow_batch)
    out: dict = {}
    t = threading.Thread(
        target=lambda: out.update(a=local_extract(tiny_model, ref, progress=False, **kw)),
        daemon=True,
    )
    t.start()
    assert started.wait(60)
    acts = ex_extract(tiny_model, gens, executor=ex, block_size=8, progress=False, **kw)
    t.join(timeout=120)
    assert not out["a"].meta["cache_hit"] and acts.meta["cache_hit"]
    assert "executor" not in acts.meta  # the local path's entry
    assert_same_activations(acts, out["a"])


def test_keys_include_numerics(tiny_model, caplog):
    """On CPU the intra-op thread count enters the generation and activation keys (and the
    meta / manifest); on an accelerator only the device type; a Ray executor's key uses its
    workers' threads_per_worker."""
    from knowlens.activations import extract as local_extract
    from knowlens.activations import items_from_generations, plan_extraction
    from knowlens.generation import generate as local_generate
    from knowlens.generation import generate_texts

    assert compute_numerics("cpu", 3) == {"device": "cpu", "threads": 3}
    assert compute_numerics(torch.device("cuda:1"), 3) == compute_numerics("cuda", 1)
    assert compute_numerics("cuda:0") == {"device": "cuda"}
    with torch_threads(1):
        assert compute_numerics("cpu") == {"device": "cpu", "threads": 1}
        g1 = local_generate(tiny_model, toy_task(8), batch_size=4, progress=False)
        a1 = local_extract(tiny_model, g1, layers="all", tokens="all", progress=False)
        t1 = generate_texts(tiny_model, ["Hi"], max_new_tokens=3, progress=False)
    with torch_threads(2):
        g2 = local_generate(tiny_model, toy_task(8), batch_size=4, progress=False)
        a2 = local_extract(tiny_model, g1, layers="all", tokens="all", progress=False)
        t2 = generate_texts(tiny_model, ["Hi"], max_new_tokens=3, progress=False)
    assert (g1.meta["numerics"], g2.meta["numerics"]) == (
        {"device": "cpu", "threads": 1},
        {"device": "cpu", "threads": 2},
    )
    assert a1.meta["numerics"] == g1.meta["numerics"] and a2.meta["numerics"]["threads"] == 2
    # Another thread count: another entry (never the other's numbers), not a cache hit.
    for one, two in ((g1, g2), (a1, a2), (t1, t2)):
        assert one.meta["cache_key"] != two.meta["cache_key"] and not two.meta["cache_hit"]

    # The same formulas with explicit numerics: only the CPU thread count / device type count.
    items = items_from_generations(g1)

    def key(**numerics) -> str:
        return plan_extraction(
            tiny_model,
            items,
            layers="all",
            tokens="all",
            dtype="float32",
            max_positions=512,
            batch_size=8,
            **numerics,
        ).key

    cpu1, cpu2 = (
        key(numerics=compute_numerics("cpu", 1)),
        key(numerics={"device": "cpu", "threads": 2}),
    )
    cuda = key(numerics={"device": "cuda"})
    assert len({cpu1, cpu2, cuda}) == 3
    assert key(numerics=compute_numerics("cuda:3", 7)) == cuda  # threads do not matter there
    with torch_threads(1):
        assert key() == cpu1  # default: this process's numerics

    # A sharded executor keys by its workers' numerics (here: the 2-thread entry above, even
    # from a 1-thread driver), and a worker that would compute with others refuses.
    class TwoThreads(BlocksHere):
        def numerics(self, model) -> dict:
            return compute_numerics("cpu", 2)

    with torch_threads(1):
        two = ex_generate(tiny_model, toy_task(8), executor=TwoThreads(), batch_size=4)
        assert two.meta["cache_hit"] and two.meta["cache_key"] == g2.meta["cache_key"]
        with pytest.raises(
            KnowlensError,
            match=r"would compute with \{'device': 'cpu', 'threads': 1\}, but the run's cache "
            r"key was made for \{'device': 'cpu', 'threads': 2\}",
        ):
            ex_generate(tiny_model, toy_task(5), executor=TwoThreads(), batch_size=4)
        here = ex_generate(tiny_model, toy_task(8), executor=BlocksHere(), batch_size=4)
    assert here.meta["cache_key"] == g1.meta["cache_key"] and here.meta["cache_hit"]


def test_ray_executor_numerics(ray_cluster, tiny_model):
    """Ray keys by threads_per_worker on a CPU cluster, whatever the driver's threads."""
    with torch_threads(2):
        for n in (1, 2):
            ex = get_executor("ray", threads_per_worker=n)
            assert ex.numerics(tiny_model) == {"device": "cpu", "threads": n}


def test_sharded_path_verifies_entries_and_shards(tiny_model, caplog):
    """Without Ray: merged entries are published with checksums and read back verified; a
    damaged merged entry or shard is reported in one line, moved aside and recomputed."""
    caplog.set_level(logging.WARNING, logger="knowlens.cache")
    ex, task = BlocksHere(), toy_task(12)
    gens = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=4)
    key = gens.meta["cache_key"]
    entry, root = entry_dir("generations", key), cache_root() / "shards" / "generations" / key
    verify_entry(entry)
    table = (entry / "generations.parquet").read_bytes()
    shards = sorted(root.iterdir())
    assert len(shards) == 3 and all((s / "checksums.json").exists() for s in shards)

    scramble(entry / "generations.parquet")  # the merged entry only: merged again
    again = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=4)
    run = again.meta["executor"]
    assert not again.meta["cache_hit"] and (run["computed"], run["reused"]) == (0, 3)
    assert (entry / "generations.parquet").read_bytes() == table
    assert len(damaged_warnings(caplog)) == 1

    (entry / "meta.json").write_text("{}")  # another size: also caught
    scramble(shards[0] / "generations.parquet")
    again = ex_generate(tiny_model, task, executor=ex, batch_size=4, block_size=4)
    run = again.meta["executor"]
    assert (run["computed"], run["reused"]) == (1, 2)
    assert (entry / "generations.parquet").read_bytes() == table
    assert_same_generations(again, gens)
    warned = damaged_warnings(caplog)
    assert len(warned) == 3 and shards[0].name in warned[-1]
    assert ex_generate(tiny_model, task, executor=ex, batch_size=4).meta["cache_hit"]

    kw = {"layers": "all", "tokens": "all", "batch_size": 4, "progress": False}
    acts = ex_extract(tiny_model, gens, executor=ex, block_size=4, **kw)
    values = np.array(acts.values)
    a_root = cache_root() / "shards" / "activations" / acts.meta["cache_key"]
    a_entry = Path(acts.meta["path"])
    del acts
    scramble(a_entry / "values.npy")
    scramble(sorted(a_root.iterdir())[1] / "values.npy")
    acts = ex_extract(tiny_model, gens, executor=ex, block_size=4, **kw)
    run = acts.meta["executor"]
    assert not acts.meta["cache_hit"] and (run["computed"], run["reused"]) == (1, 2)
    assert np.asarray(acts.values).tobytes() == values.tobytes()
    assert len(damaged_warnings(caplog)) == 5
    assert len(list((cache_root() / ".damaged").iterdir())) == 5
    assert ex_extract(tiny_model, gens, executor=ex, block_size=4, **kw).meta["cache_hit"]


CAPTURE = [("all", "exact_answer"), ([1, 2], "all"), ([0], "last_prompt")]


def test_sharded_capture_equals_local_capture_and_shares_its_entries(tiny_model):
    """Without Ray: hidden states read while the blocks decode are the local capture's bytes
    (blocks are whole decode windows: the same batches), in the entries extract writes on
    either path; rows of shards decoded without the capture (a plain sharded run's) are
    teacher-forced; cache=False leaves nothing behind."""
    from knowlens.activations import extract as local_extract
    from knowlens.activations import generate_capturing as local_capturing
    from knowlens.executors import generate_capturing

    ex, task = BlocksHere(), toy_task(12)
    kw = {"batch_size": 4, "max_positions": 40, "extract_batch_size": 4, "progress": False}
    ref_g, ref = local_capturing(tiny_model, task, CAPTURE, cache=False, **kw)
    gens, sets = generate_capturing(tiny_model, task, CAPTURE, executor=ex, block_size=4, **kw)
    assert_same_generations(gens, ref_g)
    assert gens.meta["executor"]["blocks"] == 3
    assert sets is not None and ref is not None and len(sets) == len(CAPTURE)
    for got, want in zip(sets, ref, strict=True):
        assert_same_activations(got, want)
        assert got.meta["captured_while_generating"] == 12 and got.meta["teacher_forced_rows"] == 0
        # extract on either executor finds the entry (same key), a hit without a forward
        again = ex_extract(
            tiny_model, gens, executor=ex, layers=list(got.layers), tokens=got.tokens,
            max_positions=40, batch_size=4, progress=False,
        )  # fmt: skip
        assert again.meta["cache_hit"] and again.meta["cache_key"] == got.meta["cache_key"]
        assert_same_activations(again, got)
    assert not any((cache_root() / "activations").glob(".tmp-capture*"))
    # the shards keep the answers (verified), not a second copy of the published states
    shards = sorted((cache_root() / "shards" / "generations" / gens.meta["cache_key"]).iterdir())
    assert len(shards) == 3 and not any(f for d in shards for f in d.glob("capture*"))
    for d in shards:
        verify_entry(d)

    # A generation entry already there: nothing decoded; extract_on_hit extracts (hits here)
    hit_g, hit = generate_capturing(tiny_model, task, CAPTURE, executor=ex, **kw)
    assert hit_g.meta["cache_hit"] and hit is not None and all(a.meta["cache_hit"] for a in hit)
    _, none = generate_capturing(tiny_model, task, CAPTURE, executor=ex, extract_on_hit=False, **kw)
    assert none is None

    # Shards of a plain sharded run (no capture in them), merged entry gone: nothing is decoded
    # again and every row is teacher-forced, equal to extract within the capture's tolerance.
    other = toy_task(8)
    plain = ex_generate(tiny_model, other, executor=ex, batch_size=4, block_size=4)
    shutil.rmtree(entry_dir("generations", plain.meta["cache_key"]))
    gens2, (acts2,) = generate_capturing(
        tiny_model, other, [([1, 2], "exact_answer")], executor=ex, block_size=4, **kw
    )
    assert gens2.meta["executor"]["computed"] == 0 and gens2.meta["executor"]["reused"] == 2
    assert acts2.meta["teacher_forced_rows"] == 8 and acts2.meta["captured_while_generating"] == 0
    want = local_extract(
        tiny_model, plain, layers=[1, 2], batch_size=4, cache=False, progress=False
    )
    np.testing.assert_allclose(acts2.values, want.values, rtol=0, atol=2e-3)  # float16 storage

    # cache=False: merged in memory, the same arrays, no spool or shard folder left
    fresh = toy_task(10)
    mem_g, mem = generate_capturing(
        tiny_model, fresh, CAPTURE[:1], executor=ex, block_size=4, cache=False, **kw
    )
    ref_g2, ref2 = local_capturing(tiny_model, fresh, CAPTURE[:1], cache=False, **kw)
    assert mem is not None and ref2 is not None
    assert_same_generations(mem_g, ref_g2)
    assert_same_activations(mem[0], ref2[0])
    assert not entry_dir("generations", mem_g.meta["cache_key"]).exists()
    assert not any((cache_root() / "shards" / "generations").glob("*.nocache-*"))


def test_executor_generate_with_layers_returns_both(tiny_model):
    """``executors.generate(..., layers=)`` is ``kl.generate(..., layers=)`` on any executor:
    (gens, acts), the local pair's values; options without layers are a one-line error."""
    import knowlens as kl

    task = toy_task(8)
    ref_g, ref_a = kl.generate(
        tiny_model, task, layers=[1], tokens="last", batch_size=4, cache=False, progress=False
    )
    gens, acts = ex_generate(
        tiny_model, task, executor=BlocksHere(), layers=[1], tokens="last", batch_size=4,
        block_size=4, progress=False,
    )  # fmt: skip
    assert_same_generations(gens, ref_g)
    assert_same_activations(acts, ref_a)
    with pytest.raises(KnowlensError, match="no layers= was given") as e:
        ex_generate(tiny_model, task, executor=BlocksHere(), tokens="last")
    assert "\n" not in str(e.value)


def test_ray_capture_equals_local(ray_cluster, tiny_model, worker_threads):
    """On Ray workers: the local capture's bytes and entries (the workers' numerics)."""
    from knowlens.activations import generate_capturing as local_capturing
    from knowlens.executors import generate_capturing

    task = toy_task(16)
    kw = {"batch_size": 4, "max_positions": 40, "extract_batch_size": 4, "progress": False}
    ref_g, ref = local_capturing(tiny_model, task, CAPTURE[:2], cache=False, **kw)
    ex = get_executor("ray", num_workers=2, threads_per_worker=worker_threads)
    gens, sets = generate_capturing(tiny_model, task, CAPTURE[:2], executor=ex, block_size=8, **kw)
    assert_same_generations(gens, ref_g)
    assert gens.meta["executor"]["executor"] == "ray"
    assert sets is not None and ref is not None
    for got, want in zip(sets, ref, strict=True):
        assert_same_activations(got, want)
        assert got.meta["numerics"] == {"device": "cpu", "threads": worker_threads}
        hit = ex_extract(
            tiny_model, gens, executor=ex, layers=list(got.layers), tokens=got.tokens,
            max_positions=40, batch_size=4, progress=False,
        )  # fmt: skip
        assert hit.meta["cache_hit"] and hit.meta["cache_key"] == got.meta["cache_key"]


def test_sharded_sampling_equals_local_and_shares_its_entry(tiny_model, caplog):
    """Without Ray: sampling in blocks gives the local SampleSet (the seeds name the example
    and sample index, not the batch or block), stored in the local path's entry, both ways;
    a damaged shard is recomputed alone; cache=False stores nothing."""
    from knowlens.generation import generate as local_generate
    from knowlens.generation import sample as local_sample

    caplog.set_level(logging.WARNING, logger="knowlens.cache")
    ex, task = BlocksHere(), toy_task(12)
    ref = local_sample(tiny_model, task, cache=False, progress=False, **SAMPLING)
    assert len({tuple(map(tuple, r.answer_ids)) for r in ref}) > 1
    assert any(len({tuple(a) for a in r.answer_ids}) > 1 for r in ref)  # the k samples differ
    smp = ex_sample(tiny_model, task, executor=ex, block_size=4, **SAMPLING)
    assert_same_samples(smp, ref)
    assert [r.correct for r in smp] == [r.correct for r in ref]
    assert any(c is not None for r in smp for c in r.correct)  # graded by the task
    run = smp.meta["executor"]
    assert not smp.meta["cache_hit"] and (run["blocks"], run["computed"]) == (3, 3)
    assert smp.meta["n_answer_tokens"] == sum(len(a) for r in ref for a in r.answer_ids)
    assert run["tokens"] == smp.meta["n_answer_tokens"]
    for k in ("cache_key", "k", "temperature", "top_p", "seed", "numerics", "settings"):
        assert smp.meta[k] == ref.meta[k], k
    entry = entry_dir("samples", smp.meta["cache_key"])
    verify_entry(entry)
    hit = local_sample(tiny_model, task, progress=False, **SAMPLING)  # finds the merged entry
    assert hit.meta["cache_hit"] and hit.meta["executor"]["executor"] == "blocks-here"
    assert_same_samples(hit, ref)

    # A damaged shard and entry: only that block is drawn again, same bytes.
    root = cache_root() / "shards" / "samples" / smp.meta["cache_key"]
    shards = sorted(root.iterdir())
    table = (entry / "samples.parquet").read_bytes()
    scramble(entry / "samples.parquet")
    scramble(shards[1] / "samples.parquet")
    again = ex_sample(tiny_model, task, executor=ex, block_size=4, **SAMPLING)
    assert (again.meta["executor"]["computed"], again.meta["executor"]["reused"]) == (1, 2)
    assert (entry / "samples.parquet").read_bytes() == table
    assert len(damaged_warnings(caplog)) == 2
    assert_same_samples(again, ref)

    # From greedy answers (their prompt tokens and settings): the local entry, reused by blocks.
    gens = local_generate(tiny_model, task, batch_size=4, progress=False)
    local = local_sample(tiny_model, gens, task=task, progress=False, **SAMPLING)
    assert local.meta["cache_key"] == smp.meta["cache_key"]  # same prompts: one entry
    other = {**SAMPLING, "seed": 12, "task": task}
    local = local_sample(tiny_model, gens, progress=False, **other)
    reused = ex_sample(tiny_model, gens, executor=ex, block_size=4, **other)
    assert reused.meta["cache_hit"] and "executor" not in reused.meta
    assert_same_samples(reused, local)
    assert local.to_frame()["answer_ids"].tolist() != ref.to_frame()["answer_ids"].tolist()

    # cache=False: merged in memory, no entry, no shard folder left.
    fresh = {**SAMPLING, "seed": 13, "limit": 7}
    mem = ex_sample(tiny_model, task, executor=ex, block_size=4, cache=False, **fresh)
    assert_same_samples(mem, local_sample(tiny_model, task, cache=False, progress=False, **fresh))
    assert not mem.meta["cache_hit"] and len(mem) == 7
    assert not entry_dir("samples", mem.meta["cache_key"]).exists()
    assert not any((cache_root() / "shards" / "samples").glob("*.nocache-*"))

    # The local checks, before any block: bad settings, and a prompt beyond the context.
    with pytest.raises(KnowlensError, match="temperature must be a finite number > 0"):
        ex_sample(tiny_model, task, executor=ex, temperature=0)
    with pytest.raises(KnowlensError, match=r"beyond the 1024-token context"):
        ex_sample(tiny_model, task, executor=ex, max_new_tokens=1020)


@pytest.mark.real_model
@pytest.mark.slow
def test_ray_equals_local_smollm2(ray_cluster, tmp_path, monkeypatch, request):
    """SmolLM2-135M on a real task: same answers and byte-identical exact-answer states."""
    import torch

    from knowlens.activations import extract as local_extract
    from knowlens.executors import extract as ex_extract
    from knowlens.generation import generate as local_generate
    from knowlens.models import load_model
    from knowlens.tasks import load_task

    model = load_model("smollm2-135m-instruct", device="cpu")
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "kl"))  # after the shared conversion
    # One thread like the workers: a 2-thread driver spin-waits badly on a shared 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    task = load_task("capitals", limit=16)
    ref = local_generate(model, task, batch_size=8, cache=False, progress=False)
    ex = get_executor("ray", num_workers=2)
    gens = ex_generate(model, task, executor=ex, batch_size=8)
    assert_same_generations(gens, ref)
    assert gens.accuracy == ref.accuracy > 0  # SmolLM2-135M knows a few capitals
    ref_a = local_extract(
        model, ref, layers=[0, 10, 20, 30], batch_size=8, cache=False, progress=False
    )
    acts = ex_extract(model, gens, layers=[0, 10, 20, 30], executor=ex, batch_size=8)
    assert_same_activations(acts, ref_a)
