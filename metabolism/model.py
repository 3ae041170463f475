"""The learned model: dc/dt = MLP_node(c_i, a_i) + S . (k * prod MLP_sub(c_k, |s_kj|)).

Phase 1 owns the reaction half (log10 k, MLP_sub); Phase 2 owns MLP_node and the
embeddings a_i. Both halves are exported in the functional form the rollout kernels take,
with the fixed input scaling folded into the first layer so kernels see plain tanh MLPs.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from torch import nn

from kernels import FrozenReactions, Layers, mlp
from metabolism.config import ModelConfig
from metabolism.network import Stoichiometry


def _mlp(n_in: int, hidden: int, n_layers: int) -> nn.Sequential:
    dims = [n_in] + [hidden] * (n_layers - 1) + [1]
    mods: list[nn.Module] = []
    for i in range(n_layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            mods.append(nn.Tanh())
    return nn.Sequential(*mods)


def _linears(seq: nn.Sequential) -> list[nn.Linear]:
    return [m for m in seq if isinstance(m, nn.Linear)]


def _folded(seq: nn.Sequential, input_scale: torch.Tensor) -> Layers:
    """(W, b) per layer with x -> x * input_scale folded into the first weight."""
    lins = _linears(seq)
    layers = [(lins[0].weight * input_scale, lins[0].bias)]
    layers += [(lin.weight, lin.bias) for lin in lins[1:]]
    return layers


class MetabolismModel(nn.Module):
    """Parameters: log10_k, mlp_sub (Phase 1); mlp_node, embeddings (Phase 2).

    `concentration_scale` is a frozen buffer from the training data (mean concentration) that
    puts MLP inputs at order one; it is data-derived, never a ground-truth parameter.
    `node_output_scale` (1 unless Phase 2 sets it, see set_node_output_scale) is the unit of
    MLP_node's output, folded into its last layer like the input scale into the first.
    """

    PHASE1_PREFIXES = ("log10_k", "mlp_sub.")

    def __init__(self, stoich: Stoichiometry, cfg: ModelConfig, concentration_scale: float = 1.0):
        super().__init__()
        n, r = stoich.n_metabolites, stoich.n_reactions
        self.log10_k = nn.Parameter(torch.zeros(r))
        self.mlp_sub = _mlp(2, cfg.hidden_dim_sub, cfg.n_layers_sub)
        self.mlp_node = _mlp(1 + cfg.embedding_dim, cfg.hidden_dim_node, cfg.n_layers_node)
        last = _linears(self.mlp_node)[-1]
        nn.init.zeros_(last.weight)  # MLP_node starts at exactly zero (the seed's setting)
        nn.init.zeros_(last.bias)
        self.embeddings = nn.Parameter(cfg.embedding_init_std * torch.randn(n, cfg.embedding_dim))
        self.register_buffer("concentration_scale", torch.tensor(float(concentration_scale)))
        self.register_buffer("node_output_scale", torch.tensor(1.0))
        # the same value as a Python float, so node_layers can tell unit 1 without a device sync
        self._node_output_unit = 1.0
        self.register_load_state_dict_post_hook(MetabolismModel._read_node_output_unit)
        self.register_buffer("S", torch.as_tensor(stoich.S, dtype=torch.float32))
        # a copy: the buffer must not alias (and let a state-dict load overwrite) the caller's data
        self.register_buffer("substrate_index", torch.tensor(stoich.substrate_index))
        self.register_buffer("substrate_coeff",
                             torch.as_tensor(stoich.substrate_coeff, dtype=torch.float32))
        self._frozen_cache: FrozenReactions | None = None
        self._index_cache: FrozenReactions | None = None

    # ------------------------------------------------------------------ functional views

    def _input_scale(self, n_extra: int) -> torch.Tensor:
        one = torch.ones(n_extra, dtype=self.S.dtype, device=self.S.device)
        return torch.cat([(1.0 / self.concentration_scale).reshape(1), one])

    def sub_layers(self) -> Layers:
        return _folded(self.mlp_sub, self._input_scale(1))

    def node_layers(self) -> Layers:
        layers = _folded(self.mlp_node, self._input_scale(self.embeddings.shape[1]))
        if self._node_output_unit == 1.0:  # the seed's parametrisation, bit for bit
            return layers
        w, b = layers[-1]
        scale = self.node_output_scale.to(w.dtype)
        return layers[:-1] + [(w * scale, b * scale)]

    @staticmethod
    def _read_node_output_unit(module: "MetabolismModel", _incompatible_keys) -> None:
        module._node_output_unit = float(module.node_output_scale)

    def set_node_output_scale(self, scale: float) -> None:
        """Express MLP_node's output in units of `scale`, keeping the function it computes.

        Adam moves every parameter by about its learning rate per update, whatever the
        gradient's size, so the unit of the last layer sets how far one update moves the
        output: in raw dc/dt units a rate of 1e-2 moves it by up to 1e-2, the size of the whole
        homeostatic signal. The kernels see the scale folded into the last layer.
        """
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"node output scale must be finite and > 0, got {scale!r}")
        last = _linears(self.mlp_node)[-1]
        with torch.no_grad():
            ratio = float(self.node_output_scale) / scale
            last.weight.mul_(ratio)
            last.bias.mul_(ratio)
            self.node_output_scale.fill_(scale)
        self._node_output_unit = float(scale)

    def reactions(self) -> FrozenReactions:
        """The reaction term in kernel form (gradients flow to log10_k / mlp_sub if enabled)."""
        if self._index_cache is None or self._index_cache.log10_k.device != self.S.device:
            self._index_cache = FrozenReactions.build(
                self.log10_k.detach(), [], self.substrate_index, self.substrate_coeff, self.S)
        return dataclasses.replace(self._index_cache, log10_k=self.log10_k,
                                   sub_layers=self.sub_layers())

    def frozen_reactions(self) -> FrozenReactions:
        """Detached reaction term, built once: Phase 1 tensors never change in Phase 2."""
        if self._frozen_cache is None:
            with torch.no_grad():
                self._frozen_cache = self.reactions().detached()
        return self._frozen_cache

    def node(self, c: torch.Tensor, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """MLP_node(c_i, a_i); c (..., N) -> (..., N)."""
        emb = self.embeddings if embeddings is None else embeddings
        emb = emb.expand(*c.shape, emb.shape[-1])
        return mlp(torch.cat([c.unsqueeze(-1), emb], -1), self.node_layers()).squeeze(-1)

    def sub_scale(self) -> float:
        """alpha = |MLP_sub(c=1, |s|=1)|: the scale the product form cannot separate from k."""
        with torch.no_grad():
            x = torch.tensor([[1.0, 1.0]], dtype=self.S.dtype, device=self.S.device)
            return float(mlp(x, self.sub_layers()).abs())

    # ------------------------------------------------------------------ parameter groups

    def phase1_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n.startswith(self.PHASE1_PREFIXES)]

    def phase1_state(self) -> dict[str, torch.Tensor]:
        return {n: t for n, t in self.state_dict().items() if n.startswith(self.PHASE1_PREFIXES)}

    def cpu_copy(self) -> "MetabolismModel":
        """A detached copy on the CPU (same precision): what metrics, plots and checkpoints
        read, whatever device training runs on."""
        out = copy.deepcopy(self).cpu()
        out._frozen_cache = out._index_cache = None
        return out

    def freeze_phase1(self) -> None:
        for p in self.phase1_parameters():
            p.requires_grad_(False)
        self._frozen_cache = None
