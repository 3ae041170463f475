"""Phase 2: learn MLP_node and the embeddings through Euler rollouts; Phase 1 stays frozen.

Read top to bottom: set-up, then one loop over optimizer updates, each averaging
`accumulation_steps` mini-batches of rollouts (plus the auxiliary losses the config enables).
The trainer sees a `TrainingData` (concentrations + stoichiometry): metabolite types are not
in it, so no strategy can use them.
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
from metabolism.config import TrainingConfig
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


def objective_terms(cfg: TrainingConfig) -> list[str]:
    """The terms of the Phase 2 objective under this config."""
    st = cfg.strategies
    return (["rollout"] + (["residual_supervision"] if st.residual_supervision.enabled else [])
            + (["contrastive"] if st.contrastive.enabled else []))


def strategy_events(cfg: TrainingConfig) -> dict[str, list[int]]:
    """Updates at which a strategy switches on or acts, for the loss plot."""
    st, n = cfg.strategies, cfg.data_augmentation_loop
    events: dict[str, list[int]] = {}
    if st.contrastive.enabled:
        events["contrastive attraction starts"] = [math.ceil(st.contrastive.start_fraction * n)]
        if st.contrastive.reassign_at:
            events["embeddings reassigned"] = sorted({round(f * n) for f in
                                                      st.contrastive.reassign_at})
    if st.curriculum.enabled:
        events["curriculum switch"] = [math.ceil(st.curriculum.switch_at * n)]
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
    reassign = st.contrastive.enabled and bool(st.contrastive.reassign_at)
    result = Phase2Result()
    if st.residual_supervision.enabled or reassign:
        res_x, res_y, result.residual_targets = strat.residual_targets_for(
            model, conc, dt, substeps, st, T)
        if st.residual_supervision.target == "conserved_law":
            res_y = strat.conserved_law_targets(data, res_x, res_y)
    if st.residual_supervision.enabled:
        res_scale = strat.residual_scale(res_y)
    if st.contrastive.enabled:
        grid = strat.contrastive_grid(conc, st)

    n_updates = cfg.data_augmentation_loop
    reassign_steps = ({round(f * n_updates) for f in st.contrastive.reassign_at}
                      if reassign else set())
    accum = strat.accumulation_steps(st)
    start = time.perf_counter()
    bar = tqdm(range(n_updates), desc=f"phase 2 (T={T})", disable=not progress,
               mininterval=1.0)
    for step in bar:
        frac = step / max(1, n_updates)
        if step in reassign_steps:
            errors = strat.fit_errors(model, res_x, res_y, st.contrastive.reassign_frames,
                                      seed=cfg.seed + step)
            strat.reassign_embeddings(model, errors, st.contrastive.reassign_neighbours)
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
            if st.residual_supervision.enabled:
                idx = torch.randint(0, res_x.shape[0], (cfg.batch_size * T,)).to(device)
                term = st.residual_supervision.weight * strat.residual_loss(
                    model, res_x[idx], res_y[idx], st, res_scale)
                terms["residual_supervision"] += term.item() / accum
                loss = loss + term
            if st.contrastive.enabled and frac >= st.contrastive.start_fraction:
                term = st.contrastive.weight * strat.contrastive_loss(model, grid, st)
                terms["contrastive"] += term.item() / accum
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
