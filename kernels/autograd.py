"""torch.autograd.Function around the fused rollout kernels.

Why a Function: the kernels compute the whole BPTT in one launch, so autograd sees the rollout
as a single node with flat tensor inputs (c0, embeddings, *node W/b). The frozen reaction term is
captured in a ReactionPlan and never receives gradients.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from kernels.functional import FrozenReactions, Layers
from kernels.triton_rollout import (ReactionPlan, Tuning, layers_width, pack_layers,
                                    rollout_backward, rollout_forward)


class FusedEulerRollout(torch.autograd.Function):
    """forward(ctx, plan, dt, n_steps, node_scale, reaction_grad, tuning, c0, emb, W0, b0, ...).

    tuning: the kernels' launch settings (None: the default for c0's dtype).
    """

    @staticmethod
    def forward(ctx, plan: ReactionPlan, dt: float, n_steps: int, node_scale: float,
                reaction_grad: bool, tuning: Tuning | None, c0: torch.Tensor,
                emb: torch.Tensor, *node_params):
        layers = list(zip(node_params[0::2], node_params[1::2]))
        width = layers_width(layers)
        node_w, node_b = pack_layers(layers, width, c0.dtype, c0.device)
        c0c, embc = c0.detach().contiguous(), emb.detach().contiguous()
        # keep the per-step MLP_sub tables only when a backward can follow
        save = any(ctx.needs_input_grad[6:])
        traj, tab, dtab = rollout_forward(c0c, embc, node_w, node_b, plan, dt, n_steps,
                                          node_scale, save=save, reaction_grad=reaction_grad,
                                          tuning=tuning)
        ctx.save_for_backward(c0c, embc, traj, node_w, node_b, tab, dtab)
        ctx.plan, ctx.dt, ctx.node_scale, ctx.reaction_grad = plan, dt, node_scale, reaction_grad
        ctx.tuning = tuning
        ctx.shapes = [p.shape for p in node_params]
        return traj

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_traj: torch.Tensor):
        c0, emb, traj, node_w, node_b, tab, dtab = ctx.saved_tensors
        gc0, gemb, gw, gb = rollout_backward(c0, emb, traj, grad_traj.to(c0.dtype), node_w,
                                             node_b, ctx.plan, ctx.dt, ctx.node_scale,
                                             ctx.reaction_grad, tab, dtab, tuning=ctx.tuning)
        grads = []
        for l in range(len(ctx.shapes) // 2):
            (o, i), (ob,) = ctx.shapes[2 * l], ctx.shapes[2 * l + 1]
            grads += [gw[l, :o, :i], gb[l, :ob]]
        return (None, None, None, None, None, None, gc0, gemb, *grads)


# Small cache: building a plan syncs with the device (sorts, max counts). Values hold the frozen
# object itself, so while cached its id and tensor addresses cannot be reused by new objects.
_PLANS: dict = {}


def _frozen_key(frozen: FrozenReactions, dtype, device) -> tuple:
    """Identity of the frozen tensors including in-place edits (data_ptr, version counter)."""
    tensors = [frozen.log10_k, frozen.coeff_values, frozen.substrate_index,
               frozen.substrate_coeff_id, frozen.substrate_mask, frozen.stoich_index,
               frozen.stoich_value] + [t for wb in frozen.sub_layers for t in wb]
    return (id(frozen), dtype, str(device),
            tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in tensors))


def reaction_plan(frozen: FrozenReactions, dtype, device) -> ReactionPlan:
    """The kernels' layout of `frozen`, rebuilt only when the frozen tensors change."""
    key = _frozen_key(frozen, dtype, device)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is frozen:
        return hit[1]
    if len(_PLANS) >= 8:
        _PLANS.pop(next(iter(_PLANS)))
    plan = ReactionPlan.build(frozen, dtype, device)
    _PLANS[key] = (frozen, plan)
    return plan


def _check_mlp(name: str, layers: Layers, n_in: int) -> None:
    """The kernels' MLP form: >= 2 layers, n_in inputs, one output."""
    if len(layers) < 2:
        raise ValueError(f"fused rollout needs {name} with >= 2 layers, got {len(layers)}")
    if layers[0][0].shape[1] != n_in or layers[-1][0].shape[0] != 1:
        raise ValueError(f"fused rollout needs {name} mapping {n_in} inputs to 1 output, got "
                         f"{layers[0][0].shape[1]} -> {layers[-1][0].shape[0]}")


def fused_euler_rollout(c0: torch.Tensor, embeddings: torch.Tensor, node_layers: Layers,
                        frozen: FrozenReactions, dt: float, n_steps: int, node_scale: float = 1.0,
                        reaction_grad: bool = True, tuning: Tuning | None = None) -> torch.Tensor:
    """Same contract as euler_rollout_reference, computed by the fused Triton kernels.

    tuning: launch settings (kernels.triton_rollout.Tuning); None uses the default for the dtype.
    """
    if c0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused rollout supports float32/float64 states, got {c0.dtype}")
    _check_mlp("MLP_node", node_layers, 1 + embeddings.shape[1])
    _check_mlp("MLP_sub", frozen.sub_layers, 2)
    plan = reaction_plan(frozen, c0.dtype, c0.device)
    flat = [t for wb in node_layers for t in wb]
    return FusedEulerRollout.apply(plan, float(dt), int(n_steps), float(node_scale),
                                   bool(reaction_grad), tuning, c0, embeddings.to(c0.dtype),
                                   *[p.to(c0.dtype) for p in flat])
