"""Invariants of the random network generator (SPEC.md: default regime, any sizes)."""

from __future__ import annotations

import numpy as np
import pytest

from metabolism.config import SimulationConfig
from metabolism.network import assign_types, generate_network, metabolite_types

# (n_metabolites, n_reactions, n_types, cycle_length, max_metabolites_per_reaction, seed)
CASES = [
    (100, 256, 2, 3, 4, 42),  # the default regime
    (20, 40, 2, 3, 4, 0),
    (30, 50, 3, 3, 4, 7),
    (24, 45, 3, 4, 5, 3),
    (15, 20, 1, 5, 3, 11),
    (40, 31, 2, 3, 4, 123),
]


def _sim(n, r, t, L, maxper, seed) -> SimulationConfig:
    return SimulationConfig(n_metabolites=n, n_reactions=r, n_metabolite_types=t,
                            cycle_length=L, max_metabolites_per_reaction=maxper,
                            lambda_per_type=[0.001] * t, baseline_per_type=[5.0] * t, seed=seed)


def _substrates(stoich, j) -> dict[int, float]:
    mask = stoich.substrate_coeff[j] > 0
    return {int(m): float(c) for m, c in zip(stoich.substrate_index[j][mask],
                                             stoich.substrate_coeff[j][mask])}


@pytest.fixture(params=CASES, ids=lambda c: "N{}-R{}-T{}-L{}-M{}-s{}".format(*c))
def case(request):
    sim = _sim(*request.param)
    stoich, truth = generate_network(sim)
    return sim, stoich, truth


def test_shapes(case):
    sim, stoich, truth = case
    assert stoich.S.shape == (sim.n_metabolites, sim.n_reactions)
    assert stoich.substrate_index.shape[0] == sim.n_reactions
    assert stoich.substrate_coeff.shape == stoich.substrate_index.shape
    assert truth.log10_k.shape == (sim.n_reactions,)
    assert truth.types.shape == (sim.n_metabolites,)
    lo, hi = sim.log10_k_range
    assert np.all((truth.log10_k >= lo) & (truth.log10_k <= hi))


def test_mass_conservation(case):
    _, stoich, _ = case
    np.testing.assert_array_equal(stoich.S.sum(axis=0), 0.0)


def test_every_reaction_has_substrate_and_product(case):
    _, stoich, _ = case
    assert np.all((stoich.S < 0).sum(0) >= 1)
    assert np.all((stoich.S > 0).sum(0) >= 1)
    assert np.all(stoich.n_substrates >= 1)


def test_padding_is_index0_coeff0(case):
    _, stoich, _ = case
    pad = stoich.substrate_coeff == 0
    assert np.all(stoich.substrate_index[pad] == 0)


def test_cycle_reactions(case):
    sim, stoich, _ = case
    L = sim.cycle_length
    n_cycles = sim.n_reactions // L
    assert n_cycles >= 1
    for k in range(n_cycles):
        foods, cats = [], []
        for i in range(L):
            j = k * L + i
            col = stoich.S[:, j]
            nz = np.flatnonzero(col)
            assert len(nz) == 2, f"reaction {j}: a cycle reaction touches exactly 2 metabolites"
            food = int(np.flatnonzero(col == -1)[0])
            cat = int(np.flatnonzero(col == 1)[0])
            assert sorted(col[nz].tolist()) == [-1.0, 1.0]
            # m_food + m_cat -> 2 m_cat: both substrates with |s| = 1
            assert _substrates(stoich, j) == {food: 1.0, cat: 1.0}
            foods.append(food)
            cats.append(cat)
        assert len(set(foods)) == L, f"cycle {k}: members must be distinct"
        for i in range(L):  # catalyst of reaction i is the food of reaction i+1; cycle closes
            assert cats[i] == foods[(i + 1) % L]


def test_fresh_metabolites_first(case):
    """Cycles use fresh metabolites until fewer than cycle_length remain."""
    sim, stoich, _ = case
    L = sim.cycle_length
    n_fresh = min(sim.n_metabolites // L, sim.n_reactions // L)
    seen: set[int] = set()
    for k in range(n_fresh):
        members = {int(np.flatnonzero(stoich.S[:, k * L + i] == -1)[0]) for i in range(L)}
        assert not (members & seen), f"cycle {k} reuses a metabolite before the pool ran out"
        seen |= members


def test_leftover_reactions_random_mass_conserving(case):
    sim, stoich, _ = case
    L = sim.cycle_length
    first = (sim.n_reactions // L) * L
    for j in range(first, sim.n_reactions):
        col = stoich.S[:, j]
        subs = {int(m): -col[m] for m in np.flatnonzero(col < 0)}
        prods = {int(m): col[m] for m in np.flatnonzero(col > 0)}
        assert 1 <= len(subs) <= sim.max_metabolites_per_reaction - 1
        assert 1 <= len(prods) <= sim.max_metabolites_per_reaction - 1
        assert set(subs.values()) <= {1.0, 2.0}
        assert set(prods.values()) <= {1.0, 2.0}
        assert sum(subs.values()) == sum(prods.values())
        assert _substrates(stoich, j) == subs  # the rate law's substrates are S's negatives


def test_no_two_reactions_share_substrate_set(case):
    _, stoich, _ = case
    sets = [frozenset(_substrates(stoich, j)) for j in range(stoich.n_reactions)]
    assert len(set(sets)) == len(sets)


def test_substrates_match_negative_entries_for_all(case):
    _, stoich, _ = case
    for j in range(stoich.n_reactions):
        subs = _substrates(stoich, j)
        # cycle reactions: the catalyst is a substrate with net +1, so compare supports loosely
        assert set(np.flatnonzero(stoich.S[:, j] < 0)) <= set(subs)


@pytest.mark.parametrize("n,t", [(100, 2), (90, 3), (100, 3), (20, 2), (7, 1), (10, 4)])
def test_types_contiguous_blocks(n, t):
    types = metabolite_types(n, t)
    assert types.shape == (n,)
    assert types[0] == 0 and types[-1] == t - 1
    assert np.all(np.diff(types) >= 0) and np.all(np.diff(types) <= 1)  # contiguous blocks
    sizes = np.bincount(types, minlength=t)
    assert sizes.max() - sizes.min() <= 1


def test_default_types_halves():
    types = metabolite_types(100, 2)
    np.testing.assert_array_equal(types[:50], 0)
    np.testing.assert_array_equal(types[50:], 1)
    _, truth = generate_network(SimulationConfig())
    np.testing.assert_array_equal(truth.types, types)
    np.testing.assert_allclose(truth.lam[:50], 0.001)
    np.testing.assert_allclose(truth.baseline[50:], 6.0)


def test_three_types_blocks():
    types = metabolite_types(90, 3)
    for t in range(3):
        np.testing.assert_array_equal(types[30 * t:30 * (t + 1)], t)


@pytest.mark.parametrize("n,props,sizes", [(100, [0.7, 0.3], [70, 30]),
                                           (10, [1, 1, 1], [4, 3, 3]),
                                           (90, [1, 2, 3, 4], [9, 18, 27, 36])])
def test_type_proportions(n, props, sizes):
    types = metabolite_types(n, len(props), props)
    assert np.bincount(types).tolist() == sizes
    assert np.all(np.diff(types) >= 0)


def test_random_assignment_permutes_the_blocks_only():
    base = dict(n_metabolites=60, n_reactions=80, n_metabolite_types=3,
                lambda_per_type=[0.001] * 3, baseline_per_type=[5.0] * 3, seed=4)
    contiguous = SimulationConfig(**base)
    random = SimulationConfig(**base, type_assignment="random")
    s_a, t_a = generate_network(contiguous)
    s_b, t_b = generate_network(random)
    assert np.bincount(t_b.types).tolist() == np.bincount(t_a.types).tolist()
    assert not np.all(np.diff(t_b.types) >= 0)  # no longer blocks of indices
    # no index structure: each type is spread over the whole index range
    for t in range(3):
        idx = np.flatnonzero(t_b.types == t)
        assert idx.min() < 15 and idx.max() > 45
    # the same network, rates and seed stream otherwise
    np.testing.assert_array_equal(s_a.S, s_b.S)
    np.testing.assert_array_equal(t_a.log10_k, t_b.log10_k)
    np.testing.assert_array_equal(assign_types(random), t_b.types)
    other = SimulationConfig(**{**base, "seed": 5}, type_assignment="random")
    assert not np.array_equal(assign_types(other), t_b.types)


def test_same_seed_same_network_different_seed_differs():
    a = generate_network(_sim(30, 50, 2, 3, 4, 5))
    b = generate_network(_sim(30, 50, 2, 3, 4, 5))
    c = generate_network(_sim(30, 50, 2, 3, 4, 6))
    for x, y in ((a, b),):
        np.testing.assert_array_equal(x[0].S, y[0].S)
        np.testing.assert_array_equal(x[0].substrate_index, y[0].substrate_index)
        np.testing.assert_array_equal(x[0].substrate_coeff, y[0].substrate_coeff)
        np.testing.assert_array_equal(x[1].log10_k, y[1].log10_k)
    assert not np.array_equal(a[0].S, c[0].S)
    assert not np.array_equal(a[1].log10_k, c[1].log10_k)
