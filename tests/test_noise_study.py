"""The noise study assembler: study tables at several noise levels -> summary and figure."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from conftest import ROOT
from metabolism.noise_study import all_targets_met, read_rows, summary

FIELDS = ["slot", "seed", "status", "observation_noise", "observe_every", "avg_slope_ratio",
          "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1", "embedding_cluster_acc",
          "embedding_n_clusters", "error"]


def _row(slot, seed, noise, avg, r0, r1, acc, n=2, every=1, status="FINISHED"):
    return dict(zip(FIELDS, [slot, seed, status, noise, every, avg, r0, r1, acc, n, ""]))


def _write(path, rows):
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def studies(tmp_path):
    _write(tmp_path / "a" / "study.csv", [
        _row(0, 0, 0.001, 1.0, 1.1, 0.9, 0.97), _row(0, 1, 0.001, 1.0, 1.25, 0.9, 0.97),
        _row(1, 0, 0.001, 1.0, 1.0, 1.0, 0.96, n=3)])
    _write(tmp_path / "b" / "study.csv", [
        _row(0, 0, 0.01, 0.5, 0.4, 0.6, 0.6), _row(0, 1, 0.01, 0.9, 0.9, 0.9, 0.99),
        _row(0, 2, 0.01, 0.0, 0.0, 0.0, 0.0, status="FAILED"),
        _row(0, 0, 0.001, 1.0, 1.0, 1.0, 0.99, every=10)])
    return tmp_path


def test_all_targets_needs_every_ratio_two_groups_and_accuracy():
    assert all_targets_met(_row(0, 0, 0, 1.0, 1.1, 0.9, 0.95) | {"embedding_n_clusters": 2.0})
    assert not all_targets_met(_row(0, 0, 0, 1.0, 1.25, 0.9, 0.97) | {"embedding_n_clusters": 2.0})
    assert not all_targets_met(_row(0, 0, 0, 1.0, 1.0, 1.0, 0.97) | {"embedding_n_clusters": 3.0})
    assert not all_targets_met(_row(0, 0, 0, 1.0, 1.0, 1.0, 0.94) | {"embedding_n_clusters": 2.0})


def test_summary_groups_by_noise_sampling_and_slot(studies):
    rows = read_rows([studies / "a" / "study.csv", studies / "b" / "study.csv"])
    lines = {(ln["noise"], ln["observe_every"], ln["slot"]): ln for ln in summary(rows)}
    assert set(lines) == {(0.001, 1, 0), (0.001, 1, 1), (0.01, 1, 0), (0.001, 10, 0)}
    a = lines[(0.001, 1, 0)]
    assert (a["runs"], a["converged"], a["all_targets"], a["seeds"]) == (2, 2, 1, "0 1")
    assert lines[(0.001, 1, 1)]["all_targets"] == 0  # three groups
    b = lines[(0.01, 1, 0)]
    assert (b["runs"], b["converged"], b["all_targets"]) == (3, 1, 1)  # the failure counts
    assert b["avg_slope_ratio"] == pytest.approx(0.7)  # mean over finished runs only


def test_cli_writes_table_figure_and_mlflow_run(studies, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "noise_study.py"), "--name", "all",
         "--studies", "a", "b", "--studies-root", str(studies)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
             "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = studies / "all" / "noise_study.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    md = (studies / "all" / "noise_study.md").read_text()
    assert "| 0.01 | 1 | 0 | 3 | 0 1 2 | 1 | 1 |" in md
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("phase2_homeostasis")
    (run,) = client.search_runs([exp.experiment_id], "tags.kind = 'noise_study'")
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"noise_study.md", "noise_study.png", "noise_study.csv"} <= names


def test_missing_study_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="study.csv: study table missing"):
        read_rows([tmp_path / "nope" / "study.csv"])
