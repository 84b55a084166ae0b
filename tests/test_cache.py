"""The cache's integrity layer: checksums, verification, quarantine, locks, stale temporaries."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import time

import pytest

from knowlens import _cache
from knowlens._cache import (
    CHECKSUMS,
    DamagedEntryError,
    atomic_dir,
    cache_root,
    clean_stale_tmp,
    entry_dir,
    entry_lock,
    verified_entry,
    verify_entry,
)
from knowlens.errors import KnowlensError


def _make(kind: str = "t", key: str = "k") -> os.PathLike:
    with atomic_dir(entry_dir(kind, key)) as tmp:
        (tmp / "values.bin").write_bytes(bytes(range(256)) * 64)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "meta.json").write_text('{"a": 1}')
    return entry_dir(kind, key)


def test_atomic_dir_records_every_file():
    d = _make()
    sums = json.loads((d / CHECKSUMS).read_text())
    assert set(sums) == {"values.bin", "sub/meta.json"}
    assert sums["values.bin"]["size"] == 256 * 64
    verify_entry(d)  # intact
    assert verified_entry("t", "k") == d


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete", "no_checksums", "bad_json"])
def test_damaged_entry_is_reported_and_moved_aside(damage, caplog):
    d = _make()
    target = d / "values.bin"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "garbage":
        st = target.stat()
        with open(target, "r+b") as f:  # same size, other bytes, mtime restored
            f.write(b"\xff" * 16)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    elif damage == "delete":
        (d / "sub" / "meta.json").unlink()
    elif damage == "no_checksums":
        (d / CHECKSUMS).unlink()
    else:
        (d / CHECKSUMS).write_text("{not json")
    with pytest.raises(DamagedEntryError):
        verify_entry(d)
    with caplog.at_level(logging.WARNING, logger="knowlens.cache"):
        assert verified_entry("t", "k") is None
    msgs = [r.getMessage() for r in caplog.records if r.name == "knowlens.cache"]
    assert len(msgs) == 1 and "\n" not in msgs[0] and "damaged entry t/k" in msgs[0]
    assert not d.exists()
    moved = list((cache_root() / ".damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("t-k-")
    _make()  # recomputed entry verifies again
    assert verified_entry("t", "k") is not None


def test_digest_memo_sees_rewrites():
    d = _make()
    verify_entry(d)
    time.sleep(0.05)  # past the file system's timestamp granularity
    st = (d / "values.bin").stat()
    with open(d / "values.bin", "r+b") as f:
        f.write(b"\xaa\xbb")
    os.utime(d / "values.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DamagedEntryError, match="checksum"):
        verify_entry(d)


def test_shallow_verification_checks_sizes_only():
    d = _make()
    (d / "values.bin").write_bytes(b"\x00" * (256 * 64))
    verify_entry(d, deep=False)
    with pytest.raises(DamagedEntryError):
        verify_entry(d, deep=True)


def _locked_append(root: str, path: str, tag: str) -> None:
    os.environ["KNOWLENS_CACHE"] = root
    with entry_lock("t", "k"):
        with open(path, "a") as f:
            f.write(f"{tag}-start\n")
        time.sleep(0.2)
        with open(path, "a") as f:
            f.write(f"{tag}-end\n")


def test_entry_lock_serialises_processes(tmp_path):
    log = tmp_path / "log.txt"
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_locked_append, args=(str(cache_root()), str(log), str(i)))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = log.read_text().split()
    assert len(lines) == 6
    for i in range(0, 6, 2):  # never interleaved
        assert lines[i].split("-")[0] == lines[i + 1].split("-")[0]
        assert lines[i].endswith("start") and lines[i + 1].endswith("end")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    parent = cache_root() / "models"
    parent.mkdir(exist_ok=True)
    live = parent / _cache._tmp_name("live")
    live.mkdir()
    dead_name = _cache._tmp_name("dead").split("~")
    dead_name[1] = "999999999"  # no such pid
    dead = parent / "~".join(dead_name)
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"0" * 1000)
    assert clean_stale_tmp(parent) == 1
    assert live.exists() and not dead.exists()


def test_unwritable_cache_is_one_line_error(tmp_path, monkeypatch):
    f = tmp_path / "a-file"
    f.write_text("x")
    monkeypatch.setenv("KNOWLENS_CACHE", str(f / "cache"))
    with pytest.raises(KnowlensError, match="KNOWLENS_CACHE") as e:
        cache_root()
    assert "\n" not in str(e.value)
