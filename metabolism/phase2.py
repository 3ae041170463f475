"""Phase 2: learn MLP_node and the embeddings through Euler rollouts; Phase 1 stays frozen.

Read top to bottom: set-up, then one loop over optimizer updates, each averaging
`accumulation_steps` mini-batches of rollouts (plus the auxiliary losses the config enables).
The trainer sees a `TrainingData` (concentrations + stoichiometry): metabolite types are not
in it, so no strategy can use them.

A strategy that adds a loss term, acts between updates or marks the loss plot is a
`Phase2Strategy` listed in STRATEGIES; the loop calls its hooks and knows no strategy by name.
Strategies that only shape the rollout (length, weights, amplification, learning rate,
accumulation, reaction gradient) are the pure functions of metabolism.strategies the loop reads.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from metabolism import strategies as strat
from metabolism.config import StrategiesConfig, TrainingConfig
from metabolism.data import TrainingData
from metabolism.model import MetabolismModel
from metabolism.rollout import rollout


class DivergenceError(FloatingPointError):
    """The Phase 2 loss became non-finite; `result` holds the updates done before it."""

    def __init__(self, message: str, result: "Phase2Result | None" = None):
        super().__init__(message)
        self.result = result


@dataclass
class Phase2Result:
    losses: list[float] = field(default_factory=list)  # total loss per optimizer update
    rollout_losses: list[float] = field(default_factory=list)
    # each term of the objective per update, as it enters the total (weights applied)
    components: dict[str, list[float]] = field(default_factory=dict)
    final_loss: float = float("nan")  # rollout MSE on a fixed set of start frames
    seconds: float = 0.0
    residual_targets: str = "none"  # which residual targets were used ("auto" resolved)
    # split-half reliability of the per-metabolite laws in those targets (nan: none built)
    residual_law_reliability: float = float("nan")
    node_output_scale: float = 1.0  # the unit MLP_node's output was learned in


# phase2_loss is measured from this many evenly spaced start frames
EVAL_STARTS = 64


def evaluation_loss(model, conc: torch.Tensor, time_step: int, delta_t: float,
                    n_starts: int | None = None, backend: str | None = None,
                    substeps: int = 1) -> float:
    """Rollout MSE from evenly spaced start frames: comparable across runs of a slot."""
    n_starts = EVAL_STARTS if n_starts is None else n_starts
    starts = torch.linspace(0, conc.shape[0] - 1 - time_step, n_starts).long().to(conc.device)
    offsets = torch.arange(1, time_step + 1, device=conc.device)
    with torch.no_grad():
        pred = rollout(model, conc[starts], time_step, delta_t, backend=backend,
                       substeps=substeps)
        return float(((pred - conc[starts[:, None] + offsets]) ** 2).mean())


class Phase2Setup:
    """What strategies build on: the training inputs, and the residual targets, computed once
    when the first strategy asks for them."""

    def __init__(self, model: MetabolismModel, data: TrainingData, conc: torch.Tensor,
                 cfg: TrainingConfig, result: Phase2Result):
        self.model, self.data, self.conc, self.cfg, self.result = model, data, conc, cfg, result
        self.device = conc.device
        self._residual: tuple[torch.Tensor, torch.Tensor] | None = None

    def residual_targets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, residual) pairs of strategy 1's targets; records which targets were used."""
        if self._residual is None:
            st, data = self.cfg.strategies, self.data
            targets = strat.residual_targets_for(self.model, self.conc, data.delta_t,
                                                 data.observe_every, st,
                                                 self.cfg.homeostasis_time_step)
            x, y, self.result.residual_targets = targets.x, targets.y, targets.description
            groups = None
            if st.residual_supervision.target == "conserved_law":
                y, applied, groups = strat.conserved_law_targets(
                    data, x, y, st.residual_supervision.conserved_law_offsets)
                self.result.residual_targets += (
                    f", replaced by conserved-law lines (offsets: "
                    f"{st.residual_supervision.conserved_law_offsets})" if applied else
                    ", kept: no reliable conserved-law reference here (target conserved_law)")
            self._residual = (x, y)
            # halves in blocks of two target spans, so that few targets straddle the halves
            self._law_distances = strat.residual_law_distances(x, y)
            self.result.residual_law_reliability = strat.split_half_reliability(
                x, y, self._law_distances, 2 * targets.span)
            if groups is not None:  # one law per group by construction: 0 apart exactly,
                # where its lines, refitted per metabolite, differ by rounding
                same = groups[:, None] == groups[None, :]
                self._law_distances = self._law_distances.masked_fill(same, 0.0)
        return self._residual

    def law_distances(self) -> torch.Tensor:
        """residual_law_distances of the residual targets: how far apart the metabolites'
        own laws are, from the data alone."""
        self.residual_targets()
        return self._law_distances


class Phase2Strategy:
    """A strategy's hooks into the Phase 2 loop; each does nothing unless overridden.

    `term` names the objective term `loss` adds (a key of Phase2Result.components), None for a
    strategy without a loss. Built only when `enabled` says the config turns it on.
    """

    term: str | None = None

    @staticmethod
    def enabled(st: StrategiesConfig) -> bool:
        raise NotImplementedError

    @staticmethod
    def events(st: StrategiesConfig, n_updates: int) -> dict[str, list[int]]:
        """Updates at which the strategy switches on or acts, for the loss plot."""
        return {}

    def __init__(self, setup: Phase2Setup):
        self.setup = setup

    def before_update(self, step: int) -> None:
        """Called before update `step` computes any loss."""

    def loss(self, frac: float) -> torch.Tensor | None:
        """This strategy's weighted term for one mini-batch at training fraction `frac`."""
        return None


class ResidualSupervision(Phase2Strategy):
    """Strategy 1: MLP_node fitted to the residual of the frozen reaction term."""

    term = "residual_supervision"

    @staticmethod
    def enabled(st: StrategiesConfig) -> bool:
        return st.residual_supervision.enabled

    def __init__(self, setup: Phase2Setup):
        super().__init__(setup)
        self.x, self.y = setup.residual_targets()
        self.scale = strat.residual_scale(self.y)

    def loss(self, frac: float) -> torch.Tensor:
        s = self.setup
        rs = s.cfg.strategies.residual_supervision
        n = s.cfg.batch_size * s.cfg.homeostasis_time_step
        idx = torch.randint(0, self.x.shape[0], (n,)).to(s.device)
        return rs.weight * strat.residual_loss(s.model, self.x[idx], self.y[idx],
                                               s.cfg.strategies, self.scale)


class Contrastive(Phase2Strategy):
    """Strategy 3: embeddings pulled together by their learned responses, from start_fraction
    on; at each reassign_at fraction every embedding jumps to its best-fitting neighbours'."""

    term = "contrastive"

    @staticmethod
    def enabled(st: StrategiesConfig) -> bool:
        return st.contrastive.enabled

    @staticmethod
    def events(st: StrategiesConfig, n_updates: int) -> dict[str, list[int]]:
        co, n = st.contrastive, n_updates
        events = {"contrastive attraction starts": [math.ceil(co.start_fraction * n)]}
        if co.reassign_at:
            events["embeddings reassigned"] = sorted({round(f * n) for f in co.reassign_at})
        return events

    def __init__(self, setup: Phase2Setup):
        super().__init__(setup)
        co, n = setup.cfg.strategies.contrastive, setup.cfg.data_augmentation_loop
        self.reassign_steps = {round(f * n) for f in co.reassign_at}
        if self.reassign_steps or co.neighbours_from != "learned":
            self.x, self.y = setup.residual_targets()  # first: the order the set-up has had
        self.grid = strat.contrastive_grid(setup.conc, setup.cfg.strategies)
        self.data_distances = (None if co.neighbours_from == "learned"
                               else setup.law_distances())
        if co.init_from_data > 0:
            emb = setup.model.embeddings
            with torch.no_grad():
                emb.copy_(strat.spectral_embeddings(self.data_distances, setup.cfg.strategies,
                                                    emb.shape[1], co.init_from_data))

    def before_update(self, step: int) -> None:
        if step in self.reassign_steps:
            s = self.setup
            co = s.cfg.strategies.contrastive
            errors = strat.fit_errors(s.model, self.x, self.y, co.reassign_frames,
                                      seed=s.cfg.seed + step)
            same_law_from = None
            if co.reassign_from == "both":
                errors = strat.reassignment_scores(errors, self.data_distances)
                same_law_from = self.data_distances
            strat.reassign_embeddings(s.model, errors, co.reassign_neighbours, same_law_from)

    def loss(self, frac: float) -> torch.Tensor | None:
        s = self.setup
        co = s.cfg.strategies.contrastive
        if frac < co.start_fraction:
            return None
        return co.weight * strat.contrastive_loss(s.model, self.grid, s.cfg.strategies,
                                                  self.data_distances)


class Curriculum(Phase2Strategy):
    """Strategy 5: shorter rollouts first (strategies.rollout_length); here only its mark on
    the loss plot."""

    @staticmethod
    def enabled(st: StrategiesConfig) -> bool:
        return st.curriculum.enabled

    @staticmethod
    def events(st: StrategiesConfig, n_updates: int) -> dict[str, list[int]]:
        return {"curriculum switch": [math.ceil(st.curriculum.switch_at * n_updates)]}


# Built in this order, and their terms added in this order (it fixes the random draws).
STRATEGIES: tuple[type[Phase2Strategy], ...] = (ResidualSupervision, Contrastive, Curriculum)


def objective_terms(cfg: TrainingConfig) -> list[str]:
    """The terms of the Phase 2 objective under this config."""
    return ["rollout"] + [c.term for c in STRATEGIES if c.term and c.enabled(cfg.strategies)]


def strategy_events(cfg: TrainingConfig) -> dict[str, list[int]]:
    """Updates at which a strategy switches on or acts, for the loss plot."""
    events: dict[str, list[int]] = {}
    for c in STRATEGIES:
        if c.enabled(cfg.strategies):
            events.update(c.events(cfg.strategies, cfg.data_augmentation_loop))
    return events


def train_phase2(model: MetabolismModel, data: TrainingData, cfg: TrainingConfig, *,
                 on_eval: Callable[[int, MetabolismModel], None] | None = None,
                 eval_every: int = 0, progress: bool = True,
                 rollout_backend: str | None = None,
                 on_update: Callable[[int, float], None] | None = None) -> Phase2Result:
    """Trains on the model's device and in its precision; rollout_backend as in
    kernels.euler_rollout (None: $METABOLISM_ROLLOUT_BACKEND, else 'auto').
    on_update(step, loss) after every update (to record the curve as it grows),
    on_eval(step, model) every eval_every updates and at the end."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    st = cfg.strategies
    dt, substeps = data.delta_t, data.observe_every  # k Euler steps between observed frames
    device = model.S.device
    conc = torch.as_tensor(data.concentrations, dtype=model.embeddings.dtype, device=device)
    T = cfg.homeostasis_time_step

    model.freeze_phase1()
    node_params = list(model.mlp_node.parameters())
    opt = torch.optim.Adam([
        {"params": node_params, "lr": cfg.learning_rate_node_homeostasis},
        {"params": [model.embeddings], "lr": cfg.learning_rate_embedding_homeostasis},
    ])
    base_lrs = [g["lr"] for g in opt.param_groups]
    result = Phase2Result()
    setup = Phase2Setup(model, data, conc, cfg, result)
    if cfg.node_output_scale == "residual":
        _, residual = setup.residual_targets()
        scale = float(residual.abs().median())
        if not scale > 0:
            raise ValueError("training.node_output_scale: 'residual' needs residual targets "
                             f"that are not all zero (median |target| {scale})")
        model.set_node_output_scale(scale)
    result.node_output_scale = float(model.node_output_scale)
    active = [c(setup) for c in STRATEGIES if c.enabled(st)]

    n_updates = cfg.data_augmentation_loop
    accum = strat.accumulation_steps(st)
    start = time.perf_counter()
    bar = tqdm(range(n_updates), desc=f"phase 2 (T={T})", disable=not progress,
               mininterval=1.0)
    for step in bar:
        frac = step / max(1, n_updates)
        for s in active:
            s.before_update(step)
        mult = strat.lr_multiplier(st, frac)
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * mult
        node_scale = strat.amplification_factor(st, frac)

        total, rollout_total = 0.0, 0.0
        terms = dict.fromkeys(objective_terms(cfg), 0.0)
        for _ in range(accum):
            length = strat.rollout_length(st, T, frac, rng)
            # indices come from the CPU generator: the same batches on every device
            starts = torch.randint(0, conc.shape[0] - length, (cfg.batch_size,)).to(device)
            target = conc[starts[:, None] + torch.arange(1, length + 1, device=device)]  # (B,L,N)
            pred = rollout(model, conc[starts], length, dt, node_scale=node_scale,
                           reaction_grad=strat.reaction_gradient(st), backend=rollout_backend,
                           substeps=substeps)
            w = strat.time_weights(st, length).to(pred)
            loss_rollout = (((pred - target) ** 2).mean((0, 2)) * w).mean()
            loss = cfg.rollout_loss_weight * loss_rollout
            terms["rollout"] += loss.item() / accum
            for s in active:
                term = s.loss(frac)
                if term is not None:
                    terms[s.term] += term.item() / accum
                    loss = loss + term
            (loss / accum).backward()
            total += loss.item() / accum
            rollout_total += loss_rollout.item() / accum

        if not math.isfinite(total):
            raise DivergenceError(f"phase 2 diverged at update {step} (loss={total}); "
                                  f"last finite loss {result.losses[-1] if result.losses else 'none'}",
                                  result)
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.losses.append(total)
        result.rollout_losses.append(rollout_total)
        for name, value in terms.items():
            result.components.setdefault(name, []).append(value)
        if on_update is not None:
            on_update(step, total)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{total:.3e}")
        if on_eval is not None and eval_every and (step + 1) % eval_every == 0 \
                and step + 1 < n_updates:
            on_eval(step + 1, model)

    result.final_loss = evaluation_loss(model, conc, T, dt, backend=rollout_backend,
                                        substeps=substeps)
    result.seconds = time.perf_counter() - start
    if on_eval is not None:
        on_eval(n_updates, model)
    return result
