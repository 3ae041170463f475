"""The MLflow store helpers: several runs may open one fresh local store at the same moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_sigterm_dropped_inside_a_gc_callback_still_ends_the_run_killed(mlflow_uri, capfd):
    """Python drops (and prints) an exception raised in __del__ or a weakref callback; a
    SIGTERM that lands there must still end the run KILLED at the next check, unprinted."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    from metabolism import tracking

    class SignalledWhileCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here, inside __del__

    with pytest.raises(tracking.RunKilled):
        with tracking.tracked_run("e", "r") as run:
            SignalledWhileCollected()  # collected at once: the RunKilled is dropped
            tracking.check_killed()
            pytest.fail("the dropped SIGTERM was not raised again")
    assert MlflowClient(mlflow_uri).get_run(run.info.run_id).info.status == "KILLED"
    assert "Traceback" not in capfd.readouterr().err
    tracking.check_killed()  # the request ended with the run
