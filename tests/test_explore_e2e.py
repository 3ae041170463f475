"""End to end with the real Phase 2 run in a tiny regime (slow; needs metabolism.experiment)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from explore_helpers import write_slot_yamls
from metabolism.explore.tree import classify

ROOT = Path(__file__).resolve().parent.parent
TINY = ["regime=tiny", "simulation.n_metabolites=12", "simulation.n_reactions=20",
        "simulation.n_frames=200", "phase1.n_steps=50", "training.data_augmentation_loop=5"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("metabolism.experiment") is None,
                    reason="metabolism.experiment (run_phase2) is not importable yet")
def test_real_phase2_runs_through_the_loop(tmp_path):
    cfg_dir = write_slot_yamls(tmp_path / "cfg", slots=(0, 1))
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    env.pop("METABOLISM_EXPLORE_RUNNER", None)
    cmd = [sys.executable, str(ROOT / "experiments" / "explore.py"), "--study", "e2e",
           "--iterations", "4", "--block-size", "2", "--slots", "0", "1",
           "--config-dir", str(cfg_dir), "--studies-root", str(tmp_path / "studies")]
    for o in TINY:
        cmd += ["--override", o]
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=1800)
    assert res.returncode == 0, res.stderr[-3000:]
    tree = json.loads((tmp_path / "studies" / "e2e" / "tree.json").read_text())
    nodes = tree["nodes"]
    assert [n["id"] for n in nodes] == [1, 2, 3, 4]
    for n in nodes:
        assert n["error"] is None, n["error"]
        # the node's verdict is the one its own metrics give, not any label
        assert n["status"] == classify(n["metrics"]["avg_slope_ratio"]), n
        for key in ("avg_slope_ratio", "embedding_cluster_acc", "rate_constants_R2",
                    "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1"):
            assert key in n["metrics"]
        assert n["mlflow_run_id"] and n["run_dir"]
        assert set(n["plots"]) >= {"mlp_node", "embedding"}
    analysis = (tmp_path / "studies" / "e2e" / "e2e_analysis.md").read_text()
    assert analysis.count("## Iter ") == 4
