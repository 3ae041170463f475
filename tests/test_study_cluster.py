"""Studies on several machines: runs logged over HTTP to an `mlflow server` (SQL store +
artifact root), and cells dispatched as Ray tasks (local Ray cluster; skipped without ray).

The server test starts `mlflow server` on 127.0.0.1 itself (free port, SQLite backend store and
artifact destination in tmp, bounded start-up wait, always stopped) and runs a one-cell study
against it through experiments/study.py, as a user on a cluster node would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import ROOT, tiny_dict
from metabolism.config import flatten

pytestmark = pytest.mark.slow

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False

SERVER_START_TIMEOUT_S = 180  # a shared 2-core machine can take a minute to import mlflow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """http://127.0.0.1:<port> of a private mlflow server, stopped after the test."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after {SERVER_START_TIMEOUT_S} s")
            time.sleep(1)
        yield url, tmp_path / "server-artifacts"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def tiny_study_args(tmp_path: Path, data_root: Path, name: str) -> list[str]:
    """experiments/study.py arguments for one tiny cell (slot 0, seed 0) on the test regime."""
    overrides = flatten(tiny_dict(**{"training.data_augmentation_loop": 2,
                                     "tracking.experiment": "cluster"}))
    overrides["slot"] = None  # the test regime's time step, not slot 0's
    args = [str(ROOT / "experiments" / "study.py"), "--study", name, "--slots", "0",
            "--seeds", "0", "--data-root", str(data_root), "--runs-root", str(tmp_path / "runs"),
            "--studies-root", str(tmp_path / "studies"), "--device", "cpu"]
    for k, v in overrides.items():
        text = yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
        args += ["-o", f"{k}={text}"]
    return args


def check_study_runs(client: MlflowClient, name: str) -> tuple:
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "study"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == name
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    child = children[0]
    assert child.data.tags["study"] == name and child.data.tags["device"] == "cpu"
    assert "avg_slope_ratio" in child.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "study.md", "study.csv", "study.png"}
    assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {
        "analysis.log", "config.yaml", "phase2_checkpoint.pt", "tmp_training"}
    assert parent.data.metrics["runs_finished"] == 1
    return parent, child


def test_study_logs_to_an_mlflow_server_over_http(tiny_phase1, tmp_path, mlflow_server):
    url, artifact_root = mlflow_server
    _, data_root, _, _ = tiny_phase1
    env = {**os.environ, "MLFLOW_TRACKING_URI": url, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, *tiny_study_args(tmp_path, data_root, "served")],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check_study_runs(MlflowClient(tracking_uri=url), "served")
    # the artifacts went through the server into its artifact root, not next to the client
    stored = {p.name for p in artifact_root.rglob("*") if p.is_file()}
    assert {"study.md", "analysis.log", "phase2_checkpoint.pt"} <= stored
    assert not (tmp_path / "mlruns").exists()
    assert "FINISHED" in (tmp_path / "studies" / "served" / "study.md").read_text()


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (optional extra: metabolism[ray])")
def test_study_cells_run_as_ray_tasks(tiny_phase1, tmp_path):
    _, data_root, _, _ = tiny_phase1
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    args = tiny_study_args(tmp_path, data_root, "on_ray") + ["--backend", "ray",
                                                              "--address", "local"]
    out = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    check_study_runs(MlflowClient(tracking_uri=uri), "on_ray")


def test_ray_backend_without_ray_is_a_one_line_error(tmp_path):
    if HAVE_RAY:
        pytest.skip("ray is installed")
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "study.py"), "--study", "x",
                          "--slots", "0", "--backend", "ray", "--address", "local",
                          "--data-root", str(tmp_path)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "config error: --backend ray: ray is not installed (pip install 'metabolism[ray]')"]
