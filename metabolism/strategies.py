"""The eight Phase 2 strategies of the seed, as small pure functions the trainer composes.

Each reads only its own config block and learned quantities. None of them can read metabolite
types: they receive the model, concentrations and frozen reaction terms, nothing else.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

import numpy as np
import torch

from kernels import reaction_dcdt
from metabolism import observations as obs
from metabolism.config import StrategiesConfig
from metabolism.phase1_quality import trusted_reference
from metabolism.data import TrainingData


# 1. residual supervision ---------------------------------------------------------------


def _frozen_reaction_dcdt(model, c: torch.Tensor) -> torch.Tensor:
    c = c.to(device=model.S.device, dtype=model.embeddings.dtype)
    with torch.no_grad():
        fr = model.frozen_reactions()
        return torch.cat([reaction_dcdt(xc, fr) for xc in c.split(512)])


def residual_targets(model, concentrations: torch.Tensor, delta_t: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_t, true dc/dt - frozen reaction dc/dt) for every unclamped transition.

    What the frozen reactions cannot explain is what MLP_node must: the homeostatic residual.
    """
    x, nxt = concentrations[:-1], concentrations[1:]
    keep = (nxt > 0).all(1)
    x, nxt = x[keep], nxt[keep]
    return x, (nxt - x) / delta_t - _frozen_reaction_dcdt(model, x)


def interval_means(model, concentrations: torch.Tensor, delta_t: float, observe_every: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per observed interval, the time averages of the state and of the frozen reaction term
    over its k Euler steps, (F - 1, N) each, float64.

    Between two observed frames the state is followed by k Euler steps started afresh from
    each observed frame (so Phase 1's error compounds over k steps at most, never through the
    trajectory): first of the frozen reactions alone, then once more with the interval's own
    residual from that first pass added as a constant drift, so the path ends near the next
    frame. The end points alone do not do: on the default network observed every 10th step
    the fast reactions bend the path between frames, and the end-point rule biased the
    targets' slopes 1.2-3.5x even with the true reactions (the reactions-only path: 1.0-1.08).
    At k = 1 it is the left point, the simulator's own step.
    """
    c64 = concentrations.double()
    start, start_reaction = c64[:-1], _frozen_reaction_dcdt(model, concentrations).double()[:-1]
    if observe_every == 1:
        return start, start_reaction
    frame_change = (c64[1:] - c64[:-1]) / (observe_every * delta_t)
    drift = torch.zeros_like(start)
    for _ in range(2):
        state, reaction = start, start_reaction
        state_sum, reaction_sum = state.clone(), reaction.clone()
        for _ in range(observe_every - 1):
            state = (state + delta_t * (reaction + drift)).clamp_min(0.0)
            reaction = _frozen_reaction_dcdt(model, state.to(concentrations.dtype)).double()
            state_sum += state
            reaction_sum += reaction
        drift = frame_change - reaction_sum / observe_every
    return state_sum / observe_every, reaction_sum / observe_every


def window_residual_targets(model, concentrations: torch.Tensor, delta_t: float,
                            observe_every: int, window: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual targets integrated over `window` observed intervals, per unit time:

        y = [c(t+W) - c(t) - integral of the frozen reaction term along the observed
             trajectory] / (W * frame interval),   x = the time average of c over the window.

    The reaction term is evaluated on the observed frames (and, between frames, on k Euler
    steps of the frozen reactions from each: interval_means), never on a state rolled out
    through the trajectory, so Phase 1's error does not compound; the noise of the two end
    points is divided by the window's length while the homeostatic drift it has to reveal
    grows with it. MLP_node is matched at the window's mean concentration (exact for a law
    linear in c, first order otherwise). Windows that touch a clamped frame are dropped. Sums
    run in float64.
    """
    c = concentrations
    frame_dt = delta_t * observe_every
    c64 = c.double()
    state_mean, reaction_mean = interval_means(model, c, delta_t, observe_every)
    reaction_sum = obs.window_sums(reaction_mean, window)
    c_mean = obs.window_sums(state_mean, window) / window
    y = (c64[window:] - c64[:-window]) / (window * frame_dt) - reaction_sum / window
    clamped = (c64 <= 0).any(1).double()
    keep = obs.window_sums(clamped[:, None], window + 1)[:, 0] == 0  # frames t..t+W
    return c_mean[keep].to(c.dtype), y[keep].to(c.dtype)


def savgol_residual_targets(model, concentrations: torch.Tensor, delta_t: float,
                            observe_every: int, window: int, polyorder: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline: (smoothed c, Savitzky-Golay dc/dt - frozen reaction term at smoothed c)."""
    smooth, deriv, keep = obs.savgol_targets(concentrations.double().cpu().numpy(), delta_t,
                                             observe_every, window, polyorder)
    like = dict(dtype=concentrations.dtype, device=concentrations.device)
    x = torch.as_tensor(smooth[keep], **like)
    y = torch.as_tensor(deriv[keep], **like)
    return x, y - _frozen_reaction_dcdt(model, x).to(**like)


def choose_residual_targets(cfg: StrategiesConfig, concentrations, time_step: int
                            ) -> tuple[str, int]:
    """(targets, window) after resolving "auto" from the data: one-frame differences on data
    the noise estimate calls clean (they are exact for noiseless Euler data), windows of the
    slot's time step otherwise."""
    targets = cfg.residual_supervision.targets
    if targets == "auto":
        targets = "window" if obs.is_noisy(concentrations) else "difference"
    return targets, residual_window(cfg, time_step)


def residual_window(cfg: StrategiesConfig, time_step: int) -> int:
    """Frames a "window" residual target spans: residual_supervision.window, else the slot's
    time step."""
    return cfg.residual_supervision.window or time_step


class ResidualTargets(NamedTuple):
    """Residual targets and what they are: `span` is how many observed frames one target's
    noise reaches over, so that split halves of the data can be kept apart by it."""
    x: torch.Tensor
    y: torch.Tensor
    description: str
    span: int


def residual_targets_for(model, concentrations: torch.Tensor, delta_t: float,
                         observe_every: int, cfg: StrategiesConfig, time_step: int
                         ) -> ResidualTargets:
    """The residual targets the config asks for."""
    targets, window = choose_residual_targets(cfg, concentrations, time_step)
    rs = cfg.residual_supervision
    if targets == "savgol":
        sg_window = rs.savgol_window or obs.savgol_window_for(
            obs.estimate_relative_noise(concentrations))
        x, y = savgol_residual_targets(model, concentrations, delta_t, observe_every,
                                       sg_window, rs.savgol_polyorder)
        return ResidualTargets(x, y, f"savgol(window={sg_window}, polyorder={rs.savgol_polyorder})",
                               sg_window)
    if targets == "window":
        x, y = window_residual_targets(model, concentrations, delta_t, observe_every, window)
        return ResidualTargets(x, y, f"window({window})", window)
    if observe_every == 1:
        x, y = residual_targets(model, concentrations, delta_t)
    else:  # one interval of k Euler steps, the reactions followed between the frames
        x, y = window_residual_targets(model, concentrations, delta_t, observe_every, 1)
    return ResidualTargets(x, y, "difference", 1)


# Two metabolites share a law's offset when their conserved-total slopes agree within this
# many times the reference's own scatter (the halves' disagreement). Within a type the slopes
# agree to 2-6x that scatter on every noiseless regime here, types differ by >= 1e7x of it.
SLOPE_MATCH = 100.0


def uses_conserved_law(st: StrategiesConfig, data: TrainingData) -> bool:
    """Whether residual supervision will learn from the conserved-law lines on these data
    (conserved_law_targets applies them) rather than from the residual."""
    rs = st.residual_supervision
    return rs.enabled and rs.target == "conserved_law" and trusted_reference(data) is not None


class LawTargets(NamedTuple):
    targets: torch.Tensor  # (F, N): the lines a_i c + b_i, or the residual where not applied
    applied: bool  # whether the lines replaced the residual
    groups: torch.Tensor | None  # (N,) law of each metabolite ("slope_group"), else None


def slope_groups(a: np.ndarray, tolerance: float) -> np.ndarray:
    """(N,) group ids: runs of the sorted slopes whose neighbours differ by at most
    `tolerance`. A partition: every metabolite of a group gets the group's one law."""
    order = np.argsort(a, kind="stable")
    ids = np.empty(len(a), dtype=np.int64)
    ids[order] = np.concatenate([[0], np.cumsum(np.diff(a[order]) > tolerance)])
    return ids


def conserved_law_targets(data: TrainingData, x: torch.Tensor, residual: torch.Tensor,
                          offsets: str = "slope_group") -> LawTargets:
    """Each metabolite's residual replaced by its line a_i c + b_i over the frames x.

    a_i comes from the conserved totals (no Phase 1 error enters it). The totals fix only the
    sum of the offsets, so b_i comes from the residual: the median of residual_i - a_i c_i
    ("metabolite"), where a weak law or a poor Phase 1 leaves it off by one or two times the
    true offset, enough to put a metabolite on the other type's curve. "slope_group" takes the
    median of those medians over every metabolite whose slope agrees with a_i (SLOPE_MATCH):
    a law is one (slope, offset) pair, so metabolites of one slope share one offset. Its
    assumption: laws of equal slope have equal offsets (types differ in lambda).

    Where the totals give no reliable a (S conserves nothing, noisy observations, the halves
    of the frames disagreeing: phase1_quality.trusted_reference) the residual is returned
    unchanged and applied is False: at 0.1% noise the totals' least squares reads laws
    hundreds of times too steep, which the lines would have passed on as the law.
    """
    reference = trusted_reference(data)
    if reference is None:
        return LawTargets(residual, False, None)
    a_np, disagreement = reference
    a = torch.as_tensor(a_np, dtype=residual.dtype, device=residual.device).clone()
    b = (residual - a * x).median(0).values
    if offsets != "slope_group":
        return LawTargets(a * x + b, True, None)
    # in float64: within a type the slopes agree to ~1e-13, types differ by >= 1e-4
    groups = torch.as_tensor(slope_groups(
        a_np, SLOPE_MATCH * disagreement * float(np.median(np.abs(a_np)))), device=b.device)
    for g in range(int(groups.max()) + 1):
        # one law per group: its slopes differ only by the least squares' rounding, which
        # would otherwise rank metabolites of one law as nearer or farther apart
        members = groups == g
        a[members], b[members] = a[members].median(), b[members].median()
    return LawTargets(a * x + b, True, groups)


def residual_scale(residual: torch.Tensor) -> torch.Tensor:
    """Per-metabolite robust spread of the residual (MAD x 1.4826, the normal-consistent sigma).

    Computed from data alone, so the Huber zone adapts to each metabolite's own noise level.
    """
    med = residual.median(0).values
    return (1.4826 * (residual - med).abs().median(0).values).clamp_min(1e-12)


def residual_loss(model, x: torch.Tensor, residual: torch.Tensor,
                  cfg: StrategiesConfig | None = None,
                  scale: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of MLP_node against the residual, or a Huber loss on it (same value where small).

    Huber: 2 * scale^2 * huber((pred - residual) / scale, delta=huber_scale), which equals the
    squared error inside the quadratic zone and grows linearly outside it.
    """
    err = model.node(x) - residual
    rs = cfg.residual_supervision if cfg is not None else None
    if rs is None or rs.loss == "mse":
        return (err ** 2).mean()
    z = err / scale
    return (2 * scale ** 2 * torch.nn.functional.huber_loss(
        z, torch.zeros_like(z), reduction="none", delta=rs.huber_scale)).mean()


# 2. amplification with annealing ---------------------------------------------------------


def amplification_factor(cfg: StrategiesConfig, frac: float) -> float:
    """factor until anneal_start, geometric decay to 1 by anneal_end, then exactly 1."""
    a = cfg.amplification
    if not a.enabled:
        return 1.0
    if frac <= a.anneal_start:
        return a.factor
    if frac >= a.anneal_end:
        return 1.0
    t = (frac - a.anneal_start) / max(1e-12, a.anneal_end - a.anneal_start)
    return float(a.factor ** (1.0 - t))


# 3. unsupervised contrastive embedding loss -----------------------------------------------


def response_curves(model, grid: torch.Tensor) -> torch.Tensor:
    """MLP_node(c, a_i) on a shared concentration grid: (N, G), one learned curve per metabolite."""
    c = grid[:, None].expand(grid.shape[0], model.embeddings.shape[0])  # (G, N)
    return model.node(c).T


def contrastive_grid(concentrations: torch.Tensor, cfg: StrategiesConfig) -> torch.Tensor:
    """n_grid concentrations spanning the configured quantiles of the training data."""
    c = cfg.contrastive
    flat = concentrations.flatten()
    flat = flat[::max(1, flat.numel() // 1_000_000)]  # torch.quantile caps its input size
    lo, hi = torch.quantile(flat.float(), torch.tensor(c.grid_quantiles, dtype=torch.float32,
                                                        device=flat.device))
    return torch.linspace(float(lo), float(hi), c.n_grid, dtype=concentrations.dtype,
                          device=concentrations.device)


def curve_neighbours(curves: torch.Tensor | None, cfg: StrategiesConfig,
                     data_distances: torch.Tensor | None = None) -> torch.Tensor:
    """p_ij: softmax_j of -D_ij / temperature, i != j, each D scaled by its median over pairs.

    D_ij = |R_i - R_j|^2 of the learned curves R (each minus its own mean with center_curves),
    plus residual_law_distances when given: two metabolites are neighbours only where both the
    learned curves and the data agree. curves None: the data's distances alone.

    Where the data give i's law exactly (the conserved-law lines: distance 0 to the other
    metabolites of its law) i's neighbours are those metabolites alone. The softmax would
    also weigh a near law, and the distances are scaled by their median over all pairs: the
    more types, the nearer two of them sit on that scale (five types: 28% of types 0 and 1's
    attraction went to each other, and they merged).
    """
    distances = []
    if curves is not None:
        if cfg.contrastive.center_curves:
            curves = curves - curves.mean(1, keepdim=True)
        distances.append(torch.cdist(curves, curves).pow(2))
    if data_distances is not None:
        distances.append(data_distances)
    eye = torch.eye(distances[0].shape[0], dtype=torch.bool, device=distances[0].device)
    logits = -_summed_over_medians(distances) / cfg.contrastive.temperature
    if data_distances is not None:
        same_law = (data_distances == 0) & ~eye
        logits = logits.masked_fill(same_law.any(1, keepdim=True) & ~same_law, -1e9)
    return torch.softmax(logits.masked_fill(eye, -1e9), 1)


def _summed_over_medians(distances: list[torch.Tensor]) -> torch.Tensor:
    """Sum of (N, N) distances, each divided by its median over the pairs i != j, so that
    distances of different units weigh alike."""
    eye = torch.eye(distances[0].shape[0], dtype=torch.bool, device=distances[0].device)
    return sum(d / d[~eye].median().clamp_min(1e-30) for d in distances)


def _bin_medians(x: torch.Tensor, residual: torch.Tensor, n_bins: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Medians of (c_i, residual_i) in n_bins equal-count bins of each metabolite's own c."""
    n_frames = (x.shape[0] // n_bins) * n_bins
    order = x.argsort(0)
    xb = x.gather(0, order)[:n_frames].reshape(n_bins, -1, x.shape[1]).median(1).values
    yb = residual.gather(0, order)[:n_frames].reshape(n_bins, -1, x.shape[1]).median(1).values
    return xb, yb


def residual_law_distances(x: torch.Tensor, residual: torch.Tensor,
                           n_bins: int = 8) -> torch.Tensor:
    """D_ij from the data alone: how far metabolite i's and j's residuals are from one law. (N, N)

    Each metabolite's residual is reduced to the medians of (c_i, residual_i) in n_bins
    equal-count bins of its own frames (medians: Phase 1's error is heavy-tailed) and the
    least-squares line through them. e_ij is the mean squared miss of j's line on i's medians;
    D_ij = min(e_ij, e_ji): the better-determined line decides, because a metabolite seen only
    over a narrow range has a level but no slope to speak of.
    """
    xb, yb = _bin_medians(x, residual, n_bins)
    x_mean, y_mean = xb.mean(0), yb.mean(0)
    xc = xb - x_mean
    slope = (xc * (yb - y_mean)).sum(0) / (xc ** 2).sum(0).clamp_min(1e-30)
    line_j_at_i = y_mean + slope * (xb[:, :, None] - x_mean)  # (n_bins, i, j)
    miss = ((yb[:, :, None] - line_j_at_i) ** 2).mean(0)
    # no floor: one law fitted twice misses by rounding alone, but where the data give one law
    # to several metabolites (the conserved-law groups) Phase2Setup sets their distances to 0,
    # and a 0 read from a noisy residual would make the exact-law rule trust it
    return torch.minimum(miss, miss.T)


def split_half_reliability(x: torch.Tensor, residual: torch.Tensor, distances: torch.Tensor,
                           block: int, n_bins: int = 8) -> float:
    """How much of residual_law_distances is law rather than noise, from the data alone:
    1 - median(noise_ij) / median(D_ij), clamped to [0, 1] (the classical reliability,
    variance of the signal over the variance measured).

    The frames are split into alternate blocks of `block` frames (two windows: the halves
    share few frames) and each metabolite's bin medians computed on both halves; the squared
    difference of the halves over 4 is the variance of the full data's medians, and
    noise_ij = var_i + var_j is what D_ij would be for two metabolites with the same law.
    Measured on the default network: about 1 without noise, 0.84-0.95 at 0.1% relative
    noise, 0-0.58 at 1% (windows of 4-64 frames). NaN (not measurable, and then not logged)
    where either half has fewer than two frames per bin.
    """
    frames = torch.arange(x.shape[0], device=x.device)
    first = (frames // max(1, block)) % 2 == 0
    if min(int(first.sum()), int((~first).sum())) < 2 * n_bins:
        return float("nan")
    _, y_first = _bin_medians(x[first], residual[first], n_bins)
    _, y_second = _bin_medians(x[~first], residual[~first], n_bins)
    var = ((y_first - y_second) ** 2).mean(0) / 4
    eye = torch.eye(distances.shape[0], dtype=torch.bool, device=distances.device)
    noise = (var[:, None] + var[None, :])[~eye].median()
    return float((1 - noise / distances[~eye].median().clamp_min(1e-30)).clamp(0, 1))


def spectral_embeddings(distances: torch.Tensor, cfg: StrategiesConfig, dim: int,
                        scale: float) -> torch.Tensor:
    """Initial embeddings from the data's own laws: the spectral embedding (Laplacian
    eigenmaps, normalized; the `dim` eigenvectors after the constant one) of the affinity p
    that residual_law_distances give (curve_neighbours of the data alone, symmetrized),
    each coordinate centred and scaled to std `scale`. (N, dim), float64.

    Metabolites on one law have near-identical rows of p, so they start together, and groups
    start apart by about `scale`, before any training. Where Phase 1's error in the residual
    is large, the residual loss alone did not separate the groups (on phase1_hard the types'
    embeddings stayed 0.04 apart within a spread of 0.12 at the start of the attraction, which
    then merged them), while the data's laws did (a same-type pair closer than a cross-type
    pair for 0.96 of the pairs). Eigenvectors come from a dense symmetric solver and each is
    signed so its largest entry is positive: the result follows a relabelling of the
    metabolites exactly, up to rounding.
    """
    p = curve_neighbours(None, cfg, distances).double()
    affinity = p + p.T
    inv_sqrt_degree = affinity.sum(1).rsqrt()
    laplacian_sym = inv_sqrt_degree[:, None] * affinity * inv_sqrt_degree[None, :]
    _, vectors = torch.linalg.eigh(laplacian_sym)  # ascending: the constant one is last
    coords = vectors[:, -dim - 1:-1].flip(1) * inv_sqrt_degree[:, None]
    biggest = coords.abs().argmax(0)
    coords = coords * coords[biggest, torch.arange(dim)].sign()
    coords = coords - coords.mean(0)
    return scale * coords / coords.std(0).clamp_min(1e-30)


def contrastive_loss(model, grid: torch.Tensor, cfg: StrategiesConfig,
                     data_distances: torch.Tensor | None = None) -> torch.Tensor:
    """Neighbour-embedding loss: embeddings should have the neighbours their curves have.

    p = curve_neighbours of the learned (detached) response curves, the data's own laws
    (residual_law_distances) or both, as contrastive.neighbours_from says; "attract" pulls each a_i
    toward the p-weighted mean of the others, "neighbour" minimises KL(p || q) with q_ij the
    softmax_j of -|a_i - a_j|^2. Only the embeddings move. Groups come from behaviour, never
    from labels.
    """
    source = cfg.contrastive.neighbours_from
    with torch.no_grad():
        if source == "data":
            p = curve_neighbours(None, cfg, data_distances)
        else:
            p = curve_neighbours(response_curves(model, grid), cfg,
                                 data_distances if source == "both" else None)
    emb = model.embeddings
    if cfg.contrastive.mode == "attract":
        # pull each a_i toward the p-weighted mean of its behavioural neighbours (no
        # repulsion: the node loss keeps differently-behaving groups apart)
        return ((emb - p @ emb.detach()) ** 2).sum(1).mean()
    eye = torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)
    d2 = torch.cdist(emb, emb).pow(2)
    log_q = torch.log_softmax((-d2).masked_fill(eye, -1e9), 1)
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).masked_fill(eye, 0).sum(1).mean()


def fit_errors(model, x: torch.Tensor, residual: torch.Tensor, n_frames: int,
               seed: int = 0) -> torch.Tensor:
    """e_ij: median over n_frames sampled frames of |MLP_node(c_i(t), a_j) - residual_i(t)|.

    How well metabolite j's learned curve explains metabolite i's own data; (N, N).
    """
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:n_frames].to(x.device)
    n = x.shape[1]
    with torch.no_grad():
        errs = [(model.node(xc[:, :, None].expand(-1, n, n)) - rc[:, :, None]).abs()
                for xc, rc in zip(x[idx].split(16), residual[idx].split(16))]  # (f, i, j)
    return torch.cat(errs).median(0).values


def reassignment_scores(errors: torch.Tensor, data_distances: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """What ranks j as a neighbour of i for the reassignment (lower: closer). (N, N)

    The fit errors alone, or, with the data's law distances, each scaled by its median over
    the pairs and summed (as curve_neighbours combines learned and data distances): j must
    both fit i's data with its learned curve and have a law like i's in the data.
    """
    if data_distances is None:
        return errors
    return _summed_over_medians([errors, data_distances.to(errors)])


def reassign_embeddings(model, errors: torch.Tensor, k: int,
                        data_distances: torch.Tensor | None = None) -> torch.Tensor:
    """a_i <- coordinate-wise median of a_j over the k metabolites j != i with the lowest e_ij.

    Once the attraction has formed groups, members of a group share its curve, so those k
    come from the group whose law fits i's data best: a metabolite stuck in the wrong group
    (or between groups) moves to the right one, the others stay in theirs. The median of k,
    not the single best j, so that an isolated embedding whose curve happens to fit several
    metabolites cannot gather them into a group of its own. Returns the new embeddings.

    Where the data's laws of other metabolites are identical to i's (law distance 0: the
    conserved-law lines of one group) the median is over all of them and no others: the k
    best by the learned curves would be the fragment of the group that i's embedding sits in
    (on unequal_groups fragments of 11-27 of 70 metabolites held), a group smaller than k
    would be filled up with other laws, and the data say exactly which metabolites share i's.
    """
    eye = torch.eye(errors.shape[0], dtype=torch.bool, device=errors.device)
    k = max(1, min(k, errors.shape[0] - 1))
    best = errors.masked_fill(eye, float("inf")).topk(k, dim=1, largest=False).indices  # (N, k)
    with torch.no_grad():
        emb = model.embeddings
        new = emb[best].median(1).values
        if data_distances is not None:
            same_law = (data_distances.to(errors.device) == 0) & ~eye
            for i in torch.nonzero(same_law.any(1)).flatten().tolist():
                new[i] = emb[same_law[i]].median(0).values
        model.embeddings.copy_(new)
    return new


# 4. rollout curriculum / 6. multi-scale rollout ---------------------------------------------


def rollout_length(cfg: StrategiesConfig, time_step: int, frac: float,
                   rng: random.Random) -> int:
    """The rollout length for this batch: the slot's, shortened by curriculum or multi-scale."""
    length = time_step
    if cfg.curriculum.enabled and frac >= cfg.curriculum.switch_at:
        length = max(1, round(cfg.curriculum.final_fraction * time_step))
    if cfg.multiscale.enabled:
        length = max(1, round(rng.choice(cfg.multiscale.fractions) * length))
    return length


def time_weights(cfg: StrategiesConfig, length: int) -> torch.Tensor:
    """Per-step loss weights (mean 1): uniform, or growing with t (late-step weighting)."""
    if cfg.curriculum.enabled and cfg.curriculum.late_step_weighting:
        w = torch.arange(1, length + 1, dtype=torch.float32)
    else:
        w = torch.ones(length)
    return w / w.mean()


# 5. learning-rate warmup + cosine -----------------------------------------------------------


def lr_multiplier(cfg: StrategiesConfig, frac: float) -> float:
    """Linear warmup 1 -> peak_factor, then cosine peak_factor -> min_factor."""
    s = cfg.lr_schedule
    if not s.enabled:
        return 1.0
    if frac < s.warmup_fraction:
        return 1.0 + (s.peak_factor - 1.0) * frac / s.warmup_fraction
    t = (frac - s.warmup_fraction) / max(1e-12, 1.0 - s.warmup_fraction)
    return s.min_factor + (s.peak_factor - s.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


# 7. gradient accumulation / 8. gradient isolation -------------------------------------------


def accumulation_steps(cfg: StrategiesConfig) -> int:
    return cfg.gradient_accumulation.steps if cfg.gradient_accumulation.enabled else 1


def reaction_gradient(cfg: StrategiesConfig) -> bool:
    """Gradient isolation: the rollout's reaction term passes no gradient to the state."""
    return not cfg.gradient_isolation.enabled
