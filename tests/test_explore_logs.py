import re

from explore_helpers import make_study, node
from metabolism.explore.logs import MEMORY_MAX_LINES, render_memory
from metabolism.explore.mutation import parse_mutation
from metabolism.explore.tree import ROOT, Tree

ENTRY_LINES = ["Node:", "Mode/Strategy:", "Slot:", "Config:", "Metrics:", "Visual:",
               "Mutation:", "Strategy:", "Observation:", "Next:"]


def entries(text: str) -> list[list[str]]:
    blocks = re.split(r"(?m)^(?=## Iter )", text)
    return [b.strip().splitlines() for b in blocks if b.startswith("## Iter ")]


def test_analysis_entries_follow_the_seed_format_and_agree_with_the_tree(tmp_path):
    study = make_study(tmp_path, iterations=12, block_size=8)
    tree = study.run()
    text = (study.dir / "t_analysis.md").read_text()
    got = entries(text)
    assert [int(e[0].split()[2].rstrip(":")) for e in got] == list(range(1, 13))
    for e in got:
        nid = int(e[0].split()[2].rstrip(":"))
        n = tree.nodes[nid]
        assert e[0] == f"## Iter {nid}: {n.status}"
        assert [line.split(":")[0] + ":" for line in e[1:]] == ENTRY_LINES
        assert e[1] == f"Node: id={nid}, parent={n.parent}"
        assert e[3].startswith(f"Slot: slot_{n.slot} (time_step=")
        assert parse_mutation(e[7]) == n.mutation  # the machine-parsed line
        assert e[10] == f"Next: parent={n.next_parent}"
        assert re.match(r"Strategy: (hyperparameter-only|\d \()", e[8])
        assert e[5].startswith("Metrics: avg_slope_ratio=")
    # Next: parent=P is the parent the slot's next iteration really used
    for n in tree.sorted():
        later = [m for m in tree.sorted() if m.slot == n.slot and m.id > n.id]
        if later:
            assert later[0].parent == n.next_parent


def test_block_boundary_empties_ucb_file_and_restarts_from_root(tmp_path):
    study = make_study(tmp_path, iterations=8, block_size=8)
    study.run()
    assert (study.dir / "ucb_scores.txt").read_text() == ""  # next iteration (9) opens block 1
    study = make_study(tmp_path, iterations=12, block_size=8)  # extend the same study
    tree = study.run()
    assert [tree.nodes[i].parent for i in range(9, 13)] == [ROOT] * 4
    assert [tree.nodes[i].block for i in range(9, 13)] == [1] * 4
    assert all(tree.nodes[i].next_parent == ROOT for i in range(5, 9))
    ucb = (study.dir / "ucb_scores.txt").read_text().splitlines()
    assert sorted(int(line.split()[1].rstrip(":")) for line in ucb) == [9, 10, 11, 12]
    # within block 0, iterations 5-8 descend from block-0 nodes chosen by UCB
    assert all(tree.nodes[i].parent in range(1, 5) for i in range(5, 9))


def test_analysis_only_grows(tmp_path):
    snapshots = []
    study = make_study(tmp_path, iterations=4, block_size=4)
    study.run()
    for total in (8, 12, 16):
        snapshots.append((study.dir / "t_analysis.md").read_text())
        study = make_study(tmp_path, iterations=total, block_size=4)
        study.run()
    snapshots.append((study.dir / "t_analysis.md").read_text())
    for before, after in zip(snapshots, snapshots[1:]):
        assert after.startswith(before) and len(after) > len(before)


def test_memory_is_bounded_and_summarises(tmp_path):
    tree = Tree({"slots": [0, 1, 2, 3], "block_size": 8})
    for i in range(1, 1201):
        m = {"avg_slope_ratio": (i % 17) / 10, "embedding_cluster_acc": 0.7,
             "rate_constants_R2": 0.87}
        n = node(i, ROOT, reward=(i % 17) / 17, slot=(i - 1) % 4, block=(i - 1) // 8,
                 metrics=m)
        tree.add(n)
    text = render_memory(tree, "big")
    lines = text.splitlines()
    assert len(lines) <= MEMORY_MAX_LINES
    for header in ("## Established principles", "## Strategy outcomes", "## Current block",
                   "## Previous blocks"):
        assert header in text
    assert "Iter 1200 [slot_3]" in text  # the current block is always shown
    assert "slot_0 (time_step=4): best node" in text
