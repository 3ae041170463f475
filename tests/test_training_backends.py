"""The whole Phase 2 training path through the fused Triton kernel (interpreted on CPU tensors)
gives the run the torch reference gives: same metrics, same trained weights.

On a CUDA machine `compute.rollout_backend: auto` sends every rollout (training and the final
phase2_loss) through the fused kernel; here TRITON_INTERPRET=1 runs the same kernel code on the
CPU. The interpreter is slow (~0.3 s per sample and step), so the run is tiny: the test
regime, T=2, batch 2, 3 updates, phase2_loss from 8 start frames. The slot 3 strategies
(gradient isolation, Huber residual, contrastive + reassignment, lr decay) plus amplification
are on, and the rollout loss weight is 1 (slot 3 uses 1e-7) so the kernel's gradients, not
only the residual's, shape the weights.

Tolerances: float64 agrees to rounding (rtol 1e-7); float32 to rtol 2e-3 on continuous
metrics (the kernel and torch sum in different orders; 3 Adam updates amplify it), cluster
counts exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import yaml

import metabolism.phase2 as phase2_mod
from conftest import run_in_triton_interpreter, tiny_dict
from metabolism.config import CONFIG_DIR, config_from_dict
from metabolism.experiment import run_phase2

pytestmark = pytest.mark.slow

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if ON_GPU else "cpu"

CONTINUOUS = ["phase2_loss", "phase2_node_magnitude", "avg_slope_ratio",
              "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1", "embedding_silhouette"]
EXACT = ["embedding_n_clusters", "embedding_cluster_acc", "rate_constants_R2"]
RTOL = {"float64": 1e-7, "float32": 2e-3}


def slot3_tiny_config(backend: str, dtype: str):
    d = tiny_dict(**{"training.homeostasis_time_step": 2, "training.batch_size": 2,
                     "training.data_augmentation_loop": 3, "training.rollout_loss_weight": 1.0,
                     "compute.rollout_backend": backend, "compute.dtype": dtype,
                     "compute.device": DEVICE, "tracking.run_name": f"{backend}-{dtype}"})
    strategies = yaml.safe_load((CONFIG_DIR / "slot3.yaml").read_text())["training"]["strategies"]
    strategies["contrastive"]["start_fraction"] = 0.0
    strategies["contrastive"]["n_grid"] = 8
    strategies["contrastive"]["reassign_frames"] = 16
    strategies["amplification"] = {"enabled": True, "factor": 10.0, "anneal_start": 0.3,
                                   "anneal_end": 0.8}
    d["training"]["strategies"] = strategies
    return config_from_dict(d, source="<backends>")


if not INTERPRETED and not ON_GPU:

    def test_training_through_the_kernel_in_interpreter_subprocess():
        run_in_triton_interpreter(Path(__file__))


@pytest.mark.skipif(not INTERPRETED and not ON_GPU, reason="run in the subprocess above")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_phase2_run_through_the_fused_kernel_matches_torch(dtype, tiny_phase1, tmp_path,
                                                           monkeypatch, mlflow_uri):
    _, data_root, _, _ = tiny_phase1
    monkeypatch.setattr(phase2_mod, "EVAL_STARTS", 8)
    calls = {"triton": 0}
    import kernels.autograd as fused

    real = fused.fused_euler_rollout

    def counting(*a, **k):  # proves the triton run really went through the kernel
        calls["triton"] += 1
        return real(*a, **k)

    monkeypatch.setattr(fused, "fused_euler_rollout", counting)
    results, weights = {}, {}
    for backend in ("torch", "triton"):
        cfg = slot3_tiny_config(backend, dtype)
        res = run_phase2(cfg, runs_root=tmp_path / "runs", data_root=data_root,
                         progress=False, quiet=True)
        results[backend] = res.metrics
        weights[backend] = torch.load(res.run_dir / "phase2_checkpoint.pt")["state_dict"]
        if backend == "torch":
            assert calls["triton"] == 0
    assert calls["triton"] == 3 + 1  # every training update and the phase2_loss rollout

    torch_m, triton_m = results["torch"], results["triton"]
    rtol = RTOL[dtype]
    for key in CONTINUOUS:
        assert math.isclose(triton_m[key], torch_m[key], rel_tol=rtol, abs_tol=1e-12), \
            (key, triton_m[key], torch_m[key])
    for key in EXACT:
        assert triton_m[key] == pytest.approx(torch_m[key], rel=1e-9), key
    want_dtype = torch.float64 if dtype == "float64" else torch.float32
    for name in ("mlp_node.0.weight", "mlp_node.2.weight", "mlp_node.4.weight", "embeddings"):
        a, b = weights["triton"][name], weights["torch"][name]
        assert a.dtype == want_dtype and a.device.type == "cpu"
        scale = b.abs().max().clamp_min(1e-12)
        assert float((a - b).abs().max() / scale) < rtol * 10, name
    # training moved the weights (a kernel that returned zero gradients would not)
    assert float(weights["triton"]["mlp_node.4.weight"].abs().max()) > 0
