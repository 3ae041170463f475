"""Random rollout problems (network + frozen reactions + learned node model + states).

Why: tests and benchmarks need the same realistic inputs at arbitrary sizes: a network from
metabolism.network.generate_network plus randomly initialised MLPs shaped like the real model.
It lives beside the benchmarks, not in kernels/, because it needs the application's network
generator and the kernels package imports nothing from metabolism.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.functional import FrozenReactions, Layers


@dataclass
class Problem:
    c0: torch.Tensor
    embeddings: torch.Tensor
    node_layers: Layers
    frozen: FrozenReactions

    def params(self) -> list[torch.Tensor]:
        """The differentiable inputs in a fixed order: c0, embeddings, W0, b0, W1, b1, ..."""
        return [self.c0, self.embeddings] + [p for wb in self.node_layers for p in wb]

    def to(self, dtype: torch.dtype, device=None) -> "Problem":
        """A detached copy with leaf tensors that require grad."""
        def f(t):
            return t.detach().to(dtype=dtype, device=device).requires_grad_()
        return Problem(f(self.c0), f(self.embeddings),
                       [(f(w), f(b)) for w, b in self.node_layers],
                       self.frozen.to(dtype=dtype, device=device))


def random_mlp(n_in: int, n_out: int, hidden: int, n_layers: int, gen: torch.Generator,
               dtype=torch.float64, bias_last: float = 0.0) -> Layers:
    """nn.Linear-like init (U(-1/sqrt(in), 1/sqrt(in))) with an optional offset on the last bias."""
    dims = [n_in] + [hidden] * (n_layers - 1) + [n_out]
    layers = []
    for i, o in zip(dims[:-1], dims[1:]):
        bound = 1.0 / i ** 0.5
        w = (torch.rand(o, i, generator=gen, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(o, generator=gen, dtype=dtype) * 2 - 1) * bound
        layers.append((w, b))
    layers[-1] = (layers[-1][0], layers[-1][1] + bias_last)
    return layers


def random_problem(n_metabolites: int, n_reactions: int, batch: int, *, seed: int,
                   embedding_dim: int = 2, hidden_node: int = 64, hidden_sub: int = 64,
                   layers_node: int = 3, layers_sub: int = 3, max_per_reaction: int = 4,
                   cycle_length: int = 3, clamp_pressure: float = 0.0,
                   dtype=torch.float64) -> Problem:
    """A generated network with random MLPs; clamp_pressure > 0 pushes MLP_node negative and
    starts some states at 0 so that the max(., 0) clamp is hit during the rollout.
    cycle_length > n_reactions gives only random reactions (more substrate slots, |s| = 2)."""
    from metabolism.config import SimulationConfig
    from metabolism.network import generate_network

    gen = torch.Generator().manual_seed(seed)
    for attempt in range(20):  # small dense networks can defeat the cycle placement
        try:
            st, truth = generate_network(SimulationConfig(
                n_metabolites=n_metabolites, n_reactions=n_reactions,
                cycle_length=cycle_length, max_metabolites_per_reaction=max_per_reaction,
                seed=(seed + attempt) % 2**32))
            break
        except RuntimeError:
            if attempt == 19:
                raise
    frozen = FrozenReactions.build(
        torch.tensor(truth.log10_k, dtype=dtype),
        random_mlp(2, 1, hidden_sub, layers_sub, gen, dtype),
        torch.tensor(st.substrate_index), torch.tensor(st.substrate_coeff),
        torch.tensor(st.S, dtype=dtype))
    node = random_mlp(1 + embedding_dim, 1, hidden_node, layers_node, gen, dtype,
                      bias_last=-clamp_pressure)
    emb = torch.randn(n_metabolites, embedding_dim, generator=gen, dtype=dtype)
    hi = 1.0 if clamp_pressure > 0 else 3.0
    c0 = torch.rand(batch, n_metabolites, generator=gen, dtype=dtype) * hi
    if clamp_pressure > 0:
        c0[:, ::3] = 0.0
    return Problem(c0, emb, node, frozen)
