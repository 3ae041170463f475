"""Datasets on disk: what training may see, kept apart from what only evaluation may see.

A regime's dataset lives in ``<data_root>/<simulation-hash>/``:
  training.npz      concentrations + stoichiometry  -> TrainingData (no labels, no rates)
  ground_truth.npz  types, lambda, baselines, true log10 k -> GroundTruth (evaluation only)
The hash covers every simulation key, so a changed config never reuses a stale cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metabolism.config import Config
from metabolism.files import replace_atomically
from metabolism.network import GroundTruth, Stoichiometry, generate_network
from metabolism.simulate import initial_concentrations, simulate


@dataclass(frozen=True)
class TrainingData:
    """Everything the trainers receive. By construction it holds no metabolite types."""

    concentrations: np.ndarray  # (F, N) float64 trajectory
    delta_t: float
    stoich: Stoichiometry

    @property
    def n_frames(self) -> int:
        return self.concentrations.shape[0]


def dataset_dir(cfg: Config, data_root: Path) -> Path:
    return Path(data_root) / f"sim-{cfg.hash_of('simulation')}"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    replace_atomically(path, lambda fh: np.savez(fh, **arrays))


def build_dataset(cfg: Config, data_root: Path) -> Path:
    """Simulate the regime and write both files; returns the dataset folder."""
    sim = cfg.simulation
    stoich, truth = generate_network(sim)
    c0 = initial_concentrations(sim.n_metabolites, *sim.initial_concentration_range, sim.seed)
    traj = simulate(c0, stoich, truth, sim.delta_t, sim.n_frames)
    out = dataset_dir(cfg, data_root)
    _atomic_savez(out / "ground_truth.npz", log10_k=truth.log10_k, types=truth.types,
                  lambda_per_type=truth.lambda_per_type,
                  baseline_per_type=truth.baseline_per_type)
    _atomic_savez(out / "training.npz", concentrations=traj, delta_t=np.array(sim.delta_t),
                  S=stoich.S, substrate_index=stoich.substrate_index,
                  substrate_coeff=stoich.substrate_coeff)
    (out / "simulation.yaml").write_text(cfg.to_yaml())
    return out


def ensure_dataset(cfg: Config, data_root: Path) -> Path:
    out = dataset_dir(cfg, data_root)
    if not ((out / "training.npz").is_file() and (out / "ground_truth.npz").is_file()):
        build_dataset(cfg, data_root)
    return out


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file missing (run experiments/phase1.py or "
                                "phase2.py to build it)")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def load_training_data(folder: Path) -> TrainingData:
    d = _load_npz(Path(folder) / "training.npz")
    stoich = Stoichiometry(S=d["S"], substrate_index=d["substrate_index"],
                           substrate_coeff=d["substrate_coeff"])
    return TrainingData(concentrations=d["concentrations"], delta_t=float(d["delta_t"]),
                        stoich=stoich)


def load_ground_truth(folder: Path) -> GroundTruth:
    d = _load_npz(Path(folder) / "ground_truth.npz")
    return GroundTruth(log10_k=d["log10_k"], types=d["types"],
                       lambda_per_type=d["lambda_per_type"],
                       baseline_per_type=d["baseline_per_type"])
