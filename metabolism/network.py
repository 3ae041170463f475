"""Random metabolic networks: stoichiometry, rate laws, ground-truth parameters.

The generator follows SPEC.md for any sizes: autocatalytic cycle reactions
``m_i + m_{i+1} -> 2 m_{i+1}`` first, leftover reactions random and mass-conserving.
Reactions never repeat a substrate set, so every rate constant is identifiable from data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from metabolism.config import SimulationConfig


@dataclass(frozen=True)
class Stoichiometry:
    """What the model is given (Phase 1 knows S): no types, no rates, no homeostasis.

    substrate_index / substrate_coeff are (R, M) padded with index 0 / coefficient 0;
    a padded slot contributes a factor 1 to the mass-action product.
    """

    S: np.ndarray  # (N, R) net stoichiometric coefficients
    substrate_index: np.ndarray  # (R, M) int64
    substrate_coeff: np.ndarray  # (R, M) float64, |s_kj|, 0 = padding

    @property
    def n_metabolites(self) -> int:
        return self.S.shape[0]

    @property
    def n_reactions(self) -> int:
        return self.S.shape[1]

    @property
    def n_substrates(self) -> np.ndarray:
        return (self.substrate_coeff > 0).sum(axis=1)


@dataclass(frozen=True)
class GroundTruth:
    """Hidden parameters: only the simulator and the evaluation may read these."""

    log10_k: np.ndarray  # (R,)
    types: np.ndarray  # (N,) int
    lambda_per_type: np.ndarray  # (T,)
    baseline_per_type: np.ndarray  # (T,)

    @property
    def lam(self) -> np.ndarray:
        return self.lambda_per_type[self.types]

    @property
    def baseline(self) -> np.ndarray:
        return self.baseline_per_type[self.types]


def metabolite_types(n_metabolites: int, n_types: int,
                     proportions: list[float] | None = None) -> np.ndarray:
    """Types as contiguous blocks: 0..N/T-1 type 0, and so on; block sizes follow
    `proportions` (largest remainder) when given, else (almost) equal."""
    if not proportions:
        return (np.arange(n_metabolites) * n_types) // n_metabolites
    share = np.asarray(proportions, float) / np.sum(proportions) * n_metabolites
    sizes = np.floor(share).astype(int)
    sizes[np.argsort(sizes - share)[:n_metabolites - sizes.sum()]] += 1
    return np.repeat(np.arange(n_types), sizes)


def assign_types(sim: SimulationConfig) -> np.ndarray:
    """The regime's type of every metabolite: contiguous blocks, or those blocks permuted.

    The permutation draws from its own stream of the simulation seed, so the network, rates
    and initial state are the same under either assignment.
    """
    blocks = metabolite_types(sim.n_metabolites, sim.n_metabolite_types, sim.type_proportions)
    if sim.type_assignment == "random":
        return np.random.default_rng([sim.seed, 2]).permutation(blocks)
    return blocks


def _cycle_reactions(rng: np.random.Generator, n_metabolites: int, cycle_length: int,
                     n_cycles: int, used: set[frozenset[int]]) -> list[tuple[dict, dict]]:
    reactions: list[tuple[dict, dict]] = []
    pool: list[int] = list(rng.permutation(n_metabolites))
    for _ in range(n_cycles):
        for _attempt in range(100):
            if len(pool) < cycle_length:  # reuse: fresh permutation, leftovers first
                rest = [m for m in rng.permutation(n_metabolites) if m not in pool]
                pool = pool + rest
            members = pool[:cycle_length]
            pairs = [frozenset((members[i], members[(i + 1) % cycle_length]))
                     for i in range(cycle_length)]
            if not any(p in used for p in pairs) and len(set(pairs)) == len(pairs):
                break
            pool = list(rng.permutation(pool))  # reshuffle and retry
        else:
            raise RuntimeError("could not place a cycle without repeating a substrate pair; "
                               "network too dense for cycle reactions")
        pool = pool[cycle_length:]
        for i in range(cycle_length):
            food, cat = int(members[i]), int(members[(i + 1) % cycle_length])
            used.add(frozenset((food, cat)))
            # food + cat -> 2 cat : substrates {food:1, cat:1}, products {cat:2}
            reactions.append(({food: 1, cat: 1}, {cat: 2}))
    return reactions


def _random_reaction(rng: np.random.Generator, n_metabolites: int, max_per: int,
                     used: set[frozenset[int]]) -> tuple[dict, dict]:
    for _ in range(1000):
        n_sub = int(rng.integers(1, max_per))
        coeffs = rng.integers(1, 3, size=n_sub)
        mass = int(coeffs.sum())
        n_prod_options = [p for p in range(1, max_per) if p <= mass <= 2 * p
                          and n_sub + p <= n_metabolites]
        if not n_prod_options:
            continue
        n_prod = int(rng.choice(n_prod_options))
        prod_coeffs = np.ones(n_prod, dtype=int)
        prod_coeffs[rng.choice(n_prod, size=mass - n_prod, replace=False)] += 1
        mets = rng.choice(n_metabolites, size=n_sub + n_prod, replace=False)
        subs = {int(m): int(c) for m, c in zip(mets[:n_sub], coeffs)}
        key = frozenset(subs)
        if key in used:
            continue
        used.add(key)
        return subs, {int(m): int(c) for m, c in zip(mets[n_sub:], prod_coeffs)}
    raise RuntimeError("could not draw a new random reaction")


def generate_network(sim: SimulationConfig) -> tuple[Stoichiometry, GroundTruth]:
    rng = np.random.default_rng(sim.seed)
    n, r = sim.n_metabolites, sim.n_reactions
    used: set[frozenset[int]] = set()
    n_cycles = r // sim.cycle_length
    reactions = _cycle_reactions(rng, n, sim.cycle_length, n_cycles, used)
    while len(reactions) < r:
        reactions.append(_random_reaction(rng, n, sim.max_metabolites_per_reaction, used))

    max_sub = max(len(s) for s, _ in reactions)
    S = np.zeros((n, r))
    sub_idx = np.zeros((r, max_sub), dtype=np.int64)
    sub_coeff = np.zeros((r, max_sub))
    for j, (subs, prods) in enumerate(reactions):
        for m, c in subs.items():
            S[m, j] -= c
        for m, c in prods.items():
            S[m, j] += c
        for slot, (m, c) in enumerate(sorted(subs.items())):
            sub_idx[j, slot] = m
            sub_coeff[j, slot] = c

    lo, hi = sim.log10_k_range
    truth = GroundTruth(
        log10_k=rng.uniform(lo, hi, size=r),
        types=assign_types(sim),
        lambda_per_type=np.asarray(sim.lambda_per_type, dtype=float),
        baseline_per_type=np.asarray(sim.baseline_per_type, dtype=float),
    )
    return Stoichiometry(S=S, substrate_index=sub_idx, substrate_coeff=sub_coeff), truth
