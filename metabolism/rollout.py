"""The one place the library rolls the learned model forward (fused kernel or torch)."""

from __future__ import annotations

import torch

from kernels import euler_rollout


def rollout(model, c0: torch.Tensor, n_steps: int, delta_t: float, *, node_scale: float = 1.0,
            reaction_grad: bool = True, backend: str | None = None,
            substeps: int = 1) -> torch.Tensor:
    """Euler-roll `model` from c0 (B, N) for n_steps observed frames, each `substeps` Euler
    steps of delta_t; returns states 1..n_steps, (B, T, N).

    Phase 1 tensors enter frozen; gradients reach MLP_node, the embeddings and c0. backend:
    'auto' | 'torch' | 'triton', None reads $METABOLISM_ROLLOUT_BACKEND (kernels.dispatch).
    """
    return euler_rollout(c0, model.embeddings, model.node_layers(), model.frozen_reactions(),
                         delta_t, n_steps, node_scale=node_scale, reaction_grad=reaction_grad,
                         backend=backend, substeps=substeps)
