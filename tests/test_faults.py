"""Real faults: processes killed with SIGTERM and kill -9 (a Phase 2 run, a study worker, a
study driver). What must remain: the MLflow runs ended (KILLED, never RUNNING forever), the
loss curve up to the kill, the study table with every cell that ended, and a rerun that
runs only the missing cells."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, copy_data_root
from mlflow.tracking import MlflowClient

from metabolism import tracking

pytestmark = pytest.mark.slow

# tiny regime as CLI overrides: the same simulation / model / Phase 1 keys as tiny_phase1
TINY = {"regime": "test", "simulation.n_metabolites": 20, "simulation.n_reactions": 40,
        "simulation.n_frames": 300, "model.hidden_dim_sub": 16, "model.hidden_dim_node": 16,
        "phase1.n_steps": 20, "phase1.n_restarts": 1, "phase1.restart_trial_steps": 5,
        "phase1.batch_size": 32}


def _overrides(d: dict) -> list[str]:
    return [a for k, v in d.items() for a in ("-o", f"{k}={v}")]


def _env(uri: str) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}


def _wait_for(cond, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(uri: str, experiment: str = "phase2_homeostasis"):
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _start_long_run(tmp_path: Path, tiny_phase1) -> tuple[subprocess.Popen, str]:
    _, data_root, _, _ = tiny_phase1
    data = copy_data_root(data_root, tmp_path / "data")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, str(ROOT / "experiments" / "phase2.py"), "--config", "slot0",
           "--data-root", str(data), "--runs-root", str(tmp_path / "runs"), "--no-progress",
           *_overrides({**TINY, "slot": "null", "training.homeostasis_time_step": 4,
                        "training.data_augmentation_loop": 100000, "training.batch_size": 2,
                        "training.plot_every": 100000})]
    proc = subprocess.Popen(cmd, env=_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, uri


def _loss_points(uri: str, run_id: str) -> int:
    return len(MlflowClient(tracking_uri=uri).get_metric_history(run_id, "phase2_train_loss"))


def _running_with_losses(uri: str, at_least: int):
    runs = [r for r in _runs(uri) if r.info.status == "RUNNING"]
    return runs and _loss_points(uri, runs[0].info.run_id) >= at_least and runs[0]


def _sigterm_once_training(proc: subprocess.Popen, uri: str, points: int):
    """SIGTERM the command once its run has `points` loss points; (that run, its stderr)."""
    try:
        run = _wait_for(lambda: _running_with_losses(uri, points), 300, f"{points} loss points")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return run, err


def test_sigterm_ends_a_phase2_run_killed_with_its_loss_curve(tmp_path, tiny_phase1):
    proc, uri = _start_long_run(tmp_path, tiny_phase1)
    run, err = _sigterm_once_training(proc, uri, 100)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SIGTERM" in err, err
    ended = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["killed_by"] == "signal SIGTERM"
    assert _loss_points(uri, run.info.run_id) >= 100
    run_dir = next((tmp_path / "runs").glob("*/*"))
    assert (run_dir / "tmp_training" / "loss.png").is_file()  # the plot of what it had


def test_kill_9_leaves_losses_and_the_next_command_marks_the_run_killed(tmp_path,
                                                                       tiny_phase1):
    proc, uri = _start_long_run(tmp_path, tiny_phase1)
    try:
        run = _wait_for(lambda: _running_with_losses(uri, 100), 240, "100 loss points")
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # nobody ended it
    assert _loss_points(uri, run.info.run_id) >= 100  # logged while it trained
    # the next command that uses the store: here a study that is refused after opening it
    # would not do, so open the store as every command does
    res = subprocess.run([sys.executable, "-c",
                          "from metabolism import tracking; "
                          "tracking.setup_experiment('phase2_homeostasis')"],
                         env={**_env(uri), "PYTHONPATH": str(ROOT)}, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert f":{proc.pid}:" in ended.data.tags["reaped"]


def test_reaper_leaves_live_and_foreign_runs_alone(mlflow_uri):
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = tracking.setup_experiment("reap")
    live = client.create_run(exp, tags={tracking.PROCESS_TAG: tracking.process_tag()})
    foreign = client.create_run(exp, tags={tracking.PROCESS_TAG: "other-host:1:1"})
    untagged = client.create_run(exp)
    recycled = client.create_run(exp, tags={tracking.PROCESS_TAG: tracking.process_tag()[:-1]
                                            + "x"})  # our pid, another start time
    assert tracking.reap_orphaned_runs(exp, client) == [recycled.info.run_id]
    for r in (live, foreign, untagged):
        assert client.get_run(r.info.run_id).info.status == "RUNNING"


def test_reaper_counts_a_zombie_as_dead(mlflow_uri):
    """A killed process whose exit status its parent has not collected yet is a zombie: it
    still answers kill(pid, 0), but it is dead and its run is orphaned."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = tracking.setup_experiment("reap")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = client.create_run(exp, tags={tracking.PROCESS_TAG: tracking.process_tag(child.pid)})
        os.kill(child.pid, signal.SIGKILL)
        _wait_for(lambda: tracking.process_is_zombie(child.pid), 10, "the child to be a zombie")
        assert tracking.reap_orphaned_runs(exp, client) == [run.info.run_id]
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------- studies


# updates for a study cell that a test stops mid-training: no cell may finish while the test
# waits for both to train (with 20000, a CI run on 2 cores found a FINISHED row where the
# killed worker's FAILED row belonged: one cell had finished before both were seen training)
LONG_UPDATES = 200_000


def _study_setup(tmp_path: Path, tiny_phase1, updates: int):
    _, data_root, _, _ = tiny_phase1
    data = copy_data_root(data_root, tmp_path / "data")
    regime = tmp_path / "tiny_regime.yaml"
    nested: dict = {}
    for k, v in TINY.items():
        node = nested
        *parts, last = k.split(".")
        for p in parts:
            node = node.setdefault(p, {})
        node[last] = v
    regime.write_text(yaml.safe_dump(nested))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, str(ROOT / "experiments" / "study.py"), "--study", "s",
           "--regime", str(regime), "--data-root", str(data), "--runs-root",
           str(tmp_path / "runs"), "--studies-root", str(tmp_path / "studies"),
           "-o", "slot=null", "-o", "training.homeostasis_time_step=4",
           "-o", f"training.data_augmentation_loop={updates}", "-o", "training.batch_size=2"]
    return cmd, uri


def _two_cells_training(uri: str):
    """Both cells' runs RUNNING with at least 50 loss points each (then those runs)."""
    runs = [r for r in _runs(uri) if r.info.status == "RUNNING" and "cell" in r.data.tags]
    return len(runs) == 2 and all(_loss_points(uri, r.info.run_id) >= 50 for r in runs) and runs


def _rows(tmp_path: Path) -> list[dict]:
    path = tmp_path / "studies" / "s" / "study.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def test_killed_study_worker_fails_its_cell_and_the_study_goes_on(tmp_path, tiny_phase1):
    """kill -9 of one worker of `--workers 2`: its cell is FAILED with the error, every other
    cell FINISHED, the table complete, no run left RUNNING."""
    cmd, uri = _study_setup(tmp_path, tiny_phase1, updates=LONG_UPDATES)
    # seeds 0-1 run long enough to kill one of them mid-training
    proc = subprocess.Popen(cmd + ["--slots", "0", "--seeds", "0", "1", "--workers", "2"],
                            env=_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        runs = _wait_for(lambda: _two_cells_training(uri), 300, "two study cells training")
        victim = runs[0]
        pid = int(victim.data.tags[tracking.PROCESS_TAG].split(":")[1])
        os.kill(pid, signal.SIGKILL)
        # the surviving sibling is rerun from scratch; stop the study once it is running again
        def rerun_started():
            return [r for r in _runs(uri) if r.info.status == "RUNNING" and
                    r.data.tags.get("cell") == runs[1].data.tags["cell"] and
                    r.info.run_id != runs[1].info.run_id]
        _wait_for(rerun_started, 300, "the sibling cell running again")
        rows = _rows(tmp_path)
        assert [r["status"] for r in rows] == ["FAILED"], rows
        assert "worker process died" in rows[0]["error"]
        assert f"slot0/default/seed{rows[0]['seed']}" == victim.data.tags["cell"]
        # now interrupt the driver: the table stays, the sibling's run ends KILLED
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    client = MlflowClient(tracking_uri=uri)
    statuses = {r.info.run_id: r.info.status for r in _runs(uri)}
    assert "RUNNING" not in statuses.values(), statuses
    assert statuses[victim.info.run_id] == "KILLED"
    assert "reaped" in client.get_run(victim.info.run_id).data.tags
    md = (tmp_path / "studies" / "s" / "study.md").read_text()
    assert "worker process died" in md and "Incomplete: 1 of 2 runs missing" in md


class _JustKilledWorker:
    """A pool worker as the driver sees it the moment the pool breaks: its pipe has closed,
    but it has no exit status yet and its pid is still a live process (ours)."""

    def __init__(self, exit_code: int, after: float):
        self.pid, self._code, self._at = os.getpid(), exit_code, time.monotonic() + after

    @property
    def exitcode(self):
        return self._code if time.monotonic() >= self._at else None


def test_a_worker_killed_a_moment_before_it_reads_dead_is_still_named():
    """The race behind a study whose killed cell was rerun instead of failed: the driver asked
    for the dead worker while it still read as alive, named none, and reran both cells."""
    from metabolism.study import _await_victims, _died_by_themselves

    killed = _JustKilledWorker(-signal.SIGKILL, after=0.5)
    assert _died_by_themselves({killed.pid: killed}) == set()  # the moment itself
    assert _await_victims({killed.pid: killed}, timeout=10) == {killed.pid}
    # a worker the pool stopped (SIGTERM) is no victim: the wait ends at its timeout
    stopped = _JustKilledWorker(-signal.SIGTERM, after=0.0)
    start = time.monotonic()
    assert _await_victims({stopped.pid: stopped}, timeout=0.3) == set()
    assert time.monotonic() - start < 5


def test_kill_9_of_a_study_driver_stops_its_workers_and_ends_their_runs_killed(tmp_path,
                                                                             tiny_phase1):
    """Without the driver nobody records the cells' rows: the workers must not run on."""
    cmd, uri = _study_setup(tmp_path, tiny_phase1, updates=LONG_UPDATES)
    proc = subprocess.Popen(cmd + ["--slots", "0", "--seeds", "0", "1", "--workers", "2"],
                            env=_env(uri), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        runs = _wait_for(lambda: _two_cells_training(uri), 300, "two study cells training")
        proc.kill()
        proc.wait(timeout=30)
        pids = [int(r.data.tags[tracking.PROCESS_TAG].split(":")[1]) for r in runs]

        def all_ended():
            return all(_runs_by_id(uri)[r.info.run_id] != "RUNNING" for r in runs)
        _wait_for(all_ended, 120, "the orphaned workers' runs to end")
    finally:
        proc.kill()
    statuses = _runs_by_id(uri)
    assert all(statuses[r.info.run_id] == "KILLED" for r in runs), statuses
    client = MlflowClient(tracking_uri=uri)
    for r in runs:  # ended by the worker itself (not reaped later): with its loss curve
        assert client.get_run(r.info.run_id).data.tags.get("killed_by") == "signal SIGTERM"
    _wait_for(lambda: all(tracking.process_is_dead(p) for p in pids), 60, "the workers to exit")


def test_sigterm_stops_a_single_process_study(tmp_path, tiny_phase1):
    """--workers 1 runs cells in the driver itself: SIGTERM ends the run in progress KILLED
    and stops the study there (it must not go on to the next cell)."""
    cmd, uri = _study_setup(tmp_path, tiny_phase1, updates=LONG_UPDATES)
    proc = subprocess.Popen(cmd + ["--slots", "0", "--seeds", "0", "1", "--workers", "1"],
                            env=_env(uri), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run, err = _sigterm_once_training(proc, uri, 50)
    assert proc.returncode == 130 and "Traceback" not in err, err
    cells = [r for r in _runs(uri) if "cell" in r.data.tags]
    assert [(r.info.run_id, r.info.status) for r in cells] == [(run.info.run_id, "KILLED")]
    assert [r["status"] for r in _rows(tmp_path)] == ["KILLED"]


def _runs_by_id(uri: str) -> dict[str, str]:
    return {r.info.run_id: r.info.status for r in _runs(uri)}


def test_interrupted_study_keeps_its_table_and_a_rerun_runs_only_missing_cells(tmp_path,
                                                                              tiny_phase1):
    cmd, uri = _study_setup(tmp_path, tiny_phase1, updates=6)
    first = subprocess.run(cmd + ["--slots", "0", "--seeds", "0", "1"], env=_env(uri),
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert [r["status"] for r in _rows(tmp_path)] == ["FINISHED", "FINISHED"]
    ids_before = {r["run_dir"] for r in _rows(tmp_path)}
    # the same study with one more seed: only seed 2 runs
    again = subprocess.run(cmd + ["--slots", "0", "--seeds", "0", "1", "2"], env=_env(uri),
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 done before, 1 to run" in again.stdout
    rows = _rows(tmp_path)
    assert sorted(int(r["seed"]) for r in rows) == [0, 1, 2]
    assert ids_before <= {r["run_dir"] for r in rows}
    cells = [r for r in _runs(uri) if "cell" in r.data.tags]
    assert len(cells) == 3  # seeds 0 and 1 were not run twice
    # a changed override is refused rather than mixed into the same table
    changed = subprocess.run(cmd + ["--slots", "0", "--seeds", "0", "-o", "training.seed=3"],
                             env=_env(uri), cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert changed.returncode == 2 and "was started with" in changed.stderr, changed.stderr
