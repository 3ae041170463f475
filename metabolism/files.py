"""Atomic file replacement: the one way this package writes caches, checkpoints and logs.

Why: parallel slot runs build the same dataset or Phase 1 checkpoint at once, and readers
(MLflow, the exploration loop, a resumed run) must never see a half-written file. Each write
goes to a uniquely named temp file in the target's folder, is flushed to disk, then renamed.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def replace_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(binary file) on a temp file beside path, then os.replace it onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """replace_atomically for UTF-8 text."""
    replace_atomically(path, lambda fh: fh.write(text.encode("utf-8")))
