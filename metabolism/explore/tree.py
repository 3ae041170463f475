"""The exploration tree: nodes, status, reward, UCB, and its crash-safe JSON file.

The tree file is the single source of truth of a study: the logs, the UCB file and the plot are
all regenerated from it, and it is rewritten atomically (metabolism.files) after every change,
so a kill at any moment leaves either the old or the new tree, never half of one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metabolism.files import write_text_atomically
from metabolism.verdict import classify_slope_ratio

ROOT = "root"

# Node statuses: the seed's three classes for completed runs, plus `pending` for a run that
# was planned (id, parent, config fixed) but has not completed yet.
CONVERGED, PARTIAL, FAILED, PENDING = "converged", "partial", "failed", "pending"

# Reward = SLOPE_WEIGHT * slope_score + (1 - SLOPE_WEIGHT) * embedding_cluster_acc.
# avg_slope_ratio is the seed's primary target, so it carries most of the weight.
SLOPE_WEIGHT = 0.7


def classify(avg_slope_ratio: float | None) -> str:
    """The seed's table (verdict.classify_slope_ratio); a run without a ratio failed."""
    return FAILED if avg_slope_ratio is None else classify_slope_ratio(avg_slope_ratio)


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def reward(metrics: dict[str, float] | None, slope_weight: float = SLOPE_WEIGHT) -> float:
    """In [0, 1]: 1 at avg_slope_ratio == 1 with perfectly clustered embeddings.

    slope_score = max(0, 1 - |avg_slope_ratio - 1|) (0 for a flat MLP_node or a ratio >= 2);
    a failed run (no metrics) earns 0.
    """
    if not metrics:
        return 0.0
    r = _finite(metrics.get("avg_slope_ratio"))
    acc = _finite(metrics.get("embedding_cluster_acc"))
    slope_score = max(0.0, 1.0 - abs(r - 1.0)) if r is not None else 0.0
    emb_score = min(1.0, max(0.0, acc)) if acc is not None else 0.0
    return slope_weight * slope_score + (1.0 - slope_weight) * emb_score


@dataclass
class Node:
    """One iteration: a slot run of `config`, made from `parent` by `mutation`."""

    id: int
    parent: int | str  # node id, or ROOT (the slot's base config)
    slot: int
    block: int
    round: int
    config: dict[str, Any]
    mutation: dict[str, list[Any]] = field(default_factory=dict)  # key -> [old, new]
    mode: str = "exploit"
    strategy: str = "hyperparameter-only"
    proposer: str = "builtin"  # builtin | agent
    agent_error: str | None = None
    rationale: str = ""
    status: str = PENDING
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    run_dir: str | None = None
    plots: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    reward: float = 0.0
    next_parent: int | str | None = None  # decided when the following round is planned

    @property
    def done(self) -> bool:
        return self.status != PENDING

    @property
    def avg_slope_ratio(self) -> float | None:
        return _finite(self.metrics.get("avg_slope_ratio"))


@dataclass
class UCBEntry:
    node: int
    slot: int
    parent: int | str
    score: float
    mean_reward: float
    visits: int
    parent_visits: int


class Tree:
    """All nodes of a study plus its settings; (de)serialised as one JSON document."""

    def __init__(self, settings: dict[str, Any] | None = None, nodes: list[Node] | None = None,
                 study_run_id: str | None = None):
        self.settings: dict[str, Any] = dict(settings or {})
        self.nodes: dict[int, Node] = {n.id: n for n in (nodes or [])}
        self.study_run_id = study_run_id

    # ------------------------------------------------------------------ structure

    def add(self, node: Node) -> None:
        if node.id in self.nodes:
            raise ValueError(f"node {node.id}: already in the tree")
        if node.parent != ROOT and node.parent not in self.nodes:
            raise ValueError(f"node {node.id}: parent {node.parent} is not in the tree")
        self.nodes[node.id] = node

    def next_id(self) -> int:
        return max(self.nodes, default=0) + 1

    def completed(self) -> list[Node]:
        return [n for n in self.sorted() if n.done]

    def pending(self) -> list[Node]:
        return [n for n in self.sorted() if not n.done]

    def sorted(self) -> list[Node]:
        return [self.nodes[i] for i in sorted(self.nodes)]

    def children(self, node_id: int | str) -> list[Node]:
        return [n for n in self.sorted() if n.parent == node_id]

    def slot_nodes(self, slot: int, block: int | None = None, done_only: bool = True) -> list[Node]:
        return [n for n in self.sorted() if n.slot == slot and (block is None or n.block == block)
                and (n.done or not done_only)]

    # ------------------------------------------------------------------ UCB

    def ucb(self, slot: int, block: int, c: float, upto: int | None = None) -> list[UCBEntry]:
        """UCB of every completed node of `slot` in `block` (ids <= upto), best first.

        score = mean reward of the node's subtree + c * sqrt(ln N_parent / n_node), where
        n_node is the subtree size and N_parent the parent's (the root's: all nodes of the
        slot in the block). Each slot has its own tree, rooted at its base config, because a
        config cannot move between slots (homeostasis_time_step is fixed per slot).
        """
        nodes = [n for n in self.slot_nodes(slot, block) if upto is None or n.id <= upto]
        ids = {n.id for n in nodes}
        kids: dict[int | str, list[int]] = {}
        for n in nodes:
            kids.setdefault(n.parent if n.parent in ids else ROOT, []).append(n.id)
        by_id = {n.id: n for n in nodes}
        visits: dict[int, int] = {}
        total: dict[int, float] = {}

        def walk(i: int) -> None:
            visits[i], total[i] = 1, by_id[i].reward
            for k in kids.get(i, []):
                walk(k)
                visits[i] += visits[k]
                total[i] += total[k]

        for i in kids.get(ROOT, []):
            walk(i)
        out = []
        for n in nodes:
            parent = n.parent if n.parent in ids else ROOT
            n_parent = len(nodes) if parent == ROOT else visits[parent]
            mean = total[n.id] / visits[n.id]
            bonus = c * math.sqrt(math.log(n_parent) / visits[n.id]) if n_parent > 0 else 0.0
            out.append(UCBEntry(n.id, slot, parent, mean + bonus, mean, visits[n.id], n_parent))
        out.sort(key=lambda e: (-e.score, e.node))
        return out

    def select_parent(self, slot: int, block: int, c: float, upto: int | None = None) -> int | str:
        """The seed's rule: highest UCB in the current block, root when the block is empty.

        Nodes whose run crashed (an error, no metrics) are counted in the visits but never
        chosen as parents: their config is not known to work at all.
        """
        for e in self.ucb(slot, block, c, upto):
            if self.nodes[e.node].error is None:
                return e.node
        return ROOT

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "settings": self.settings, "study_run_id": self.study_run_id,
                "nodes": [asdict(n) for n in self.sorted()]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Tree":
        nodes = [Node(**n) for n in d.get("nodes", [])]
        return cls(d.get("settings", {}), nodes, d.get("study_run_id"))

    def save(self, path: Path) -> None:
        write_text_atomically(Path(path), json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def load(cls, path: Path) -> "Tree":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError,
                AttributeError) as exc:
            raise ValueError(f"{path}: not a valid exploration tree ({exc})") from None


