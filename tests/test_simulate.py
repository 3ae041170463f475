"""Ground-truth Euler simulator against hand-computed values on a 3-metabolite network."""

from __future__ import annotations

import numpy as np
from metabolism.network import GroundTruth, Stoichiometry
from metabolism.simulate import reaction_rates, simulate, true_dcdt

# Reactions:  r0: m0 + m1 -> 2 m1       (cycle reaction)
#             r1: 2 m2 -> m0 + m1       (|s| = 2)
#             r2: m1 + m2 -> 2 m0
S = np.array([
    [-1.0, 1.0, 2.0],
    [1.0, 1.0, -1.0],
    [0.0, -2.0, -1.0],
])
SUB_IDX = np.array([[0, 1], [2, 0], [1, 2]])
SUB_COEFF = np.array([[1.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
LOG10_K = np.array([-1.0, -2.0, np.log10(0.05)])
STOICH = Stoichiometry(S=S, substrate_index=SUB_IDX, substrate_coeff=SUB_COEFF)
TRUTH = GroundTruth(log10_k=LOG10_K, types=np.array([0, 0, 1]),
                    lambda_per_type=np.array([0.1, 0.2]), baseline_per_type=np.array([4.0, 6.0]))


def test_reactions_alone_conserve_total_mass():
    """Every column of S sums to zero, so without homeostasis (and away from the clamp) the
    simulator must keep sum(c) constant: a wrong sign or index in the update breaks this."""
    no_homeo = GroundTruth(log10_k=LOG10_K, types=TRUTH.types,
                           lambda_per_type=np.zeros(2), baseline_per_type=TRUTH.baseline_per_type)
    traj = simulate(np.array([2.0, 3.0, 5.0]), STOICH, no_homeo, 0.01, 50)
    assert np.all(traj > 0)
    np.testing.assert_allclose(traj.sum(1), 10.0, rtol=1e-12)
    assert np.abs(np.diff(traj, axis=0)).max() > 1e-3  # it did move


def test_reaction_rates_explicit_product():
    c = np.array([2.0, 3.0, 5.0])
    v = reaction_rates(c, STOICH, LOG10_K)
    expected = np.array([0.1 * 2.0 * 3.0, 0.01 * 5.0 ** 2, 0.05 * 3.0 * 5.0])
    np.testing.assert_allclose(v, expected, rtol=1e-12)


def test_reaction_rates_batched():
    rng = np.random.default_rng(0)
    c = rng.uniform(0.5, 3, size=(4, 7, 3))
    v = reaction_rates(c, STOICH, LOG10_K)
    assert v.shape == (4, 7, 3)
    k = 10.0 ** LOG10_K
    exp = np.stack([k[0] * c[..., 0] * c[..., 1], k[1] * c[..., 2] ** 2,
                    k[2] * c[..., 1] * c[..., 2]], -1)
    np.testing.assert_allclose(v, exp, rtol=1e-12)


def test_true_dcdt_hand_value():
    c = np.array([2.0, 3.0, 5.0])
    v0, v1, v2 = 0.6, 0.25, 0.75
    react = np.array([-v0 + v1 + 2 * v2, v0 + v1 - v2, -2 * v1 - v2])
    homeo = np.array([-0.1 * (2.0 - 4.0), -0.1 * (3.0 - 4.0), -0.2 * (5.0 - 6.0)])
    np.testing.assert_allclose(true_dcdt(c, STOICH, TRUTH), react + homeo, rtol=1e-12)


def test_one_euler_step_hand_value():
    c0 = np.array([2.0, 3.0, 5.0])
    dt = 0.1
    traj = simulate(c0, STOICH, TRUTH, dt, 2)
    assert traj.shape == (2, 3)
    np.testing.assert_array_equal(traj[0], c0)
    # reactions [-0.6+0.25+1.5, 0.6+0.25-0.75, -0.5-0.75] + homeostasis [0.2, 0.1, 0.2]
    np.testing.assert_allclose(traj[1], c0 + dt * np.array([1.35, 0.2, -1.05]), rtol=1e-12)


def test_homeostasis_alone_relaxes_to_baseline():
    zero_k = GroundTruth(log10_k=np.full(3, -np.inf), types=TRUTH.types,
                         lambda_per_type=TRUTH.lambda_per_type,
                         baseline_per_type=TRUTH.baseline_per_type)
    c0 = np.array([1.0, 8.0, 6.0])
    traj = simulate(c0, STOICH, zero_k, 0.5, 3)
    lam, cb = np.array([0.1, 0.1, 0.2]), np.array([4.0, 4.0, 6.0])
    c1 = c0 - 0.5 * lam * (c0 - cb)
    c2 = c1 - 0.5 * lam * (c1 - cb)
    np.testing.assert_allclose(traj[1], c1, rtol=1e-12)
    np.testing.assert_allclose(traj[2], c2, rtol=1e-12)
    np.testing.assert_allclose(traj[1, 2], 6.0)  # at its baseline: no drift


def test_clamp_at_zero():
    # m2 is consumed fast by r1 (2 m2 -> ...): one big step would make it negative
    c0 = np.array([1.0, 1.0, 5.0])
    dt = 1.0
    strong = GroundTruth(log10_k=np.array([-1.0, 0.0, -1.0]), types=TRUTH.types,
                         lambda_per_type=TRUTH.lambda_per_type,
                         baseline_per_type=TRUTH.baseline_per_type)
    unclamped = c0 + dt * true_dcdt(c0, STOICH, strong)
    assert unclamped[2] < 0
    traj = simulate(c0, STOICH, strong, dt, 2)
    assert traj[1, 2] == 0.0
    np.testing.assert_allclose(traj[1, :2], unclamped[:2], rtol=1e-12)  # others untouched
    assert np.all(traj >= 0)
