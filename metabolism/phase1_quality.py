"""How far the frozen Phase 1 can be trusted, measured in the residual Phase 2 learns from.

Phase 2 fits MLP_node to r_i(t) = dc_i/dt - (frozen reactions)_i: metabolite i's homeostatic
law (a function of c_i) plus Phase 1's error. `rate_constants_R2` does not show that error (it
moves 0.981 -> 0.975 while the residual gets 4.5x noisier). The network's conserved totals
(metabolism.conservation) give each metabolite's homeostatic slope a_i without Phase 1; against
it, gauge-free and without labels, lambda or cb:

- law_error: median over metabolites of |slope of r_i against c_i - a_i|, relative to the
  median |a_i|: how wrong the law is that the residual teaches Phase 2 (bias and scatter);
- noise_to_signal: median over metabolites of the spread of r_i - a_i c_i (Phase 1's error,
  MAD sigma) over the spread of a_i c_i over the data (the signal to reveal).

A network with no conserved quantity has no such reference, and on noisy observations the
reference cannot be determined (one-frame differences of the totals are dominated by the
noise, and the least squares behind a_i is ill-conditioned): the reference is estimated on
each half of the frames, and when the halves disagree by more than MAX_LAW_ERROR the measures
are NaN and the verdict is "unknown" rather than a number that only reflects the noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kernels.reference import reaction_dcdt
from metabolism.conservation import conserved_law_slopes, conserved_quantities, finite_differences
from metabolism.data import TrainingData
from metabolism.observations import NOISE_THRESHOLD, estimate_relative_noise, is_noisy

N_BINS = 8
# The residual's per-metabolite law may be off by at most the half-width of the slope-ratio
# target band (0.8-1.2): beyond it, Phase 2's slopes are set by Phase 1's error, not the data.
MAX_LAW_ERROR = 0.2


@dataclass
class Phase1Quality:
    law_error: float  # median |residual slope - conserved-total slope| / median |slope|
    noise_to_signal: float  # median over metabolites of Phase 1's error / the law's spread
    residual_noise: float  # median over metabolites of Phase 1's error in r_i (MAD sigma)
    n_conserved: int  # conserved quantities of S the reference is built from
    # median |a_i(first half) - a_i(second half)| / median |a_i|: whether the reference holds
    reference_disagreement: float = 0.0
    observation_noise: float = 0.0  # relative, estimated from the data; above NOISE_THRESHOLD
    # the reference is not computed

    @property
    def verdict(self) -> str:
        if not np.isfinite(self.law_error):
            return "unknown"
        return "trusted" if self.law_error <= MAX_LAW_ERROR else "untrusted"

    @property
    def reason(self) -> str:
        if self.verdict == "unknown" and self.observation_noise > NOISE_THRESHOLD:
            return (f"noisy observations (relative noise about {self.observation_noise:.2g}): "
                    "the conserved totals give no Phase-1-free reference from such data")
        if self.verdict == "unknown" and self.n_conserved == 0:
            return "S conserves no quantity: no Phase-1-free reference for the law"
        if self.verdict == "unknown":
            return (f"the conserved totals give no reliable reference on these data (the law "
                    f"from each half of the frames differs by {self.reference_disagreement:.2f}"
                    f" of it, limit {MAX_LAW_ERROR:g}; noisy observations do this)")
        return (f"the residual's per-metabolite slopes are off by {self.law_error:.2f} of the "
                f"law the conserved totals show (limit {MAX_LAW_ERROR:g}); Phase 1's error is "
                f"{self.noise_to_signal:.1f}x the homeostatic signal")

    def metrics(self) -> dict[str, float]:
        return {"phase1_law_error": self.law_error,
                "phase1_noise_to_signal": self.noise_to_signal,
                "phase1_residual_noise": self.residual_noise,
                "phase1_reference_disagreement": self.reference_disagreement,
                "phase1_trusted": {"trusted": 1.0, "untrusted": 0.0}.get(self.verdict, np.nan)}


def relative_slope_error(slopes: np.ndarray, a: np.ndarray) -> float:
    """median |slopes_i - a_i| / median |a_i|: how far per-metabolite slopes are from the
    reference's, in units of its typical slope."""
    return float(np.median(np.abs(slopes - a)) / max(float(np.median(np.abs(a))), 1e-300))


def mad_sigma(a: np.ndarray, axis: int = 0) -> np.ndarray:
    med = np.median(a, axis=axis, keepdims=True)
    return 1.4826 * np.median(np.abs(a - med), axis=axis)


def own_concentration_slopes(x: np.ndarray, r: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Per metabolite, the slope of the line through the medians of r_i in quantile bins of
    c_i (robust to Phase 1's heavy-tailed error); x, r are (F, N)."""
    slope = np.zeros(x.shape[1])
    for i in range(x.shape[1]):
        edges = np.quantile(x[:, i], np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(edges, x[:, i], side="right") - 1, 0, n_bins - 1)
        bins = [which == b for b in range(n_bins) if (which == b).any()]
        cx = np.array([np.median(x[sel, i]) for sel in bins])
        cy = np.array([np.median(r[sel, i]) for sel in bins])
        if len(cx) >= 2 and np.ptp(cx) > 0:
            slope[i] = np.polyfit(cx, cy, 1, w=np.sqrt([sel.sum() for sel in bins]))[0]
    return slope


def phase2_residual(model, data: TrainingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c_t, dc/dt, r_t): the frames and the residual Phase 2 learns from, float64 (F', N)."""
    x, y = finite_differences(data)
    with torch.no_grad():
        fr = model.frozen_reactions()
        xt = torch.as_tensor(x, dtype=torch.float32)
        reaction = torch.cat([reaction_dcdt(xc, fr) for xc in xt.split(512)])
    return x, y, y - reaction.double().numpy()


def _without_reference(residual: np.ndarray, n_conserved: int, **why) -> Phase1Quality:
    """The "unknown" verdict: no law measures, only the residual's own spread."""
    return Phase1Quality(np.nan, np.nan, float(np.median(mad_sigma(residual))), n_conserved,
                         **why)


def reference_slopes(x: np.ndarray, dcdt: np.ndarray, S: np.ndarray
                     ) -> tuple[np.ndarray | None, float]:
    """(a, disagreement): the conserved totals' homeostatic slopes from all frames, and how far
    those from each half of the frames differ (median, relative to median |a|); a is None
    when the frames do not determine it."""
    a = conserved_law_slopes(x, dcdt, S)
    half = len(x) // 2
    halves = [conserved_law_slopes(x[sl], dcdt[sl], S) for sl in (slice(None, half),
                                                                  slice(half, None))]
    if a is None or any(h is None for h in halves):
        return None, float("nan")
    return a, float(np.median(np.abs(halves[0] - halves[1]))
                    / max(float(np.median(np.abs(a))), 1e-300))


def trusted_reference(data: TrainingData) -> tuple[np.ndarray, float] | None:
    """(a, disagreement): the conserved totals' slope a_i of each metabolite and how far the
    halves of the frames differ on it (reference_slopes), or None where they give no reliable
    one (noisy observations, nothing conserved, halves of the frames disagreeing)."""
    if is_noisy(data.concentrations):
        return None
    a, disagreement = reference_slopes(*finite_differences(data), data.stoich.S)
    return (a, disagreement) if a is not None and disagreement <= MAX_LAW_ERROR else None


def learned_law_error(learned_slopes: np.ndarray, data: TrainingData) -> float:
    """median |learned slope_i - a_i| / median |a_i|: how far a trained run's law (MLP_node's
    slope over each metabolite's range) left the one the conserved totals show, from the data
    alone; NaN where they give no reliable reference. The Phase 1 verdict reads the residual
    before training; this reads the result: on the s9 studies 0.001-0.012 in 98 runs, 0.28
    and 0.43 in the two whose rollout term had pulled type 1 to 0.81 and 0.65 of its law."""
    reference = trusted_reference(data)
    if reference is None:
        return float("nan")
    a = reference[0]
    return relative_slope_error(learned_slopes, a)


def assess_residual(x: np.ndarray, dcdt: np.ndarray, residual: np.ndarray,
                    S: np.ndarray) -> Phase1Quality:
    """The verdict on a residual (F, N) of the frames x with finite differences dcdt."""
    n_conserved = conserved_quantities(S).shape[1]
    a, disagreement = reference_slopes(x, dcdt, S)
    if a is None:
        return _without_reference(residual, n_conserved, reference_disagreement=np.nan)
    if disagreement > MAX_LAW_ERROR:
        return _without_reference(residual, n_conserved, reference_disagreement=disagreement)
    noise = mad_sigma(residual - a * x)
    signal = np.abs(a) * mad_sigma(x)
    law = own_concentration_slopes(x, residual)
    return Phase1Quality(
        law_error=relative_slope_error(law, a),
        noise_to_signal=float(np.median(noise / np.maximum(signal, 1e-300))),
        residual_noise=float(np.median(noise)), n_conserved=n_conserved,
        reference_disagreement=disagreement)


def assess_phase1(model, data: TrainingData) -> Phase1Quality:
    """The trust verdict on a frozen Phase 1 model, from the training data alone. On data the
    noise estimate calls noisy the reference is not computed at all: one-frame differences of
    the totals are noise there, and errors in the concentrations shrink the least-squares
    slopes towards zero consistently in both halves, which the halves' check cannot see."""
    x, dcdt, residual = phase2_residual(model, data)
    noise = estimate_relative_noise(data.concentrations)
    if noise > NOISE_THRESHOLD:
        return _without_reference(residual, conserved_quantities(data.stoich.S).shape[1],
                                  reference_disagreement=np.nan, observation_noise=noise)
    return assess_residual(x, dcdt, residual, data.stoich.S)
