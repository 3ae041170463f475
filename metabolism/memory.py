"""Up-front memory estimate: refuse a config whose largest tensors cannot fit in this machine.

Without it an impossible size (a batch of 1e9 rollouts, 1e7 reactions) is found out only
after minutes, when the process has grown past the machine's memory and is killed by the OS
with nothing recorded. The estimate counts only the dominant allocations of each stage (the
dataset, Phase 1's least-squares system, Phase 2's rollout graph), so it is a lower bound:
a config it refuses cannot run here; one it accepts may still be tight.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metabolism.config import Config

GIB = 1024 ** 3
F32, F64 = 4, 8


@dataclass(frozen=True)
class Allocation:
    what: str
    keys: tuple[str, ...]  # the config keys its size grows with
    n_bytes: float


def allocations(cfg: "Config") -> list[Allocation]:
    """The dominant allocation of each stage, largest first."""
    sim, model, tr = cfg.simulation, cfg.model, cfg.training
    F, N, R = sim.n_frames, sim.n_metabolites, sim.n_reactions
    max_sub = sim.max_metabolites_per_reaction - 1
    per_row = min(R, math.ceil(R * sim.max_metabolites_per_reaction / N)) + 2
    unknowns = R + 2 * N
    B, T = tr.batch_size, tr.homeostasis_time_step
    # activations kept for backward: each tanh layer stores its input and output
    sub_acts = R * max_sub * model.hidden_dim_sub * model.n_layers_sub * 2
    node_acts = N * model.hidden_dim_node * model.n_layers_node * 2
    out = [
        Allocation("dataset", ("simulation.n_frames", "simulation.n_metabolites",
                               "simulation.n_reactions"),
                   F * N * (F64 + 3 * F32) + 3 * N * R * F64),
        Allocation("phase 1 least squares", ("simulation.n_reactions",
                                             "simulation.n_metabolites"),
                   3 * unknowns ** 2 * F64),
        Allocation("phase 1 design over the trajectory", (
            "simulation.n_frames", "simulation.n_reactions", "simulation.n_metabolites"),
            F * R * (F32 + F64) + F * N * per_row * F64),
        Allocation("phase 2 rollout graph", (
            "training.batch_size", "training.homeostasis_time_step", "simulation.n_reactions",
            "simulation.n_metabolites", "model.hidden_dim_sub", "model.hidden_dim_node"),
            B * T * (sub_acts + node_acts) * F32),
    ]
    if tr.strategies.residual_supervision.enabled:
        out.append(Allocation("phase 2 residual supervision", (
            "training.batch_size", "training.homeostasis_time_step",
            "simulation.n_metabolites", "model.hidden_dim_node"), B * T * node_acts * F32))
    return sorted(out, key=lambda a: -a.n_bytes)


def machine_memory_bytes() -> int:
    """Physical memory of this machine (what a process can ever get, swap aside)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no check
        return 0


def check_fits(cfg: "Config", limit_bytes: int | None = None) -> None:
    """Raise ConfigError naming the keys of the largest allocation if the stages that are
    alive together (the dataset plus the largest stage) exceed the machine's memory."""
    from metabolism.config import ConfigError

    limit = machine_memory_bytes() if limit_bytes is None else limit_bytes
    if not limit:
        return
    allocs = allocations(cfg)
    dataset = next(a for a in allocs if a.what == "dataset")
    biggest = allocs[0]
    total = biggest.n_bytes + (dataset.n_bytes if biggest is not dataset else 0)
    if total > limit:
        flat = cfg.flat()
        keys = ", ".join(f"{k}={flat[k]}" for k in biggest.keys)
        raise ConfigError(f"{keys}: needs at least {_size(total)} ({biggest.what}), "
                          f"this machine has {_size(limit)}")


def _size(n_bytes: float) -> str:
    for unit, scale in (("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"
