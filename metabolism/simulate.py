"""Ground-truth dynamics: mass-action reactions plus per-type homeostasis, explicit Euler."""

from __future__ import annotations

import numpy as np

from metabolism.network import GroundTruth, Stoichiometry


def reaction_rates(c: np.ndarray, stoich: Stoichiometry, log10_k: np.ndarray) -> np.ndarray:
    """v_j = k_j * prod_{k in substrates(j)} c_k^|s_kj|, vectorized over leading dims of c."""
    gathered = c[..., stoich.substrate_index]  # (..., R, M)
    factors = np.where(stoich.substrate_coeff > 0, gathered ** stoich.substrate_coeff, 1.0)
    return 10.0 ** log10_k * factors.prod(axis=-1)


def true_dcdt(c: np.ndarray, stoich: Stoichiometry, truth: GroundTruth) -> np.ndarray:
    """dc/dt = S v - lambda_t(i) (c_i - cb_t(i))."""
    v = reaction_rates(c, stoich, truth.log10_k)
    return v @ stoich.S.T - truth.lam * (c - truth.baseline)


def initial_concentrations(n_metabolites: int, low: float, high: float, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1]).uniform(low, high, size=n_metabolites)


def simulate(c0: np.ndarray, stoich: Stoichiometry, truth: GroundTruth, delta_t: float,
             n_frames: int) -> np.ndarray:
    """Explicit Euler with c clamped at >= 0; returns (n_frames, N) float64, frame 0 = c0."""
    traj = np.empty((n_frames, c0.shape[-1]))
    c = np.asarray(c0, dtype=np.float64).copy()
    traj[0] = c
    for t in range(1, n_frames):
        c = np.maximum(c + delta_t * true_dcdt(c, stoich, truth), 0.0)
        if not np.all(np.isfinite(c)):
            raise FloatingPointError(f"simulation diverged at frame {t} (non-finite concentration)")
        traj[t] = c
    return traj
