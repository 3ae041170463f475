"""Each Phase 2 strategy changes what it claims to change."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import pytest
import torch

import metabolism.phase2 as phase2_mod
from conftest import ALL_STRATEGIES, tiny_dict
from kernels import reaction_dcdt
from metabolism import strategies as strat
from metabolism.config import ModelConfig, SimulationConfig, StrategiesConfig, config_from_dict
from metabolism.data import dataset_dir, load_training_data
from metabolism.experiment import load_phase1_model
from metabolism.model import MetabolismModel
from metabolism.network import generate_network
from metabolism.phase2 import train_phase2
from metabolism.rollout import rollout


def _strategies(**blocks) -> StrategiesConfig:
    d = tiny_dict()
    d["training"]["strategies"] = blocks
    return config_from_dict(d).training.strategies


@pytest.fixture
def model():
    """A small model with true log10 k, a random MLP_sub and a non-zero MLP_node."""
    torch.manual_seed(0)
    stoich, truth = generate_network(SimulationConfig(n_metabolites=12, n_reactions=20,
                                                      lambda_per_type=[0.1, 0.2], seed=3))
    m = MetabolismModel(stoich, ModelConfig(hidden_dim_sub=8, hidden_dim_node=8,
                                            embedding_init_std=0.5), concentration_scale=4.0)
    with torch.no_grad():
        m.log10_k.copy_(torch.as_tensor(truth.log10_k, dtype=torch.float32))
        for lin in m.mlp_node:
            if isinstance(lin, torch.nn.Linear):
                lin.weight.normal_(0, 0.5)
                lin.bias.normal_(0, 0.2)
    m.freeze_phase1()
    return m


def _c0(n=12, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 3.0 + 2.0 * torch.rand(b, n, generator=g)


# ----------------------------------------------------------------------------- amplification


def test_amplification_scales_node_term(model):
    c0, dt = _c0(), 0.01
    with torch.no_grad():
        base = rollout(model, c0, 1, dt, node_scale=0.0)[:, 0]
        one = rollout(model, c0, 1, dt, node_scale=1.0)[:, 0]
        amp = rollout(model, c0, 1, dt, node_scale=25.0)[:, 0]
        node = model.node(c0)
    assert torch.all(base > 0)  # no clamping, so the step is linear in node_scale
    torch.testing.assert_close(one - base, dt * node, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(amp - base, 25.0 * dt * node, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(amp, one)


def test_amplification_factor_schedule():
    st = _strategies(amplification={"enabled": True, "factor": 50.0, "anneal_start": 0.3,
                                    "anneal_end": 0.8})
    assert strat.amplification_factor(st, 0.0) == 50.0
    assert strat.amplification_factor(st, 0.3) == 50.0
    mid = [strat.amplification_factor(st, f) for f in np.linspace(0.31, 0.79, 20)]
    assert all(1.0 < a < 50.0 for a in mid)
    assert all(a > b for a, b in zip(mid, mid[1:]))  # annealing: strictly decreasing
    assert strat.amplification_factor(st, 0.55) == pytest.approx(math.sqrt(50.0))  # geometric
    assert strat.amplification_factor(st, 0.8) == 1.0
    assert strat.amplification_factor(st, 999 / 1000) == 1.0  # last update: exactly 1
    assert strat.amplification_factor(_strategies(), 0.0) == 1.0  # disabled


def test_amplification_reaches_the_trainer(tiny_phase1, monkeypatch):
    cfg0, data_root, ckpt, _ = tiny_phase1
    d = tiny_dict(**{"training.data_augmentation_loop": 10})
    d["training"]["strategies"] = {"amplification": {"enabled": True, "factor": 20.0,
                                                     "anneal_start": 0.2, "anneal_end": 0.6}}
    cfg = config_from_dict(d)
    scales = []
    real = phase2_mod.rollout

    def spy(*a, **kw):
        scales.append(kw.get("node_scale", 1.0))
        return real(*a, **kw)

    monkeypatch.setattr(phase2_mod, "rollout", spy)
    data = load_training_data(dataset_dir(cfg, data_root))
    train_phase2(load_phase1_model(ckpt, data, cfg), data, cfg.training, progress=False)
    train_scales = scales[:10]  # the last call is the evaluation rollout
    assert train_scales[0] == 20.0 and train_scales[2] == 20.0
    assert train_scales[-1] == 1.0 and train_scales[6] == 1.0
    assert 1.0 < train_scales[4] < 20.0
    assert scales[-1] == 1.0  # evaluation sees the unamplified model


# ----------------------------------------------------------------------------- isolation


def test_gradient_isolation_one_step_jacobian(model):
    """With isolation, d c1 / d c0 = I + dt * diag(d node / d c): the node-only path."""
    c0, dt = _c0(b=2), 0.05
    w = torch.randn_like(c0)

    def grad_c0(reaction_grad):
        x = c0.clone().requires_grad_(True)
        out = rollout(model, x, 1, dt, reaction_grad=reaction_grad)[:, 0]
        (out * w).sum().backward()
        return out.detach(), x.grad

    out_iso, g_iso = grad_c0(False)
    out_full, g_full = grad_c0(True)
    torch.testing.assert_close(out_iso, out_full)  # same forward: the state still reacts

    x = c0.clone().requires_grad_(True)
    dnode = torch.autograd.grad(model.node(x).sum(), x)[0]  # node is per-metabolite: diagonal
    torch.testing.assert_close(g_iso, w + dt * w * dnode, rtol=1e-5, atol=1e-6)

    fr = model.frozen_reactions()
    for b in range(c0.shape[0]):
        J = torch.autograd.functional.jacobian(lambda c: reaction_dcdt(c[None], fr)[0], c0[b])
        torch.testing.assert_close(g_full[b], g_iso[b] + dt * (J.T @ w[b]), rtol=1e-4,
                                   atol=1e-5)
    assert not torch.allclose(g_iso, g_full)


def test_gradient_isolation_changes_parameter_gradients(model):
    c0, dt = _c0(), 0.05
    target = c0[:, None, :] + 0.1

    def grads(reaction_grad):
        model.zero_grad(set_to_none=True)
        pred = rollout(model, c0, 6, dt, reaction_grad=reaction_grad)
        ((pred - target) ** 2).mean().backward()
        return [p.grad.clone() for p in model.mlp_node.parameters()] + [model.embeddings.grad]

    g_iso, g_full = grads(False), grads(True)
    assert all(torch.isfinite(g).all() for g in g_iso)
    assert any(not torch.allclose(a, b) for a, b in zip(g_iso, g_full))
    assert all(p.grad is None for p in model.phase1_parameters())
    assert strat.reaction_gradient(_strategies(gradient_isolation={"enabled": True})) is False
    assert strat.reaction_gradient(_strategies()) is True


# ----------------------------------------------------------------------------- lr schedule


def test_lr_multiplier_shape():
    st = _strategies(lr_schedule={"enabled": True, "warmup_fraction": 0.1, "peak_factor": 10.0,
                                  "min_factor": 0.1})
    assert strat.lr_multiplier(st, 0.0) == pytest.approx(1.0)
    assert strat.lr_multiplier(st, 0.05) == pytest.approx(5.5)
    assert strat.lr_multiplier(st, 0.1) == pytest.approx(10.0)
    assert strat.lr_multiplier(st, 1.0) == pytest.approx(0.1)
    assert strat.lr_multiplier(st, 0.55) == pytest.approx(0.1 + 9.9 * 0.5)  # cosine midpoint
    warm = [strat.lr_multiplier(st, f) for f in np.linspace(0, 0.1, 11)[:-1]]
    decay = [strat.lr_multiplier(st, f) for f in np.linspace(0.1, 1.0, 50)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert max(warm + decay) == pytest.approx(10.0)
    assert strat.lr_multiplier(_strategies(), 0.5) == 1.0


def test_lr_multiplier_without_warmup_is_a_cosine_decay():
    """The slot configs' form: 1 at the first update, min_factor at the end, no division by
    the zero warmup fraction."""
    st = _strategies(lr_schedule={"enabled": True, "warmup_fraction": 0.0, "peak_factor": 1.0,
                                  "min_factor": 0.05})
    fracs = np.linspace(0.0, 1.0, 101)
    got = np.array([strat.lr_multiplier(st, f) for f in fracs])
    np.testing.assert_allclose(got, 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * fracs)), rtol=1e-12)
    assert got[0] == pytest.approx(1.0) and got[-1] == pytest.approx(0.05)
    assert np.all(np.diff(got) < 0)


def test_lr_schedule_reaches_the_optimizer(tiny_phase1, monkeypatch):
    """Both parameter groups (MLP_node, embeddings) step at base lr x the schedule."""
    cfg0, data_root, ckpt, _ = tiny_phase1
    d = tiny_dict(**{"training.data_augmentation_loop": 10,
                     "training.learning_rate_node_homeostasis": 2e-3,
                     "training.learning_rate_embedding_homeostasis": 4e-3})
    d["training"]["strategies"] = {"lr_schedule": {
        "enabled": True, "warmup_fraction": 0.0, "peak_factor": 1.0, "min_factor": 0.05}}
    cfg = config_from_dict(d)
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **kw):
        seen.append([g["lr"] for g in self.param_groups])
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    data = load_training_data(dataset_dir(cfg, data_root))
    train_phase2(load_phase1_model(ckpt, data, cfg), data, cfg.training, progress=False)
    assert len(seen) == 10
    for step, (lr_node, lr_emb) in enumerate(seen):
        mult = strat.lr_multiplier(cfg.training.strategies, step / 10)
        assert lr_node == pytest.approx(2e-3 * mult) and lr_emb == pytest.approx(4e-3 * mult)
    assert seen[0][0] == pytest.approx(2e-3) and seen[-1][0] < 0.1 * 2e-3


# ----------------------------------------------------------------------------- lengths


def test_rollout_length_curriculum():
    st = _strategies(curriculum={"enabled": True, "final_fraction": 0.25, "switch_at": 0.5})
    rng = random.Random(0)
    assert strat.rollout_length(st, 64, 0.0, rng) == 64
    assert strat.rollout_length(st, 64, 0.49, rng) == 64
    assert strat.rollout_length(st, 64, 0.5, rng) == 16
    assert strat.rollout_length(st, 64, 0.99, rng) == 16
    assert strat.rollout_length(st, 2, 0.9, rng) == 1  # never zero
    assert strat.rollout_length(_strategies(), 64, 0.9, rng) == 64


def test_rollout_length_multiscale():
    st = _strategies(multiscale={"enabled": True, "fractions": [0.25, 0.5, 1.0]})
    rng = random.Random(0)
    lengths = [strat.rollout_length(st, 32, 0.5, rng) for _ in range(300)]
    assert set(lengths) == {8, 16, 32}
    both = _strategies(multiscale={"enabled": True, "fractions": [0.5, 1.0]},
                       curriculum={"enabled": True, "final_fraction": 0.5, "switch_at": 0.5})
    late = {strat.rollout_length(both, 32, 0.9, rng) for _ in range(100)}
    assert late == {8, 16}


def test_time_weights():
    plain = strat.time_weights(_strategies(), 8)
    torch.testing.assert_close(plain, torch.ones(8))
    st = _strategies(curriculum={"enabled": True, "late_step_weighting": True})
    for n in (1, 5, 16):
        w = strat.time_weights(st, n)
        assert w.shape == (n,)
        assert float(w.mean()) == pytest.approx(1.0)
        assert torch.all(w[1:] > w[:-1])
    # late-step weighting belongs to the curriculum: off when the curriculum is off
    off = _strategies(curriculum={"enabled": False, "late_step_weighting": True})
    torch.testing.assert_close(strat.time_weights(off, 4), torch.ones(4))


def test_accumulation_steps():
    assert strat.accumulation_steps(_strategies()) == 1
    assert strat.accumulation_steps(
        _strategies(gradient_accumulation={"enabled": True, "steps": 3})) == 3


# ----------------------------------------------------------------------------- residual


def _manual_reaction_dcdt(model, c):
    """sum_j S_ij k_j prod MLP_sub(c_k/scale, |s_kj|), straight from nn.Modules and dense S."""
    scale = model.concentration_scale
    out = []
    for row in c:
        v = []
        for j in range(model.S.shape[1]):
            prod = torch.tensor(1.0)
            for slot in range(model.substrate_index.shape[1]):
                s = model.substrate_coeff[j, slot]
                if s > 0:
                    k = model.substrate_index[j, slot]
                    prod = prod * model.mlp_sub(torch.stack([row[k] / scale, s]))[0]
            v.append(10.0 ** model.log10_k[j] * prod)
        out.append(model.S @ torch.stack(v))
    return torch.stack(out)


def test_residual_targets(model):
    torch.manual_seed(1)
    conc = 2.0 + torch.rand(6, 12) * 3
    conc[3, 5] = 0.0  # transition 2 -> 3 ends clamped: dropped
    dt = 0.1
    x, y = strat.residual_targets(model, conc, dt)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(x, conc[keep])
    with torch.no_grad():
        expected = (conc[[k + 1 for k in keep]] - conc[keep]) / dt \
            - _manual_reaction_dcdt(model, conc[keep])
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)


def test_residual_loss_is_node_mse(model):
    x = _c0(b=4)
    r = torch.randn_like(x)
    loss = strat.residual_loss(model, x, r)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(((model.node(x) - r) ** 2).mean()), rel=1e-6)
    loss.backward()
    assert model.mlp_node[0].weight.grad is not None


def test_residual_scale_is_a_robust_per_metabolite_sigma():
    g = torch.Generator().manual_seed(2)
    sigma = torch.tensor([0.01, 0.1, 1.0])
    r = torch.randn(20000, 3, generator=g) * sigma
    clean = strat.residual_scale(r)
    torch.testing.assert_close(clean, sigma, rtol=0.05, atol=0)
    r[:1000] = 1e3  # 5% wild frames barely move it
    assert torch.all(strat.residual_scale(r) < 1.15 * sigma)


def test_huber_residual_loss_equals_mse_inside_the_zone_and_caps_outliers(model):
    cfg = _strategies(residual_supervision={"enabled": True, "loss": "huber",
                                            "huber_scale": 1.0})
    x = _c0(b=4)
    with torch.no_grad():
        node = model.node(x)
    scale = torch.full((x.shape[1],), 0.5)
    small = node + 0.3 * (2 * torch.rand_like(x) - 1)  # every error inside +-0.5
    huber = strat.residual_loss(model, x, small, cfg, scale).item()
    assert huber == pytest.approx(strat.residual_loss(model, x, small).item(), rel=1e-5)

    wild = small.clone()
    wild[0, 0] += 100.0  # one outlier
    model.zero_grad()
    strat.residual_loss(model, x, wild, cfg, scale).backward()
    g_huber = model.mlp_node[-1].bias.grad.clone()
    model.zero_grad()
    strat.residual_loss(model, x, wild).backward()
    g_mse = model.mlp_node[-1].bias.grad.clone()
    # the outlier's pull: 2*err/n for MSE, at most 2*scale*delta/n for Huber
    n = x.numel()
    assert abs(float(g_mse)) > 100.0 / n
    assert abs(float(g_huber)) <= (2 * 0.5 * 1.0 + 2 * 0.3 * (n - 1)) / n + 1e-6


# ----------------------------------------------------------------------------- contrastive


def test_contrastive_grid_spans_the_configured_quantiles():
    conc = torch.arange(1001, dtype=torch.float32).reshape(77, 13)[:, :]  # 0..1000
    full = strat.contrastive_grid(conc, _strategies(contrastive={"n_grid": 5}))
    torch.testing.assert_close(full, torch.linspace(0.0, 1000.0, 5))
    mid = strat.contrastive_grid(conc, _strategies(
        contrastive={"n_grid": 3, "grid_quantiles": [0.25, 0.75]}))
    torch.testing.assert_close(mid, torch.tensor([250.0, 500.0, 750.0]))


def test_centered_curves_compare_shapes_not_levels():
    """center_curves: a per-metabolite constant leaves the neighbours unchanged."""
    g = torch.Generator().manual_seed(4)
    curves = torch.randn(10, 16, generator=g)
    shifted = curves + 5.0 * torch.randn(10, 1, generator=g)
    raw = _strategies(contrastive={"enabled": True})
    centered = _strategies(contrastive={"enabled": True, "center_curves": True})
    torch.testing.assert_close(strat.curve_neighbours(shifted, centered),
                               strat.curve_neighbours(curves, centered))
    assert not torch.allclose(strat.curve_neighbours(shifted, raw),
                              strat.curve_neighbours(curves, raw), atol=1e-3)
    p = strat.curve_neighbours(curves, raw)
    torch.testing.assert_close(p.sum(1), torch.ones(10))
    assert torch.all(p.diagonal() == 0)


def _two_law_model(n=16, seed=0):
    """MLP_node fitted to r = -l_g (c - cb_g) for two interleaved groups, a_i at +-1 by group."""
    torch.manual_seed(seed)
    stoich, _ = generate_network(SimulationConfig(n_metabolites=n, n_reactions=20, seed=3))
    m = MetabolismModel(stoich, ModelConfig(hidden_dim_node=16), concentration_scale=4.0)
    group = torch.arange(n) % 2
    lam, cb = torch.tensor([0.5, 1.5])[group], torch.tensor([3.0, 5.0])[group]
    x = 1.0 + 7.0 * torch.rand(300, n)
    residual = -lam * (x - cb)
    with torch.no_grad():
        m.embeddings.copy_(torch.stack([2.0 * group - 1.0, torch.zeros(n)], 1))
    opt = torch.optim.Adam(m.mlp_node.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        loss = ((m.node(x) - residual) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, "precondition: MLP_node represents both laws"
    return m, x, residual, group


def test_fit_errors_compare_every_learned_curve_with_every_residual():
    m, x, residual, group = _two_law_model()
    errors = strat.fit_errors(m, x, residual, n_frames=100, seed=1)
    assert errors.shape == (16, 16)
    i, j = 3, 8  # one entry by hand, on the same sampled frames
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:100]
    with torch.no_grad():
        pred = m.node(x[idx, i:i + 1], m.embeddings[j:j + 1])[:, 0]
    torch.testing.assert_close(errors[i, j], (pred - residual[idx, i]).abs().median())
    same = group[:, None] == group[None, :]
    assert errors[same].max() < errors[~same].min()


def test_reassignment_moves_stuck_metabolites_to_the_group_their_data_fits():
    """Three embeddings sit in the other group and one between the groups: their curves are
    the wrong law, their data is not. One reassignment puts every embedding with its data's
    group; the rest stay where they were."""
    m, x, residual, group = _two_law_model()
    swapped, between = torch.tensor([0, 5, 10]), 7
    with torch.no_grad():
        m.embeddings[swapped, 0] *= -1
        m.embeddings[between] = torch.tensor([0.0, 0.3])
    before = m.embeddings.detach().clone()
    new = strat.reassign_embeddings(m, strat.fit_errors(m, x, residual, 200), k=5)
    torch.testing.assert_close(new, m.embeddings.detach())
    side = 2.0 * group - 1.0
    torch.testing.assert_close(m.embeddings[:, 0].detach(), side, atol=1e-6, rtol=0)
    stayed = torch.ones(16, dtype=torch.bool)
    stayed[swapped], stayed[between] = False, False
    torch.testing.assert_close(m.embeddings[stayed].detach(), before[stayed])


def _fragment_case():
    """32 metabolites on one law, 12 of them (0-11) a fragment whose own learned curve fits
    them a little better than the others' curve does; 8 more (32-39) on a second law. The
    data's law distances do not know the fragment: its members are no closer to each other
    than to the rest of their law."""
    n, fragment, law2 = 40, torch.arange(12), torch.arange(32, 40)
    in_fragment = torch.zeros(n, dtype=torch.bool)
    in_fragment[fragment] = True
    same_law = torch.ones(n, n, dtype=torch.bool)
    same_law[law2] = False
    same_law[:, law2] = False
    same_law[law2[:, None], law2[None, :]] = True
    errors = torch.where(same_law, 0.51, 5.0)
    errors[in_fragment[:, None] & in_fragment[None, :]] = 0.50
    distances = torch.where(same_law, 0.10, 4.0)
    distances[in_fragment[:, None] & in_fragment[None, :]] = 0.12
    emb = torch.zeros(n, 2)
    emb[fragment] = torch.tensor([0.0, 1.0])
    emb[law2] = torch.tensor([3.0, 0.0])
    holder = torch.nn.Module()
    holder.embeddings = torch.nn.Parameter(emb)
    return holder, errors, distances, fragment, law2


def test_reassignment_from_curves_and_data_dissolves_a_fragment_the_curves_hold():
    """By the learned curves alone a fragment of more than k/2 members holds (each member's k
    best-fitting are its own); adding the data's law distances, the fragment's members join
    the rest of their law. The second law stays where it is either way."""
    holder, errors, distances, fragment, law2 = _fragment_case()
    start = holder.embeddings.detach().clone()
    by_curves = strat.reassign_embeddings(holder, strat.reassignment_scores(errors), k=10)
    torch.testing.assert_close(by_curves, start)  # nothing moves: the fragment holds
    scores = strat.reassignment_scores(errors, distances)
    eye = torch.eye(40, dtype=torch.bool)
    torch.testing.assert_close(scores, errors / errors[~eye].median()
                               + distances / distances[~eye].median())
    both = strat.reassign_embeddings(holder, scores, k=10)
    torch.testing.assert_close(both[fragment], torch.zeros(12, 2))
    torch.testing.assert_close(both[law2], start[law2])


def test_reassignment_joins_every_metabolite_of_an_identical_law():
    """With the conserved-law lines a law's metabolites have law distance 0 to each other,
    so the summed scores rank them by the learned curves alone and a fragment of more than
    k/2 holds (unequal_groups: fragments of 11-27 of 70). Given the distances, a metabolite
    with others of its exact law takes the median over all of them and no others: the
    fragment joins its law, and a law of fewer than k metabolites is not filled up with
    another law's (five types of 20 with k = 30)."""
    holder, errors, distances, fragment, law2 = _fragment_case()
    start = holder.embeddings.detach().clone()
    exact = torch.where(distances < 1.0, 0.0, distances)  # identical laws, the fragment too
    scores = strat.reassignment_scores(errors, exact)
    held = strat.reassign_embeddings(holder, scores, k=10)
    torch.testing.assert_close(held, start)  # ranked by the scores alone, the fragment holds
    holder.embeddings.data.copy_(start)
    joined = strat.reassign_embeddings(holder, scores, k=10, data_distances=exact)
    torch.testing.assert_close(joined[fragment], torch.zeros(12, 2))
    torch.testing.assert_close(joined[law2], start[law2])
    holder.embeddings.data.copy_(start)
    # k = 20: law2's 20 best are its 7 others and 13 of the first law, whose median is there
    swallowed = strat.reassign_embeddings(holder, scores, k=20)
    assert not torch.allclose(swallowed[law2], start[law2])
    holder.embeddings.data.copy_(start)
    kept = strat.reassign_embeddings(holder, scores, k=20, data_distances=exact)
    torch.testing.assert_close(kept[law2], start[law2])
    torch.testing.assert_close(kept[fragment], torch.zeros(12, 2))
    holder.embeddings.data.copy_(start)
    noisy = strat.reassign_embeddings(holder, scores, k=10, data_distances=distances)
    torch.testing.assert_close(noisy, start)  # no distance is 0: the k best, as before


def test_reassignment_uses_the_data_distances_when_configured(tiny_phase1, monkeypatch):
    """reassign_from 'both': the scores the reassignment ranks by are this run's fit errors
    plus its own residual law distances."""
    cfg0, data_root, ckpt, _ = tiny_phase1
    data = load_training_data(dataset_dir(cfg0, data_root))
    d = tiny_dict(**{"training.data_augmentation_loop": 4})
    d["training"]["strategies"] = {
        "residual_supervision": {"enabled": True},
        "contrastive": {"enabled": True, "n_grid": 8, "reassign_at": [0.5],
                        "reassign_neighbours": 3, "reassign_frames": 16,
                        "neighbours_from": "both", "reassign_from": "both"}}
    cfg = config_from_dict(d)
    seen = {}
    real_errors, real_reassign = strat.fit_errors, strat.reassign_embeddings

    def errors_spy(*args, **kwargs):
        seen["errors"] = real_errors(*args, **kwargs)
        return seen["errors"]

    def reassign_spy(model, scores, k, same_law_from=None):
        seen["scores"], seen["same_law_from"] = scores, same_law_from
        return real_reassign(model, scores, k, same_law_from)

    monkeypatch.setattr(strat, "fit_errors", errors_spy)
    monkeypatch.setattr(strat, "reassign_embeddings", reassign_spy)
    train_phase2(load_phase1_model(ckpt, data, cfg), data, cfg.training, progress=False)
    x, y = strat.residual_targets(load_phase1_model(ckpt, data, cfg),
                                  torch.as_tensor(data.concentrations).float(), data.delta_t)
    distances = strat.residual_law_distances(x, y)
    expected = strat.reassignment_scores(seen["errors"], distances)
    torch.testing.assert_close(seen["scores"], expected)
    torch.testing.assert_close(seen["same_law_from"], distances)
    assert not torch.allclose(seen["scores"], seen["errors"])


def test_reassignment_runs_at_the_configured_fractions(tiny_phase1, monkeypatch):
    cfg0, data_root, ckpt, _ = tiny_phase1
    data = load_training_data(dataset_dir(cfg0, data_root))
    d = tiny_dict(**{"training.data_augmentation_loop": 10})
    d["training"]["strategies"] = {"contrastive": {
        "enabled": True, "n_grid": 8, "reassign_at": [0.3, 0.8], "reassign_neighbours": 3,
        "reassign_frames": 16}}
    cfg = config_from_dict(d)
    m = load_phase1_model(ckpt, data, cfg)
    calls = []
    original = strat.reassign_embeddings

    def recording(model, errors, k, same_law_from=None):
        calls.append((tuple(errors.shape), k))
        return original(model, errors, k, same_law_from)

    monkeypatch.setattr(strat, "reassign_embeddings", recording)
    train_phase2(m, data, cfg.training, progress=False)
    n = data.concentrations.shape[1]
    assert calls == [((n, n), 3), ((n, n), 3)]


def _pairwise(emb, a, b):
    return torch.cdist(emb[a], emb[b]).mean().item()


def test_contrastive_groups_by_response(model):
    """Two sets of metabolites whose MLP_node responses differ: the loss separates them."""
    n = model.embeddings.shape[0]
    A, B = torch.arange(0, n, 2), torch.arange(1, n, 2)  # interleaved: not the type blocks
    torch.manual_seed(5)
    with torch.no_grad():  # make MLP_node depend strongly on the first embedding coordinate
        model.mlp_node[0].weight[:, 1].mul_(6.0)
        emb = 0.6 * torch.randn(n, 2)
        emb[A, 0] += 1.0
        emb[B, 0] -= 1.0
        model.embeddings.copy_(emb)
    grid = torch.linspace(1.0, 8.0, 16)
    with torch.no_grad():
        curves = strat.response_curves(model, grid)
        assert curves.shape == (n, 16)
        cc = curves - curves.mean(1, keepdim=True)
        cc = cc / cc.norm(dim=1, keepdim=True)
        sim = cc @ cc.T
    within = (sim[A][:, A].mean() + sim[B][:, B].mean()) / 2
    assert within > sim[A][:, B].mean() + 0.3, "precondition: the two sets respond differently"

    cfg = _strategies(contrastive={"enabled": True, "temperature": 0.1})
    node_before = [p.detach().clone() for p in model.mlp_node.parameters()]
    ratio0 = (_pairwise(model.embeddings.detach(), A, A) + _pairwise(
        model.embeddings.detach(), B, B)) / 2 / _pairwise(model.embeddings.detach(), A, B)
    opt = torch.optim.SGD([model.embeddings], lr=0.05)
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = strat.contrastive_loss(model, grid, cfg)
        loss.backward()
        for p in model.mlp_node.parameters():  # the loss moves only the embeddings
            assert p.grad is None or torch.all(p.grad == 0)
        opt.step()
        losses.append(loss.item())
    e = model.embeddings.detach()
    ratio1 = (_pairwise(e, A, A) + _pairwise(e, B, B)) / 2 / _pairwise(e, A, B)
    assert losses[-1] < losses[0]
    assert ratio1 < 0.7 * ratio0, (ratio0, ratio1)
    for a, b in zip(node_before, model.mlp_node.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("name", list(ALL_STRATEGIES))
def test_each_strategy_changes_training(tiny_phase1, name):
    """Same seed and data: enabling one strategy changes the trained model."""
    cfg0, data_root, ckpt, _ = tiny_phase1
    data = load_training_data(dataset_dir(cfg0, data_root))

    def trained(strategies):
        d = tiny_dict(**{"training.data_augmentation_loop": 8})
        d["training"]["strategies"] = copy.deepcopy(strategies)
        cfg = config_from_dict(d)
        m = load_phase1_model(ckpt, data, cfg)
        res = train_phase2(m, data, cfg.training, progress=False)
        return m, res

    base, rb = trained({})
    block = copy.deepcopy(ALL_STRATEGIES[name])
    if name == "curriculum":
        block["late_step_weighting"] = False  # the length switch alone must matter
    m, rs = trained({name: block})
    assert np.all(np.isfinite(rs.losses))
    same = all(torch.equal(a, b) for a, b in zip(base.state_dict().values(),
                                                 m.state_dict().values()))
    assert not same, f"{name} had no effect on training"


# ----------------------------------------------------------------------------- plug-in interface


def test_a_strategy_plugs_in_as_one_class(tiny_phase1, monkeypatch):
    """A Phase2Strategy listed in STRATEGIES gets its hooks called by the loop: its term enters
    the total and the recorded components, its events the loss plot's, with no other change."""
    cfg0, data_root, ckpt, _ = tiny_phase1
    calls = {"before": [], "loss": []}

    class Nudge(phase2_mod.Phase2Strategy):
        term = "nudge"

        @staticmethod
        def enabled(st):
            return True

        @staticmethod
        def events(st, n_updates):
            return {"nudge starts": [2]}

        def before_update(self, step):
            calls["before"].append(step)

        def loss(self, frac):
            calls["loss"].append(frac)
            if frac < 0.5:
                return None
            return 1e-3 * self.setup.model.embeddings.square().sum()

    monkeypatch.setattr(phase2_mod, "STRATEGIES", (*phase2_mod.STRATEGIES, Nudge))
    cfg = config_from_dict(tiny_dict(**{"training.data_augmentation_loop": 4}))
    assert phase2_mod.objective_terms(cfg.training)[-1] == "nudge"
    assert phase2_mod.strategy_events(cfg.training)["nudge starts"] == [2]
    data = load_training_data(dataset_dir(cfg, data_root))
    result = train_phase2(load_phase1_model(ckpt, data, cfg), data, cfg.training, progress=False)
    accum = strat.accumulation_steps(cfg.training.strategies)
    assert calls["before"] == [0, 1, 2, 3]
    assert calls["loss"] == [s / 4 for s in range(4) for _ in range(accum)]
    nudge = result.components["nudge"]
    assert nudge[:2] == [0.0, 0.0] and all(v > 0 for v in nudge[2:])
    for k in range(4):
        assert result.losses[k] == pytest.approx(sum(v[k] for v in result.components.values()))


def test_residual_law_distances_tell_laws_apart_despite_outliers_and_narrow_ranges():
    """Data-only distances: zero between metabolites on one law (even one seen over a narrow
    range, whose own line is ill-determined, and with wild frames), large across laws."""
    g = torch.Generator().manual_seed(11)
    law = torch.tensor([0, 1, 0, 1, 0, 1])
    x = 1.0 + 7.0 * torch.rand(800, 6, generator=g, dtype=torch.float64)
    x[:, 4] = 0.01 + 0.05 * torch.rand(800, generator=g, dtype=torch.float64)  # narrow range
    residual = -torch.tensor([0.5, 1.5], dtype=torch.float64)[law] * (
        x - torch.tensor([3.0, 5.0], dtype=torch.float64)[law])
    residual = residual + 0.01 * torch.randn(800, 6, generator=g, dtype=torch.float64)
    residual[::40] += 1e3  # heavy-tailed Phase 1 error on 2.5% of the frames
    d = strat.residual_law_distances(x, residual)
    torch.testing.assert_close(d, d.T)
    same = law[:, None] == law[None]
    assert float(d[same].max()) < 1e-3
    assert float(d[~same].min()) > 1.0


def test_data_neighbours_group_like_laws_whatever_mlp_node_learned(model):
    """neighbours_from: data: p comes from the residual's own laws; two interleaved laws
    give each metabolite its neighbours among its own law's metabolites. "both" keeps that
    where the learned curves say nothing (all alike)."""
    n = model.embeddings.shape[0]
    group = torch.arange(n) % 2
    g = torch.Generator().manual_seed(5)
    x = 1.0 + 7.0 * torch.rand(400, n, generator=g)
    residual = -torch.tensor([0.5, 1.5])[group] * (x - torch.tensor([3.0, 5.0])[group])
    residual = residual + 0.01 * torch.randn(400, n, generator=g)
    cfg = _strategies(contrastive={"enabled": True, "neighbours_from": "data"})
    grid = strat.contrastive_grid(x, cfg)
    distances = strat.residual_law_distances(x, residual)
    p = strat.curve_neighbours(None, cfg, distances)
    same = group[:, None] == group[None]
    assert float((p * same).sum(1).min()) > 0.99
    before = model.embeddings.detach().clone()
    strat.contrastive_loss(model, grid, cfg, distances).backward()
    # the attraction pulls each a_i toward its own law's embeddings, as p says
    torch.testing.assert_close(model.embeddings.grad, 2 * (before - p @ before) / n,
                               rtol=1e-4, atol=1e-6)
    alike = torch.ones(n, grid.shape[0]) + 1e-3 * torch.randn(n, grid.shape[0], generator=g)
    both = _strategies(contrastive={"enabled": True, "neighbours_from": "both"})
    assert float((strat.curve_neighbours(alike, both, distances) * same).sum(1).min()) > 0.9
    assert float((strat.curve_neighbours(alike, both) * same).sum(1).mean()) < 0.7


def test_exact_laws_are_the_only_neighbours_however_near_another_law_is():
    """Where the data give laws exactly (distance 0 within a law) the attraction stays within
    each law, even for two laws much nearer each other than the median pair of laws (five
    types: types 0 and 1 gave 28% of their attraction to each other and merged). Without
    exact zeros the softmax is as before and weighs the near law."""
    law = torch.arange(30) % 5
    centre = torch.tensor([0.0, 0.3, 2.0, 4.0, 6.0])[law]  # laws 0 and 1 near, the rest far
    exact = (centre[:, None] - centre[None]) ** 2
    cfg = _strategies(contrastive={"enabled": True, "neighbours_from": "data"})
    p = strat.curve_neighbours(None, cfg, exact)
    same = law[:, None] == law[None]
    torch.testing.assert_close((p * same).sum(1), torch.ones(30))
    assert torch.all(p.diagonal() == 0)
    noisy = exact + 1e-4 * (1 + torch.rand(30, 30, generator=torch.Generator().manual_seed(2)))
    noisy = torch.minimum(noisy, noisy.T)
    q = strat.curve_neighbours(None, cfg, noisy)
    assert float((q * ~same)[law < 2].sum(1).min()) > 0.2  # the near law takes a share
    curves = torch.randn(30, 8, generator=torch.Generator().manual_seed(3))
    both = _strategies(contrastive={"enabled": True, "neighbours_from": "both"})
    torch.testing.assert_close((strat.curve_neighbours(curves, both, exact) * same).sum(1),
                               torch.ones(30))


def _two_laws(noise: float, seed: int = 7, n: int = 8, frames: int = 1600):
    """x, residual of n metabolites on two interleaved linear laws, plus i.i.d. noise."""
    g = torch.Generator().manual_seed(seed)
    law = torch.arange(n) % 2
    x = 1.0 + 7.0 * torch.rand(frames, n, generator=g, dtype=torch.float64)
    residual = -torch.tensor([0.5, 1.5], dtype=torch.float64)[law] * (
        x - torch.tensor([3.0, 5.0], dtype=torch.float64)[law])
    return x, residual + noise * torch.randn(frames, n, generator=g, dtype=torch.float64)


def test_split_half_reliability_falls_as_measurement_noise_hides_the_laws():
    """Near 1 where the laws stand far above the noise, near 0 where the noise swamps them
    (the halves' medians then differ as much as the metabolites' do), falling in between."""
    values = []
    for noise in (0.01, 3.0, 10.0, 100.0):
        x, residual = _two_laws(noise)
        values.append(strat.split_half_reliability(
            x, residual, strat.residual_law_distances(x, residual), block=8))
    assert values[0] > 0.98
    assert values[-1] < 0.2
    assert values == sorted(values, reverse=True) and values[1] > values[2]


def test_split_half_reliability_of_too_few_frames_is_not_a_number():
    """Halves too short for the bins: 'not measurable' (NaN, which no log records), never a
    number that reads as 'all noise'."""
    x, residual = _two_laws(0.01)
    short_x, short_residual = x[:20], residual[:20]  # 10 frames a half, 8 bins need 16
    value = strat.split_half_reliability(
        short_x, short_residual, strat.residual_law_distances(short_x, short_residual), block=2)
    assert math.isnan(value)



def test_spectral_embeddings_start_each_law_in_its_own_place():
    """Three interleaved laws (one seen over a narrow range, wild frames on all): each law's
    metabolites start together, the laws apart, every coordinate with the asked std; a
    relabelling of the metabolites relabels the embeddings and changes nothing else."""
    g = torch.Generator().manual_seed(21)
    n = 30
    law = torch.arange(n) % 3
    x = 1.0 + 7.0 * torch.rand(900, n, generator=g, dtype=torch.float64)
    x[:, 4] = 0.01 + 0.05 * torch.rand(900, generator=g, dtype=torch.float64)
    lam, base = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64), torch.tensor(
        [3.0, 5.0, 7.0], dtype=torch.float64)
    residual = -lam[law] * (x - base[law]) + 0.05 * torch.randn(900, n, generator=g,
                                                                dtype=torch.float64)
    residual[::45] += 1e3
    cfg = _strategies(contrastive={"enabled": True, "neighbours_from": "both",
                                   "temperature": 0.05})
    distances = strat.residual_law_distances(x, residual)
    emb = strat.spectral_embeddings(distances, cfg, 2, 0.5)
    assert emb.shape == (n, 2)
    torch.testing.assert_close(emb.std(0), torch.full((2,), 0.5, dtype=torch.float64))
    centres = torch.stack([emb[law == k].mean(0) for k in range(3)])
    within = max(float((emb[law == k] - centres[k]).norm(dim=1).max()) for k in range(3))
    between = float(torch.pdist(centres).min())
    assert between > 3 * within, (between, within)
    assert torch.equal(torch.cdist(emb, centres).argmin(1), law)
    perm = torch.randperm(n, generator=g)
    moved = strat.spectral_embeddings(distances[perm][:, perm], cfg, 2, 0.5)
    torch.testing.assert_close(moved, emb[perm], rtol=1e-7, atol=1e-9)


def test_phase2_starts_from_the_data_embeddings(tiny_phase1, monkeypatch):
    """init_from_data: the embeddings training starts from are the spectral embedding of this
    run's own residual law distances, whatever the model's random initialisation was."""
    _, data_root, ckpt, _ = tiny_phase1
    d = tiny_dict(**{"training.data_augmentation_loop": 2})
    d["training"]["strategies"] = {
        "residual_supervision": {"enabled": True},
        "contrastive": {"enabled": True, "neighbours_from": "both", "init_from_data": 0.3}}
    cfg = config_from_dict(d)
    seen = {}
    real = strat.spectral_embeddings

    def spy(distances, st, dim, scale):
        seen["distances"], seen["out"] = distances, real(distances, st, dim, scale)
        return seen["out"]

    monkeypatch.setattr(strat, "spectral_embeddings", spy)
    first_update = {}
    real_before = phase2_mod.Contrastive.before_update

    def record(self, step):
        if step == 0:
            first_update["emb"] = self.setup.model.embeddings.detach().clone()
        real_before(self, step)

    monkeypatch.setattr(phase2_mod.Contrastive, "before_update", record)
    data = load_training_data(dataset_dir(cfg, data_root))
    model = load_phase1_model(ckpt, data, cfg)
    random_init = model.embeddings.detach().clone()
    train_phase2(model, data, cfg.training, progress=False)
    x, y = strat.residual_targets(load_phase1_model(ckpt, data, cfg),
                                  torch.as_tensor(data.concentrations).float(), data.delta_t)
    torch.testing.assert_close(seen["distances"], strat.residual_law_distances(x, y))
    torch.testing.assert_close(first_update["emb"], seen["out"].float())
    assert float(first_update["emb"].std(0).min()) == pytest.approx(0.3, rel=1e-4)
    assert not torch.allclose(first_update["emb"], random_init)


def test_metabolites_of_one_conserved_law_are_exactly_zero_apart(tiny_phase1, monkeypatch):
    """With the conserved-law lines, metabolites of one slope group share one line by
    construction; the law distances the attraction and the reassignment read are 0 between
    them exactly, and above 0 between groups. Refitting each line's bin medians leaves
    rounding (four_types: 2400 of 2400 same-type pairs above 0 in float64, even with a floor
    at 64 eps), and the exact-law rule then split the types: here every refit distance is
    made so."""
    from metabolism.phase1_quality import trusted_reference
    from metabolism.phase2 import Phase2Result, Phase2Setup

    refit = strat.residual_law_distances
    monkeypatch.setattr(strat, "residual_law_distances",
                        lambda x, y: refit(x, y) + 1e-30 * (1 - torch.eye(x.shape[1])))

    cfg0, data_root, ckpt, _ = tiny_phase1
    data = load_training_data(dataset_dir(cfg0, data_root))
    d = tiny_dict()
    d["training"]["strategies"] = {"residual_supervision": {"enabled": True,
                                                            "target": "conserved_law"}}
    cfg = config_from_dict(d)
    setup = Phase2Setup(load_phase1_model(ckpt, data, cfg), data,
                        torch.as_tensor(data.concentrations).float(), cfg.training,
                        Phase2Result())
    distances = setup.law_distances()
    assert "replaced by conserved-law lines" in setup.result.residual_targets
    a, disagreement = trusted_reference(data)
    groups = strat.slope_groups(a, strat.SLOPE_MATCH * disagreement * np.median(np.abs(a)))
    same = torch.as_tensor(groups[:, None] == groups[None, :])
    assert 1 < len(np.unique(groups)) < len(groups)  # groups of several metabolites
    assert torch.all(distances[same] == 0)
    assert torch.all(distances[~same] > 0)
