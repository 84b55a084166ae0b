"""Content-addressed, atomically written, checksummed and locked cache.

Every expensive result (converted model, generations, activations, trained estimators) is
stored under ``cache_root()/<kind>/<key>`` where ``key`` hashes everything the result depends
on. Writes go to a temporary sibling and are renamed into place, so a killed run never leaves
a half-written entry: an entry either exists completely or not at all.

    key = stable_hash({"model": fp, "task": "capitals@1", "code": GENERATION_VERSION})
    with entry_lock("generations", key):             # one writer per entry, across processes
        entry = verified_entry("generations", key)   # None if absent or damaged (moved aside)
        if entry is None:
            with atomic_dir(entry_dir("generations", key)) as tmp:
                (tmp / "table.parquet").write_bytes(...)

``atomic_dir`` records an xxh3-128 checksum and the size of every file it publishes in
``CHECKSUMS`` before the rename; ``verify_entry`` checks them (the hash of a file is computed
once per process and file version, so large arrays and weights are not rehashed on every
read). A damaged entry is reported in one line, moved to ``cache_root()/.damaged/`` and
recomputed by the caller. Temporary folders of dead processes are removed by
``clean_stale_tmp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import xxhash
from filelock import FileLock

__all__ = [
    "CHECKSUMS",
    "DamagedEntryError",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "cache_root",
    "clean_stale_tmp",
    "entry_dir",
    "entry_lock",
    "file_digest",
    "quarantine",
    "sha256_file",
    "stable_hash",
    "verified_entry",
    "verify_entry",
    "write_checksums",
]

CHECKSUMS = "checksums.json"  # {relative path: {"size": bytes, "xxh3_128": hex}}
_log = logging.getLogger("knowlens.cache")


def cache_root() -> Path:
    """The cache directory: ``$KNOWLENS_CACHE`` or ``~/.cache/knowlens``."""
    from knowlens.errors import KnowlensError

    root = Path(os.environ.get("KNOWLENS_CACHE") or Path.home() / ".cache" / "knowlens")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(str(root))
    except OSError as e:
        raise KnowlensError(
            f"The knowlens cache {str(root)!r} is not a writable directory ({type(e).__name__}); "
            "set KNOWLENS_CACHE to a writable folder, e.g. KNOWLENS_CACHE=/tmp/knowlens-cache."
        ) from None
    if str(root) not in _CLEANED:  # once per process: drop temporaries of dead writers
        _CLEANED.add(str(root))
        for d in (root, *(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))):
            clean_stale_tmp(d)
    return root


_CLEANED: set[str] = set()


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def stable_hash(obj: Any, length: int = 20) -> str:
    """SHA-256 of a canonical JSON rendering of ``obj`` (dict key order does not matter)."""
    blob = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Full SHA-256 hex digest of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def entry_dir(kind: str, key: str) -> Path:
    """Path of a cache entry (may not exist yet)."""
    return cache_root() / kind / key


# -- checksums --------------------------------------------------------------------------------
# (device, inode, size, mtime, ctime) -> digest: a file is hashed once per process and version.
# Keyed by inode, not path, so publishing a folder by rename keeps its files' digests; ctime
# changes on any write, even one that restores the mtime.
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def file_digest(path: str | Path, chunk: int = 1 << 24) -> str:
    """xxh3-128 hex digest of a file's bytes (memoised per process while the file is unchanged)."""
    path = Path(path)
    st = path.stat()
    memo = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if memo in _DIGESTS:
        return _DIGESTS[memo]
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _DIGESTS[memo] = digest = h.hexdigest()
    return digest


def write_checksums(directory: str | Path) -> dict[str, dict[str, Any]]:
    """Record size + xxh3-128 of every file under ``directory`` in ``directory/CHECKSUMS``."""
    d = Path(directory)
    sums = {
        p.relative_to(d).as_posix(): {"size": p.stat().st_size, "xxh3_128": file_digest(p)}
        for p in sorted(d.rglob("*"))
        if p.is_file() and p.name != CHECKSUMS
    }
    atomic_write_text(d / CHECKSUMS, json.dumps(sums, indent=1, sort_keys=True))
    return sums


class DamagedEntryError(Exception):
    """A cache entry's files do not match the checksums recorded when it was written."""


def verify_entry(directory: str | Path, *, deep: bool = True) -> None:
    """Raise ``DamagedEntryError`` (one-line reason) unless every recorded file is intact.

    ``deep=False`` checks presence and sizes only (for entries re-read many times a process).
    """
    d = Path(directory)
    try:
        sums = json.loads((d / CHECKSUMS).read_text())
    except FileNotFoundError:
        raise DamagedEntryError(
            f"no {CHECKSUMS} (incomplete, or written before checksums)"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DamagedEntryError(f"unreadable {CHECKSUMS} ({type(e).__name__})") from None
    if not isinstance(sums, dict) or not sums:
        raise DamagedEntryError(f"empty or malformed {CHECKSUMS}")
    for rel, want in sums.items():
        p = d / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise DamagedEntryError(f"{rel} is missing") from None
        if size != want.get("size"):
            raise DamagedEntryError(f"{rel} has {size} bytes, {want.get('size')} were written")
        if deep and file_digest(p) != want.get("xxh3_128"):
            raise DamagedEntryError(f"{rel} does not match its checksum (same size, other bytes)")


def quarantine(directory: str | Path, reason: str) -> Path | None:
    """Move a damaged entry aside to ``cache_root()/.damaged/`` and say so in one line."""
    d = Path(directory)
    target = (
        cache_root()
        / ".damaged"
        / f"{d.parent.name}-{d.name}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    dest: Path | None = target
    try:
        os.replace(d, target)
    except FileNotFoundError:
        return None  # another process moved it first
    except OSError:
        shutil.rmtree(d, ignore_errors=True)
        dest = None
    _log.warning(
        "knowlens cache: damaged entry %s/%s (%s); moved to %s and recomputing.",
        d.parent.name,
        d.name,
        reason,
        dest or "the bin",
    )
    return dest


def verified_entry(kind: str, key: str, *, deep: bool = True) -> Path | None:
    """The entry's path if it exists and is intact; ``None`` if absent or damaged (moved aside)."""
    d = entry_dir(kind, key)
    if not d.exists():
        return None
    try:
        verify_entry(d, deep=deep)
    except DamagedEntryError as e:
        quarantine(d, str(e))
        return None
    return d


@contextlib.contextmanager
def entry_lock(kind: str, key: str, timeout: float = -1) -> Iterator[None]:
    """Inter-process lock for one cache entry: concurrent runs compute it once, then share it."""
    lock_dir = cache_root() / ".locks" / kind
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / f"{key}.lock"), timeout=timeout):
        yield


# -- temporary folders -------------------------------------------------------------------------
def _tmp_name(final_name: str) -> str:
    # Pid and host in the name let clean_stale_tmp tell a dead writer's folder from a live one.
    return f".tmp-{final_name}~{os.getpid()}~{socket.gethostname()}~{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(parent: str | Path, max_age_s: float = 24 * 3600) -> int:
    """Remove ``.tmp-*`` folders / files under ``parent`` left by dead processes on this host
    (or older than ``max_age_s`` when the writer is unknown). Returns how many were removed."""
    parent, host, removed = Path(parent), socket.gethostname(), 0
    if not parent.is_dir():
        return 0
    for p in parent.glob(".tmp-*"):
        parts = p.name.split("~")
        stale = False
        if len(parts) >= 4 and parts[1].isdigit() and parts[2] == host:
            stale = not _pid_alive(int(parts[1]))
        else:
            with contextlib.suppress(OSError):
                stale = time.time() - p.stat().st_mtime > max_age_s
        if stale:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path, *, checksums: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that is renamed to ``final`` only if the block succeeds.

    Before the rename every file's checksum is recorded in ``CHECKSUMS`` (``checksums=False``
    for folders that are not cache entries). If ``final`` appears meanwhile (a concurrent
    writer won), the temporary copy is discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / _tmp_name(final.name)
    tmp.mkdir()
    try:
        yield tmp
        if checksums:
            write_checksums(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_name(path.name) + "~")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_canonical(obj), indent=2, sort_keys=True))
