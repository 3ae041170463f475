import random

import pytest

from explore_helpers import base_configs, node
from metabolism.config import SLOT_TIME_STEPS, ConfigError, config_from_dict, flatten
from metabolism.explore.mutation import (KNOB_RANGES, KNOBS, apply_mutation, check_key,
                                         format_mutation, parse_mutation)
from metabolism.explore.proposer import BuiltinProposer
from metabolism.explore.tree import ROOT, Tree, classify, reward

LR_NODE = "training.learning_rate_node_homeostasis"


@pytest.mark.parametrize("key,match", [
    ("training.homeostasis_time_step", "fixed per slot"),
    ("simulation.n_metabolites", "frozen"),
    ("phase1.n_steps", "Phase 1 is frozen"),
    ("model.hidden_dim_node", "architecture is frozen"),
    ("regime", "regime is frozen"),
    ("slot", "belongs to its slot"),
    ("evaluation.cluster_distance_threshold", "comparable"),
    ("training.skip_phase1", "must stay true"),
    ("training.seed", "not a mutable key"),
    ("training.strategies.nonsense.enabled", "not a mutable key"),
])
def test_forbidden_keys_are_refused_with_one_line(key, match):
    cfg = base_configs((2,))[2]
    with pytest.raises(ConfigError, match=match) as err:
        apply_mutation(cfg, {key: 1})
    assert "\n" not in str(err.value) and str(err.value).startswith(key)


def test_apply_mutation_validates_values_and_reports_the_diff():
    cfg = base_configs((1,))[1]
    new, diff = apply_mutation(cfg, {LR_NODE: "3e-2",
                                     "training.strategies.contrastive.enabled": True})
    assert diff == {LR_NODE: [0.01, 0.03],
                    "training.strategies.contrastive.enabled": [False, True]}
    assert new["training"]["homeostasis_time_step"] == 16 and cfg[
        "training"]["learning_rate_node_homeostasis"] == 0.01  # parent untouched
    with pytest.raises(ConfigError, match="training.batch_size: expected an integer"):
        apply_mutation(cfg, {"training.batch_size": "big"})
    with pytest.raises(ConfigError, match="outside the seed's range"):
        apply_mutation(cfg, {LR_NODE: 0.5})
    with pytest.raises(ConfigError, match="changes nothing"):
        apply_mutation(cfg, {LR_NODE: 0.01})


@pytest.mark.parametrize("diff", [
    {}, {LR_NODE: [0.01, 0.03]},
    {"training.batch_size": [8, 4], "training.strategies.amplification.enabled": [False, True]},
    {"training.learning_rate_embedding_homeostasis": [1e-05, 0.0001]},
    {"training.strategies.multiscale.fractions": [[0.25, 0.5, 1.0], [0.5, 1.0]]},
])
def test_mutation_line_round_trips(diff):
    line = "Mutation: " + format_mutation(diff)
    assert parse_mutation(line) == diff


def _fake_metrics(rng: random.Random) -> dict:
    r = rng.choice([0.0, 0.01, rng.uniform(0, 4), rng.uniform(0.5, 1.5), float("nan")])
    return {"avg_slope_ratio": r, "embedding_cluster_acc": rng.uniform(0.4, 1.0),
            "embedding_n_clusters": 2.0}


@pytest.mark.parametrize("seed", range(4))
def test_proposer_never_touches_forbidden_keys(seed):
    """Property: over long random histories every proposal is valid and keeps the slot."""
    rng = random.Random(seed)
    slots = [0, 1, 2, 3]
    bases = base_configs(slots)
    tree, prop = Tree({"slots": slots}), BuiltinProposer()
    modes = set()
    for nid in range(1, 121):
        slot = slots[(nid - 1) % 4]
        block = (nid - 1) // 16
        parent = tree.select_parent(slot, block, c=rng.choice([0.0, 1.0]))
        parent_node = tree.nodes[parent] if parent != ROOT else None
        p = prop.propose(tree, slot, parent_node, bases[slot], nid, parent == ROOT)
        modes.add(p.mode)
        for key in p.changes:
            check_key(key, bases[slot])
            assert key in KNOBS or key.startswith("training.strategies.")
        parent_cfg = parent_node.config if parent_node else bases[slot]
        if p.changes:
            cfg, diff = apply_mutation(parent_cfg, p.changes)
        else:
            assert parent == ROOT and not tree.slot_nodes(slot), "only a slot's first run is bare"
            cfg, diff = parent_cfg, {}
        c = config_from_dict(cfg)
        assert c.slot == slot and c.training.homeostasis_time_step == SLOT_TIME_STEPS[slot]
        assert {k: v for k, v in flatten(cfg).items() if not k.startswith("training.")} == \
            {k: v for k, v in flatten(bases[slot]).items() if not k.startswith("training.")}
        for key, (lo, hi) in KNOB_RANGES.items():
            assert lo <= flatten(cfg)[key] <= hi
        n = node(nid, parent, 0.0, slot=slot, block=block, metrics=_fake_metrics(rng))
        n.config, n.mutation = cfg, diff
        n.status, n.reward = classify(n.avg_slope_ratio), reward(n.metrics)
        tree.add(n)
    assert {"baseline", "exploit", "strategy-switch"} <= modes


def _history(tree, slot, metrics_list, bases):
    parent = ROOT
    for i, m in enumerate(metrics_list, start=1):
        n = node(i, parent, 0.0, slot=slot, metrics=m)
        n.status, n.reward = classify(n.avg_slope_ratio), reward(m)
        tree.add(n)
        parent = i
    return tree.nodes[parent]


def test_table_stuck_near_zero_switches_strategy():
    bases = base_configs((0,))
    tree = Tree({"slots": [0]})
    last = _history(tree, 0, [{"avg_slope_ratio": 0.01, "embedding_cluster_acc": 0.5}] * 3,
                    bases)
    p = BuiltinProposer().propose(tree, 0, last, bases[0], 4, False)
    assert p.mode == "strategy-switch"
    assert p.changes == {"training.strategies.residual_supervision.enabled": True}


def test_table_embedding_focus_and_slope_focus():
    bases = base_configs((0,))
    tree = Tree({"slots": [0]})
    last = _history(tree, 0, [{"avg_slope_ratio": 0.9, "embedding_cluster_acc": 0.5}], bases)
    p = BuiltinProposer().propose(tree, 0, last, bases[0], 2, False)
    assert p.mode == "embedding-focus"
    assert p.changes == {"training.learning_rate_embedding_homeostasis": 0.003}
    tree = Tree({"slots": [0]})
    last = _history(tree, 0, [{"avg_slope_ratio": 0.4, "embedding_cluster_acc": 1.0}], bases)
    p = BuiltinProposer().propose(tree, 0, last, bases[0], 2, False)
    assert p.mode == "slope-focus" and p.changes == {LR_NODE: 0.03}


def test_table_all_failed_explores():
    bases = base_configs((0,))
    tree = Tree({"slots": [0]})
    last = _history(tree, 0, [{"avg_slope_ratio": 5.0, "embedding_cluster_acc": 0.5}] * 4,
                    bases)
    p = BuiltinProposer().propose(tree, 0, last, bases[0], 5, False)
    assert p.mode == "explore"
    assert any(k.endswith(".enabled") and v is True for k, v in p.changes.items())
