"""Phase 1: learn MLP_sub and log10 k from finite-difference dc/dt, with S given.

dc/dt is linear in k once MLP_sub is fixed, so k is never stepped by gradient descent: at
every step it is the exact least-squares solution for the current MLP_sub on the batch
(variable projection), and Adam shapes MLP_sub through that solution. The final k is the
least-squares solution on the whole trajectory.

`drift_correction` adds a per-metabolite affine term e_i c_i + d_i to the fit and discards
it afterwards. Without it the weak, non-conserving homeostatic drift is partly absorbed into k
(omitted-variable bias: unweighted least squares with the exact rate law gives R2 0.92 on the
default regime, and residual slopes biased by 1.4-2x). It is label-free: one free line per
metabolite, no types.

Transitions into a clamped state (c_{t+1} = 0 somewhere) are dropped: there the Euler
difference is not the model's dc/dt. On noisy observations (noise estimated from the data,
metabolism.observations) the targets are Savitzky-Golay derivatives of the smoothed
trajectory instead: a one-frame difference of noisy data is mostly noise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kernels import reaction_rates
from metabolism.config import Phase1Config
from metabolism.data import TrainingData
from metabolism.model import MetabolismModel
from metabolism import observations as obs


@dataclass
class Phase1Result:
    losses: list[float]
    seconds: float
    targets: str = "difference"  # how the dc/dt targets were made ("auto" resolved)


def finite_difference_targets(data: TrainingData, device=None
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_t, (c_{t+1} - c_t)/dt) over the transitions with no clamped entry, (F', N) each.

    With k Euler steps between observed frames, the difference over the frame interval is the
    rate at the Euler-weighted mean of the two end states (metabolism.observations
    .endpoint_weights), not at the first one.
    """
    c = torch.as_tensor(data.concentrations, dtype=torch.float32, device=device)
    x, nxt = c[:-1], c[1:]
    keep = (nxt > 0).all(1)
    if data.observe_every > 1:
        w_left, w_right = obs.endpoint_weights(data.delta_t, data.observe_every)
        return (w_left * x + w_right * nxt)[keep], ((nxt - x) / data.frame_interval)[keep]
    return x[keep], ((nxt - x) / data.delta_t)[keep]


def derivative_targets(data: TrainingData, cfg: Phase1Config, device=None
                       ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(states, dc/dt targets, description) for the point-wise modes: one-frame differences or
    Savitzky-Golay derivatives (the state moved back half an Euler step)."""
    mode = resolve_derivative_mode(data, cfg)
    if mode == "difference":
        x, y = finite_difference_targets(data, device)
        return x, y, "difference"
    if mode != "savgol":
        raise ValueError(f"phase1.derivative {mode!r} has no point-wise targets")
    window = cfg.savgol_window or obs.savgol_window_for(
        obs.estimate_relative_noise(data.concentrations))
    states, deriv, keep = obs.savgol_targets(data.concentrations, data.delta_t,
                                             data.observe_every, window, cfg.savgol_polyorder)
    return (torch.as_tensor(states[keep], dtype=torch.float32, device=device),
            torch.as_tensor(deriv[keep], dtype=torch.float32, device=device),
            f"savgol(window={window}, polyorder={cfg.savgol_polyorder})")


def resolve_derivative_mode(data: TrainingData, cfg: Phase1Config) -> str:
    """cfg.derivative with "auto" resolved: integrated windows when the data's estimated noise
    is above obs.NOISE_THRESHOLD, one-frame differences (exact on Euler data) otherwise."""
    if cfg.derivative != "auto":
        return cfg.derivative
    return "window" if obs.is_noisy(data.concentrations) else "difference"


class PointTargets:
    """Rows (c_t, dc/dt_t): the model's rate at a state against a derivative target."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, floor: float, label: str):
        self.x, self.y, self.label = x, y, label
        self.w = relative_weights(y, floor)

    def sample(self, model, batch_size: int):
        # drawn on the CPU generator: the same batches on every device
        idx = torch.randint(0, self.x.shape[0], (min(batch_size, self.x.shape[0]),)).to(
            self.x.device)
        xb = self.x[idx]
        return _features(model, xb), xb, self.y[idx], self.w[idx]

    def everything(self, model):
        G = torch.cat([_features(model, xc) for xc in self.x.split(512)])
        return G, self.x, self.y, self.w


class WindowTargets:
    """Rows integrated over `window` observed intervals: [c(t+W) - c(t)] / (W frame interval)
    against the time average of the rate-law features along the observed frames (Euler-
    weighted end points), and of c for the drift term.

    The integral of the Euler path is exact, so unlike a smoothed derivative these targets
    carry no smoothing bias on noiseless data, while the two end points' noise is divided by
    the window's length. Batches are short contiguous segments, so each frame's MLP_sub
    features serve every window that covers it. Windows touching a clamped frame get weight 0.
    """

    def __init__(self, data: TrainingData, window: int, floor: float, device=None,
                 segment: int = Phase1Config.window_segment):
        self.segment = segment  # consecutive windows per segment of a batch
        c64 = torch.as_tensor(data.concentrations, dtype=torch.float64)
        self.W, self.frame_dt = window, data.frame_interval
        self.w_left, self.w_right = obs.endpoint_weights(data.delta_t, data.observe_every)
        self.c = c64.to(device=device, dtype=torch.float32)
        y = (c64[window:] - c64[:-window]) / (window * self.frame_dt)
        clamped = (c64 <= 0).any(1).double()
        valid = obs.window_sums(clamped[:, None], window + 1)[:, 0] == 0
        w = torch.zeros_like(y)
        w[valid] = relative_weights(y[valid], floor)
        self.y, self.w = y.float().to(device), w.float().to(device)
        self.label = f"window({window}, segment {segment})"

    def _average(self, per_frame: torch.Tensor) -> torch.Tensor:
        """(..., frames, K) -> (..., frames - W, K): window time averages of a per-frame row."""
        per_interval = self.w_left * per_frame[..., :-1, :]
        if self.w_right:
            per_interval = per_interval + self.w_right * per_frame[..., 1:, :]
        zero = torch.zeros_like(per_interval[..., :1, :])
        csum = torch.cat([zero, per_interval.cumsum(-2)], -2)
        return (csum[..., self.W:, :] - csum[..., :-self.W, :]) / self.W

    def sample(self, model, batch_size: int):
        n_seg = max(1, batch_size // self.segment)
        L = min(self.segment, self.y.shape[0])
        starts = torch.randint(0, self.y.shape[0] - L + 1, (n_seg,))
        frames = (starts[:, None] + torch.arange(L + self.W)).to(self.c.device)
        cb = self.c[frames]  # (S, L + W, N)
        G = _features(model, cb.reshape(-1, cb.shape[-1])).reshape(n_seg, L + self.W, -1)
        rows = (starts[:, None] + torch.arange(L)).to(self.c.device).reshape(-1)
        return (self._average(G).reshape(n_seg * L, -1),
                self._average(cb).reshape(n_seg * L, -1), self.y[rows], self.w[rows])

    def everything(self, model):
        G = torch.cat([_features(model, xc) for xc in self.c.split(512)]).double()
        return self._average(G), self._average(self.c.double()), self.y, self.w


def phase1_targets(data: TrainingData, cfg: Phase1Config, device=None):
    mode = resolve_derivative_mode(data, cfg)
    if mode == "window":
        window = cfg.window or obs.savgol_window_for(
            obs.estimate_relative_noise(data.concentrations))
        return WindowTargets(data, window, cfg.relative_weight_floor, device,
                             cfg.window_segment)
    x, y, label = derivative_targets(data, cfg, device)
    return PointTargets(x, y, cfg.relative_weight_floor, label)


def relative_weights(y: torch.Tensor, floor: float) -> torch.Tensor:
    """w_ti = 1 / (|y_ti| + floor * rms(y)): fit dc/dt in relative terms.

    With plain MSE the slow reactions (substrates near zero) barely enter the loss, MLP_sub is
    inaccurate at small c and their k comes out orders of magnitude off.
    """
    return 1.0 / (y.abs() + floor * y.pow(2).mean().sqrt())


class LinearSystem:
    """Index structure for the weighted least-squares problem in (k, e, d).

    Row (t, i) of the design involves only the reactions j with S_ij != 0 (plus e_i, d_i),
    so the normal matrix is assembled from one small (P+2)^2 block per metabolite.
    """

    def __init__(self, S: torch.Tensor, drift: bool):
        S = S.double()
        self.N, self.R = S.shape
        self.drift = drift
        nz = S != 0
        P = int(nz.sum(1).max())
        order = torch.argsort((~nz).to(torch.int8), dim=1, stable=True)[:, :P]  # (N, P)
        self.J = order
        self.mask = torch.gather(nz, 1, order)
        self.SJ = torch.gather(S, 1, order) * self.mask  # S_ij on the block, 0 on padding
        self.S = S
        metab = torch.arange(self.N, device=S.device)
        cols = [self.J] + ([self.R + metab[:, None], self.R + self.N + metab[:, None]]
                           if drift else [])
        self.cols = torch.cat(cols, 1)  # (N, P [+ 2]) unknown index per block column
        self.n_unknowns = self.R + (2 * self.N if drift else 0)

    def solve(self, G: torch.Tensor, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
              ridge: float = 1e-10) -> torch.Tensor:
        G, x, y, w = (t.double() for t in (G, x, y, w))
        feats = [G[:, self.J] * self.SJ]  # (F, N, P)
        if self.drift:
            feats += [x.unsqueeze(-1), torch.ones_like(x).unsqueeze(-1)]
        D = torch.cat(feats, -1) * w.unsqueeze(-1)  # (F, N, Q) weighted design rows
        blocks = torch.einsum("fnp,fnq->npq", D, D)
        rhs = torch.einsum("fnp,fn->np", D, w * y)
        Q = self.cols.shape[1]
        rows = self.cols[:, :, None].expand(-1, -1, Q)
        colsq = self.cols[:, None, :].expand(-1, Q, -1)
        A = torch.zeros(self.n_unknowns, self.n_unknowns, dtype=G.dtype, device=G.device)
        A = A.index_put((rows.flatten(), colsq.flatten()), blocks.flatten(), accumulate=True)
        b = torch.zeros(self.n_unknowns, dtype=G.dtype, device=G.device)
        b = b.index_put((self.cols.flatten(),), rhs.flatten(), accumulate=True)
        diag = A.diagonal()
        A = A + torch.diag(ridge * diag.abs().mean() + (diag == 0).double())
        return torch.linalg.solve(A, b)

    def split(self, sol: torch.Tensor):
        k = sol[: self.R]
        if not self.drift:
            z = torch.zeros(self.N, dtype=sol.dtype, device=sol.device)
            return k, z, z
        return k, sol[self.R:self.R + self.N], sol[self.R + self.N:]

    def predict(self, G, x, sol):
        k, e, d = self.split(sol)
        return (G.double() * k) @ self.S.T + x.double() * e + d


def rates_to_log10(k: torch.Tensor) -> torch.Tensor:
    """log10 k; a non-positive least-squares rate means the trajectory cannot determine that
    reaction (its substrates sit near zero), so it gets the median of the determined ones."""
    ok = k > 0
    out = torch.full_like(k, float("nan"))
    out[ok] = torch.log10(k[ok])
    fill = out[ok].median() if ok.any() else torch.tensor(0.0, dtype=k.dtype, device=k.device)
    return torch.where(ok, out, fill)


def _features(model: MetabolismModel, x: torch.Tensor) -> torch.Tensor:
    """G_tj = prod MLP_sub over the substrates of j (reaction rates with k = 1)."""
    fr = model.reactions()
    return reaction_rates(x, dataclasses.replace(fr, log10_k=torch.zeros_like(fr.log10_k)))


def _fit(model, rows, cfg: Phase1Config, warmup: LinearSystem, system: LinearSystem,
         n_steps: int, total_steps: int, step0: int, opt, bar=None) -> list[float]:
    """Adam on MLP_sub through the least-squares k (and drift after the warm-up)."""
    # The drift is switched on only after a warm-up: from the start it lets a flat MLP_sub
    # (constant rates + drift) pass for a fit.
    n_warmup = int(cfg.drift_warmup_fraction * total_steps) if cfg.drift_correction else 0
    losses = []
    for step in range(step0, step0 + n_steps):
        frac = step / max(1, total_steps - 1)  # cosine decay to 1% for a precise finish
        opt.param_groups[0]["lr"] = cfg.learning_rate_sub * (
            0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
        G, xb, yb, wb = rows.sample(model, cfg.batch_size)
        sys_now = warmup if step < n_warmup else system
        sol = sys_now.solve(G, xb, yb, wb)
        loss = ((wb.double() * (sys_now.predict(G, xb, sol) - yb.double())) ** 2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"phase 1 diverged at step {step} (loss={loss.item()})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3e}")
    return losses


def train_phase1(model: MetabolismModel, data: TrainingData, cfg: Phase1Config,
                 progress: bool = True) -> Phase1Result:
    """Pick the best of `n_restarts` MLP_sub initialisations after a short trial, train it on
    (on the model's device).

    Some initialisations collapse to a flat MLP_sub (a fit of constant rates) that Adam does
    not leave; a short trial from several starts, judged by the training loss alone, avoids it.
    """
    torch.manual_seed(cfg.seed)
    rows = phase1_targets(data, cfg, model.S.device)
    warmup = LinearSystem(model.S, drift=False)
    system = LinearSystem(model.S, cfg.drift_correction)
    start = time.perf_counter()
    total = cfg.n_steps
    n_trial = min(cfg.restart_trial_steps, total)
    bar = tqdm(total=total + n_trial * (cfg.n_restarts - 1), desc="phase 1",
               disable=not progress, mininterval=1.0)
    best = None
    for r in range(cfg.n_restarts):
        torch.manual_seed(cfg.seed * 1000 + r)
        for m in model.mlp_sub:
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
        opt = torch.optim.Adam(model.mlp_sub.parameters(), lr=cfg.learning_rate_sub)
        losses = _fit(model, rows, cfg, warmup, system, n_trial, total, 0, opt, bar)
        score = float(sum(losses[-10:]) / len(losses[-10:]))
        if best is None or score < best[0]:
            best = (score, copy.deepcopy(model.mlp_sub.state_dict()),
                    copy.deepcopy(opt.state_dict()), losses)
    _, sub_state, opt_state, losses = best
    model.mlp_sub.load_state_dict(sub_state)
    opt = torch.optim.Adam(model.mlp_sub.parameters(), lr=cfg.learning_rate_sub)
    opt.load_state_dict(opt_state)
    losses = losses + _fit(model, rows, cfg, warmup, system, total - n_trial, total,
                           n_trial, opt, bar)
    bar.close()
    with torch.no_grad():  # final k: least squares on the whole trajectory
        k, _, _ = system.split(system.solve(*rows.everything(model)))
        model.log10_k.copy_(rates_to_log10(k).float())
    return Phase1Result(losses=losses, seconds=time.perf_counter() - start, targets=rows.label)
