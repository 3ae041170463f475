"""Per-type metrics for any number of types, in every place that shows them.

One helper (metrics.per_type_metric_keys) names them; analysis.log, the study tables
(markdown and CSV), the exploration comparison and the exploration log must all list every
type of a three-type run, and type 2 must not be dropped anywhere.
"""

from __future__ import annotations

import csv

import numpy as np

from metabolism.experiment import read_analysis_log, write_analysis_log
from metabolism.explore.compare import IterationRow, format_table
from metabolism.explore.logs import metrics_line, visual_line
from metabolism.explore.tree import Node
from metabolism.metrics import (PER_TYPE_METRICS, SweepResult, n_types_in, per_type_metric_keys,
                                slope_metrics)
from metabolism.network import GroundTruth
from metabolism.study import write_report

N_TYPES = 3


def three_type_metrics() -> dict[str, float]:
    """slope_metrics of a sweep whose slopes are 0.5x, 1x and 2x the true laws."""
    types = np.repeat(np.arange(N_TYPES), 4)
    lam, cb = np.array([0.001, 0.002, 0.0015]), np.array([4.0, 6.0, 5.0])
    factor = np.array([0.5, 1.0, 2.0])[types]
    truth = GroundTruth(log10_k=np.zeros(3), types=types, lambda_per_type=lam,
                        baseline_per_type=cb)
    sweep = SweepResult(slopes=-lam[types] * factor, offsets=lam[types] * cb[types],
                        low=np.zeros(12), high=np.ones(12))
    m = slope_metrics(sweep, truth)
    m.update(embedding_cluster_acc=0.9, embedding_n_clusters=3.0, rate_constants_R2=0.98,
             phase2_loss=1e-3)
    return m


def test_helper_names_every_type():
    keys = per_type_metric_keys(N_TYPES)
    assert len(keys) == len(PER_TYPE_METRICS) * N_TYPES
    assert "MLP_node_slope_ratio_2" in keys and "MLP_node_gt_offset_2" in keys
    assert per_type_metric_keys(4, ("MLP_node_slope_ratio",))[-1] == "MLP_node_slope_ratio_3"
    m = three_type_metrics()
    assert set(keys) <= set(m) and n_types_in(m) == N_TYPES
    assert [m[f"MLP_node_slope_ratio_{t}"] for t in range(3)] == [0.5, 1.0, 2.0]
    assert n_types_in({"avg_slope_ratio": 1.0}) == 0


def test_analysis_log_has_every_type(tmp_path):
    m = three_type_metrics()
    write_analysis_log(tmp_path / "analysis.log", m, {"run": "x"})
    back = read_analysis_log(tmp_path / "analysis.log")
    for k in per_type_metric_keys(N_TYPES):
        assert back[k] == float(f"{m[k]:.6g}"), k


def test_study_tables_have_every_type(tmp_path):
    rows = [{"slot": 0, "variant": "default", "seed": s, "status": "FINISHED", "time_step": 4,
             **three_type_metrics()} for s in (0, 1)]
    rows.append({"slot": 0, "variant": "default", "seed": 2, "status": "FAILED",
                 "error": "boom"})
    md, csv_path = write_report(rows, tmp_path, "t", [])
    text = md.read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("| slot | time_step")][0]
    assert "MLP_node_slope_ratio_2" in header
    assert "MLP_node_slope_ratio_2_mean" in text
    summary_row = [ln for ln in text.splitlines() if ln.startswith("| 0 | default")][0]
    assert "| 2 |" in summary_row  # type 2's mean slope ratio, 2.0 in both finished runs
    with csv_path.open() as f:
        got = list(csv.DictReader(f))
    assert float(got[0]["MLP_node_slope_ratio_2"]) == 2.0
    assert got[2]["MLP_node_slope_ratio_2"] == ""  # the failed run keeps its row


def test_explore_compare_has_every_type():
    row = IterationRow(node_id=1, slot=0, block=0, parent="root", mutation="", run_status="x",
                       node_status="converged", metrics=three_type_metrics())
    table = format_table([row])
    head, _, line = table.splitlines()[:3]
    assert "slope_ratio_2" in head
    assert line.split()[6:10] == ["1.167", "0.5", "1", "2"]  # avg, then types 0, 1, 2


def test_exploration_log_has_every_type():
    node = Node(id=1, parent="root", slot=0, block=0, round=0, config={},
                metrics=three_type_metrics())
    line = metrics_line(node)
    assert "slope_ratio_2=2" in line and "offset_ratio_2=1" in line
    assert line.index("slope_ratio_1") < line.index("slope_ratio_2")
    assert "-0.003" in visual_line(node)  # type 2's learned slope: 2 x -0.0015
