"""Euler rollout kernels: the pure-torch reference (and, later, the fused Triton kernel)."""

from kernels.reference import FrozenReactions, euler_rollout_reference, mlp

__all__ = ["FrozenReactions", "euler_rollout_reference", "mlp"]
