"""Resumable, memory-mapped, checksummed activation store.

Layout while a run is in progress, and once it is complete::

    cache_root()/activations/.partial-<key>/plan.json        the plan these files belong to
                                           /values.npy       preallocated .npy memmap
                                           /shards/00003.json  one record per finished shard
    cache_root()/activations/<key>/values.npy, mask.npy, positions.npy, manifest.json,
                                   checksums.json

A shard (a contiguous block of examples) writes its rows into ``values.npy`` in place, then
writes its record (with the rows' hash) atomically. There is no msync: the kernel writes the
rows back in the background, and rows a crash kept from the disk fail their hash on resume
(or the entry's checksums on load) and are recomputed. Rows of the partial memmap are
trusted only through a record that names the current plan (key, shape, dtype, shard
boundaries, spec including ``batch_size``), the same row range, and the xxh3 of exactly those
row bytes; anything else is recomputed. A partial folder of another plan is reset. When every
shard has a record the mask, positions, manifest and ``checksums.json`` are written and the
directory is renamed to its final name in one step (no merge copy). Complete entries are
verified against their checksums on every load (hashes are memoised per process); a damaged
entry is quarantined and recomputed. Callers hold ``entry_lock("activations", key)``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from knowlens._cache import (
    CHECKSUMS,
    DamagedEntryError,
    atomic_write_bytes,
    atomic_write_json,
    entry_dir,
    quarantine,
    verify_entry,
    write_checksums,
)

FILES = ("values.npy", "mask.npy", "positions.npy", "manifest.json")


def _save_npy(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def rows_digest(rows: np.ndarray) -> str:
    """xxh3-128 of the bytes of a contiguous block of rows (a memmap slice is not copied)."""
    # .data (a memoryview, no copy): ndarray is a Buffer to mypy only with Python >= 3.12 stubs
    return xxhash.xxh3_128(np.ascontiguousarray(rows).data).hexdigest()


class ShardStore:
    """One activation cache entry, filled shard by shard for one plan (``plan_hash``)."""

    def __init__(self, key: str, shape: tuple[int, ...], dtype: Any, plan_hash: str = "") -> None:
        self.key = key
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.plan_hash = plan_hash
        self.final = entry_dir("activations", key)
        self.work = self.final.parent / f".partial-{key}"

    # -- complete entries -----------------------------------------------------------------
    def cached(self) -> tuple[np.memmap, np.ndarray, np.ndarray, dict[str, Any]] | None:
        """The verified entry (see ``load``), or None if absent or damaged (then moved aside
        to ``cache_root()/.damaged/`` with a one-line warning)."""
        if not self.final.exists():
            return None
        try:
            return self._load_verified()
        except DamagedEntryError as e:
            quarantine(self.final, str(e))
            return None

    def complete(self) -> bool:
        """Whether an intact entry exists (a damaged one is quarantined)."""
        return self.cached() is not None

    def load(
        self, *, deep: bool = True
    ) -> tuple[np.memmap, np.ndarray, np.ndarray, dict[str, Any]]:
        """Read-only memmap of values + mask, positions, manifest, all checked against the
        entry's checksums (``deep=False``: sizes only, for an entry this process just wrote);
        a damaged entry is quarantined and ``DamagedEntryError`` raised."""
        try:
            return self._load_verified(deep)
        except DamagedEntryError as e:
            quarantine(self.final, str(e))
            raise

    def _load_verified(
        self, deep: bool = True
    ) -> tuple[np.memmap, np.ndarray, np.ndarray, dict[str, Any]]:
        verify_entry(self.final, deep=deep)
        listed = json.loads((self.final / CHECKSUMS).read_text())
        missing = [f for f in FILES if f not in listed]
        if missing:
            raise DamagedEntryError(f"{missing[0]} is not in {CHECKSUMS}")
        try:
            values = np.load(self.final / "values.npy", mmap_mode="r")
            mask = np.load(self.final / "mask.npy")
            positions = np.load(self.final / "positions.npy")
            manifest = json.loads((self.final / "manifest.json").read_text())
        except (OSError, ValueError, EOFError, UnicodeDecodeError) as e:
            raise DamagedEntryError(f"unreadable file ({type(e).__name__}: {e})") from None
        want = (self.shape, self.dtype)
        if (values.shape, values.dtype) != want or manifest.get("cache_key") != self.key:
            raise DamagedEntryError(
                f"holds {values.dtype}{list(values.shape)} for key {manifest.get('cache_key')}, "
                f"expected {self.dtype}{list(self.shape)} for {self.key}"
            )
        rows_pos = (self.shape[0], self.shape[2])
        if mask.shape != rows_pos or positions.shape != rows_pos:
            raise DamagedEntryError(f"mask/positions shape {mask.shape} != {rows_pos}")
        return values, mask, positions, manifest

    # -- a run in progress ----------------------------------------------------------------
    def discard(self) -> None:
        """Remove the partial folder (e.g. its plan is abandoned)."""
        shutil.rmtree(self.work, ignore_errors=True)

    def open(self) -> tuple[np.memmap, dict[int, dict[str, Any]]]:
        """The writable values memmap and the records of this plan found in the partial
        folder (not yet checked against the data: see ``trusted``). A partial folder of another
        plan, or with an unreadable values file, is reset."""
        path = self.work / "values.npy"
        mm = None
        try:
            same_plan = json.loads((self.work / "plan.json").read_text()) == {
                "plan": self.plan_hash
            }
            if same_plan:
                mm = np.load(path, mmap_mode="r+")
                if mm.shape != self.shape or mm.dtype != self.dtype:
                    mm = None
        except (OSError, ValueError, UnicodeDecodeError):
            mm = None
        if mm is None:  # nothing here can be trusted for this plan: start over
            self.discard()
            (self.work / "shards").mkdir(parents=True)
            atomic_write_json(self.work / "plan.json", {"plan": self.plan_hash})
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=self.shape)
            return mm, {}
        (self.work / "shards").mkdir(parents=True, exist_ok=True)
        records: dict[int, dict[str, Any]] = {}
        for p in sorted((self.work / "shards").glob("[0-9]*.json")):
            try:  # each record is read exactly once per run
                rec = json.loads(p.read_text())
                shard = int(p.stem)
            except (OSError, ValueError, UnicodeDecodeError):
                p.unlink(missing_ok=True)
                continue
            if isinstance(rec, dict) and rec.get("plan") == self.plan_hash:
                records[shard] = rec
        return mm, records

    def trusted(
        self,
        mm: np.memmap,
        records: dict[int, dict[str, Any]],
        shards: list[tuple[int, int]],
    ) -> dict[int, dict[str, Any]]:
        """The records whose row range is the plan's and whose rows hash as recorded; the
        others are deleted (their shards are recomputed)."""
        ok = {}
        for i, rec in records.items():
            good = (
                0 <= i < len(shards)
                and rec.get("rows") == list(shards[i])
                and rec.get("xxh3_128") == rows_digest(mm[shards[i][0] : shards[i][1]])
            )
            if good:
                ok[i] = rec
            else:
                self._record(i).unlink(missing_ok=True)
        return ok

    def _record(self, shard: int) -> Path:
        return self.work / "shards" / f"{shard:05d}.json"

    def mark_done(self, mm: np.memmap, shard: int, info: dict[str, Any]) -> dict[str, Any]:
        """Record the shard's rows (``info["rows"]``) with their hash (checked on resume)."""
        s, e = info["rows"]
        rec = {**info, "rows": [int(s), int(e)], "plan": self.plan_hash}
        rec["xxh3_128"] = rows_digest(mm[s:e])
        atomic_write_json(self._record(shard), rec)
        return rec

    def finish(self, mask: np.ndarray, positions: np.ndarray, manifest: dict[str, Any]) -> None:
        """Write the small files and checksums, then publish the entry with one rename."""
        _save_npy(self.work / "mask.npy", mask)
        _save_npy(self.work / "positions.npy", positions)
        atomic_write_json(self.work / "manifest.json", manifest)
        shutil.rmtree(self.work / "shards", ignore_errors=True)
        (self.work / "plan.json").unlink(missing_ok=True)
        write_checksums(self.work)  # hashes values.npy once; loads in this process reuse it
        try:
            os.replace(self.work, self.final)
        except OSError:
            if self.cached() is None:
                raise
            shutil.rmtree(self.work, ignore_errors=True)  # a concurrent run finished first
