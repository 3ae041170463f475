"""Integrity records for cached artefacts (datasets, Phase 1 checkpoints and their info).

Why: a cache is reused by every later run of its regime, so one flipped bit or truncated
write silently spoils all of them (a corrupt checkpoint once gave R2 0.17 under a tag that
still said 0.98). Each cached file gets a sidecar ``<file>.record.json`` written right after
it: the SHA-256 and size of its bytes and the name, shape and dtype of every array in it.
Reading a cache checks the file against its record and the record against the shapes the
config expects; any difference is a `CacheError` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from metabolism.files import write_text_atomically

RECORD_SUFFIX = ".record.json"


class CacheError(ValueError):
    """A cached file is missing, truncated, corrupt or of the wrong shape; one line naming it."""


class NoRecord(CacheError):
    """The file exists but has no record: written before records existed."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def record_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + RECORD_SUFFIX)


def describe_arrays(arrays: dict[str, Any]) -> dict[str, dict]:
    """{name: {"shape": [...], "dtype": "..."}} for numpy arrays or torch tensors."""
    return {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()}


def write_record(path: Path, contents: dict[str, dict], **extra: Any) -> dict:
    """Record the file as it is now on disk; call right after writing it."""
    path = Path(path)
    record = {"file": path.name, "sha256": sha256_of(path), "size": path.stat().st_size,
              "contents": contents, **extra}
    write_text_atomically(record_path(path), json.dumps(record, indent=1, sort_keys=True))
    return record


def read_record(path: Path) -> dict:
    rec_path = record_path(path)
    if not rec_path.is_file():
        raise NoRecord(f"{path}: has no integrity record ({rec_path.name})")
    try:
        record = json.loads(rec_path.read_text())
        if not isinstance(record, dict) or not {"sha256", "size", "contents"} <= set(record):
            raise ValueError("keys missing")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"{rec_path}: integrity record unreadable ({exc})") from None
    return record


def verify(path: Path, expected: dict[str, tuple[int | None, ...] | None] | None = None) -> dict:
    """Check path against its record, and the recorded shapes against `expected`
    ({name: shape, None in a shape = any size, None = any shape}); return the record."""
    path = Path(path)
    if not path.is_file():
        raise CacheError(f"{path}: missing")
    record = read_record(path)
    size = path.stat().st_size
    if size != record["size"]:
        raise CacheError(f"{path}: {size} bytes, its record says {record['size']} (truncated "
                         "or overwritten)")
    digest = sha256_of(path)
    if digest != record["sha256"]:
        raise CacheError(f"{path}: content hash {digest[:12]} differs from its record "
                         f"{record['sha256'][:12]} (corrupt)")
    check_shapes(path, record["contents"], expected or {})
    return record


def check_shapes(path: Path, contents: dict[str, dict],
                 expected: dict[str, tuple[int | None, ...] | None]) -> None:
    for name, shape in expected.items():
        if name not in contents:
            raise CacheError(f"{path}: holds no '{name}'")
        if shape is None:
            continue
        got = contents[name]["shape"]
        if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
            want = [("any" if w is None else w) for w in shape]
            raise CacheError(f"{path}: '{name}' has shape {got}, the config expects {want}")


@contextlib.contextmanager
def cache_lock(folder: Path) -> Iterator[None]:
    """One process at a time checks or builds the caches of a folder: parallel slot runs
    would otherwise each rebuild the same file, or read a file before its record."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
