"""Generation under faults: damaged cache entries, concurrent runs, killed runs that resume,
prompts longer than the model's context, and bad max_new_tokens. Never silently wrong."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

import pandas as pd
import pytest

from _tasks import RecordingTask, examples
from knowlens import generation
from knowlens._cache import CHECKSUMS, cache_root, entry_dir, verify_entry
from knowlens._types import GenerationSet
from knowlens.errors import DataError, KnowlensError
from knowlens.generation import context_limit, generate, generate_texts
from knowlens.tasks import Example, GradeResult


@dataclass
class Task(RecordingTask):
    name: str = "faults"
    max_new_tokens: int = 6

    def _grade(self, example: Example, answer: str) -> GradeResult:
        at = answer.find("e")
        return GradeResult(at >= 0, "contains", (at, at + 1) if at >= 0 else None, None)


def make_task(n: int = 7, question: str | None = None) -> Task:
    return Task(examples(n, "e", question))


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


def count_batches(monkeypatch, fail_at: int | None = None, delay: float = 0.0) -> list[int]:
    """Wrap the batch decoder: count calls; raise KeyboardInterrupt (a kill) at call
    ``fail_at``; optionally sleep per batch so concurrent runs overlap."""
    real, calls = generation._decode_batch, []
    lock = threading.Lock()
    monkeypatch.setattr(generation, "_WINDOW_BATCHES", 1)  # one batch per resume window

    def wrapped(handle, prompts, settings, *args, **kwargs):
        with lock:
            calls.append(len(prompts))
            n = len(calls)
        if fail_at is not None and n == fail_at:
            raise KeyboardInterrupt("killed")
        time.sleep(delay)
        return real(handle, prompts, settings, *args, **kwargs)

    monkeypatch.setattr(generation, "_decode_batch", wrapped)
    return calls


# -- damaged entries ---------------------------------------------------------------------------
def _damage(entry, how: str) -> None:
    pq, meta = entry / "generations.parquet", entry / "meta.json"
    if how == "truncate_parquet":
        pq.write_bytes(pq.read_bytes()[: pq.stat().st_size // 2])
    elif how == "truncate_json":
        meta.write_text(meta.read_text()[:10])
    elif how == "garbage_parquet":  # same size, other bytes
        data = bytearray(pq.read_bytes())
        data[len(data) // 3 : len(data) // 3 + 64] = b"\x00" * 64
        pq.write_bytes(bytes(data))
    elif how == "delete_parquet":
        pq.unlink()
    elif how == "delete_checksums":
        (entry / CHECKSUMS).unlink()


@pytest.mark.parametrize(
    "how",
    ["truncate_parquet", "truncate_json", "garbage_parquet", "delete_parquet", "delete_checksums"],
)
def test_damaged_entry_is_reported_moved_aside_and_recomputed(tiny_model, how, caplog):
    task = make_task(4)
    first = generate(tiny_model, task, progress=False)
    entry = entry_dir("generations", first.meta["cache_key"])
    verify_entry(entry)  # published with checksums
    size = (entry / "generations.parquet").stat().st_size
    _damage(entry, how)
    if how == "garbage_parquet":
        assert (entry / "generations.parquet").stat().st_size == size
    task.graded.clear()
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        again = generate(tiny_model, task, progress=False)
    warned = [r.getMessage() for r in caplog.records if r.name == "knowlens.cache"]
    assert len(warned) == 1 and "\n" not in warned[0] and "damaged entry" in warned[0]
    assert again.meta["cache_hit"] is False and len(task.graded) == 4  # recomputed
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame(), check_exact=True)
    assert len(list((cache_root() / ".damaged").iterdir())) == 1
    verify_entry(entry)  # the new entry is intact ...
    assert generate(tiny_model, task, progress=False).meta["cache_hit"] is True  # ... and used


@pytest.mark.parametrize("how", ["truncate_parquet", "truncate_json", "garbage_parquet", "delete"])
def test_generation_set_load_of_a_bad_folder_is_a_clean_data_error(tiny_model, tmp_path, how):
    gs = generate(tiny_model, make_task(3), cache=False, progress=False)
    gs.save(tmp_path / "g")
    _damage(tmp_path / "g", "delete_parquet" if how == "delete" else how)
    with pytest.raises(DataError) as e:
        GenerationSet.load(tmp_path / "g")
    msg = one_line(e)
    assert str(tmp_path / "g") in msg and "generate again" in msg
    with pytest.raises(DataError):
        GenerationSet.load(tmp_path / "nothing-here")


# -- concurrency -------------------------------------------------------------------------------
def test_two_identical_concurrent_runs_compute_once(tiny_model, monkeypatch):
    task_a, task_b = make_task(), make_task()
    calls = count_batches(monkeypatch, delay=0.15)
    results: dict[str, GenerationSet] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(name, task):
        try:
            start.wait()
            results[name] = generate(tiny_model, task, batch_size=2, progress=False)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n, t)) for n, t in (("a", task_a), ("b", task_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(calls) == 4  # 7 rows, batch 2: one computation, not two
    assert sorted(r.meta["cache_hit"] for r in results.values()) == [False, True]
    pd.testing.assert_frame_equal(
        results["a"].to_frame(), results["b"].to_frame(), check_exact=True
    )


# -- resume ------------------------------------------------------------------------------------
def _uninterrupted(tiny_model, tmp_path, monkeypatch) -> tuple[pd.DataFrame, bytes]:
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "other-cache"))
    ref = generate(tiny_model, make_task(), batch_size=2, progress=False)
    data = (entry_dir("generations", ref.meta["cache_key"]) / "generations.parquet").read_bytes()
    monkeypatch.setenv("KNOWLENS_CACHE", str(tmp_path / "kl-cache"))
    return ref.to_frame(), data


def test_a_killed_run_resumes_from_finished_batches(tiny_model, tmp_path, monkeypatch):
    ref_frame, ref_bytes = _uninterrupted(tiny_model, tmp_path, monkeypatch)
    calls = count_batches(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model, make_task(), batch_size=2, progress=False)
    assert len(calls) == 3
    partial = [p for p in (cache_root() / "generations").iterdir()]
    assert [p.name[:9] for p in partial] == [".partial-"]  # no entry, two batch records
    assert sorted(p.name for p in partial[0].iterdir()) == ["00000.json", "00001.json"]

    calls = count_batches(monkeypatch)
    gens = generate(tiny_model, make_task(), batch_size=2, progress=False)
    assert len(calls) == 2 and gens.meta["batches_reused"] == 2  # only batches 2 and 3 ran
    pd.testing.assert_frame_equal(gens.to_frame(), ref_frame, check_exact=True)
    entry = entry_dir("generations", gens.meta["cache_key"])
    assert (entry / "generations.parquet").read_bytes() == ref_bytes  # byte-identical
    assert not partial[0].exists()  # the records go once the entry is published


def test_records_of_another_plan_or_damaged_are_discarded(tiny_model, tmp_path, monkeypatch):
    ref_frame, _ = _uninterrupted(tiny_model, tmp_path, monkeypatch)
    count_batches(monkeypatch, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model, make_task(), batch_size=2, progress=False)
    (partial,) = (cache_root() / "generations").iterdir()
    # batch 0's record replaced by batch 1's (another plan: other ids); batch 2's cut short
    shutil.copy(partial / "00001.json", partial / "00000.json")
    rec = (partial / "00002.json").read_text()
    (partial / "00002.json").write_text(rec[: len(rec) // 2])
    calls = count_batches(monkeypatch)
    gens = generate(tiny_model, make_task(), batch_size=2, progress=False)
    assert len(calls) == 3 and gens.meta["batches_reused"] == 1  # only batch 1 was reusable
    pd.testing.assert_frame_equal(gens.to_frame(), ref_frame, check_exact=True)
    # a record with a forged row but the old digest is caught too
    count_batches(monkeypatch, fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_model, make_task(), batch_size=3, progress=False)
    (partial,) = [p for p in (cache_root() / "generations").iterdir() if p.name[0] == "."]
    rec = json.loads((partial / "00000.json").read_text())
    rec["rows"][0]["token_logprobs"][0] += 1.0
    (partial / "00000.json").write_text(json.dumps(rec))
    calls = count_batches(monkeypatch)
    gens3 = generate(tiny_model, make_task(), batch_size=3, progress=False)
    assert len(calls) == 3 and gens3.meta["batches_reused"] == 0
    fresh = generate(tiny_model, make_task(), batch_size=3, cache=False, progress=False)
    pd.testing.assert_frame_equal(gens3.to_frame(), fresh.to_frame(), check_exact=True)


# -- context length and max_new_tokens ---------------------------------------------------------
def test_prompt_beyond_the_context_fails_before_any_forward(tiny_model, monkeypatch):
    calls = count_batches(monkeypatch)
    long_q = "The quick brown fox jumps over the lazy dog. " * 120  # > 1024 tokens
    task = make_task(3)
    task.examples[1] = Example(id="long-one", question=long_q, answers=("e",))
    with pytest.raises(KnowlensError) as e:
        generate(tiny_model, task, progress=False)
    msg = one_line(e)
    n_prompt = len(tiny_model.tokenizer(tiny_model.format_prompt(long_q))["input_ids"])
    assert n_prompt > 1024
    assert "'long-one'" in msg and f"{n_prompt}-token prompt" in msg and "1024-token" in msg
    assert "max_new_tokens=6" in msg and "shorter prompt" in msg and "longer context" in msg
    assert calls == []  # checked before the first forward pass
    # a prompt that fits alone but not with the answer budget names the budget that would fit
    fits = "The quick brown fox jumps over the lazy dog. " * 40
    n_fit = len(tiny_model.tokenizer(tiny_model.format_prompt(fits))["input_ids"])
    assert n_fit < 1024
    with pytest.raises(KnowlensError) as e:
        generate_texts(tiny_model, [fits], max_new_tokens=1024 - n_fit + 1, progress=False)
    assert f"max_new_tokens <= {1024 - n_fit}" in one_line(e)
    ok = generate_texts(
        tiny_model, [fits], max_new_tokens=1024 - n_fit, cache=False, progress=False
    )
    assert len(ok) == 1 and len(calls) == 1
    # the Ray path's stage checks too, before any worker starts
    from knowlens.executors._stages import GenerationStage

    settings = generation.GenerationSettings(max_new_tokens=6, task="faults")
    with pytest.raises(KnowlensError, match="long-one"):
        meta = {"numerics": generation.compute_numerics(tiny_model.device)}
        GenerationStage(tiny_model, task.examples, task.prompt, task.grade, settings, "k", meta, 16)


def test_context_limit_sources():
    def handle(cfg, tok_max):
        return SimpleNamespace(
            model=SimpleNamespace(config=cfg), tokenizer=SimpleNamespace(model_max_length=tok_max)
        )

    assert context_limit(handle(SimpleNamespace(max_position_embeddings=8192), 10**30)) == (
        8192,
        "config max_position_embeddings",
    )
    nested = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=32768))
    assert context_limit(handle(nested, 10**30))[0] == 32768  # Gemma-3 style config
    assert context_limit(handle(SimpleNamespace(), 2048)) == (2048, "tokenizer model_max_length")
    assert context_limit(handle(SimpleNamespace(), int(1e30))) is None  # HF's "unknown"


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_bad_max_new_tokens_is_an_error_not_the_default(tiny_model, bad):
    with pytest.raises(KnowlensError) as e:
        generate(tiny_model, make_task(2), max_new_tokens=bad, progress=False)
    assert "max_new_tokens must be a positive integer" in one_line(e) and repr(bad) in str(e.value)
    with pytest.raises(KnowlensError):
        generate_texts(tiny_model, ["Hi"], max_new_tokens=bad, progress=False)


def test_task_default_and_numpy_ints(tiny_model):
    import numpy as np

    gens = generate(tiny_model, make_task(2), cache=False, progress=False)
    assert gens.meta["settings"]["max_new_tokens"] == 6  # the task's own value
    gens = generate(
        tiny_model, make_task(2), max_new_tokens=np.int64(3), cache=False, progress=False
    )
    assert gens.meta["settings"]["max_new_tokens"] == 3
    broken = make_task(2)
    broken.max_new_tokens = 0
    with pytest.raises(KnowlensError, match="task 'faults' max_new_tokens"):
        generate(tiny_model, broken, progress=False)


def test_cli_max_new_tokens_zero_exits_2(tiny_model_dir, monkeypatch, capsys):
    from knowlens.cli import main

    args = [
        "generate",
        "--model",
        str(tiny_model_dir),
        "--task",
        "capitals",
        "--limit",
        "2",
        "--device",
        "cpu",
        "--max-new-tokens",
        "0",
    ]
    monkeypatch.setattr(sys, "argv", ["knowlens", *args])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert e.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    # the CLI's own option check or the library's, never a silent default
    assert "max-new-tokens" in lines[0] or "max_new_tokens must be a positive" in lines[0]
