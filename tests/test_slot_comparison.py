"""experiments/compare_slots.py: the slot-vs-slot table and figure, read back from MLflow."""

from __future__ import annotations

import runpy
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT

RUNS = [  # slot, seed, avg, r0, r1, acc, clusters, verdict, targets_met, study
    (0, 0, 1.02, 1.04, 0.99, 0.98, 2, "converged", "true", "main"),
    (0, 1, 1.09, 1.22, 0.97, 0.96, 2, "converged", "false", "main"),
    (3, 0, 1.01, 1.01, 1.00, 0.98, 2, "converged", "true", "main"),
    (3, 0, 0.50, 0.40, 0.60, 0.50, 1, "partial", "false", "other"),
]


@pytest.fixture
def store(mlflow_uri):
    from metabolism import tracking

    exp_id = tracking.setup_experiment("cmp_slots")
    client = MlflowClient(tracking_uri=mlflow_uri)
    for slot, seed, avg, r0, r1, acc, n, verdict, met, study in RUNS:
        run = client.create_run(exp_id, run_name=f"study-{study}-slot{slot}-s{seed}", tags={
            "slot": str(slot), "verdict": verdict, "targets_met": met, "study": study})
        rid = run.info.run_id
        client.log_param(rid, "training.seed", str(seed))
        for k, v in {"avg_slope_ratio": avg, "MLP_node_slope_ratio_0": r0,
                     "MLP_node_slope_ratio_1": r1, "embedding_cluster_acc": acc,
                     "embedding_n_clusters": n}.items():
            client.log_metric(rid, k, v, step=10)
        client.set_terminated(rid)
    quick = client.create_run(exp_id, tags={"slot": "None"})  # a run without a slot
    client.log_metric(quick.info.run_id, "avg_slope_ratio", 7.0)
    client.set_terminated(quick.info.run_id)
    return mlflow_uri


def test_table_has_one_row_per_slot_with_counts_and_ranges(store):
    from metabolism.slot_comparison import collect, slot_table

    runs = collect("cmp_slots", "tags.study = 'main'")
    assert [(r.slot, r.seed) for r in runs] == [(0, "0"), (0, "1"), (3, "0")]
    table = slot_table(runs).splitlines()
    assert len(table) == 4  # header, rule, slot 0, slot 3
    assert table[2].startswith("| 0 (4) | 2 | 2/2 | 1/2 | 1.055 (1.020–1.090) | 1.130 (1.040–1.220)")
    assert table[3].startswith("| 3 (64) | 1 | 1/1 | 1/1 | 1.010 |")


def test_latest_keeps_the_newest_run_per_slot_and_seed(store):
    from metabolism.slot_comparison import collect

    runs = collect("cmp_slots", latest=True)
    assert [(r.slot, r.seed, r.verdict) for r in runs] == [
        (0, "0", "converged"), (0, "1", "converged"), (3, "0", "partial")]


def test_script_prints_the_table_and_writes_the_figure(store, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp.png"
    monkeypatch.setattr(sys, "argv", ["compare_slots.py", "--experiment", "cmp_slots",
                                      "--study", "main", "--out", str(out)])
    runpy.run_path(str(ROOT / "experiments" / "compare_slots.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "| 0 (4) | 2 |" in printed and "`study-main-slot3-s0`" in printed
    assert out.is_file() and out.stat().st_size > 10_000


def test_no_matching_run_is_a_one_line_error(store, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_slots.py", "--experiment", "cmp_slots",
                                      "--study", "nope"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "experiments" / "compare_slots.py"), run_name="__main__")
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "tags.study = 'nope'" in err
