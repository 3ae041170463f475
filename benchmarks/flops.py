"""FLOP model of one Euler rollout step and the device's measured peak (the arithmetic floor).

Model (float32, per sample, per step, counting a multiply-add as 2 FLOPs):
    MLP_sub table   N * U * mlp(2 -> H_sub -> ... -> 1)
    MLP_node        N * mlp(1 + D -> H_node -> ... -> 1)
    rates + scatter R * (M + 1) + 2 * R * P, Euler update 4 N
where mlp(in -> H (L-1 hidden layers) -> out) = 2 (in H + (L - 2) H^2 + H out).
Backward is counted as 2x forward (the usual dense-layer rule), so fwd+bwd = 3x forward.
The floor is FLOPs / peak, with peak the device's measured float32 GEMM rate (torch.mm on
2048^2 operands, no TF32): no rollout implementation can beat dense GEMM throughput, and the
memory traffic (the trajectory, B T N floats) is orders of magnitude below it at these sizes.
The peak is measured once per machine (device, its name, thread count) and stored in a cache
file, so "% of floor" compares across runs on one machine instead of moving with the load of
the moment the peak was taken.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from pathlib import Path

import torch

from kernels.functional import FrozenReactions, Layers


def mlp_flops(layers: Layers) -> int:
    return sum(2 * w.shape[0] * w.shape[1] for w, _ in layers)


def step_flops(node_layers: Layers, frozen: FrozenReactions) -> int:
    """FLOPs of one forward Euler step for one sample."""
    N = frozen.n_metabolites
    U = frozen.coeff_values.shape[0]
    R, M = frozen.substrate_index.shape
    P = frozen.stoich_index.shape[1]
    return (N * U * mlp_flops(frozen.sub_layers) + N * mlp_flops(node_layers)
            + R * (M + 1) + 2 * R * P + 4 * N)


def rollout_flops(node_layers: Layers, frozen: FrozenReactions, batch: int, n_steps: int,
                  backward: bool) -> int:
    return step_flops(node_layers, frozen) * batch * n_steps * (3 if backward else 1)


PEAK_CACHE_ENV = "METABOLISM_PEAK_CACHE"


def peak_cache_path() -> Path:
    """Per user, outside the repository (never committed); $METABOLISM_PEAK_CACHE overrides."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "metabolism" / \
        "peak_flops.json"
    return Path(os.environ.get(PEAK_CACHE_ENV, default))


def machine_key(device: str) -> str:
    """What the peak depends on: host, device model and the intra-op thread count."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in
                        Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return f"{platform.node()}|{device}|{name}|threads={torch.get_num_threads()}"


@functools.lru_cache(maxsize=None)
def peak_flops(device: str) -> float:
    """The stored peak of this machine, measured and stored on first use."""
    path, key = peak_cache_path(), machine_key(device)
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if not isinstance(cache.get(key), dict) or "flops" not in cache[key]:
        cache[key] = {"flops": measure_peak_flops(device),
                      "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=2))
        tmp.replace(path)
    return float(cache[key]["flops"])


def measure_peak_flops(device: str) -> float:
    """Measured float32 GEMM FLOP/s on this device (best of a few runs)."""
    n = 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        best = float("inf")
        for _ in range(3):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    return 2 * n ** 3 / best
