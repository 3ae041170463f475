"""Atomic writes: a failed write leaves the previous file and no temp file behind."""

from __future__ import annotations

import numpy as np
import pytest

from metabolism.files import replace_atomically, write_text_atomically


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.npz"
    replace_atomically(path, lambda fh: np.savez(fh, x=np.arange(3)))
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    write_text_atomically(tmp_path / "sub" / "b.txt", "hello")
    assert (tmp_path / "sub" / "b.txt").read_text() == "hello"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["a.npz", "b.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "info.json"
    write_text_atomically(path, "old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_atomically(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["info.json"]
