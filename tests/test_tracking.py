"""The MLflow store helpers: several runs may open one fresh local store at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OPEN_STORE = "from metabolism import tracking; print(tracking.setup_experiment('race'))"


def test_parallel_runs_can_open_a_fresh_sqlite_store(tmp_path):
    """Without the lock, MLflow's schema migration races and all but one process fail."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'fresh.db'}")
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err.strip().splitlines()[-1]
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1  # one experiment, seen by all
