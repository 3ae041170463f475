"""What the network's conserved quantities say about homeostasis, with no reaction model.

Every m with m^T S = 0 (the total amount, when every reaction conserves mass) is changed by
homeostasis alone: m^T dc/dt = sum_i m_i h_i(c_i), whatever the reaction rates. Regressing
m^T dc/dt on the concentrations gives each metabolite's homeostatic slope a_i from the training
data and S only: no Phase 1 error, no labels. It assumes a law linear in c_i over the data
(SPEC's -lambda (c - cb)); the offsets only enter through their sum, so they are not
identified one by one.
"""

from __future__ import annotations

import numpy as np

from metabolism.data import TrainingData
from metabolism.observations import endpoint_weights


def finite_differences(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """(c_t, (c_{t+1} - c_t) / frame interval) in float64 over the unclamped transitions: the
    conserved totals change by ~1e-3 per unit time, below float32's resolution of the
    differences. With k Euler steps between observed frames the difference is the rate at
    the Euler-weighted mean of the two end states (observations.endpoint_weights), as in
    Phase 1's targets."""
    c = data.concentrations
    keep = (c[1:] > 0).all(1)
    x = c[:-1]
    if data.observe_every > 1:
        w_left, w_right = endpoint_weights(data.delta_t, data.observe_every)
        x = w_left * c[:-1] + w_right * c[1:]
    return x[keep], ((c[1:] - c[:-1]) / data.frame_interval)[keep]


def conserved_quantities(S: np.ndarray) -> np.ndarray:
    """An orthonormal basis (N, K) of {m : m^T S = 0}; K = 0 when nothing is conserved."""
    u, s, _ = np.linalg.svd(S)
    rank = int((s > s.max(initial=0.0) * max(S.shape) * np.finfo(float).eps).sum())
    return u[:, rank:]


def conserved_law_slopes(x: np.ndarray, dcdt: np.ndarray, S: np.ndarray) -> np.ndarray | None:
    """a_i from m_k^T dc/dt(t) = sum_i m_ki (a_i c_i(t)) + const_k, least squares over all
    frames and conserved m_k; None when there is no m_k or the frames do not determine a.

    Solved with the metabolites in an order read from the data (first frame, then mean
    concentration), so that renumbering them changes nothing, not even the rounding: the
    least squares and the SVD round differently when their columns come in another order."""
    order = np.lexsort((x.mean(0), x[0]))
    x, dcdt, S = x[:, order], dcdt[:, order], S[order]
    M = conserved_quantities(S)
    n, k = M.shape
    if k == 0:
        return None
    rows = [np.hstack([x * M[:, j], np.eye(k)[j][None, :].repeat(len(x), 0)]) for j in range(k)]
    design, target = np.vstack(rows), np.concatenate([dcdt @ M[:, j] for j in range(k)])
    sol, _, rank, _ = np.linalg.lstsq(design, target, rcond=None)
    if rank != n + k:
        return None
    a = np.empty(n)
    a[order] = sol[:n]
    return a
