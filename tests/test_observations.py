"""Noisy, sparsely sampled observations: the simulator's noise and frame selection, the noise
estimate, and the smoothed / integrated targets the trainers use on such data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.signal import savgol_filter

from conftest import tiny_config
from kernels.reference import reaction_dcdt
from metabolism import observations as obs
from metabolism import strategies as strat
from metabolism.config import ConfigError, config_from_dict
from metabolism.data import (dataset_dir, ensure_dataset, load_clean_concentrations,
                             load_training_data)
from metabolism.experiment import phase1_checkpoint_path
from metabolism.network import generate_network
from metabolism.phase1 import derivative_targets, finite_difference_targets
from metabolism.simulate import initial_concentrations, simulate, true_dcdt


def _simulated(cfg) -> np.ndarray:
    sim = cfg.simulation
    stoich, truth = generate_network(sim)
    c0 = initial_concentrations(sim.n_metabolites, *sim.initial_concentration_range, sim.seed)
    return simulate(c0, stoich, truth, sim.delta_t, sim.n_frames)


def _dataset(tmp_path, **dotted):
    cfg = tiny_config(**dotted)
    folder = ensure_dataset(cfg, tmp_path)
    return cfg, load_training_data(folder), load_clean_concentrations(folder)


# ----------------------------------------------------------------------------- simulator


def test_default_regime_cache_keys_unchanged():
    """The new keys at their defaults leave the default regime's dataset and Phase 1 hashes
    (and so every existing cache) as they were before they existed."""
    cfg = config_from_dict({})
    assert cfg.simulation.observation_noise == 0.0 and cfg.simulation.observe_every == 1
    assert cfg.hash_of("simulation") == "dda271e07c39"
    assert phase1_checkpoint_path(cfg, Path("d")).name == "phase1-e40531e15873.pt"
    noisy = config_from_dict({"regime": "r", "simulation": {"observation_noise": 0.001}})
    sparse = config_from_dict({"regime": "r", "simulation": {"observe_every": 2}})
    p1 = config_from_dict({"regime": "r", "phase1": {"derivative": "savgol"}})
    assert len({cfg.hash_of("simulation"), noisy.hash_of("simulation"),
                sparse.hash_of("simulation")}) == 3
    assert p1.hash_of("simulation") == cfg.hash_of("simulation")
    assert p1.hash_of("simulation", "model", "phase1") != cfg.hash_of("simulation", "model",
                                                                       "phase1")


def test_noiseless_every_frame_is_the_simulation_itself(tmp_path):
    cfg, data, clean = _dataset(tmp_path)
    traj = _simulated(cfg)
    np.testing.assert_array_equal(data.concentrations, traj)
    np.testing.assert_array_equal(clean, traj)
    assert data.observe_every == 1 and data.frame_interval == data.delta_t


def test_noise_statistics_and_noiseless_ground_truth(tmp_path):
    cfg, data, clean = _dataset(tmp_path, **{"simulation.observation_noise": 0.02})
    np.testing.assert_array_equal(clean, _simulated(cfg))  # ground truth stays noiseless
    pos = clean > 0
    rel = data.concentrations[pos] / clean[pos] - 1.0
    assert rel.size > 3000
    assert abs(rel.mean()) < 4 * 0.02 / np.sqrt(rel.size)
    assert rel.std() == pytest.approx(0.02, rel=0.05)
    # Gaussian: about 68% within one sigma
    assert np.mean(np.abs(rel) < 0.02) == pytest.approx(0.683, abs=0.03)
    np.testing.assert_array_equal(data.concentrations[~pos], 0.0)
    with np.load(dataset_dir(cfg, tmp_path) / "training.npz") as f:
        assert "clean_concentrations" not in f.files  # training never receives it


def test_noise_is_deterministic_by_simulation_seed(tmp_path):
    _, a, _ = _dataset(tmp_path / "a", **{"simulation.observation_noise": 0.01})
    _, b, _ = _dataset(tmp_path / "b", **{"simulation.observation_noise": 0.01})
    np.testing.assert_array_equal(a.concentrations, b.concentrations)
    _, c, clean_c = _dataset(tmp_path / "c", **{"simulation.observation_noise": 0.01,
                                                 "simulation.seed": 43})
    _, d, clean_d = _dataset(tmp_path / "d", **{"simulation.seed": 43})
    np.testing.assert_array_equal(clean_c, d.concentrations)
    assert not np.array_equal(c.concentrations, d.concentrations)
    assert not np.array_equal(c.concentrations, a.concentrations)


def test_observe_every_keeps_every_kth_euler_frame(tmp_path):
    cfg, data, clean = _dataset(tmp_path, **{"simulation.observe_every": 7})
    traj = _simulated(cfg)
    assert cfg.simulation.n_frames == 300
    assert data.concentrations.shape[0] == 43  # frames 0, 7, ..., 294
    np.testing.assert_array_equal(data.concentrations, traj[::7])
    np.testing.assert_array_equal(clean, traj[::7])
    assert data.observe_every == 7
    assert data.frame_interval == pytest.approx(7 * cfg.simulation.delta_t)


@pytest.mark.parametrize("key,value,fragment", [
    ("simulation.observation_noise", -0.1, "relative noise"),
    ("simulation.observation_noise", 1.5, "relative noise"),
    ("simulation.observe_every", 0, ">= 1"),
    ("simulation.observe_every", 400, "observed frame"),
    ("phase1.derivative", "spline", "one of"),
    ("phase1.savgol_window", 20, "odd"),
    ("phase1.savgol_window", 1, "odd"),
    ("phase1.savgol_polyorder", 5, "smaller than"),
    ("training.strategies.residual_supervision.targets", "smooth", "one of"),
    ("training.strategies.residual_supervision.window", -1, "0 = the slot"),
    ("training.strategies.residual_supervision.savgol_window", 4, "odd"),
])
def test_bad_observation_keys_are_one_line_errors(key, value, fragment):
    with pytest.raises(ConfigError) as ei:
        tiny_config(**{key: value})
    msg = str(ei.value)
    assert msg.startswith(key + ":") and fragment in msg and "\n" not in msg


def test_time_step_is_checked_against_the_observed_frames():
    with pytest.raises(ConfigError, match="training.homeostasis_time_step: .*43 observed"):
        tiny_config(**{"simulation.observe_every": 7, "training.homeostasis_time_step": 50})


# ----------------------------------------------------------------------------- noise estimate


def _smooth_trajectory(n_frames=2000, n=30, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None] * 0.1
    return 5 + 2 * np.sin(t * rng.uniform(0.02, 0.2, n) + rng.uniform(0, 6, n))


@pytest.mark.parametrize("level", [0.001, 0.01, 0.03])
def test_noise_estimate_recovers_the_relative_level(level):
    c = _smooth_trajectory()
    noisy = c * (1 + level * np.random.default_rng(1).standard_normal(c.shape))
    assert obs.estimate_relative_noise(noisy) == pytest.approx(level, rel=0.1)
    assert obs.is_noisy(noisy)


def test_savgol_window_grows_with_the_noise():
    windows = [obs.savgol_window_for(n) for n in (0.0, 0.001, 0.003, 0.01, 0.03)]
    assert windows == sorted(windows) and all(w % 2 == 1 for w in windows)
    assert windows[1] == 7 and windows[3] == 11


def test_noise_estimate_of_smooth_data_is_far_below_the_threshold():
    assert obs.estimate_relative_noise(_smooth_trajectory()) < obs.NOISE_THRESHOLD / 100
    assert not obs.is_noisy(_smooth_trajectory())


# ----------------------------------------------------------------------------- targets


def test_endpoint_weights_reproduce_the_euler_sum_between_observations():
    """dc/dt = -a c + b, k Euler steps per observation, dynamics slow against the frame
    interval: the weighted end points give the Euler sum far better than the left point or
    the plain trapezoid (and exactly the Euler step at k = 1)."""
    a, b, dt, k = 0.05, 1.0, 0.1, 10
    c = [4.0]
    for _ in range(k):
        c.append(c[-1] + dt * (-a * c[-1] + b))
    f = lambda x: -a * x + b  # noqa: E731
    euler_sum = dt * sum(f(x) for x in c[:-1])
    np.testing.assert_allclose(euler_sum, c[-1] - c[0], rtol=1e-12)
    w_left, w_right = obs.endpoint_weights(dt, k)
    weighted = k * dt * (w_left * f(c[0]) + w_right * f(c[-1]))
    left_only = k * dt * f(c[0])
    trapezoid = k * dt * 0.5 * (f(c[0]) + f(c[-1]))
    assert abs(weighted - euler_sum) < abs(left_only - euler_sum) / 50
    assert abs(weighted - euler_sum) < abs(trapezoid - euler_sum) / 5
    assert obs.endpoint_weights(dt, 1) == (1.0, 0.0)


@pytest.fixture
def model():
    from metabolism.data import TrainingData
    from metabolism.experiment import new_model

    cfg = tiny_config()
    stoich, _ = generate_network(cfg.simulation)
    data = TrainingData(concentrations=np.ones((2, cfg.simulation.n_metabolites)),
                        delta_t=0.1, stoich=stoich)
    torch.manual_seed(0)
    return new_model(data, cfg)


def _conc(model, frames=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (2.0 + 3 * torch.rand(frames, model.S.shape[0], generator=g)).double()


def test_window_of_one_frame_is_the_one_step_residual(model):
    conc = _conc(model)
    x1, y1 = strat.residual_targets(model, conc.float(), 0.1)
    xw, yw = strat.window_residual_targets(model, conc.float(), 0.1, 1, 1)
    assert xw.dtype == torch.float32  # the input's precision (sums run in float64)
    torch.testing.assert_close(xw, x1)
    torch.testing.assert_close(yw, y1, rtol=1e-4, atol=1e-4)


def test_window_targets_average_the_one_step_residuals(model):
    conc = _conc(model)
    conc[20, 3] = 0.0  # windows touching frame 20 are dropped
    W = 5
    xw, yw = strat.window_residual_targets(model, conc, 0.1, 1, W)
    starts = [t for t in range(conc.shape[0] - W) if not (t <= 20 <= t + W)]
    assert xw.shape[0] == len(starts)
    with torch.no_grad():
        r = reaction_dcdt(conc.float(), model.frozen_reactions()).double()
    one_step = (conc[1:] - conc[:-1]) / 0.1 - r[:-1]
    for i, t in enumerate(starts):
        torch.testing.assert_close(yw[i].double(), one_step[t:t + W].mean(0), rtol=1e-4,
                                   atol=1e-4)
        torch.testing.assert_close(xw[i].double(), conc[t:t + W].mean(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("log10_k", [0.0, 1.0, 1.5])
def test_sparse_window_targets_follow_the_reactions_between_frames(model, log10_k):
    """A trajectory of the frozen reactions plus a constant drift h, observed every 10th Euler
    step: the one-interval targets recover h. The faster the reactions (log10_k), the more the
    path bends between frames; the end-point rule (endpoint_weights) then misses h by 6.6x
    more at log10_k 1.5 (0.046 h against 0.007 h), the reactions followed between the frames
    stay within 2% of h at every speed."""
    n, dt, k, h = model.S.shape[0], 0.1, 10, 0.01
    with torch.no_grad():
        model.log10_k.fill_(log10_k)
    model._frozen_cache = None
    fr = model.frozen_reactions()
    c = _conc(model, frames=1)[0]
    traj = [c]
    for _ in range(100 * k):
        with torch.no_grad():
            c = (c + dt * (reaction_dcdt(c[None].float(), fr)[0].double() + h)).clamp_min(0)
        traj.append(c)
    observed = torch.stack(traj)[::k]
    _, y = strat.window_residual_targets(model, observed, dt, k, 1)
    error = float((y.double() - h).abs().median())
    with torch.no_grad():
        r = reaction_dcdt(observed.float(), fr).double()
    w_left, w_right = obs.endpoint_weights(dt, k)
    end_points = (observed[1:] - observed[:-1]) / (k * dt) - (w_left * r[:-1] + w_right * r[1:])
    end_point_error = float((end_points - h).abs().median())
    assert error < 0.02 * h
    assert error <= 1.1 * end_point_error
    if log10_k == 1.5:
        assert error < end_point_error / 5


def test_window_targets_average_out_noise(model):
    """On a trajectory the frozen reactions explain plus a drift h, with measurement noise,
    window targets scatter ~W^-1 as much as one-frame differences around h."""
    torch.manual_seed(0)
    n, F, dt = model.S.shape[0], 400, 0.1
    c = torch.full((n,), 4.0, dtype=torch.float64)
    fr = model.frozen_reactions()
    traj = [c]
    for _ in range(F - 1):
        with torch.no_grad():
            dc = reaction_dcdt(c[None].float(), fr)[0].double() + 0.01
        c = c + dt * dc
        traj.append(c)
    clean = torch.stack(traj)
    noisy = clean * (1 + 1e-3 * torch.randn_like(clean))
    _, y1 = strat.residual_targets(model, noisy.float(), dt)
    _, y16 = strat.window_residual_targets(model, noisy, dt, 1, 16)
    spread1, spread16 = (y1.double() - 0.01).std(), (y16.double() - 0.01).std()
    assert spread16 < spread1 / 8
    assert abs(float(y16.double().mean()) - 0.01) < 0.003


def test_auto_resolves_from_the_data(model):
    cfg = tiny_config(**{"training.strategies.residual_supervision.enabled": True})
    st = cfg.training.strategies
    clean = torch.as_tensor(_smooth_trajectory(300, model.S.shape[0]))
    noisy = clean * (1 + 0.003 * torch.randn_like(clean))
    assert strat.choose_residual_targets(st, clean, 8) == ("difference", 8)
    assert strat.choose_residual_targets(st, noisy, 8) == ("window", 8)
    x, y, label, span = strat.residual_targets_for(model, noisy, 0.1, 1, st, 8)
    assert label == "window(8)" and x.shape[0] == 300 - 8 and span == 8
    assert strat.residual_targets_for(model, clean, 0.1, 1, st, 8).span == 1  # differences
    st.residual_supervision.targets = "savgol"
    x, y, label, span = strat.residual_targets_for(model, noisy, 0.1, 1, st, 8)
    assert label == "savgol(window=9, polyorder=3)" and x.shape[0] == 300 - 9
    assert span == 9  # the filter's window: neighbouring targets share its noise
    assert torch.isfinite(y).all()


def test_phase1_targets_follow_the_data(tmp_path):
    cfg, clean_data, _ = _dataset(tmp_path / "a")
    x, y, label = derivative_targets(clean_data, cfg.phase1)
    fx, fy = finite_difference_targets(clean_data)
    assert label == "difference"
    torch.testing.assert_close(x, fx)
    torch.testing.assert_close(y, fy)
    cfg, noisy_data, clean = _dataset(tmp_path / "b", **{"simulation.observation_noise": 0.01,
                                                          "phase1.derivative": "savgol"})
    x, y, label = derivative_targets(noisy_data, cfg.phase1)
    assert label == "savgol(window=11, polyorder=3)"
    # judged against the true rate law at the states they come with, the smoothed targets
    # beat the raw one-frame differences, and the half-step shift of the state matters
    stoich, truth = generate_network(cfg.simulation)

    def error(states, rates):
        states, rates = np.asarray(states, float), np.asarray(rates, float)
        return np.median(np.abs(rates - true_dcdt(states, stoich, truth)))

    raw_x, raw_y = finite_difference_targets(noisy_data)
    c = noisy_data.concentrations
    smooth = savgol_filter(c, 11, 3, axis=0)
    _, deriv, keep = obs.savgol_targets(c, 0.1, 1, 11, 3)
    assert error(x, y) < error(raw_x, raw_y) / 2
    assert error(x, y) < error(smooth[keep], deriv[keep])


def test_sparse_difference_targets_use_the_weighted_state(tmp_path):
    cfg, data, _ = _dataset(tmp_path, **{"simulation.observe_every": 4})
    x, y = finite_difference_targets(data)
    c = torch.as_tensor(data.concentrations, dtype=torch.float32)
    keep = (c[1:] > 0).all(1)
    w_left, w_right = obs.endpoint_weights(0.1, 4)
    torch.testing.assert_close(x, (w_left * c[:-1] + w_right * c[1:])[keep])
    torch.testing.assert_close(y, ((c[1:] - c[:-1]) / 0.4)[keep])


# ----------------------------------------------------------------------------- Phase 2


def test_phase2_on_sparse_noisy_data_integrates_k_euler_steps_per_frame(tmp_path, monkeypatch):
    """Every rollout of training and of the final loss takes observe_every Euler steps per
    observed frame, and the residual targets are windows of the slot's time step."""
    import metabolism.phase2 as phase2_mod
    from metabolism.experiment import ensure_phase1, load_phase1_model

    cfg = tiny_config(**{"simulation.observe_every": 3, "simulation.observation_noise": 0.01,
                         "training.homeostasis_time_step": 4,
                         "training.strategies.residual_supervision.enabled": True})
    ckpt, info = ensure_phase1(cfg, tmp_path, progress=False, quiet=True)
    assert info["derivative_targets"] == "window(11, segment 4)"
    data = load_training_data(dataset_dir(cfg, tmp_path))
    model = load_phase1_model(ckpt, data, cfg)
    seen = []
    real = phase2_mod.rollout

    def spy(*args, **kw):
        seen.append(kw.get("substeps"))
        return real(*args, **kw)

    monkeypatch.setattr(phase2_mod, "rollout", spy)
    res = phase2_mod.train_phase2(model, data, cfg.training, progress=False)
    assert seen and set(seen) == {3}
    assert res.residual_targets == "window(4)"
    assert np.isfinite(res.final_loss)


# ----------------------------------------------------------------------------- Phase 1 windows


def test_phase1_window_rows_average_the_rate_law_along_the_frames(tmp_path, model):
    """Each row: [c(t+W) - c(t)] / (W dt) against the mean of MLP_sub's rate features over
    frames t..t+W-1 (and of c for the drift); sampled rows agree with the full set."""
    from metabolism.phase1 import WindowTargets, _features

    cfg, data, _ = _dataset(tmp_path, **{"simulation.observation_noise": 0.01})
    W = 5
    data.concentrations[50, 3] = 0.0  # a clamped frame: the windows over it carry no weight
    rows = WindowTargets(data, W, 5.0)
    c = torch.as_tensor(data.concentrations)
    torch.testing.assert_close(rows.y.double(), (c[W:] - c[:-W]) / (W * 0.1), rtol=1e-5,
                               atol=1e-5)
    clamped = (c <= 0).any(1)
    touched = torch.tensor([bool(clamped[t:t + W + 1].any()) for t in range(rows.y.shape[0])])
    assert touched.any() and (rows.w[touched] == 0).all() and (rows.w[~touched] > 0).all()
    with torch.no_grad():
        G_all, x_all, y_all, _ = rows.everything(model)
        feats = _features(model, c.float())
        for t in (0, 7, rows.y.shape[0] - 1):
            torch.testing.assert_close(G_all[t].float(), feats[t:t + W].mean(0), rtol=1e-4,
                                       atol=1e-7)
            torch.testing.assert_close(x_all[t], c[t:t + W].mean(0), rtol=1e-6, atol=1e-6)
        torch.manual_seed(3)
        G, x, y, w = rows.sample(model, 64)
        assert G.shape == (64, G_all.shape[1]) and x.shape == y.shape == w.shape == (64, 20)
        match = [int(torch.nonzero((y_all == yi).all(1))[0]) for yi in y]
        torch.testing.assert_close(G.double(), G_all[match], rtol=1e-4, atol=1e-7)
        # the batch: 64 / 4 runs of 4 consecutive windows (phase1.window_segment, default 4)
        starts = torch.tensor(match).reshape(16, 4)
        assert (starts.diff(dim=1) == 1).all()
        wide = WindowTargets(data, W, 5.0, segment=16)
        _, _, y16, _ = wide.sample(model, 64)
        runs = torch.tensor([int(torch.nonzero((y_all == yi).all(1))[0]) for yi in y16])
        assert (runs.reshape(4, 16).diff(dim=1) == 1).all()


def test_a_window_checkpoint_of_another_segment_is_not_this_configs():
    """phase1.window_segment stays out of the cache key at its default, so the checkpoint's
    info carries it: one built before the key existed (segment 16, not said) is refused."""
    from metabolism.experiment import _check_window_segment
    from metabolism.integrity import CacheError

    cfg = tiny_config(**{"simulation.observation_noise": 0.01})
    path = Path("phase1-x.pt")
    _check_window_segment(path, {"derivative_targets": "window(7, segment 4)"}, cfg)
    _check_window_segment(path, {"derivative_targets": "difference"}, cfg)
    with pytest.raises(CacheError, match="segment 16.*phase1.window_segment is 4"):
        _check_window_segment(path, {"derivative_targets": "window(7)"}, cfg)
    wide = tiny_config(**{"simulation.observation_noise": 0.01, "phase1.window_segment": 16})
    _check_window_segment(path, {"derivative_targets": "window(7)"}, wide)
    with pytest.raises(CacheError, match="segment 4"):
        _check_window_segment(path, {"derivative_targets": "window(7, segment 4)"}, wide)


def test_phase1_auto_integrates_windows_on_noisy_data(tmp_path):
    from metabolism.phase1 import PointTargets, WindowTargets, phase1_targets

    cfg, clean, _ = _dataset(tmp_path / "a")
    rows = phase1_targets(clean, cfg.phase1)
    assert isinstance(rows, PointTargets) and rows.label == "difference"
    cfg, noisy, _ = _dataset(tmp_path / "b", **{"simulation.observation_noise": 0.01})
    rows = phase1_targets(noisy, cfg.phase1)
    assert isinstance(rows, WindowTargets) and rows.label == "window(11, segment 4)"
    fixed = tiny_config(**{"simulation.observation_noise": 0.01, "phase1.window": 4})
    assert phase1_targets(noisy, fixed.phase1).label == "window(4, segment 4)"
