"""Cached datasets and Phase 1 checkpoints are verified on every read: a corrupt, truncated or
crafted file is named in one line and rebuilt (or refused with --no-rebuild), never used."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, copy_data_root

from metabolism.data import dataset_dir, ensure_dataset, load_training_data
from metabolism.experiment import ensure_phase1, load_phase1_model, phase1_checkpoint_path
from metabolism.integrity import RECORD_SUFFIX, CacheError, sha256_of


@pytest.fixture
def root(tiny_phase1, tmp_path):
    cfg, data_root, _, info = tiny_phase1
    return cfg, copy_data_root(data_root, tmp_path / "data"), info


def _nudge_checkpoint(path: Path) -> None:
    """Flip bits of one log10 k in place (the value stays finite), record untouched."""
    k = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["log10_k"]
    blob = path.read_bytes()
    old = k.numpy().tobytes()
    assert blob.count(old) == 1
    changed = k.clone()
    changed[3] += 0.5
    path.write_bytes(blob.replace(old, changed.numpy().tobytes()))


def test_records_are_written_with_every_cached_file(root):
    cfg, data_root, _ = root
    folder = dataset_dir(cfg, data_root)
    ckpt = phase1_checkpoint_path(cfg, data_root)
    for f in (folder / "training.npz", folder / "ground_truth.npz", ckpt,
              ckpt.with_suffix(".json")):
        record = json.loads(Path(str(f) + RECORD_SUFFIX).read_text())
        assert record["sha256"] == sha256_of(f) and record["size"] == f.stat().st_size
    npz = json.loads(Path(str(folder / "training.npz") + RECORD_SUFFIX).read_text())
    assert npz["contents"]["concentrations"] == {"shape": [300, 20], "dtype": "float64"}


def test_changed_checkpoint_is_named_and_rebuilt(root, capsys):
    cfg, data_root, info = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    good = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["log10_k"]
    _nudge_checkpoint(ckpt)
    path, new_info = ensure_phase1(cfg, data_root, progress=False, quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "corrupt" in err[0], err
    rebuilt = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["log10_k"]
    assert torch.equal(rebuilt, good)  # Phase 1 is deterministic: the same checkpoint again
    assert new_info["rate_constants_R2"] == info["rate_constants_R2"]


def test_changed_checkpoint_is_refused_without_rebuild(root):
    cfg, data_root, _ = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    _nudge_checkpoint(ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(CacheError, match=f"^{ckpt}: content hash .* --no-rebuild"):
        ensure_phase1(cfg, data_root, progress=False, quiet=True, rebuild=False)
    assert ckpt.read_bytes() == before


def test_reading_a_changed_checkpoint_directly_fails(root):
    cfg, data_root, _ = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    _nudge_checkpoint(ckpt)
    data = load_training_data(dataset_dir(cfg, data_root))
    with pytest.raises(CacheError, match="corrupt"):
        load_phase1_model(ckpt, data, cfg)


@pytest.mark.parametrize("name", ["training.npz", "ground_truth.npz", "phase1"])
def test_truncated_file_is_named_and_rebuilt(root, capsys, name):
    cfg, data_root, info = root
    folder = dataset_dir(cfg, data_root)
    path = phase1_checkpoint_path(cfg, data_root) if name == "phase1" else folder / name
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    ckpt, new_info = ensure_phase1(cfg, data_root, progress=False, quiet=True)
    err = capsys.readouterr().err
    assert f"{path}: " in err and "truncated" in err, err
    assert new_info["rate_constants_R2"] == info["rate_constants_R2"]
    assert path.stat().st_size == len(blob)
    load_phase1_model(ckpt, load_training_data(folder), cfg)  # verifies again


def test_caches_written_before_records_are_checked_and_adopted(root, capsys):
    """Files with no record: the dataset is adopted if a fresh simulation is identical, the
    checkpoint if it reproduces the R2 of its info; nothing is rebuilt."""
    cfg, data_root, info = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    for rec in data_root.rglob(f"*{RECORD_SUFFIX}"):
        rec.unlink()
    before = ckpt.read_bytes()
    _, new_info = ensure_phase1(cfg, data_root, progress=False, quiet=True)
    err = capsys.readouterr().err
    assert "identical to a fresh simulation, recorded" in err
    assert "adopted and recorded" in err
    assert ckpt.read_bytes() == before and new_info == info
    assert Path(str(ckpt) + RECORD_SUFFIX).is_file()


def test_unrecorded_changed_checkpoint_is_rebuilt(root, capsys):
    cfg, data_root, info = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    for rec in data_root.rglob(f"*{RECORD_SUFFIX}"):
        rec.unlink()
    _nudge_checkpoint(ckpt)
    _, new_info = ensure_phase1(cfg, data_root, progress=False, quiet=True)
    err = capsys.readouterr().err
    assert f"{ckpt}: gives rate_constants_R2" in err and "rebuilding" in err, err
    assert new_info["rate_constants_R2"] == info["rate_constants_R2"]


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_never_runs_code(root, tmp_path, capsys):
    cfg, data_root, _ = root
    ckpt = phase1_checkpoint_path(cfg, data_root)
    marker = tmp_path / "pwned"
    with open(ckpt, "wb") as fh:
        pickle.dump({"state_dict": _Payload(str(marker))}, fh)
    for rec in data_root.rglob(f"*{RECORD_SUFFIX}"):
        rec.unlink()
    ensure_phase1(cfg, data_root, progress=False, quiet=True)
    assert not marker.exists()
    assert f"{ckpt}: unreadable" in capsys.readouterr().err


def test_dataset_of_other_shape_is_refused(root):
    """A record that holds another regime's arrays (e.g. a folder copied by hand)."""
    cfg, data_root, _ = root
    folder = dataset_dir(cfg, data_root)
    other = dataset_dir(cfg, data_root).parent / "other"
    from conftest import tiny_config
    big = tiny_config(**{"simulation.n_frames": 400})
    ensure_dataset(big, other)
    src = dataset_dir(big, other)
    for name in ("training.npz", "training.npz" + RECORD_SUFFIX):
        (folder / name).write_bytes((src / name).read_bytes())
    with pytest.raises(CacheError, match=r"'concentrations' has shape \[400, 20\], the config "
                                         r"expects \[300, 20\]"):
        ensure_dataset(cfg, data_root, rebuild=False)


def test_phase2_cli_truncated_dataset_with_no_rebuild_is_one_line(root):
    cfg, data_root, _ = root
    training = dataset_dir(cfg, data_root) / "training.npz"
    training.write_bytes(training.read_bytes()[:100])
    res = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "phase2.py"), "--quick", "--no-rebuild",
         "--data-root", str(data_root), "--runs-root", str(data_root.parent / "runs"),
         "-o", "phase1.n_steps=20", "-o", "phase1.n_restarts=1",
         "-o", "phase1.restart_trial_steps=5", "-o", "phase1.batch_size=32",
         "-o", "regime=test", "-o", "training.homeostasis_time_step=8",
         "-o", "training.data_augmentation_loop=6", "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=data_root.parent,
        env={**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{data_root.parent}/m.db"})
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(training) in lines[0] and "--no-rebuild" in lines[0], lines
    assert training.stat().st_size == 100  # left as it was, for the user to inspect
