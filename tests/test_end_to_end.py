"""A tiny Phase 2 experiment end to end: caches, analysis.log, plots, MLflow, failures, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import metabolism.phase2 as phase2_mod
from conftest import ROOT, tiny_dict
from metabolism.config import config_from_dict
from metabolism.data import dataset_dir, ensure_dataset
from metabolism.experiment import file_hash, phase1_checkpoint_path, read_analysis_log, run_phase2
from metabolism.phase2 import DivergenceError

pytestmark = pytest.mark.slow

N_TYPES = 2
N_UPDATES = 8


def spec_keys(n_types: int = N_TYPES) -> list[str]:
    keys = ["phase2_loss", "phase2_node_magnitude", "avg_slope_ratio", "embedding_cluster_acc",
            "embedding_n_clusters", "embedding_silhouette", "rate_constants_R2"]
    for t in range(n_types):
        keys += [f"MLP_node_{name}_{t}" for name in
                 ("slope", "offset", "gt_slope", "gt_offset", "slope_ratio", "offset_ratio")]
    return keys


def e2e_config(**dotted):
    d = tiny_dict(**{"training.data_augmentation_loop": N_UPDATES,
                     "tracking.experiment": "e2e", **dotted})
    d["training"]["strategies"] = {"residual_supervision": {"enabled": True},
                                   "contrastive": {"enabled": True, "n_grid": 8}}
    return config_from_dict(d, source="<e2e>")


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One finished run (and its store) shared by the checks below."""
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp}/mlflow.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = e2e_config()
        res = run_phase2(cfg, runs_root=tmp / "runs", data_root=tmp / "data", progress=False,
                         quiet=True)
    return {"cfg": cfg, "res": res, "uri": uri, "tmp": tmp,
            "client": MlflowClient(tracking_uri=uri)}


# ----------------------------------------------------------------------------- analysis.log


def test_analysis_log_has_every_spec_key(e2e):
    res = e2e["res"]
    assert res.status == "FINISHED"
    log = read_analysis_log(res.run_dir / "analysis.log")
    missing = [k for k in spec_keys() if k not in log]
    assert not missing, f"analysis.log lacks {missing}"
    assert log["MLP_node_gt_slope_0"] == pytest.approx(-0.001)
    assert log["MLP_node_gt_slope_1"] == pytest.approx(-0.002)
    assert log["MLP_node_gt_offset_0"] == pytest.approx(0.004)
    assert log["MLP_node_gt_offset_1"] == pytest.approx(0.012)
    assert log["avg_slope_ratio"] == pytest.approx(
        (log["MLP_node_slope_ratio_0"] + log["MLP_node_slope_ratio_1"]) / 2, rel=1e-4)
    for k in spec_keys():
        assert log[k] == pytest.approx(res.metrics[k], rel=1e-5, abs=1e-12)
    # noiseless one-frame targets: the halves of the data agree on every metabolite's law
    assert 0.9 < log["residual_law_reliability"] <= 1.0
    logged = e2e["client"].get_run(res.mlflow_run_id).data.metrics[
        "residual_law_reliability"]
    assert logged == pytest.approx(log["residual_law_reliability"], rel=1e-5)
    # this config leaves MLP_node's output in dc/dt units; the unit is recorded either way
    assert log["node_output_scale"] == 1.0
    assert e2e["client"].get_run(res.mlflow_run_id).data.metrics["node_output_scale"] == 1.0


def test_analysis_log_states_sweep_range(e2e):
    text = (e2e["res"].run_dir / "analysis.log").read_text()
    lines = [ln for ln in text.splitlines() if "sweep" in ln.lower()]
    assert lines, "analysis.log must state the sweep range"
    assert re.search(r"\d", lines[0]) and "50 points" in lines[0]


def test_analysis_log_states_strategies_with_parameters(e2e):
    text = (e2e["res"].run_dir / "analysis.log").read_text()
    assert "# strategy: residual_supervision+contrastive\n" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("# strategy_params: "))
    assert "residual_supervision(weight=1.0" in line and "n_grid=8" in line
    assert "amplification" not in line  # disabled strategies are not listed


def test_analysis_log_states_how_the_observations_were_used(e2e):
    text = (e2e["res"].run_dir / "analysis.log").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("# observations: "))
    assert "observation_noise 0.0, observe_every 1" in line
    assert "residual targets difference" in line and "Phase 1 targets difference" in line
    run = e2e["client"].get_run(e2e["res"].mlflow_run_id)
    assert float(run.data.tags["observation_noise_estimated"]) < 1e-4


def test_plots_exist(e2e):
    run_dir = e2e["res"].run_dir
    tmp = run_dir / "tmp_training"
    final = N_UPDATES
    for rel in (f"function/rate_func/MLP_node_p2_{final}.png",
                "rate_constants/comparison.png",
                f"embedding/embedding_p2_{final}.png", "loss.png"):
        p = tmp / rel
        assert p.is_file() and p.stat().st_size > 1000, rel
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # intermediate evaluations too (eval_every = loop // 4)
    steps = sorted(int(m.group(1)) for p in (tmp / "function" / "rate_func").glob("*.png")
                   if (m := re.search(r"_p2_(\d+)\.png$", p.name)))
    assert len(steps) >= 2 and steps[-1] == final
    # the rate constants are frozen: one plot per run, not one identical copy per evaluation
    assert [p.name for p in (tmp / "rate_constants").iterdir()] == ["comparison.png"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "phase2_checkpoint.pt").is_file()


# ----------------------------------------------------------------------------- MLflow


def test_mlflow_run_finished_with_params_metrics_tags(e2e):
    client, res, cfg = e2e["client"], e2e["res"], e2e["cfg"]
    run = client.get_run(res.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    flat = cfg.flat()
    assert set(flat) <= set(params), f"missing params {set(flat) - set(params)}"
    assert params["training.homeostasis_time_step"] == "8"
    assert params["training.strategies.contrastive.enabled"] == "True"
    metrics = run.data.metrics
    log = read_analysis_log(res.run_dir / "analysis.log")
    for k, v in log.items():
        if "_gt_" in k:  # constants of the simulation: params, not metrics
            assert k not in metrics and float(params[f"ground_truth.{k}"]) == pytest.approx(v)
        elif math.isfinite(v):
            assert k in metrics, f"MLflow lacks metric {k}"
            assert metrics[k] == pytest.approx(res.metrics[k], rel=1e-6, abs=1e-12)
        else:
            assert f"nonfinite.{k}" in run.data.tags
    tags = run.data.tags
    for t in ("slot", "time_step", "strategy", "phase1_checkpoint", "git_commit"):
        assert t in tags and tags[t], t
    assert tags["time_step"] == "8"
    assert tags["strategy"] == "residual_supervision+contrastive"
    assert tags["regime"] == "test"
    ckpt = phase1_checkpoint_path(cfg, e2e["tmp"] / "data")
    assert tags["phase1_checkpoint"] == file_hash(ckpt)


def test_mlflow_run_says_how_it_did_and_what_it_learned_from(e2e):
    """verdict / targets_met from the shared rules, a readable unique name, the dataset as an
    MLflow input, the Phase 1 checkpoint as an artifact, and an experiment description."""
    from metabolism.verdict import classify_slope_ratio, targets_met

    client, res, cfg = e2e["client"], e2e["res"], e2e["cfg"]
    run = client.get_run(res.mlflow_run_id)
    tags = run.data.tags
    assert tags["verdict"] == classify_slope_ratio(res.metrics["avg_slope_ratio"])
    assert tags["targets_met"] == str(targets_met(res.metrics, N_TYPES)).lower()
    assert f"verdict {tags['verdict']}" in tags["mlflow.note.content"]
    assert re.fullmatch(r"test-noslot-T8-s0-\d{4}-\d{6}", run.info.run_name), run.info.run_name
    assert res.run_dir.name == run.info.run_name
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == dataset_dir(cfg, e2e["tmp"] / "data").name
    assert ds.tags[0].value == "training"
    ckpt = phase1_checkpoint_path(cfg, e2e["tmp"] / "data")
    assert {a.path for a in client.list_artifacts(res.mlflow_run_id, "phase1")} == {
        f"phase1/{ckpt.name}"}
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "e2e" and "mlflow.note.content" not in exp.tags  # no text for "e2e"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # training view


def test_run_names_tell_apart_where_a_run_came_from():
    from metabolism.experiment import default_run_name

    cfg = e2e_config(**{"slot": 3, "training.homeostasis_time_step": 64, "regime": "study_x"})
    names = {default_run_name(cfg, tags, when=0) for tags in (
        {}, {"study": "main", "variant": "default"}, {"study": "abl", "variant": "no_reassign"},
        {"study": "x1", "node_id": "5"})}
    assert {n.rsplit("-", 2)[0] for n in names} == {
        "run-slot3-T64-s0", "study-main-slot3-T64-s0", "study-abl-no_reassign-slot3-T64-s0",
        "explore-x1-iter5-slot3-T64-s0"}


def test_mlflow_per_step_loss_history(e2e):
    client, res = e2e["client"], e2e["res"]
    hist = client.get_metric_history(res.mlflow_run_id, "phase2_train_loss")
    assert len(hist) == N_UPDATES > 1
    assert sorted(m.step for m in hist) == list(range(N_UPDATES))
    # the periodic evaluations are logged per step too
    hist = client.get_metric_history(res.mlflow_run_id, "avg_slope_ratio")
    assert len({m.step for m in hist}) >= 2


def test_metric_histories_hold_only_points_that_happened(e2e):
    """Evaluations happen after updates 2, 4, 6, 8: no metric may claim a value at step 0."""
    client, res = e2e["client"], e2e["res"]
    run = client.get_run(res.mlflow_run_id)
    eval_steps = {N_UPDATES // 4 * k for k in range(1, 5)}
    for key in run.data.metrics:
        if key == "phase2_train_loss":
            continue
        steps = {m.step for m in client.get_metric_history(res.mlflow_run_id, key)}
        assert steps <= eval_steps, f"{key} logged at steps {sorted(steps - eval_steps)}"
        assert N_UPDATES in steps, key


def test_mlflow_artifacts(e2e):
    client, res = e2e["client"], e2e["res"]
    top = {a.path for a in client.list_artifacts(res.mlflow_run_id)}
    assert {"analysis.log", "config.yaml", "phase2_checkpoint.pt", "tmp_training"} <= top
    rate = {a.path for a in client.list_artifacts(res.mlflow_run_id,
                                                  "tmp_training/function/rate_func")}
    assert f"tmp_training/function/rate_func/MLP_node_p2_{N_UPDATES}.png" in rate
    comp = {a.path for a in client.list_artifacts(res.mlflow_run_id,
                                                  "tmp_training/rate_constants")}
    assert comp == {"tmp_training/rate_constants/comparison.png"}


def test_rate_constants_r2_identical_to_phase1(e2e):
    cfg, res = e2e["cfg"], e2e["res"]
    ckpt = phase1_checkpoint_path(cfg, e2e["tmp"] / "data")
    info = json.loads(ckpt.with_suffix(".json").read_text())
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["info"]
    assert info["rate_constants_R2"] == saved["rate_constants_R2"]
    assert res.metrics["rate_constants_R2"] == info["rate_constants_R2"]
    run = e2e["client"].get_run(res.mlflow_run_id)
    assert run.data.metrics["rate_constants_R2"] == pytest.approx(info["rate_constants_R2"],
                                                                  rel=1e-12)
    # and the Phase 2 checkpoint carries the Phase 1 tensors unchanged
    p2 = torch.load(res.run_dir / "phase2_checkpoint.pt", map_location="cpu",
                    weights_only=True)["state_dict"]
    p1 = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for k in p1:
        if k.startswith(("log10_k", "mlp_sub.")):
            assert torch.equal(p1[k], p2[k]), k


# ----------------------------------------------------------------------------- caches


def test_second_run_reuses_cache(e2e, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", e2e["uri"])
    cfg, tmp = e2e["cfg"], e2e["tmp"]
    folder = dataset_dir(cfg, tmp / "data")
    ckpt = phase1_checkpoint_path(cfg, tmp / "data")
    files = [folder / "training.npz", folder / "ground_truth.npz", ckpt,
             ckpt.with_suffix(".json")]
    before = {f: f.stat().st_mtime_ns for f in files}
    n_files = len(list((tmp / "data").rglob("*")))

    res2 = run_phase2(cfg, runs_root=tmp / "runs", data_root=tmp / "data", progress=False,
                      quiet=True)
    assert {f: f.stat().st_mtime_ns for f in files} == before, "cache was rebuilt"
    assert len(list((tmp / "data").rglob("*"))) == n_files
    assert res2.run_dir != e2e["res"].run_dir and res2.run_dir.is_dir()
    assert res2.mlflow_run_id != e2e["res"].mlflow_run_id
    # same seed, same cache -> the same trained model
    assert res2.metrics["phase2_loss"] == e2e["res"].metrics["phase2_loss"]


def test_changed_simulation_key_new_cache_folder(tmp_path):
    a = e2e_config()
    b = e2e_config(**{"simulation.seed": 43})
    c = e2e_config(**{"training.batch_size": 2})
    assert dataset_dir(a, tmp_path) != dataset_dir(b, tmp_path)
    assert dataset_dir(a, tmp_path) == dataset_dir(c, tmp_path)
    assert phase1_checkpoint_path(a, tmp_path) != phase1_checkpoint_path(
        e2e_config(**{"phase1.n_steps": 21}), tmp_path)
    fa, fb = ensure_dataset(a, tmp_path), ensure_dataset(b, tmp_path)
    assert fa != fb and (fa / "training.npz").is_file() and (fb / "training.npz").is_file()
    with np.load(fa / "training.npz") as x, np.load(fb / "training.npz") as y:
        assert not np.array_equal(x["concentrations"], y["concentrations"])


# ----------------------------------------------------------------------------- failure


def test_failing_run_is_marked_failed_and_keeps_data(tmp_path, mlflow_uri, monkeypatch,
                                                     tiny_phase1):
    from conftest import copy_data_root

    _, data_root, _, _ = tiny_phase1
    root = copy_data_root(data_root, tmp_path / "data")
    real = phase2_mod.rollout
    calls = {"n": 0}
    fail_after = 5  # rollout calls of training updates 0..4 are fine, then NaN

    def flaky(model, c0, n_steps, dt, **kw):
        out = real(model, c0, n_steps, dt, **kw)
        calls["n"] += 1
        return out * float("nan") if calls["n"] > fail_after else out

    monkeypatch.setattr(phase2_mod, "rollout", flaky)
    cfg = e2e_config(**{"training.plot_every": 2})
    with pytest.raises(DivergenceError):
        run_phase2(cfg, runs_root=tmp_path / "runs", data_root=root, progress=False,
                   quiet=True)

    client = MlflowClient(tracking_uri=mlflow_uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "DivergenceError" in run.data.tags["error"]
    assert set(cfg.flat()) <= set(run.data.params)
    # evaluations at updates 2 and 4 happened before the failure and are kept
    hist = client.get_metric_history(run.info.run_id, "avg_slope_ratio")
    assert sorted(m.step for m in hist) == [2, 4]
    # and so is the per-update loss of the updates that succeeded
    loss = client.get_metric_history(run.info.run_id, "phase2_train_loss")
    assert sorted(m.step for m in loss) == list(range(fail_after))
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "tmp_training" in arts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "tmp_training")}
    assert "tmp_training/loss.png" in plots


# ----------------------------------------------------------------------------- CLI


def test_cli_quick(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "phase2.py"), "--quick", "--no-progress",
         "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = re.search(r"run folder: (\S+)", out.stdout)
    assert m, out.stdout
    run_dir = Path(m.group(1))
    if not run_dir.is_absolute():
        run_dir = tmp_path / run_dir
    assert run_dir.is_dir() and str(run_dir).startswith(str(tmp_path / "runs"))
    assert (run_dir / "analysis.log").is_file()
    m = re.search(r"MLflow run: ([0-9a-f]{32})", out.stdout)
    assert m, out.stdout
    run = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"]).get_run(m.group(1))
    assert run.info.status == "FINISHED"
    assert run.data.tags["regime"] == "quick"
    assert run.data.tags["time_step"] == "8"  # slot3's 64, capped for the tiny regime
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "phase2_homeostasis_quick"  # never mixed with real runs
    assert "say nothing about the method" in exp.tags["mlflow.note.content"]
    assert out.stdout.count("smoke test") == 2  # said before and after the numbers
    log = read_analysis_log(run_dir / "analysis.log")
    assert not [k for k in spec_keys() if k not in log]


def test_new_run_dir_never_hands_out_a_taken_folder(tmp_path):
    """Runs started in the same second share a name: each gets its own folder (path~1, ...)."""
    from metabolism.experiment import new_run_dir

    base = tmp_path / "exp" / "slot0-T4-s0-20261125-101010"
    first, second = new_run_dir(base), new_run_dir(base)
    (tmp_path / "exp" / "slot0-T4-s0-20261125-101010~2").mkdir()
    third = new_run_dir(base)
    assert first == base and second.name.endswith("~1") and third.name.endswith("~3")
    assert all(p.is_dir() for p in (first, second, third))
