"""Euler rollout op: the model's functional maths, the pure-torch reference, the fused Triton
kernel and the dispatcher between them.

Everything a caller needs is exported here; the library calls `euler_rollout`, and triton is
imported lazily, only when that backend runs. This package imports nothing from `metabolism`.
"""

from kernels.dispatch import available_backends, euler_rollout, resolve_backend
from kernels.functional import FrozenReactions, Layers, mlp, node_dcdt, reaction_dcdt, reaction_rates
from kernels.reference import euler_rollout_reference

__all__ = ["FrozenReactions", "Layers", "available_backends", "euler_rollout",
           "euler_rollout_reference", "mlp", "node_dcdt", "reaction_dcdt", "reaction_rates",
           "resolve_backend"]
