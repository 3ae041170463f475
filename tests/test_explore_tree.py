import json
import math

import pytest

from explore_helpers import node
from metabolism.explore.tree import ROOT, Tree, classify, reward


def hand_tree() -> Tree:
    t = Tree({"slots": [0, 1]})
    for n in (node(1, ROOT, 0.5), node(2, 1, 0.9), node(3, 1, 0.1), node(4, ROOT, 0.2),
              node(5, ROOT, 1.0, slot=1),            # other slot: ignored for slot 0
              node(6, ROOT, 1.0, block=1)):          # other block: ignored for block 0
        t.add(n)
    return t


def test_ucb_matches_hand_computation():
    c = 1.3
    scores = {e.node: e for e in hand_tree().ucb(slot=0, block=0, c=c)}
    assert set(scores) == {1, 2, 3, 4}
    # node 1's subtree is {1, 2, 3}: mean reward 0.5, 3 visits; the root has 4 visits.
    assert scores[1].visits == 3 and scores[1].parent_visits == 4
    assert scores[1].score == pytest.approx(0.5 + c * math.sqrt(math.log(4) / 3))
    assert scores[2].score == pytest.approx(0.9 + c * math.sqrt(math.log(3) / 1))
    assert scores[3].score == pytest.approx(0.1 + c * math.sqrt(math.log(3) / 1))
    assert scores[4].score == pytest.approx(0.2 + c * math.sqrt(math.log(4) / 1))
    order = [e.node for e in hand_tree().ucb(0, 0, c)]
    assert order == [2, 4, 3, 1]


def test_c_zero_is_pure_exploitation_and_large_c_favours_few_visits():
    t = hand_tree()
    assert t.select_parent(0, 0, c=0.0) == 2
    t.nodes[2].reward = 0.15
    # subtree mean of 1 is now 0.25 > node 4's 0.2 > node 2's 0.15
    assert t.select_parent(0, 0, c=0.0) == 1
    assert t.select_parent(0, 0, c=10.0) == 4  # few visits under a well-visited root


def test_empty_block_selects_root_and_crashed_nodes_are_never_parents():
    t = hand_tree()
    assert t.select_parent(0, block=5, c=1.0) == ROOT
    t2 = Tree({"slots": [0]})
    t2.add(node(1, ROOT, 0.0, error="FloatingPointError: NaN", status="failed"))
    assert t2.select_parent(0, 0, 1.0) == ROOT


@pytest.mark.parametrize("ratio,status", [
    (1.0, "converged"), (0.8, "converged"), (1.2, "converged"), (0.79, "partial"),
    (0.3, "partial"), (1.21, "partial"), (3.0, "partial"), (0.29, "failed"), (3.01, "failed"),
    (0.0, "failed"), (-1.0, "failed"), (float("nan"), "failed"), (None, "failed"),
    (float("inf"), "failed")])
def test_status_thresholds(ratio, status):
    assert classify(ratio) == status


def test_reward_prefers_ratio_near_one_and_clustered_embeddings():
    best = reward({"avg_slope_ratio": 1.0, "embedding_cluster_acc": 1.0})
    assert best == pytest.approx(1.0)
    assert reward({"avg_slope_ratio": 0.9, "embedding_cluster_acc": 1.0}) < best
    assert reward({"avg_slope_ratio": 1.1, "embedding_cluster_acc": 0.5}) < \
        reward({"avg_slope_ratio": 1.1, "embedding_cluster_acc": 0.9})
    assert reward({"avg_slope_ratio": 0.0, "embedding_cluster_acc": 0.0}) == 0.0
    assert reward({"avg_slope_ratio": float("nan")}) == 0.0
    assert reward({}) == 0.0


def test_tree_round_trips_and_saves_atomically(tmp_path):
    t = hand_tree()
    t.study_run_id = "abc"
    path = tmp_path / "tree.json"
    t.save(path)
    back = Tree.load(path)
    assert back.to_dict() == t.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["tree.json"]  # no temp file left behind
    json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid exploration tree"):
        Tree.load(path)


def test_add_refuses_duplicates_and_unknown_parents():
    t = hand_tree()
    with pytest.raises(ValueError, match="already"):
        t.add(node(1, ROOT, 0.0))
    with pytest.raises(ValueError, match="parent 99"):
        t.add(node(7, 99, 0.0))
