"""What the trainers can learn about their observations from the data alone: the noise level,
smoothed derivatives, and integrals of the model along the observed trajectory.

Measured concentrations carry noise and are sampled every `observe_every` Euler steps. A
one-frame difference of such data is dominated by noise (0.1% of c ~ 5 is ~0.07 in dc/dt at
dt 0.1, against a homeostatic term of 0.001-0.01), so the trainers switch to smoothed or
integrated targets when the data says it is noisy. Nothing here reads ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import savgol_filter

# Relative noise above which the trainers stop using one-frame differences. The estimate on
# noiseless Euler data is ~1e-6 (the fourth difference of a smooth trajectory), on 0.1% noise
# ~1e-3: the threshold sits well between the two.
NOISE_THRESHOLD = 1e-4

# Var of the 4th difference of i.i.d. noise = 70 sigma^2 (sum of squared binomial coefficients)
_FOURTH_DIFF_GAIN = float(np.sqrt(70.0))


def estimate_relative_noise(concentrations: np.ndarray | torch.Tensor) -> float:
    """Median over metabolites of robust-sd(4th frame difference / c) / sqrt(70).

    The fourth difference removes a smooth trajectory (cubic trends exactly) and keeps the
    measurement noise; dividing by the central frame's c makes relative noise comparable
    across metabolites; MAD makes it blind to the rare kinks where a concentration clamps at
    0. A trajectory sampled too sparsely to be smooth (fast oscillations between frames) reads
    as noisy too, and then smoothed or integrated targets are the right choice anyway.
    """
    if isinstance(concentrations, torch.Tensor):
        concentrations = concentrations.detach().cpu().double().numpy()
    c = np.asarray(concentrations, dtype=np.float64)
    if c.shape[0] < 6:
        return 0.0
    mid = c[2:-2]
    ok = mid > 0
    rel = np.where(ok, np.diff(c, n=4, axis=0) / np.where(ok, mid, 1.0), np.nan)
    med = np.nanmedian(rel, axis=0, keepdims=True)
    sigma = 1.4826 * np.nanmedian(np.abs(rel - med), axis=0) / _FOURTH_DIFF_GAIN
    sigma = sigma[np.isfinite(sigma)]
    return float(np.median(sigma)) if sigma.size else 0.0


def is_noisy(concentrations: np.ndarray | torch.Tensor) -> bool:
    return estimate_relative_noise(concentrations) > NOISE_THRESHOLD


def savgol_window_for(noise: float) -> int:
    """An odd Savitzky-Golay window (frames) for a relative noise level: half-width
    3 (noise/0.1%)^(2/9), the growth of the bias-variance optimum of a cubic derivative fit.
    The constant 3 was the best on the default network's trajectory at 0.1% noise (7 frames;
    11 at 1%, 13-15 at 3%, judged against the true rate law)."""
    half = max(2, round(3 * (max(noise, 1e-12) / 1e-3) ** (2 / 9)))
    return 2 * half + 1


def savgol_targets(concentrations: np.ndarray, delta_t: float, observe_every: int,
                   window: int, polyorder: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(states, dc/dt at those states, keep mask) from a Savitzky-Golay fit per metabolite.

    The smoothed derivative at frame t is the slope of the Euler path there, which is the rate
    of the state half an Euler step earlier: the state returned is the smoothed c moved back by
    dt/2 (at one Euler step per frame, the mean of frames t-1 and t), not frame t itself (on the
    default network that halves the error against the true rate law). keep drops the frames
    whose window touches a clamped (zero) concentration, where the trajectory is not smooth,
    and the half-windows at both ends (scipy extrapolates there).
    """
    c = np.asarray(concentrations, dtype=np.float64)
    if window > c.shape[0]:
        raise ValueError(f"savgol_window {window} is longer than the {c.shape[0]} observed frames")
    smooth = savgol_filter(c, window, polyorder, axis=0)
    deriv = savgol_filter(c, window, polyorder, deriv=1, delta=delta_t * observe_every, axis=0)
    back = np.vstack([smooth[:1], smooth[:-1]])
    states = smooth - (smooth - back) / (2 * observe_every)
    clamped = (c <= 0).any(1).astype(np.float64)
    touched = np.convolve(clamped, np.ones(window), mode="same") > 0
    keep = ~touched
    half = window // 2
    keep[:half + 1] = False
    keep[c.shape[0] - half:] = False
    return states, deriv, keep


def endpoint_weights(delta_t: float, observe_every: int) -> tuple[float, float]:
    """(w_left, w_right): the integral of f over k Euler steps between two observed frames,
    as w_left f(c_t) + w_right f(c_{t+1}) in units of the frame interval.

    The Euler sum dt * sum_{j<k} f(t + j dt) is the integral minus dt/2 (f_end - f_start)
    (Euler-Maclaurin), and the trapezoid gives the integral: w = (1 + 1/k) / 2, (1 - 1/k) / 2.
    At k = 1 this is exactly the Euler step (1, 0), so noiseless data reproduces the
    simulator's own rule; the plain trapezoid would not.
    """
    k = int(observe_every)
    return 0.5 * (1 + 1 / k), 0.5 * (1 - 1 / k)


def window_sums(per_interval: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over every run of `window` consecutive intervals: (F - 1, N) -> (F - window, N)."""
    zero = torch.zeros_like(per_interval[:1])
    csum = torch.cat([zero, per_interval.cumsum(0)])
    return csum[window:] - csum[:-window]
