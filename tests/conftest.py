"""Shared fixtures: import the worktree's code (not the editable install), tiny regimes."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny tensors: OpenMP threads only add spin-wait overhead (100x on a busy 2-core machine).
torch.set_num_threads(1)

from metabolism.cli import QUICK_OVERRIDES  # noqa: E402
from metabolism.config import Config, config_from_dict, set_dotted  # noqa: E402

# Every strategy of the seed switched on at once (sizes kept small).
ALL_STRATEGIES = {
    "residual_supervision": {"enabled": True, "weight": 1.0, "loss": "huber"},
    "amplification": {"enabled": True, "factor": 10.0, "anneal_start": 0.2, "anneal_end": 0.6},
    "contrastive": {"enabled": True, "weight": 0.1, "n_grid": 8, "temperature": 0.05,
                    "grid_quantiles": [0.25, 0.75], "center_curves": True,
                    "reassign_at": [0.5], "reassign_neighbours": 3, "reassign_frames": 32,
                    "neighbours_from": "both", "init_from_data": 0.5, "reassign_from": "both"},
    "curriculum": {"enabled": True, "final_fraction": 0.5, "switch_at": 0.5,
                   "late_step_weighting": True},
    "lr_schedule": {"enabled": True, "warmup_fraction": 0.2},
    "multiscale": {"enabled": True, "fractions": [0.5, 1.0]},
    "gradient_accumulation": {"enabled": True, "steps": 2},
    "gradient_isolation": {"enabled": True},
}


def tiny_dict(**dotted) -> dict:
    """The QUICK_OVERRIDES regime, shrunk further for tests, as a nested config dict."""
    d: dict = {}
    for k, v in QUICK_OVERRIDES.items():
        set_dotted(d, k, v)
    extra = {
        "regime": "test",
        "phase1.n_steps": 20,
        "phase1.n_restarts": 1,
        "phase1.restart_trial_steps": 5,
        "phase1.batch_size": 32,
        "training.homeostasis_time_step": 8,
        "training.data_augmentation_loop": 6,
        "training.plot_every": 0,  # evaluate every loop // 4 updates, not once as --quick does
        "tracking.experiment": "phase2_homeostasis_tests",
    }
    extra.update(dotted)
    for k, v in extra.items():
        set_dotted(d, k, copy.deepcopy(v))
    return d


def tiny_config(**dotted) -> Config:
    return config_from_dict(tiny_dict(**dotted), source="<tests>")


@pytest.fixture(scope="session")
def tiny_phase1(tmp_path_factory):
    """(cfg, data_root, checkpoint path, info) for the tiny regime, built once per session."""
    from metabolism.experiment import ensure_phase1

    cfg = tiny_config()
    data_root = tmp_path_factory.mktemp("data")
    ckpt, info = ensure_phase1(cfg, data_root, progress=False, quiet=True)
    return cfg, data_root, ckpt, info


@pytest.fixture(autouse=True, scope="session")
def _private_mlflow_store(tmp_path_factory):
    """No test writes to the user's store (mlruns/ or their MLFLOW_TRACKING_URI): a test that
    sets no store of its own gets this session's."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    yield
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A private MLflow sqlite store for one test."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def run_in_triton_interpreter(test_file: Path) -> None:
    """Run test_file's tests in a subprocess with TRITON_INTERPRET=1 and assert they passed.

    triton.jit reads the variable when it decorates the kernels, so it must be set before
    triton is imported; a subprocess keeps it away from the rest of the suite.
    """
    import os
    import subprocess

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(test_file), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=-ra"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"interpreted kernel tests failed:\n{tail}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, tail


def copy_data_root(src: Path, dst: Path) -> Path:
    """Copy a built data root (dataset + Phase 1 checkpoint) so a test may alter it."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def pytest_report_header(config):
    from seeds import describe

    return describe()
