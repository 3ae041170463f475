"""The rollout implementations the benchmarks compare, behind one call signature.

Why here: the naive per-sample loop and the compiled-step variant exist only to be measured
against; the library itself only ever calls kernels.euler_rollout.
"""

from __future__ import annotations

import torch

from kernels import (FrozenReactions, Layers, euler_rollout_reference, mlp, node_dcdt,
                     reaction_dcdt)


def naive_loop_rollout(c0: torch.Tensor, embeddings: torch.Tensor, node_layers: Layers,
                       frozen: FrozenReactions, dt: float, n_steps: int, node_scale: float = 1.0,
                       S_dense: torch.Tensor | None = None) -> torch.Tensor:
    """What a first prototype writes: loop over samples, MLP_sub per (reaction, slot), dense S v."""
    fr = frozen.detached()
    if S_dense is None:
        S_dense = dense_stoichiometry(fr)
    k = 10.0 ** fr.log10_k
    coeff = fr.coeff_values[fr.substrate_coeff_id]  # (R, M) |s|
    out = []
    for b in range(c0.shape[0]):
        c, states = c0[b], []
        for _ in range(n_steps):
            x = torch.stack([c[fr.substrate_index], coeff], -1)  # (R, M, 2)
            f = mlp(x, fr.sub_layers).squeeze(-1)
            v = k * torch.where(fr.substrate_mask, f, torch.ones_like(f)).prod(-1)
            node = mlp(torch.cat([c[:, None], embeddings], -1), node_layers).squeeze(-1)
            c = torch.clamp(c + dt * (S_dense @ v + node_scale * node), min=0.0)
            states.append(c)
        out.append(torch.stack(states, 0))
    return torch.stack(out, 0)


def dense_stoichiometry(fr: FrozenReactions) -> torch.Tensor:
    """S (N, R) back from the (R, P) index form."""
    R, P = fr.stoich_index.shape
    S = torch.zeros(fr.n_metabolites, R, dtype=fr.stoich_value.dtype,
                    device=fr.stoich_value.device)
    S.index_put_((fr.stoich_index.flatten(), torch.arange(R).repeat_interleave(P)),
                 fr.stoich_value.flatten(), accumulate=True)
    return S


def _step(c, embeddings, node_layers, frozen, dt, node_scale):
    dc = reaction_dcdt(c, frozen) + node_scale * node_dcdt(c, embeddings, node_layers)
    return torch.clamp(c + dt * dc, min=0.0)


_compiled_step = None


def compiled_step_rollout(c0, embeddings, node_layers, frozen, dt, n_steps, node_scale=1.0):
    """torch.compile of one reference Euler step, looped in Python (compiling the unrolled
    T-step rollout takes minutes per T on a small CPU; one step compiles once per shape)."""
    global _compiled_step
    if _compiled_step is None:
        _compiled_step = torch.compile(_step, dynamic=False)
    fr = frozen.detached()
    c, states = c0, []
    for _ in range(n_steps):
        c = _compiled_step(c, embeddings, node_layers, fr, dt, node_scale)
        states.append(c)
    return torch.stack(states, 1)


def fused_rollout(c0, embeddings, node_layers, frozen, dt, n_steps, node_scale=1.0):
    from kernels import euler_rollout
    return euler_rollout(c0, embeddings, node_layers, frozen, dt, n_steps,
                         node_scale=node_scale, backend="triton")


VARIANTS = {
    "fused-triton": fused_rollout,
    "torch-vectorized": euler_rollout_reference,
    "torch-compile-step": compiled_step_rollout,
    "naive-loop": naive_loop_rollout,
}
