"""Launch-setting sweep for the fused float32 kernels on a GPU: accuracy and time per setting.

Why: block size, warps and dot precision trade registers (spills), tensor-core use and
accuracy; this measures each candidate side by side in one process. Prints one table row per
setting: max relative error of the trajectory and of every gradient against the float64 torch
reference, and the median fwd+bwd time at the default regime and at scale.
Run: `PYTHONPATH=. python benchmarks/sweep_fused.py` (CUDA only).
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.test_rollout_throughput import _problem
from kernels import euler_rollout
from kernels.triton_rollout import Tuning

SETTINGS = [Tuning(prec=p, block_n=bn, block_r=256, num_warps=w)
            for p in ("tf32x3", "ieee") for bn, w in ((32, 4), (64, 4), (32, 8), (64, 8))]
SIZES = [(100, 256, 8, 64), (1000, 2560, 1024, 16)]


def fwd_bwd(p, T, backend, dtype=torch.float32, tuning=None):
    q = p if dtype == torch.float32 else p.to(dtype)
    params = q.params()
    out = euler_rollout(q.c0, q.embeddings, q.node_layers, q.frozen, 0.1, T, backend=backend,
                        tuning=tuning)
    g = torch.autograd.grad(out.square().sum(), params)
    return out, g


def median_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def rel_err(a, b) -> float:
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def main():
    small = _problem(100, 256, 8)
    ref_out, ref_g = fwd_bwd(small, 16, "torch", torch.float64)
    eager = median_ms(lambda: fwd_bwd(_problem(100, 256, 8), 64, "torch"), 5)
    print(f"eager reference fwd+bwd N=100 B=8 T=64: {eager:.2f} ms", flush=True)
    print(f"{'prec':<7} {'BN':>3} {'warps':>5} {'traj err':>9} {'max grad err':>12} "
          + " ".join(f"{'N%d B%d T%d ms' % (n, b, t):>18}" for n, _, b, t in SIZES), flush=True)
    for st in SETTINGS:
        try:
            out, g = fwd_bwd(small, 16, "triton", tuning=st)
            errs = [rel_err(a, b) for a, b in zip(g, ref_g)]
            ms = [median_ms(lambda n=n, r=r, b=b, t=t: fwd_bwd(_problem(n, r, b), t, "triton",
                                                               tuning=st),
                            5 if b < 1024 else 3) for n, r, b, t in SIZES]
        except Exception as exc:  # a setting may not compile (shared memory); say which
            print(f"{st.prec:<7} {st.block_n:>3} {st.num_warps:>5} failed: "
                  f"{type(exc).__name__}: {str(exc)[:100]}", flush=True)
            continue
        print(f"{st.prec:<7} {st.block_n:>3} {st.num_warps:>5} "
              f"{rel_err(out, ref_out):>9.1e} {max(errs):>12.1e} "
              + " ".join(f"{m:>18.2f}" for m in ms), flush=True)


if __name__ == "__main__":
    main()
