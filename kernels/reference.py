"""Pure-torch Euler rollout: the ground truth every fused kernel is tested against.

Model (SPEC.md):
    dc_i/dt = scale * MLP_node(c_i, a_i) + sum_j S_ij * k_j * prod_{k in sub(j)} MLP_sub(c_k, |s_kj|)
    c <- max(c + dt * dc/dt, 0)

The maths of each term lives in kernels.functional; the reaction tensors are frozen (Phase 1):
they never receive gradients here.
"""

from __future__ import annotations

import torch

from kernels.functional import FrozenReactions, Layers, node_dcdt, reaction_dcdt


def euler_rollout_reference(c0: torch.Tensor, embeddings: torch.Tensor, node_layers: Layers,
                            frozen: FrozenReactions, dt: float, n_steps: int,
                            node_scale: float = 1.0, reaction_grad: bool = True,
                            substeps: int = 1) -> torch.Tensor:
    """Roll the learned model n_steps from c0 (B, N); returns states 1..n_steps, (B, T, N).

    Each returned state is `substeps` Euler steps of dt after the previous one (observations
    sampled every k-th Euler frame are k steps apart). reaction_grad=False stops the gradient
    through the reaction term (gradient isolation): the state still evolves with it, but
    d(reaction)/dc is treated as zero.
    """
    frozen = frozen.detached()
    c = c0
    states = []
    for step in range(1, n_steps * substeps + 1):
        r = reaction_dcdt(c if reaction_grad else c.detach(), frozen)
        dc = r + node_scale * node_dcdt(c, embeddings, node_layers)
        c = torch.clamp(c + dt * dc, min=0.0)
        if step % substeps == 0:
            states.append(c)
    if not states:
        return c0.new_zeros(c0.shape[0], 0, c0.shape[1])
    return torch.stack(states, 1)
