"""Where and how a run computes: device, intra-op CPU threads, Phase 2 precision, rollout backend.

Why one module: every entry point (Phase 1, Phase 2, study cells, exploration runs) applies the
same `compute:` section before touching a tensor, so a run behaves the same whichever script or
worker started it. Only this module turns the setting into torch state.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from metabolism.config import DEVICE_PATTERN, ComputeConfig, ConfigError
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an unavailable CUDA device is a one-line error."""
    name = name.strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"compute.device: expected auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"compute.device: {name} requested but CUDA is not available "
                              "(torch built without CUDA, or no GPU visible)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"compute.device: {name} requested but only "
                              f"{torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def apply_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0 keeps torch's default); returns the count in use.

    On these small matrices more threads than the run's share of the cores makes OpenMP spin
    against whatever else runs (benchmarks/shared_cpu.py measures it).
    """
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def setup(cfg: ComputeConfig) -> torch.device:
    """Apply the threads setting and return the device a run computes on; a rollout backend
    that cannot run there fails here, before any training."""
    apply_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if cfg.rollout_backend == "triton" and device.type != "cuda" and \
            os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise ConfigError(f"compute.rollout_backend: triton needs compute.device cuda (or "
                          f"TRITON_INTERPRET=1 to interpret the kernel on the CPU); device is "
                          f"{device}")
    return device


def training_dtype(cfg: ComputeConfig) -> torch.dtype:
    return DTYPES[cfg.dtype]


def rollout_backend(cfg: ComputeConfig) -> str | None:
    """The kernels' backend argument: None lets 'auto' defer to $METABOLISM_ROLLOUT_BACKEND."""
    return None if cfg.rollout_backend == "auto" else cfg.rollout_backend


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The hardware behind a device, e.g. 'NVIDIA H200' or '2-core Intel Xeon ...'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{os.cpu_count()}-core {cpu_name()}"


def device_tags(device: torch.device) -> dict[str, str]:
    """MLflow tags naming where a run computed."""
    return {"device": str(device), "device_name": device_name(device),
            "torch_threads": str(torch.get_num_threads())}
