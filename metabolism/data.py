"""Datasets on disk: what training may see, kept apart from what only evaluation may see.

A regime's dataset lives in ``<data_root>/<simulation-hash>/``:
  training.npz      concentrations + stoichiometry  -> TrainingData (no labels, no rates)
  ground_truth.npz  types, lambda, baselines, true log10 k -> GroundTruth (evaluation only)
The hash covers every simulation key, so a changed config never reuses a stale cache; each
file's integrity record (metabolism/integrity.py) catches a corrupt or truncated one.
"""

from __future__ import annotations

import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metabolism.config import Config
from metabolism.files import replace_atomically, write_text_atomically
from metabolism.integrity import (CacheError, NoRecord, cache_lock, describe_arrays, verify,
                                  write_record)
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


TRAINING_ARRAYS = ("concentrations", "delta_t", "S", "substrate_index", "substrate_coeff")


def dataset_dir(cfg: Config, data_root: Path) -> Path:
    return Path(data_root) / f"sim-{cfg.hash_of('simulation')}"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    replace_atomically(path, lambda fh: np.savez(fh, **arrays))
    write_record(path, describe_arrays(arrays))


def simulated_arrays(cfg: Config) -> dict[str, dict[str, np.ndarray]]:
    """{file name: arrays} of the regime's dataset, simulated (deterministic in its seed)."""
    sim = cfg.simulation
    stoich, truth = generate_network(sim)
    c0 = initial_concentrations(sim.n_metabolites, *sim.initial_concentration_range, sim.seed)
    traj = simulate(c0, stoich, truth, sim.delta_t, sim.n_frames)
    return {
        "ground_truth.npz": dict(log10_k=truth.log10_k, types=truth.types,
                                 lambda_per_type=truth.lambda_per_type,
                                 baseline_per_type=truth.baseline_per_type),
        "training.npz": dict(concentrations=traj, delta_t=np.array(sim.delta_t), S=stoich.S,
                             substrate_index=stoich.substrate_index,
                             substrate_coeff=stoich.substrate_coeff),
    }


def expected_shapes(cfg: Config) -> dict[str, dict[str, tuple | None]]:
    """What each dataset file must hold for this config (None: a size the network decides)."""
    sim = cfg.simulation
    N, R, T = sim.n_metabolites, sim.n_reactions, sim.n_metabolite_types
    return {
        "training.npz": {"concentrations": (sim.n_frames, N), "delta_t": (), "S": (N, R),
                         "substrate_index": (R, None), "substrate_coeff": (R, None)},
        "ground_truth.npz": {"log10_k": (R,), "types": (N,), "lambda_per_type": (T,),
                             "baseline_per_type": (T,)},
    }


def build_dataset(cfg: Config, data_root: Path) -> Path:
    """Simulate the regime and write both files with their records; returns the folder."""
    out = dataset_dir(cfg, data_root)
    for name, arrays in simulated_arrays(cfg).items():
        _atomic_savez(out / name, **arrays)
    write_text_atomically(out / "simulation.yaml", cfg.to_yaml())
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CacheError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _adopt_by_rebuild(cfg: Config, out: Path) -> bool:
    """Files written before records existed: simulate again and keep them (recorded) only if
    every array is identical; True if adopted."""
    fresh = simulated_arrays(cfg)
    for name, arrays in fresh.items():
        try:
            old = _read_npz(out / name)
        except CacheError:
            return False
        if set(old) != set(arrays) or not all(
                old[k].dtype == v.dtype and np.array_equal(old[k], v) for k, v in arrays.items()):
            return False
    for name, arrays in fresh.items():
        write_record(out / name, describe_arrays(arrays))
    return True


def ensure_dataset(cfg: Config, data_root: Path, rebuild: bool = True) -> Path:
    """The regime's dataset folder, checked against its records; a missing file is built,
    a corrupt one rebuilt (or, with rebuild=False, refused with CacheError)."""
    out = dataset_dir(cfg, data_root)
    with cache_lock(out):
        files = [out / "training.npz", out / "ground_truth.npz"]
        if not all(f.exists() for f in files):  # first use (or a file deleted): build
            build_dataset(cfg, data_root)
            return out
        try:
            for f in files:
                verify(f, expected_shapes(cfg)[f.name])
            return out
        except NoRecord as exc:
            if _adopt_by_rebuild(cfg, out):
                report(f"{exc}; identical to a fresh simulation, recorded")
                return out
            problem = f"{exc}; differs from a fresh simulation"
        except CacheError as exc:
            problem = str(exc)
        if not rebuild:
            raise CacheError(f"{problem} (not rebuilt: --no-rebuild)")
        report(f"{problem}; rebuilding the dataset")
        build_dataset(cfg, data_root)
    return out


def _load_npz(path: Path, expected: dict[str, tuple | None]) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file missing (run experiments/phase1.py or "
                                "phase2.py to build it)")
    verify(path, expected)
    return _read_npz(path)


def load_training_data(folder: Path) -> TrainingData:
    d = _load_npz(Path(folder) / "training.npz", {k: None for k in TRAINING_ARRAYS})
    stoich = Stoichiometry(S=d["S"], substrate_index=d["substrate_index"],
                           substrate_coeff=d["substrate_coeff"])
    return TrainingData(concentrations=d["concentrations"], delta_t=float(d["delta_t"]),
                        stoich=stoich)


def load_ground_truth(folder: Path) -> GroundTruth:
    d = _load_npz(Path(folder) / "ground_truth.npz",
                  {k: None for k in ("log10_k", "types", "lambda_per_type", "baseline_per_type")})
    return GroundTruth(log10_k=d["log10_k"], types=d["types"],
                       lambda_per_type=d["lambda_per_type"],
                       baseline_per_type=d["baseline_per_type"])


def report(line: str) -> None:
    """A cache problem and what was done about it: one line on stderr, never silent."""
    print(f"cache: {line}", file=sys.stderr, flush=True)
