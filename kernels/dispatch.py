"""Backend choice for euler_rollout: the fused Triton kernels on CUDA, the torch reference elsewhere.

Why a separate module: the library calls one function; which implementation runs is a deployment
decision (env var METABOLISM_ROLLOUT_BACKEND) that must not leak into model code.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from kernels.functional import FrozenReactions, Layers
from kernels.reference import euler_rollout_reference

if TYPE_CHECKING:  # triton is imported only when the fused backend runs
    from kernels.triton_rollout import Tuning

ENV_VAR = "METABOLISM_ROLLOUT_BACKEND"
BACKENDS = ("auto", "torch", "triton")


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends() -> list[str]:
    """Backends usable in this process: 'torch' always, 'triton' with triton + (CUDA or interpreter)."""
    out = ["torch"]
    if _triton_importable() and (torch.cuda.is_available() or _interpreting()):
        out.append("triton")
    return out


# The fused kernels run one CTA per sample, so a sample's N metabolites are processed serially.
# Measured on an H100 (benchmarks/README.md): the fused kernel wins at N <= 1000 for every B and
# at N = 10000 with B = 1024, and loses to the eager reference (1.6-3x) at N = 10000 with B <= 64,
# where the batch does not fill the GPU's multiprocessors.
FUSED_MAX_SERIAL_N = 2048


def fused_pays_off(batch: int, n_metabolites: int, sm_count: int) -> bool:
    """'auto' picks the fused kernel unless a large network meets a batch too small for the GPU."""
    return n_metabolites <= FUSED_MAX_SERIAL_N or batch >= sm_count


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def resolve_backend(c0: torch.Tensor, backend: str | None = None) -> str:
    """'torch' or 'triton' for these inputs; raises ValueError on an unusable request."""
    name = (backend if backend is not None else os.environ.get(ENV_VAR, "auto")).strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown rollout backend {name!r}; expected one of {BACKENDS}")
    if name == "auto":
        if not (c0.is_cuda and _triton_importable()):
            return "torch"
        B, N = c0.shape
        return "triton" if fused_pays_off(B, N, _sm_count(c0.device)) else "torch"
    if name == "triton":
        if not _triton_importable():
            raise ValueError("rollout backend 'triton' requested but triton is not importable")
        if not c0.is_cuda and not _interpreting():
            raise ValueError("rollout backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                             f"for CPU testing); got tensors on {c0.device}")
    return name


def euler_rollout(c0: torch.Tensor, embeddings: torch.Tensor, node_layers: Layers,
                  frozen: FrozenReactions, dt: float, n_steps: int, node_scale: float = 1.0,
                  reaction_grad: bool = True, backend: str | None = None,
                  substeps: int = 1, tuning: Tuning | None = None) -> torch.Tensor:
    """Roll the learned model n_steps from c0 (B, N); returns states 1..n_steps as (B, T, N),
    each `substeps` Euler steps of dt after the previous one.

    Semantics are those of kernels.reference.euler_rollout_reference; backend None reads
    $METABOLISM_ROLLOUT_BACKEND ('auto' | 'torch' | 'triton', default 'auto'). tuning: the
    fused kernels' launch settings (kernels.triton_rollout.Tuning; None: the dtype's default),
    ignored by the torch backend.
    """
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    if resolve_backend(c0, backend) == "torch":
        return euler_rollout_reference(c0, embeddings, node_layers, frozen, dt, n_steps,
                                       node_scale=node_scale, reaction_grad=reaction_grad,
                                       substeps=substeps)
    from kernels.autograd import fused_euler_rollout
    # the fused kernel runs every Euler step and keeps them all; the observed states are every
    # substeps-th of them, and autograd routes their gradient back through the kernel's BPTT
    traj = fused_euler_rollout(c0, embeddings, node_layers, frozen, dt, n_steps * substeps,
                               node_scale=node_scale, reaction_grad=reaction_grad, tuning=tuning)
    return traj if substeps == 1 else traj[:, substeps - 1::substeps]
