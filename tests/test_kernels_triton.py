"""Fused Triton rollout vs the torch reference: compiled on a CUDA GPU, else interpreted on CPU.

Without a GPU, TRITON_INTERPRET must be set before triton.jit decorates the kernels, so under a
normal test run this module spawns itself in a subprocess with TRITON_INTERPRET=1 (the rest of the
suite never sees the variable). Run directly with
`TRITON_INTERPRET=1 python -m pytest tests/test_kernels_triton.py`. With a GPU (and the variable
unset) the same cases run compiled on CUDA tensors, plus the default-regime and N=1000 sizes.
Each case uses a seed fixed by its name (KERNEL_TEST_SEED=<int> or =random overrides it, see
tests/seeds.py) and reports it on failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import run_in_triton_interpreter

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_GPU = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if ON_GPU else "cpu"

if not INTERPRETED and not ON_GPU:

    def test_triton_kernels_in_interpreter_subprocess():
        run_in_triton_interpreter(Path(__file__))

else:
    from kernels import euler_rollout
    from kernels import triton_rollout
    from benchmarks.problems import random_problem
    from seeds import kernel_seed

    # (name, sizes for random_problem, rollout kwargs)
    CASES = [
        ("tiny-L2-D1", dict(n_metabolites=7, n_reactions=9, batch=2, embedding_dim=1,
                            hidden_node=5, hidden_sub=5, layers_node=2, layers_sub=2),
         dict(n_steps=3)),
        ("tiny-M4-T1-clamp", dict(n_metabolites=7, n_reactions=9, batch=3, embedding_dim=2,
                                  hidden_node=5, hidden_sub=24, layers_node=3, layers_sub=2,
                                  max_per_reaction=5, cycle_length=100, clamp_pressure=2.0),
         dict(n_steps=1, node_scale=1.5)),
        ("N33-R70-D3", dict(n_metabolites=33, n_reactions=70, batch=2, embedding_dim=3,
                            hidden_node=24, hidden_sub=5, layers_node=3, layers_sub=3),
         dict(n_steps=8, node_scale=0.5)),
        ("N33-R70-isolated-clamp", dict(n_metabolites=33, n_reactions=70, batch=2,
                                        embedding_dim=2, hidden_node=24, hidden_sub=24,
                                        layers_node=2, layers_sub=3, clamp_pressure=1.0),
         dict(n_steps=8, reaction_grad=False)),
        ("N20-R51-M3-H64", dict(n_metabolites=20, n_reactions=51, batch=2, embedding_dim=2,
                                hidden_node=64, hidden_sub=64, layers_node=3, layers_sub=3,
                                cycle_length=100, clamp_pressure=0.5),
         dict(n_steps=3, node_scale=2.0)),
        # sparse observations: each returned state is 4 Euler steps after the previous one
        ("N33-R70-substeps4-clamp", dict(n_metabolites=33, n_reactions=70, batch=2,
                                         embedding_dim=2, hidden_node=24, hidden_sub=5,
                                         layers_node=3, layers_sub=2, clamp_pressure=0.5),
         dict(n_steps=3, substeps=4, node_scale=0.5)),
    ]
    # fp64 kernel: tight tolerance on every case; fp32 kernel vs fp64 reference: loose, on a
    # subset (the interpreter is slow)
    FP32_CASES = {"N33-R70-D3", "tiny-M4-T1-clamp", "N33-R70-isolated-clamp"}
    if ON_GPU:  # compiled kernels are fast: add the real sizes, fp32 on everything
        CASES += [
            ("default-N100-R256-B8", dict(n_metabolites=100, n_reactions=256, batch=8,
                                          hidden_node=64, hidden_sub=32),
             dict(n_steps=16)),
            ("N1000-R2560-B3", dict(n_metabolites=1000, n_reactions=2560, batch=3,
                                    hidden_node=64, hidden_sub=32, clamp_pressure=0.3),
             dict(n_steps=4)),
        ]
        FP32_CASES = {c[0] for c in CASES}
    RUNS = [(c, torch.float64, 1e-10) for c in CASES] + \
        [(c, torch.float32, 2e-3) for c in CASES if c[0] in FP32_CASES]

    def _seed() -> int:
        """Fixed per test case (tests/seeds.py); KERNEL_TEST_SEED=random draws fresh ones."""
        return kernel_seed(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])

    def _run(problem, dtype, backend, rollout_kw):
        p = problem.to(dtype, DEVICE)
        params = p.params()
        out = euler_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, backend=backend,
                            **rollout_kw)
        g = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape).to(dtype=dtype, device=out.device)
        return out, torch.autograd.grad(out, params, g)

    def _close(name, got, want, rtol, seed):
        got, want = got.double().cpu(), want.double().cpu()
        scale = want.abs().max().item() + 1e-3
        err = (got - want).abs().max().item()
        assert torch.isfinite(got).all(), f"{name}: non-finite values (seed={seed})"
        assert err <= rtol * scale, f"{name}: max err {err:.3g} > {rtol:g} * {scale:.3g} (seed={seed})"

    @pytest.fixture(autouse=True)
    def poison(monkeypatch):
        """NaN-fill every output and scratch buffer the kernels are supposed to overwrite."""
        monkeypatch.setattr(triton_rollout, "POISON", float("nan"))

    @pytest.mark.parametrize("case,dtype,rtol", RUNS,
                             ids=[f"{c[0]}-{str(d)[6:]}" for c, d, _ in RUNS])
    def test_kernel_matches_reference(case, dtype, rtol):
        name, sizes, rollout_kw = case
        seed = _seed()
        problem = random_problem(seed=seed, **sizes)
        ref, ref_grads = _run(problem, torch.float64, "torch", rollout_kw)
        if sizes.get("clamp_pressure"):
            clamped = (ref == 0).double().mean().item()
            assert 0.0 < clamped < 1.0, f"clamp case hits the clamp on {clamped:.0%} (seed={seed})"
        out, grads = _run(problem, dtype, "triton", rollout_kw)
        assert out.dtype == dtype and out.shape == ref.shape
        _close("trajectory", out, ref, rtol, seed)
        names = ["c0", "embeddings"] + [f"{k}{i}" for i in range(len(problem.node_layers))
                                        for k in ("W", "b")]
        for n, a, b in zip(names, grads, ref_grads):
            assert a.shape == b.shape, n
            _close(f"grad {n}", a, b, rtol, seed)

    def test_isolation_drops_reaction_jacobian():
        """The kernel's c0 gradient really changes with reaction_grad (the flag is not ignored)."""
        seed = _seed()
        p = random_problem(seed=seed, n_metabolites=7, n_reactions=9, batch=1,
                           hidden_node=5, hidden_sub=5).to(torch.float64, DEVICE)
        grads = []
        for rg in (True, False):
            out = euler_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 4,
                                reaction_grad=rg, backend="triton")
            grads.append(torch.autograd.grad(out.sum(), p.c0)[0])
        assert (grads[0] - grads[1]).abs().max() > 1e-9, f"seed={seed}"

    def test_backward_on_part_of_trajectory_and_empty_rollout():
        seed = _seed()
        p = random_problem(seed=seed, n_metabolites=7, n_reactions=9, batch=2,
                           hidden_node=5, hidden_sub=5)
        for backend in ("torch", "triton"):
            q = p.to(torch.float64, DEVICE)
            out = euler_rollout(q.c0, q.embeddings, q.node_layers, q.frozen, 0.1, 5,
                                backend=backend)
            loss = (out[:, -1] ** 2).sum()  # gradient reaches only the last state
            g = torch.autograd.grad(loss, q.params())
            if backend == "torch":
                want = g
            else:
                for a, b in zip(g, want):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")
        empty = euler_rollout(q.c0, q.embeddings, q.node_layers, q.frozen, 0.1, 0,
                              backend="triton")
        assert empty.shape == (2, 0, 7)

    def test_plan_cache_sees_in_place_edits_of_frozen_tensors():
        seed = _seed()
        p = random_problem(seed=seed, n_metabolites=7, n_reactions=9, batch=1,
                           hidden_node=5, hidden_sub=5).to(torch.float64, DEVICE)
        args = (p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 3)
        with torch.no_grad():
            first = euler_rollout(*args, backend="triton")
            p.frozen.log10_k += 0.5  # in place: same object, same storage, new version
            second = euler_rollout(*args, backend="triton")
            want = euler_rollout(*args, backend="torch")
        assert (first - second).abs().max() > 1e-6, f"seed={seed}"
        torch.testing.assert_close(second, want, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")

    def test_tuning_passed_in_reaches_both_launches_and_keeps_results(monkeypatch):
        """A caller's Tuning (small blocks: several block iterations) is what both kernels launch
        with, the result still matches the reference, and the defaults are left as they were."""
        seed = _seed()
        p = random_problem(seed=seed, n_metabolites=33, n_reactions=70, batch=2,
                           hidden_node=5, hidden_sub=5).to(torch.float64, DEVICE)
        defaults = dict(triton_rollout.DEFAULT_TUNING)
        small = triton_rollout.Tuning(prec="ieee", block_n=16, block_r=16, num_warps=2)
        seen = []
        real = triton_rollout.block_sizes

        def recording(N, R, dtype, tuning=None):
            seen.append(tuning)
            return real(N, R, dtype, tuning)

        monkeypatch.setattr(triton_rollout, "block_sizes", recording)
        outs = {}
        for backend, tuning in (("torch", None), ("triton", small)):
            out = euler_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 4,
                                backend=backend, tuning=tuning)
            outs[backend] = (out, torch.autograd.grad(out.square().sum(), p.params()))
        assert seen == [small, small]  # forward and backward
        assert real(33, 70, torch.float64, small) == (16, 16)
        torch.testing.assert_close(outs["triton"][0], outs["torch"][0], rtol=1e-10, atol=1e-12,
                                   msg=f"seed={seed}")
        for a, b in zip(outs["triton"][1], outs["torch"][1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")
        assert triton_rollout.DEFAULT_TUNING == defaults
