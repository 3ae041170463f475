"""The torch reference rollout: float64 gradcheck, and the backend dispatcher's contract."""

from __future__ import annotations

import os

import pytest
import torch

from kernels import available_backends, euler_rollout, euler_rollout_reference, resolve_backend
from benchmarks.problems import random_problem
from kernels import node_dcdt, reaction_dcdt
from seeds import kernel_seed


def _seed() -> int:
    """Fixed per test (tests/seeds.py); KERNEL_TEST_SEED=random draws fresh ones."""
    return kernel_seed(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])


def _problem(seed):
    p = random_problem(6, 8, 2, seed=seed, embedding_dim=2, hidden_node=5, hidden_sub=4,
                       layers_node=2, layers_sub=2).to(torch.float64)
    p.c0.data += 0.5  # keep the states away from the clamp's kink, where gradcheck is undefined
    return p


def test_reference_gradcheck_float64():
    seed = _seed()
    p = _problem(seed)

    def f(c0, emb, *flat):
        layers = list(zip(flat[0::2], flat[1::2]))
        return euler_rollout_reference(c0, emb, layers, p.frozen, 0.1, 3, node_scale=0.8)

    assert torch.autograd.gradcheck(f, tuple(p.params()), eps=1e-6, atol=1e-7), f"seed={seed}"


def test_reference_gradcheck_float64_isolated():
    """reaction_grad=False: the gradient is the true gradient of a surrogate rollout whose
    reaction term is the same forcing, frozen to the values along the base trajectory."""
    seed = _seed()
    p = _problem(seed)
    T, dt, scale = 3, 0.1, 0.8
    with torch.no_grad():
        traj = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, dt, T,
                                       node_scale=scale)
        states = torch.cat([p.c0[:, None], traj[:, :-1]], 1)
        forcing = [reaction_dcdt(states[:, t], p.frozen.detached()) for t in range(T)]

    def surrogate(c0, emb, *flat):
        layers = list(zip(flat[0::2], flat[1::2]))
        c, out = c0, []
        for t in range(T):
            c = torch.clamp(c + dt * (forcing[t] + scale * node_dcdt(c, emb, layers)), min=0.0)
            out.append(c)
        return torch.stack(out, 1)

    params = tuple(p.params())
    assert torch.autograd.gradcheck(surrogate, params, eps=1e-6, atol=1e-7), f"seed={seed}"
    iso = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, dt, T,
                                  node_scale=scale, reaction_grad=False)
    sur = surrogate(*params)
    torch.testing.assert_close(iso, sur, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(iso)
    for a, b in zip(torch.autograd.grad(iso, params, g), torch.autograd.grad(sur, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")


def test_reaction_grad_false_changes_only_the_gradient():
    """Isolation keeps the trajectory but drops d(reaction)/dc from the c0 gradient."""
    seed = _seed()
    p = random_problem(6, 8, 2, seed=seed, hidden_node=5, hidden_sub=4).to(torch.float64)
    a = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 4)
    b = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 4,
                                reaction_grad=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ga, = torch.autograd.grad(a.sum(), p.c0)
    gb, = torch.autograd.grad(b.sum(), p.c0)
    assert (ga - gb).abs().max() > 1e-8, f"seed={seed}"


def test_dispatch_defaults_to_torch_on_cpu(monkeypatch):
    monkeypatch.delenv("METABOLISM_ROLLOUT_BACKEND", raising=False)
    p = random_problem(6, 8, 2, seed=_seed(), hidden_node=5, hidden_sub=4)
    assert resolve_backend(p.c0) == "torch"
    out = euler_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 3)
    ref = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 3)
    assert out.shape == (2, 3, 6)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert "torch" in available_backends()


def test_dispatch_rejects_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    c0 = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend(c0, "triton")
    monkeypatch.setenv("METABOLISM_ROLLOUT_BACKEND", "triton")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        resolve_backend(c0)
    monkeypatch.setenv("METABOLISM_ROLLOUT_BACKEND", "cuda-please")
    with pytest.raises(ValueError, match="unknown rollout backend"):
        resolve_backend(c0)
    monkeypatch.setenv("METABOLISM_ROLLOUT_BACKEND", "torch")
    assert resolve_backend(c0) == "torch"


def test_benchmark_baselines_match_reference():
    """The naive per-sample loop the benchmarks time computes the same rollout."""
    from benchmarks.variants import dense_stoichiometry, naive_loop_rollout

    seed = _seed()
    p = random_problem(9, 20, 3, seed=seed, hidden_node=5, hidden_sub=4, cycle_length=100,
                       max_per_reaction=5)
    ref = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 5,
                                  node_scale=0.7)
    out = naive_loop_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 5, node_scale=0.7)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=f"seed={seed}")
    S = dense_stoichiometry(p.frozen)
    assert S.shape == (9, 20) and (S != 0).sum() == (p.frozen.stoich_value != 0).sum()


def test_auto_picks_triton_for_cuda_tensors(monkeypatch):
    """'auto' routes CUDA states to the fused kernel (a stand-in object: no GPU in CI)."""
    from types import SimpleNamespace

    from kernels import dispatch

    pytest.importorskip("triton")
    monkeypatch.delenv("METABOLISM_ROLLOUT_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "_sm_count", lambda device: 132)  # an H100
    states = SimpleNamespace(is_cuda=True, device="cuda:0", shape=(8, 100))
    assert resolve_backend(states) == "triton"
    assert resolve_backend(states, "torch") == "torch"
    assert resolve_backend(SimpleNamespace(is_cuda=True, device="cuda:0", shape=(8, 10000))) \
        == "torch"


def test_fused_rollout_rejects_mlps_outside_its_form():
    """The kernels treat layer 0 as (1 + D or 2) -> H and the last as H -> 1; anything else is a
    clear error before any launch, not a silently wrong trajectory."""
    pytest.importorskip("triton")
    from kernels.autograd import fused_euler_rollout

    p = random_problem(7, 9, 1, seed=0, hidden_node=5, hidden_sub=5)
    one_layer = [(torch.randn(1, 3, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]
    with pytest.raises(ValueError, match="MLP_node with >= 2 layers"):
        fused_euler_rollout(p.c0, p.embeddings, one_layer, p.frozen, 0.1, 2)
    wide_out = p.node_layers[:-1] + [(torch.randn(2, 5, dtype=torch.float64),
                                      torch.zeros(2, dtype=torch.float64))]
    with pytest.raises(ValueError, match="MLP_node mapping 3 inputs to 1 output"):
        fused_euler_rollout(p.c0, p.embeddings, wide_out, p.frozen, 0.1, 2)


def test_auto_keeps_the_reference_where_the_fused_kernel_measured_slower():
    """One CTA per sample: at N = 10000 with B = 8 or 64 the H100 ran the eager reference faster;
    at N <= 1000, or once the batch fills the multiprocessors, the fused kernel won."""
    from kernels.dispatch import fused_pays_off

    assert fused_pays_off(8, 100, 132) and fused_pays_off(8, 1000, 132)
    assert not fused_pays_off(8, 10000, 132) and not fused_pays_off(64, 10000, 132)
    assert fused_pays_off(1024, 10000, 132)


def test_kernels_package_stands_alone():
    """kernels/ is an op package: importing every module of it loads nothing from metabolism."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    pkg = Path(__file__).resolve().parents[1] / "kernels"
    for f in pkg.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "metabolism" for n in names), f"{f.name}: {names}"
    mods = [f"kernels.{f.stem}" for f in pkg.glob("*.py")
            if f.stem not in ("__init__", "aot", "triton_rollout", "autograd")]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {mods!r}]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'metabolism'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=pkg.parent, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_substeps_return_every_kth_euler_state_with_its_gradient():
    """A rollout with substeps=k is the k-step-apart subsequence of the plain Euler rollout,
    values and gradients (observations every k-th Euler frame)."""
    seed = _seed()
    p = _problem(seed)
    params = tuple(p.params())
    fine = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 12,
                                   node_scale=0.8)
    coarse = euler_rollout_reference(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 4,
                                     node_scale=0.8, substeps=3)
    assert coarse.shape == (2, 4, 6)
    torch.testing.assert_close(coarse, fine[:, 2::3], rtol=0, atol=0)
    assert (coarse[:, 0] - fine[:, 0]).abs().max() > 1e-6, f"seed={seed}"  # not the 1st step
    g = torch.randn_like(coarse)
    want = torch.autograd.grad(fine[:, 2::3], params, g)
    for a, b in zip(torch.autograd.grad(coarse, params, g), want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"seed={seed}")
    with pytest.raises(ValueError, match="substeps"):
        euler_rollout(p.c0, p.embeddings, p.node_layers, p.frozen, 0.1, 2, substeps=0)
