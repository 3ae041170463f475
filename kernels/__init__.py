"""Euler rollout kernels: the pure-torch reference (and, later, the fused Triton kernel)."""

from kernels.reference import FrozenReactions, euler_rollout_reference, mlp


def euler_rollout(c0, embeddings, node_layers, frozen, dt, n_steps, node_scale=1.0,
                  reaction_grad=True, backend=None):
    return euler_rollout_reference(c0, embeddings, node_layers, frozen, dt, n_steps,
                                   node_scale=node_scale, reaction_grad=reaction_grad)


__all__ = ["FrozenReactions", "euler_rollout", "euler_rollout_reference", "mlp"]
