"""What users wait for: Phase 2 updates per second for each slot's config, Phase 1 steps per
second, on the default regime.

On a CUDA machine the runs compute on the GPU and every Phase 2 rollout goes through the fused
kernel (`compute.rollout_backend: auto`); elsewhere on the CPU with the config's thread count
(`compute.threads`, default 1). The Phase 2 model starts from a short Phase 1 (60 steps), enough
for finite rollouts; the speed of an update does not depend on how good Phase 1 is. Each Phase 2
benchmark runs 20 updates of the slot config as it is (residual supervision, contrastive loss,
lr schedule, gradient isolation where the config switches them on) without the one-off steps
of a run (the reassignment, the final phase2_loss evaluation), and reports updates/s in
extra_info.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import metabolism.phase2 as phase2_mod
from metabolism import compute
from metabolism.config import load_config
from metabolism.data import dataset_dir, ensure_dataset, load_training_data
from metabolism.experiment import new_model
from metabolism.phase1 import train_phase1
from metabolism.phase2 import train_phase2

ROOT = Path(__file__).resolve().parent.parent
PHASE2_UPDATES = 20
PHASE1_STEPS = 30
ROUNDS = 2


def _config(slot: int):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_config(f"slot{slot}.yaml", {"compute.device": device})


@pytest.fixture(scope="module")
def default_regime(tmp_path_factory):
    """(training data, a model after 60 Phase 1 steps) for the default regime."""
    cfg = _config(3)
    device = compute.setup(cfg.compute)
    root = ROOT / "data"  # the users' dataset cache: built once, reused by every run
    ensure_dataset(cfg, root)
    data = load_training_data(dataset_dir(cfg, root))
    torch.manual_seed(0)
    model = new_model(data, cfg).to(device)
    train_phase1(model, data, dataclasses.replace(cfg.phase1, n_steps=60, n_restarts=1),
                 progress=False)
    return data, model.cpu_copy()


def test_phase1_steps_per_second(benchmark, default_regime):
    data, _ = default_regime
    cfg = _config(3)
    device = compute.setup(cfg.compute)
    p1 = dataclasses.replace(cfg.phase1, n_steps=PHASE1_STEPS, n_restarts=1)

    def run():
        torch.manual_seed(0)
        train_phase1(new_model(data, cfg).to(device), data, p1, progress=False)

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=0)
    benchmark.extra_info.update(device=str(device), threads=torch.get_num_threads(),
                                steps_per_s=PHASE1_STEPS / benchmark.stats.stats.mean)


@pytest.mark.parametrize("slot", [0, 1, 2, 3])
def test_phase2_updates_per_second(benchmark, default_regime, slot, monkeypatch):
    data, phase1_model = default_regime
    cfg = _config(slot)
    device = compute.setup(cfg.compute)
    tr = dataclasses.replace(cfg.training, data_augmentation_loop=PHASE2_UPDATES)
    # the reassignment is one step per run (N x N curve fits, seconds on a CPU): over 1000
    # updates it is noise, over 20 it would be most of the time
    tr.strategies.contrastive.reassign_at = []
    # only the updates are timed: the final 64-start phase2_loss is an evaluation
    monkeypatch.setattr(phase2_mod, "evaluation_loss", lambda *a, **k: float("nan"))
    backend = compute.rollout_backend(cfg.compute)

    def run():
        model = phase1_model.cpu_copy().to(device)
        train_phase2(model, data, tr, progress=False, rollout_backend=backend)
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1 if device.type == "cuda" else 0)
    from kernels import resolve_backend
    c0 = torch.zeros(cfg.training.batch_size, data.stoich.n_metabolites, device=device)
    benchmark.extra_info.update(
        device=str(device), threads=torch.get_num_threads(),
        rollout=resolve_backend(c0, backend), time_step=cfg.training.homeostasis_time_step,
        updates_per_s=PHASE2_UPDATES / benchmark.stats.stats.mean)
