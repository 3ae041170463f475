"""Real MLflow (a temporary sqlite store): the study is a parent run, iterations tagged children."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from explore_helpers import make_study

ROOT = Path(__file__).resolve().parent.parent
FAILING = "metabolism.explore.runners:failing_slot1_runner"


@pytest.fixture(scope="module")
def tracked_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        study = make_study(tmp, iterations=6, block_size=4, slots=(0, 1), runner=FAILING,
                           track=True, study="ml")
        tree = study.run()
        yield tmp, uri, study, tree
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def test_iterations_are_tagged_child_runs_of_the_study_run(tracked_study):
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp, uri, study, tree = tracked_study
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name("phase2_homeostasis")
    parent = client.get_run(tree.study_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["study"] == "ml"
    assert {a.path for a in client.list_artifacts(tree.study_run_id)} >= {"ml_analysis.md",
                                                                          "tree.json"}
    runs = client.search_runs([exp.experiment_id], "tags.study = 'ml' and tags.node_id != ''")
    by_node = {int(r.data.tags["node_id"]): r for r in runs}
    assert sorted(by_node) == list(range(1, 7)) and len(runs) == 6
    for nid, r in by_node.items():
        n = tree.nodes[nid]
        t = r.data.tags
        assert t["mlflow.parentRunId"] == tree.study_run_id
        assert (t["node_id"], t["parent_id"], t["block"], t["slot"]) == (
            str(nid), str(n.parent), str(n.block), str(n.slot))
        from metabolism.explore.mutation import format_mutation, parse_mutation
        assert t["mutation"] == format_mutation(n.mutation)
        assert parse_mutation(t["mutation"]) == n.mutation
        assert n.mlflow_run_id == r.info.run_id
        if n.slot == 1:  # the failing slot: FAILED with its error
            assert r.info.status == "FAILED" and "NaN" in t["error"]
        else:
            assert r.info.status == "FINISHED"
            assert r.data.metrics["avg_slope_ratio"] == pytest.approx(n.metrics["avg_slope_ratio"])
    history = client.get_metric_history(tree.study_run_id, "reward_slot0")
    assert [m.step for m in history] == [1, 3, 5]


def test_compare_prints_and_plots_the_cross_slot_comparison(tracked_study):
    tmp, uri, study, tree = tracked_study
    out_png = tmp / "cmp.png"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), "--study",
                          "ml", "--out", str(out_png)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("study ml: 6 iterations")
    best0 = max((n for n in tree.sorted() if n.slot == 0), key=lambda n: n.reward)
    row0 = next(line for line in lines if line.startswith("0 "))
    failed0 = sum(n.status == "failed" for n in tree.sorted() if n.slot == 0)
    assert row0.split()[:6] == ["0", "4", "3", str(failed0), "0", str(best0.id)]
    row1 = next(line for line in lines if line.startswith("1 "))
    assert row1.split()[:6] == ["1", "16", "3", "3", "3", "-"]  # every slot-1 run crashed
    assert f"best slot_0: node {best0.id}" in res.stdout
    assert out_png.stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), "--study",
                          "nope"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no iteration runs" in bad.stderr
