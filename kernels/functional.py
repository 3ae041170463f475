"""The model's functional maths, shared by the torch reference, the fused kernels' wrappers and
the metabolism library (one definition of MLP_sub, the rate law and MLP_node).

    dc_i/dt = scale * MLP_node(c_i, a_i) + sum_j S_ij * k_j * prod_{k in sub(j)} MLP_sub(c_k, |s_kj|)

MLPs are given functionally as a list of (W, b) with W shaped (out, in) like nn.Linear,
tanh between layers and no activation after the last one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class FrozenReactions:
    """The Phase 1 reaction term in the index form the kernels consume.

    substrate_index (R, M): metabolites in each rate law; substrate_mask marks real slots.
    substrate_coeff_id (R, M): index into coeff_values (|s| values, e.g. [1, 2]), so MLP_sub is
        evaluated once per (metabolite, distinct |s|) instead of once per (reaction, slot).
    stoich_index / stoich_value (R, P): the nonzero entries of column j of S (value 0 = pad).
    """

    log10_k: torch.Tensor
    sub_layers: Layers
    coeff_values: torch.Tensor
    substrate_index: torch.Tensor
    substrate_coeff_id: torch.Tensor
    substrate_mask: torch.Tensor
    stoich_index: torch.Tensor
    stoich_value: torch.Tensor
    n_metabolites: int

    @classmethod
    def build(cls, log10_k: torch.Tensor, sub_layers: Layers, substrate_index: torch.Tensor,
              substrate_coeff: torch.Tensor, S: torch.Tensor) -> "FrozenReactions":
        """Convert the dense description (S (N, R), |s| (R, M) with 0 = pad) to index form."""
        dtype, device = log10_k.dtype, log10_k.device
        mask = substrate_coeff > 0
        coeff_values = torch.unique(substrate_coeff[mask]).to(dtype)
        coeff_id = torch.searchsorted(coeff_values, substrate_coeff.to(dtype).contiguous())
        coeff_id = torch.where(mask, coeff_id, torch.zeros_like(coeff_id))
        nnz = (S != 0).sum(0)
        P = int(nnz.max())
        R = S.shape[1]
        st_idx = torch.zeros(R, P, dtype=torch.long, device=device)
        st_val = torch.zeros(R, P, dtype=dtype, device=device)
        # column j's nonzero rows in ascending order, vectorized (a Python loop over R is slow at
        # R ~ 25k): nonzero(S^T) is sorted by (j, row), so the slot is the rank within column j.
        cols, rows = torch.nonzero(S.T, as_tuple=True)
        slot = torch.arange(cols.numel(), device=S.device) - (torch.cumsum(nnz, 0) - nnz)[cols]
        st_idx[cols.to(device), slot.to(device)] = rows.to(device)
        st_val[cols.to(device), slot.to(device)] = S[rows, cols].to(dtype=dtype, device=device)
        return cls(log10_k=log10_k, sub_layers=sub_layers, coeff_values=coeff_values,
                   substrate_index=substrate_index.long(), substrate_coeff_id=coeff_id.long(),
                   substrate_mask=mask, stoich_index=st_idx, stoich_value=st_val,
                   n_metabolites=S.shape[0])

    def to(self, dtype: torch.dtype | None = None, device=None) -> "FrozenReactions":
        def f(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return FrozenReactions(
            log10_k=f(self.log10_k), sub_layers=[(f(w), f(b)) for w, b in self.sub_layers],
            coeff_values=f(self.coeff_values), substrate_index=self.substrate_index.to(device),
            substrate_coeff_id=self.substrate_coeff_id.to(device),
            substrate_mask=self.substrate_mask.to(device),
            stoich_index=self.stoich_index.to(device), stoich_value=f(self.stoich_value),
            n_metabolites=self.n_metabolites)

    def detached(self) -> "FrozenReactions":
        return FrozenReactions(
            log10_k=self.log10_k.detach(),
            sub_layers=[(w.detach(), b.detach()) for w, b in self.sub_layers],
            coeff_values=self.coeff_values, substrate_index=self.substrate_index,
            substrate_coeff_id=self.substrate_coeff_id, substrate_mask=self.substrate_mask,
            stoich_index=self.stoich_index, stoich_value=self.stoich_value,
            n_metabolites=self.n_metabolites)


def mlp(x: torch.Tensor, layers: Layers) -> torch.Tensor:
    """tanh MLP on the last dim of x."""
    for i, (w, b) in enumerate(layers):
        x = torch.nn.functional.linear(x, w, b)
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x


def reaction_rates(c: torch.Tensor, fr: FrozenReactions) -> torch.Tensor:
    """v_j = k_j * prod_{slots} MLP_sub(c_k, |s|); c (B, N) -> v (B, R)."""
    B, N = c.shape
    U = fr.coeff_values.shape[0]
    inp = torch.stack(torch.broadcast_tensors(c[:, :, None], fr.coeff_values.view(1, 1, U)), -1)
    table = mlp(inp, fr.sub_layers).squeeze(-1)  # (B, N, U)
    flat = table.reshape(B, N * U)
    gathered = flat[:, fr.substrate_index * U + fr.substrate_coeff_id]  # (B, R, M)
    factors = torch.where(fr.substrate_mask, gathered, torch.ones_like(gathered))
    return (10.0 ** fr.log10_k) * factors.prod(-1)


def reaction_dcdt(c: torch.Tensor, fr: FrozenReactions) -> torch.Tensor:
    """S v as a scatter over each reaction's nonzero S entries; c (B, N) -> (B, N)."""
    v = reaction_rates(c, fr)
    contrib = v[:, :, None] * fr.stoich_value  # (B, R, P)
    out = torch.zeros_like(c)
    return out.index_add(1, fr.stoich_index.flatten(), contrib.flatten(1))


def node_dcdt(c: torch.Tensor, embeddings: torch.Tensor, node_layers: Layers) -> torch.Tensor:
    """MLP_node(c_i, a_i) for every metabolite; c (B, N), embeddings (N, D) -> (B, N)."""
    B, N = c.shape
    emb = embeddings.unsqueeze(0).expand(B, N, embeddings.shape[1])
    return mlp(torch.cat([c.unsqueeze(-1), emb], -1), node_layers).squeeze(-1)
