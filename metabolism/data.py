"""Datasets on disk: what training may see, kept apart from what only evaluation may see.

A regime's dataset lives in ``<data_root>/<simulation-hash>/``:
  training.npz      observed concentrations (every observe_every-th Euler frame, with the
                    measurement noise) + stoichiometry  -> TrainingData (no labels, no rates)
  ground_truth.npz  types, lambda, baselines, true log10 k -> GroundTruth, and (when noisy
                    or sparse) the noiseless observed frames (evaluation only)
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

    concentrations: np.ndarray  # (F, N) float64 observed trajectory
    delta_t: float  # the Euler step the model integrates with
    stoich: Stoichiometry
    observe_every: int = 1  # Euler steps between two observed frames

    @property
    def n_frames(self) -> int:
        return self.concentrations.shape[0]

    @property
    def frame_interval(self) -> float:
        """Time between two observed frames."""
        return self.delta_t * self.observe_every


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
    clean, measured = observe(traj, sim.observe_every, sim.observation_noise, sim.seed)
    files = {
        "ground_truth.npz": dict(log10_k=truth.log10_k, types=truth.types,
                                 lambda_per_type=truth.lambda_per_type,
                                 baseline_per_type=truth.baseline_per_type),
        "training.npz": dict(concentrations=measured, delta_t=np.array(sim.delta_t),
                             S=stoich.S, substrate_index=stoich.substrate_index,
                             substrate_coeff=stoich.substrate_coeff),
    }
    if _observed_differently(cfg):  # the default regime's files stay exactly as they were
        files["ground_truth.npz"]["clean_concentrations"] = clean
        files["training.npz"]["observe_every"] = np.array(sim.observe_every)
    return files


def _observed_differently(cfg: Config) -> bool:
    return cfg.simulation.observation_noise != 0 or cfg.simulation.observe_every != 1


def observe(traj: np.ndarray, observe_every: int, noise: float, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """(noiseless observed frames, measured frames): every k-th Euler frame, then relative
    Gaussian noise c * (1 + noise * eps), eps ~ N(0, 1) from its own stream of `seed`."""
    clean = traj[::observe_every]
    if noise == 0:
        return clean, clean
    eps = np.random.default_rng([seed, 2]).standard_normal(clean.shape)
    return clean, clean * (1.0 + noise * eps)


def expected_shapes(cfg: Config) -> dict[str, dict[str, tuple | None]]:
    """What each dataset file must hold for this config (None: a size the network decides)."""
    sim = cfg.simulation
    N, R, T = sim.n_metabolites, sim.n_reactions, sim.n_metabolite_types
    F = (sim.n_frames - 1) // sim.observe_every + 1
    shapes = {
        "training.npz": {"concentrations": (F, N), "delta_t": (), "S": (N, R),
                         "substrate_index": (R, None), "substrate_coeff": (R, None)},
        "ground_truth.npz": {"log10_k": (R,), "types": (N,), "lambda_per_type": (T,),
                             "baseline_per_type": (T,)},
    }
    if _observed_differently(cfg):
        shapes["training.npz"]["observe_every"] = ()
        shapes["ground_truth.npz"]["clean_concentrations"] = (F, N)
    return shapes


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
                        stoich=stoich, observe_every=int(d.get("observe_every", 1)))


def load_ground_truth(folder: Path) -> GroundTruth:
    d = _load_npz(Path(folder) / "ground_truth.npz",
                  {k: None for k in ("log10_k", "types", "lambda_per_type", "baseline_per_type")})
    return GroundTruth(log10_k=d["log10_k"], types=d["types"],
                       lambda_per_type=d["lambda_per_type"],
                       baseline_per_type=d["baseline_per_type"])


def report(line: str) -> None:
    """A cache problem and what was done about it: one line on stderr, never silent."""
    print(f"cache: {line}", file=sys.stderr, flush=True)


def load_clean_concentrations(folder: Path) -> np.ndarray:
    """The noiseless observed frames (evaluation only); a dataset observed without noise at
    every frame is its own clean trajectory."""
    d = _load_npz(Path(folder) / "ground_truth.npz", {})
    if "clean_concentrations" in d:
        return d["clean_concentrations"]
    return _load_npz(Path(folder) / "training.npz", {"concentrations": None})["concentrations"]
