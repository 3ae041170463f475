"""The built-in proposer: the seed's strategy-selection table, as code.

| condition (this slot's recent iterations)        | mode            | action                          |
| all failed for 4+ iterations                     | explore         | a fresh strategy, reset the rest |
| avg_slope_ratio stuck near 0 for 3+ iterations   | strategy-switch | enable an untried strategy      |
| slopes moving but embeddings stuck               | embedding-focus | lr_emb up, then contrastive (3) |
| embeddings separated but slopes wrong            | slope-focus     | lr_node, then residual sup. (1) |
| avg_slope_ratio 0.5-1.5 for 3+ iterations        | exploit         | fine-tune LRs and duration      |
| default                                          | exploit         | conservative mutation, seed order |

It only emits keys that `mutation.check_key` accepts (knobs and strategy switches), and every
knob stays inside the seed's ranges, so it can never touch homeostasis_time_step or the regime.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from metabolism.explore.mutation import (BATCH, DAL, KNOB_RANGES, LR_EMB, LR_NODE, STRATEGY_NAMES,
                                         get_dotted, strategy_key, strategy_number)
from metabolism.explore.tree import CONVERGED, FAILED, Node, Tree, classify

NEAR_ZERO = 0.1
EMB_STUCK = 0.75
EMB_SEPARATED = 0.9


@dataclass
class Proposal:
    changes: dict[str, Any] = field(default_factory=dict)
    mode: str = "exploit"
    rationale: str = ""


def _clamp(key: str, value: float) -> float | int:
    lo, hi = KNOB_RANGES[key]
    v = min(hi, max(lo, value))
    return int(round(v)) if key in (DAL, BATCH) else float(f"{v:.3g}")


def _scaled(config: dict, key: str, factor: float) -> dict[str, Any]:
    """{key: clamped old*factor}, or {} when the clamp leaves it unchanged."""
    old = get_dotted(config, key)
    new = _clamp(key, old * factor)
    return {key: new} if new != old else {}


def _untried_strategies(config: dict, history: list[Node]) -> list[str]:
    tried = {s for n in history for s in STRATEGY_NAMES if get_dotted(n.config, strategy_key(s))}
    enabled = {s for s in STRATEGY_NAMES if get_dotted(config, strategy_key(s))}
    fresh = [s for s in STRATEGY_NAMES if s not in tried and s not in enabled]
    return fresh or [s for s in STRATEGY_NAMES if s not in enabled]


def _first(*options: dict[str, Any]) -> dict[str, Any]:
    for o in options:
        if o:
            return o
    return {}


class BuiltinProposer:
    """Deterministic given (tree, slot, parent, iteration id); no I/O."""

    def propose(self, tree: Tree, slot: int, parent: Node | None, base_config: dict,
                iteration: int, block_start: bool) -> Proposal:
        """A mutation of the parent's config (of the base config when the parent is root).

        Empty only for the very first iteration of a slot, which runs the base config.
        """
        config = parent.config if parent is not None else base_config
        history = [n for n in tree.slot_nodes(slot) if n.id < iteration]
        p = self._table(tree, slot, parent, config, history, iteration, block_start)
        if not p.changes and history:
            p = self._switch(config, history, random.Random(iteration), "no knob left to move")
        return p

    def _table(self, tree: Tree, slot: int, parent: Node | None, config: dict,
               history: list[Node], iteration: int, block_start: bool) -> Proposal:
        rng = random.Random(iteration * 1009 + slot)
        if block_start:
            return self._block_start(config, history, rng)
        ratios = [n.avg_slope_ratio for n in history]
        last = parent if parent is not None else (history[-1] if history else None)
        r = last.avg_slope_ratio if last is not None else None
        acc = last.metrics.get("embedding_cluster_acc") if last is not None else None

        if len(history) >= 4 and all(n.status == FAILED for n in history[-4:]):
            return self._explore(config, history, rng)
        if len(ratios) >= 3 and all(x is not None and abs(x) < NEAR_ZERO for x in ratios[-3:]):
            return self._switch(config, history, rng, "avg_slope_ratio stuck near 0 for 3+ iters")
        if classify(r) != FAILED and acc is not None and acc < EMB_STUCK:
            p = self._embedding_focus(config)
            if p.changes:
                return p
        if acc is not None and acc >= EMB_SEPARATED and r is not None and classify(r) != CONVERGED:
            p = self._slope_focus(config, r)
            if p.changes:
                return p
        if len(ratios) >= 3 and all(x is not None and 0.5 <= x <= 1.5 for x in ratios[-3:]):
            return self._fine_tune(config, rng, "avg_slope_ratio in 0.5-1.5 for 3+ iters")
        return self._exploit(config, r, history, rng)

    # ------------------------------------------------------------------ table rows

    def _block_start(self, config: dict, history: list[Node], rng: random.Random) -> Proposal:
        if not history:
            return Proposal({}, "baseline", "first iteration of the slot: run the base config")
        return self._switch(config, history, rng, "new block from root: try a code strategy")

    def _switch(self, config: dict, history: list[Node], rng: random.Random,
                why: str) -> Proposal:
        candidates = _untried_strategies(config, history)
        if not candidates:  # all eight enabled: drop one instead
            name = rng.choice(STRATEGY_NAMES)
            return Proposal({strategy_key(name): False}, "strategy-switch",
                            f"{why}; all strategies on, disable {strategy_number(name)} ({name})")
        name = candidates[0]
        return Proposal({strategy_key(name): True}, "strategy-switch",
                        f"{why}; enable strategy {strategy_number(name)} ({name})")

    def _explore(self, config: dict, history: list[Node], rng: random.Random) -> Proposal:
        name = rng.choice(_untried_strategies(config, history) or list(STRATEGY_NAMES))
        changes: dict[str, Any] = {strategy_key(s): False for s in STRATEGY_NAMES
                                   if s != name and get_dotted(config, strategy_key(s))}
        changes[strategy_key(name)] = True
        lr = _clamp(LR_NODE, 10 ** rng.uniform(-3, -1))
        if lr != get_dotted(config, LR_NODE):
            changes[LR_NODE] = lr
        return Proposal(changes, "explore", f"all failed for 4+ iters; fresh approach with "
                        f"strategy {strategy_number(name)} ({name}) alone")

    def _embedding_focus(self, config: dict) -> Proposal:
        lr_emb = get_dotted(config, LR_EMB)
        contrastive = strategy_key("contrastive")
        if lr_emb >= 1e-2 and not get_dotted(config, contrastive):
            return Proposal({contrastive: True}, "embedding-focus",
                            "slopes moving, embeddings stuck; add contrastive loss (strategy 3)")
        return Proposal(_scaled(config, LR_EMB, 3.0), "embedding-focus",
                        "slopes moving, embeddings stuck; raise lr_emb_homeo")

    def _slope_focus(self, config: dict, r: float) -> Proposal:
        residual = strategy_key("residual_supervision")
        if r < 0.8:
            up = _scaled(config, LR_NODE, 3.0)
            if up:
                return Proposal(up, "slope-focus", "embeddings separated, slopes too weak; "
                                "raise lr_node_homeo")
            if not get_dotted(config, residual):
                return Proposal({residual: True}, "slope-focus", "lr_node_homeo at its maximum; "
                                "try residual supervision (strategy 1)")
            return Proposal()
        return Proposal(_scaled(config, LR_NODE, 1 / 2.0), "slope-focus",
                        "embeddings separated, slopes too strong; lower lr_node_homeo")

    def _fine_tune(self, config: dict, rng: random.Random, why: str) -> Proposal:
        options = [_scaled(config, LR_NODE, f) for f in (1.25, 0.8)]
        options += [_scaled(config, LR_EMB, f) for f in (1.5, 0.67)]
        options += [_scaled(config, DAL, 1.5)]
        options = [o for o in options if o]
        rng.shuffle(options)
        return Proposal(_first(*options), "exploit", f"{why}; fine-tune")

    def _exploit(self, config: dict, r: float | None, history: list[Node],
                 rng: random.Random) -> Proposal:
        """Conservative step following the seed's order: lr_node, lr_emb, duration, batch."""
        if r is None or r < 0.3:
            changes = _first(_scaled(config, LR_NODE, 3.0), _scaled(config, DAL, 2.0))
            why = "slope too weak or run failed; escape the zero init"
        elif r > 3.0:
            changes = _first(_scaled(config, LR_NODE, 1 / 3.0), _scaled(config, DAL, 0.5))
            why = "slope far too strong; lower lr_node_homeo"
        elif r < 0.8:
            changes = _first(*(rng.sample([_scaled(config, DAL, 1.5),
                                           _scaled(config, LR_NODE, 1.5)], 2)))
            why = "slopes moving in the right direction; more steps or a larger lr_node_homeo"
        elif r > 1.2:
            changes = _scaled(config, LR_NODE, 1 / 1.5)
            why = "slope somewhat too strong; lower lr_node_homeo"
        else:
            return self._fine_tune(config, rng, "converged")
        if not changes:  # every knob of the rule is at its bound: change code strategy instead
            return self._switch(config, history, rng, "knobs exhausted")
        changes = _first(changes, {BATCH: _clamp(BATCH, get_dotted(config, BATCH) / 2)})
        return Proposal(changes, "exploit", why)
