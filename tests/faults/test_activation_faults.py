"""Faults in the activation cache never give wrong numbers: a killed run resumes only from
shards of the same plan whose bytes still hash as recorded, concurrent runs share one
computation, and a damaged entry is quarantined and recomputed."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from knowlens._cache import cache_root, verify_entry
from knowlens.activations import extract_texts
from knowlens.activations._store import ShardStore

TEXTS = [
    "What is the capital of France?",
    "Hi",
    "Q: Which country is Lyon in? A: France. Q: 12 plus 30?",
    "Sure, here is how to bake bread.",
    "The quick brown fox jumps over the lazy dog",
    "Is the proposed answer correct?",
    "Berlin",
    "I cannot help with that request.",
]
BASE = dict(layers="all", tokens="all", batch_size=2, shard_size=2, progress=False)
ENTRY_FILES = {"values.npy", "mask.npy", "positions.npy", "manifest.json", "checksums.json"}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread, as the child processes below: the CPU thread count is part of the
    cache key, so parent and children must share it to share entries and partial folders."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def same(a, b) -> None:
    """Byte-for-byte equal arrays (values, mask, positions) and dtype."""
    assert a.values.dtype == b.values.dtype and a.values.shape == b.values.shape
    assert np.asarray(a.values).tobytes() == np.asarray(b.values).tobytes()
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.positions, b.positions)


def partials() -> list[Path]:
    return sorted((cache_root() / "activations").glob(".partial-*"))


def killed_after_first_record(model, monkeypatch, **kw) -> Path:
    """Run an extraction that dies right after its first shard record is on disk."""
    original = ShardStore.mark_done

    def record_then_die(self, mm, shard, info):
        original(self, mm, shard, info)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ShardStore, "mark_done", record_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract_texts(model, TEXTS, **kw)
    monkeypatch.setattr(ShardStore, "mark_done", original)
    (partial,) = partials()
    assert [p.name for p in (partial / "shards").iterdir()] == ["00000.json"]
    return partial


@pytest.mark.parametrize(
    "change",
    [{}, {"batch_size": 3}, {"shard_size": 4}, {"batch_size": 1, "shard_size": 3}],
    ids=["same-plan", "batch-size", "shard-size", "both"],
)
def test_resume_only_from_shards_of_the_same_plan(tiny_model, monkeypatch, change):
    kw = {**BASE, **change}
    reference = extract_texts(tiny_model, TEXTS, cache=False, **kw)  # uninterrupted
    partial = killed_after_first_record(tiny_model, monkeypatch, **BASE)
    (partial / "stale-from-old-plan").write_text("x")  # must not survive a plan change
    resumed = extract_texts(tiny_model, TEXTS, **kw)
    same(resumed, reference)
    assert resumed.meta["shards"] == len(TEXTS) // kw["shard_size"] + (
        len(TEXTS) % kw["shard_size"] > 0
    )
    assert resumed.meta["shards_reused"] == (1 if not change else 0)
    entry = Path(resumed.meta["path"])
    expected = ENTRY_FILES | ({"stale-from-old-plan"} if not change else set())
    assert {p.name for p in entry.iterdir()} == expected
    # Batch size and shard rows are part of the key (padding moves values by ~1e-7): another
    # batching is another entry, and the killed run's partial stays resumable for its own.
    assert partials() == ([partial] if change else [])
    assert (partial / "stale-from-old-plan").exists() == bool(change)
    verify_entry(entry)  # published with checksums


def test_resume_rejects_records_whose_rows_or_bytes_differ(tiny_model, monkeypatch):
    reference = extract_texts(tiny_model, TEXTS, cache=False, **BASE)
    # Rows of the recorded shard overwritten after the record was written: recomputed.
    partial = killed_after_first_record(tiny_model, monkeypatch, **BASE)
    mm = np.load(partial / "values.npy", mmap_mode="r+")
    mm[0, 1, 0, :4] = 7.0
    mm.flush()
    del mm
    killed_after_first_record_again = extract_texts(tiny_model, TEXTS, **BASE)
    same(killed_after_first_record_again, reference)
    assert killed_after_first_record_again.meta["shards_reused"] == 0

    # A record naming other rows than the plan's shard is not trusted either.
    import shutil

    shutil.rmtree(killed_after_first_record_again.meta["path"])
    partial = killed_after_first_record(tiny_model, monkeypatch, **BASE)
    rec_path = partial / "shards" / "00000.json"
    rec = json.loads(rec_path.read_text())
    rec["rows"] = [0, 1]
    rec_path.write_text(json.dumps(rec))
    again = extract_texts(tiny_model, TEXTS, **BASE)
    same(again, reference)
    assert again.meta["shards_reused"] == 0


_KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from knowlens.activations import extract_texts
from knowlens.activations._store import ShardStore
from knowlens.models import load_model

original = ShardStore.mark_done

def record_then_sigkill(self, mm, shard, info):
    original(self, mm, shard, info)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no cleanup of any kind runs

ShardStore.mark_done = record_then_sigkill
m = load_model({model_dir!r}, device="cpu", name="tiny-llama")
extract_texts(m, {texts!r}, layers="all", tokens="all", batch_size=8, shard_size=3,
              progress=False)
"""


def test_sigkill_then_rerun_with_other_batch_size(tiny_model, tiny_model_dir):
    """The issue's reproduction: batch size 8, kill -9 after the first shard record, rerun
    with batch size 3: no reused shard of the old plan, no zero rows."""
    code = _KILLED_RUN.format(model_dir=str(tiny_model_dir), texts=TEXTS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    (partial,) = partials()
    assert [p.name for p in (partial / "shards").iterdir()] == ["00000.json"]
    kw = dict(layers="all", tokens="all", batch_size=3, shard_size=3, progress=False)
    reference = extract_texts(tiny_model, TEXTS, cache=False, **kw)
    resumed = extract_texts(tiny_model, TEXTS, **kw)
    same(resumed, reference)
    assert resumed.meta["shards_reused"] == 0 and resumed.meta["shards"] == 3
    assert (np.abs(np.asarray(resumed.values)).reshape(len(TEXTS), -1).max(1) > 0).all()
    assert partials() == [partial]  # the batch-8 run's partial: another key, still resumable


_CONCURRENT_RUN = """
import hashlib, json, sys, time
from pathlib import Path
import numpy as np
import torch
torch.set_num_threads(1)
from knowlens.activations import extract_texts
from knowlens.models import load_model

m = load_model({model_dir!r}, device="cpu", name="tiny-llama")
sync = Path({sync!r})
(sync / f"ready-{{sys.argv[1]}}").touch()
while not (sync / "go").exists():  # start all runs at the same moment
    time.sleep(0.01)
a = extract_texts(m, {texts!r}, layers="all", tokens="all", batch_size=2, shard_size=1,
                  progress=False)
digest = hashlib.sha256(
    np.asarray(a.values).tobytes() + a.mask.tobytes() + a.positions.tobytes()
).hexdigest()
print(json.dumps({{"hit": a.meta["cache_hit"], "key": a.meta["cache_key"], "digest": digest}}))
"""


def _digest(acts) -> str:
    import hashlib

    blob = np.asarray(acts.values).tobytes() + acts.mask.tobytes() + acts.positions.tobytes()
    return hashlib.sha256(blob).hexdigest()


def test_concurrent_identical_runs_all_succeed_with_identical_bytes(
    tiny_model, tiny_model_dir, tmp_path
):
    """Two other processes and this one extract the same entry into one cache at once."""
    kw = dict(layers="all", tokens="all", batch_size=2, shard_size=1, progress=False)
    want = _digest(extract_texts(tiny_model, TEXTS, cache=False, **kw))
    sync = tmp_path / "sync"
    sync.mkdir()
    code = _CONCURRENT_RUN.format(model_dir=str(tiny_model_dir), sync=str(sync), texts=TEXTS)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.time() + 180
    while len(list(sync.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    (sync / "go").touch()
    mine = extract_texts(tiny_model, TEXTS, **kw)
    results = [
        {"hit": mine.meta["cache_hit"], "key": mine.meta["cache_key"], "digest": _digest(mine)}
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=180)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["digest"] for r in results] == [want] * 3
    assert len({r["key"] for r in results}) == 1
    assert sorted(r["hit"] for r in results) == [False, True, True]  # computed exactly once
    entry = cache_root() / "activations" / results[0]["key"]
    verify_entry(entry)
    assert {p.name for p in entry.iterdir()} == ENTRY_FILES and partials() == []


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _garbage_values(path: Path) -> None:
    """Same size, valid .npy header, other bytes: only a checksum can tell."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(128)
        f.write(np.random.default_rng(0).bytes(size - 128))
    assert path.stat().st_size == size


def _edit_manifest(path: Path) -> None:
    """Still valid JSON, same size, one value changed."""
    text = path.read_text()
    edited = text.replace('"tokens": "all"', '"tokens": "alt"', 1)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)


DAMAGE = {
    "values-truncated": ("values.npy", _truncate),
    "values-garbage": ("values.npy", _garbage_values),
    "mask-truncated": ("mask.npy", _truncate),
    "manifest-truncated": ("manifest.json", _truncate),
    "manifest-edited": ("manifest.json", _edit_manifest),
    "positions-deleted": ("positions.npy", lambda p: p.unlink()),
    "checksums-deleted": ("checksums.json", lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_entry_is_quarantined_and_recomputed(tiny_model, caplog, damage):
    name, hurt = DAMAGE[damage]
    kw = dict(layers=[0, 2], tokens="all", batch_size=4, progress=False)
    first = extract_texts(tiny_model, TEXTS, **kw)
    original = (np.array(first.values), first.mask.copy(), first.positions.copy())
    entry, key = Path(first.meta["path"]), first.meta["cache_key"]
    del first
    hurt(entry / name)
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        again = extract_texts(tiny_model, TEXTS, **kw)
    warnings = [r for r in caplog.records if r.name == "knowlens.cache"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert "\n" not in msg and f"damaged entry activations/{key}" in msg and "recomputing" in msg
    (moved,) = (cache_root() / ".damaged").iterdir()
    assert moved.name.startswith(f"activations-{key}-")
    assert again.meta["cache_hit"] is False and again.meta["path"] == str(entry)
    assert np.asarray(again.values).tobytes() == original[0].tobytes()
    assert np.array_equal(again.mask, original[1]) and np.array_equal(again.positions, original[2])
    verify_entry(entry)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        hit = extract_texts(tiny_model, TEXTS, **kw)
    assert hit.meta["cache_hit"] is True and not caplog.records
