"""The compute section: device choice, threads, precision, rollout backend; flags on every
script; the Phase 1 checkpoint holds CPU tensors; device tags on the MLflow run.

The CUDA cases run only where a GPU is present (they are the same code path a GPU session's
`benchmarks/run_on_gpu.sh` exercises end to end).
"""

from __future__ import annotations

import argparse

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import tiny_config, tiny_dict
from metabolism import compute
from metabolism.cli import add_config_args, config_from_args
from metabolism.config import ConfigError, config_from_dict
from metabolism.data import dataset_dir, load_training_data
from metabolism.experiment import ensure_phase1, load_phase1_model, run_phase2

HAVE_CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("key,value", [("device", "gpu"), ("device", "cuda:x"),
                                       ("threads", -1), ("dtype", "float16"),
                                       ("rollout_backend", "numba")])
def test_bad_compute_values_are_one_line_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^compute\.{key}:") as err:
        config_from_dict(tiny_dict(**{f"compute.{key}": value}))
    assert "\n" not in str(err.value)


def test_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute.resolve_device("auto") == torch.device("cuda")


@pytest.mark.skipif(HAVE_CUDA, reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="compute.device: cuda:1 requested but CUDA"):
        compute.resolve_device("cuda:1")


def test_triton_backend_on_the_cpu_without_the_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cfg = tiny_config(**{"compute.device": "cpu", "compute.rollout_backend": "triton"})
    with pytest.raises(ConfigError, match="^compute.rollout_backend: triton needs"):
        compute.setup(cfg.compute)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert compute.setup(cfg.compute) == torch.device("cpu")


def test_setup_sets_the_thread_count_and_zero_keeps_torch_default():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = tiny_config(**{"compute.threads": 1}).compute
        assert compute.setup(cfg) == torch.device("cpu" if not HAVE_CUDA else "cuda")
        assert torch.get_num_threads() == 1
        assert compute.apply_threads(0) == 1  # 0: leave it as it is
    finally:
        torch.set_num_threads(before)


def test_flags_reach_the_config():
    p = argparse.ArgumentParser()
    add_config_args(p)
    args = p.parse_args(["--config", "slot0", "--device", "cpu", "--threads", "3",
                         "--rollout-backend", "torch", "-o", "compute.dtype=float64"])
    cfg = config_from_args(args)
    assert (cfg.compute.device, cfg.compute.threads, cfg.compute.rollout_backend,
            cfg.compute.dtype) == ("cpu", 3, "torch", "float64")
    assert cfg.hash_of("simulation", "model", "phase1") == \
        config_from_args(p.parse_args(["--config", "slot0"])).hash_of(
            "simulation", "model", "phase1")  # compute is not in the cache key


def test_explore_and_study_take_the_compute_flags():
    import importlib.util
    import subprocess
    import sys

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("explore_cli", ROOT / "experiments" / "explore.py")
    explore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(explore)
    args = explore.parse_args(["--study", "s", "--iterations", "4", "--block-size", "4",
                               "--device", "cpu", "--threads", "2"])
    assert (args.device, args.threads) == ("cpu", 2)
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "study.py"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "--device" in out.stdout and "--threads" in out.stdout


def test_phase1_checkpoint_holds_cpu_tensors_and_loads_on_any_device(tiny_phase1):
    cfg, data_root, ckpt, info = tiny_phase1
    saved = torch.load(ckpt, map_location="meta")  # never materialised: any device loads it
    state = torch.load(ckpt)["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())
    assert set(saved["state_dict"]) == set(state)
    assert info["device"] in ("cpu", "cuda") and info["device_name"]
    data = load_training_data(dataset_dir(cfg, data_root))
    model = load_phase1_model(ckpt, data, cfg).to(dtype=torch.float64)
    assert torch.equal(model.log10_k, state["log10_k"].double())


@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
def test_phase1_on_cuda_loads_on_cpu_and_matches(tmp_path):
    cpu_cfg = tiny_config(**{"compute.device": "cpu"})
    gpu_cfg = tiny_config(**{"compute.device": "cuda"})
    cpu_ckpt, cpu_info = ensure_phase1(cpu_cfg, tmp_path / "cpu", progress=False, quiet=True)
    gpu_ckpt, gpu_info = ensure_phase1(gpu_cfg, tmp_path / "gpu", progress=False, quiet=True)
    assert gpu_info["device"] == "cuda"
    state = torch.load(gpu_ckpt)["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())
    assert abs(gpu_info["rate_constants_R2"] - cpu_info["rate_constants_R2"]) < 0.05


@pytest.mark.slow
def test_run_records_its_device_and_threads(tiny_phase1, tmp_path, mlflow_uri):
    _, data_root, _, _ = tiny_phase1
    cfg = tiny_config(**{"compute.device": "cpu", "compute.threads": 1,
                         "training.data_augmentation_loop": 2})
    res = run_phase2(cfg, runs_root=tmp_path, data_root=data_root, progress=False, quiet=True)
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(res.mlflow_run_id)
    assert run.data.tags["device"] == "cpu"
    assert "core" in run.data.tags["device_name"]
    assert run.data.tags["torch_threads"] == "1"
    assert run.data.params["compute.threads"] == "1"
    assert "# device: cpu (" in (res.run_dir / "analysis.log").read_text()
    state = torch.load(res.run_dir / "phase2_checkpoint.pt")["state_dict"]
    assert all(t.device.type == "cpu" for t in state.values())


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
def test_run_on_cuda_trains_through_the_fused_kernel(tiny_phase1, tmp_path, mlflow_uri,
                                                     monkeypatch):
    import kernels.autograd as fused

    _, data_root, _, _ = tiny_phase1
    calls = []
    real = fused.fused_euler_rollout
    monkeypatch.setattr(fused, "fused_euler_rollout",
                        lambda *a, **k: calls.append(a[0].device) or real(*a, **k))
    cfg = tiny_config(**{"compute.device": "cuda", "training.data_augmentation_loop": 4})
    res = run_phase2(cfg, runs_root=tmp_path, data_root=data_root, progress=False, quiet=True)
    assert len(calls) == 4 + 1 and all(d.type == "cuda" for d in calls)
    run = MlflowClient(tracking_uri=mlflow_uri).get_run(res.mlflow_run_id)
    assert run.data.tags["device"] == "cuda" and run.data.tags["device_name"]
