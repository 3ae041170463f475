"""Euler rollout kernels: the pure-torch reference, the fused Triton kernel and the dispatcher.

The library calls only `euler_rollout`; triton is imported lazily, only when that backend runs.
"""

from kernels.dispatch import available_backends, euler_rollout, resolve_backend
from kernels.reference import FrozenReactions, euler_rollout_reference, mlp

__all__ = ["FrozenReactions", "available_backends", "euler_rollout", "euler_rollout_reference",
           "mlp", "resolve_backend"]
