"""Which MLflow store the code writes to: the default one, the user's, never the repository's
by accident. Each test here failed before the store was decided from its URI alone."""

from __future__ import annotations

import importlib.util
import os

import mlflow
from mlflow.tracking import MlflowClient

from conftest import ROOT, tiny_config
from metabolism import tracking


def _fresh_process_state(monkeypatch, mlruns):
    """What a new process sees: no MLFLOW_TRACKING_URI, no URI set in mlflow, our mlruns/."""
    monkeypatch.setattr(tracking, "MLRUNS_DIR", mlruns)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_compare_reads_the_default_store_and_leaves_no_stray_database(tmp_path, monkeypatch):
    mlruns, cwd = tmp_path / "mlruns", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    _fresh_process_state(monkeypatch, mlruns)
    exp_id = tracking.setup_experiment("cmp")
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    for node, slot in ((1, 0), (2, 1)):
        run = client.create_run(exp_id, tags={"study": "s", "node_id": str(node),
                                              "slot": str(slot), "node_status": "converged"})
        client.log_metric(run.info.run_id, "avg_slope_ratio", 1.0 + node / 100, step=8)
        client.set_terminated(run.info.run_id)
    _fresh_process_state(monkeypatch, mlruns)  # compare.py starts as a new process would

    rc = _load_script("compare").main(["--study", "s", "--experiment", "cmp",
                                       "--out", str(tmp_path / "cmp.png")])
    assert rc == 0
    assert (tmp_path / "cmp.png").is_file()
    assert not (cwd / "mlflow.db").exists(), "compare.py opened MLflow's default store"
    assert (mlruns / "mlflow.db").is_file()


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")} if folder.exists() else {}


def test_tracked_run_under_a_user_store_leaves_the_repository_untouched(
        tmp_path, monkeypatch, mlflow_uri, tiny_phase1):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: that must not be read as 'no
    artifact location needed', or MLflow puts the artifacts in ./mlruns of the repository."""
    from metabolism.experiment import run_phase2

    _, data_root, _, _ = tiny_phase1
    monkeypatch.chdir(ROOT)
    before = _snapshot(ROOT / "mlruns")
    stray_before = (ROOT / "mlflow.db").exists()
    cfg = tiny_config(**{"tracking.experiment": "untouched"})
    res = run_phase2(cfg, runs_root=tmp_path / "runs", data_root=data_root, progress=False,
                     quiet=True)
    assert _snapshot(ROOT / "mlruns") == before, "the run wrote into the repository's mlruns/"
    assert (ROOT / "mlflow.db").exists() == stray_before
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(res.mlflow_run_id)
    assert run.info.artifact_uri.startswith((tmp_path / "artifacts").as_uri())


def test_default_store_keeps_artifacts_beside_its_database(tmp_path, monkeypatch):
    _fresh_process_state(monkeypatch, tmp_path / "mlruns")
    exp_id = tracking.setup_experiment("beside")
    exp = tracking.client().get_experiment(exp_id)
    assert exp.artifact_location == (tmp_path / "mlruns" / "artifacts" / "beside").as_uri()
    assert os.environ["MLFLOW_TRACKING_URI"].endswith(str(tmp_path / "mlruns" / "mlflow.db"))
    assert tracking.local_artifact_root("http://server:5000") is None
