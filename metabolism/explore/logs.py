"""The seed's two logs and the UCB file, regenerated from the tree so they cannot disagree.

`<study>_analysis.md`: one `## Iter N:` entry per iteration, in the seed's exact line format.
An entry appears once its round is complete and the next parent is known, and entries are
ordered by (round, id), so regenerating the whole file only ever appends to it.

`<study>_memory.md`: bounded (MEMORY_MAX_LINES): established principles, strategy outcomes,
the current block, and one line per earlier block.

`ucb_scores.txt`: the UCB scores of the current block's nodes, one line each, best first per
slot; empty at a block boundary (the next parent is then root).
"""

from __future__ import annotations

from pathlib import Path

from metabolism.config import SLOT_TIME_STEPS
from metabolism.explore.mutation import (SHORT_NAMES, STRATEGY_NAMES, format_mutation,
                                         get_dotted, strategy_key, strategy_number)
from metabolism.explore.tree import CONVERGED, FAILED, PARTIAL, Node, Tree, classify
from metabolism.files import write_text_atomically
from metabolism.formatting import number
from metabolism.metric_keys import n_types_in, per_type_metric_keys

MEMORY_MAX_LINES = 300


def config_line(config: dict) -> str:
    parts = [f"{short}={get_dotted(config, key)}" for key, short in SHORT_NAMES.items()]
    return "Config: " + ", ".join(parts)


def metrics_line(node: Node) -> str:
    if node.error is not None:
        return f"Metrics: none (run failed: {node.error})"
    m = node.metrics
    n = n_types_in(m)
    per_type = per_type_metric_keys(n, ("MLP_node_slope_ratio", "MLP_node_offset_ratio"))
    keys = ["avg_slope_ratio", *(k for t in range(n) for k in per_type[t::n]),  # type by type
            "embedding_cluster_acc", "embedding_n_clusters", "rate_constants_R2"]
    return "Metrics: " + ", ".join(f"{k.replace('MLP_node_', '')}={number(m.get(k))}"
                                   for k in keys)


def visual_line(node: Node) -> str:
    """What the last MLP_node and embedding plots show, read off the metrics they plot."""
    if node.error is not None:
        return "Visual: no plots (run failed)"
    m = node.metrics
    types = range(n_types_in(m))
    learned = "/".join(number(m.get(f"MLP_node_slope_{t}"), ".2g") for t in types) or "n/a"
    gt = "/".join(number(m.get(f"MLP_node_gt_slope_{t}"), ".2g") for t in types) or "n/a"
    magnitude = m.get("phase2_node_magnitude")
    r = node.avg_slope_ratio
    active = magnitude is not None and magnitude > 1e-6 and r is not None and abs(r) > 0.05
    shape = "flat at zero" if not active else ("near GT" if classify(r) == CONVERGED else
                                               "too weak" if r < 0.8 else "too strong")
    acc, n_cl = m.get("embedding_cluster_acc"), m.get("embedding_n_clusters")
    if acc is None:
        emb = "n/a"
    elif n_cl is not None and n_cl <= 1:
        emb = "collapsed"
    elif acc >= 0.9:
        emb = "separated"
    else:
        emb = "clustered"
    return (f"Visual: MLP_node={'active' if active else 'inactive'}: slopes {learned} vs GT {gt}, "
            f"{shape}, Embeddings={emb}: {number(n_cl, '.0f')} clusters, acc={number(acc, '.2f')}")


def strategy_line(node: Node) -> str:
    toggled = [k.split(".")[2] for k, (_, new) in node.mutation.items()
               if k.endswith(".enabled") and new is True]
    if toggled:
        return "Strategy: " + ", ".join(f"{strategy_number(s)} ({s})" for s in toggled)
    active = [s for s in STRATEGY_NAMES if get_dotted(node.config, strategy_key(s))]
    if active:
        return ("Strategy: hyperparameter-only (active: "
                + ", ".join(f"{strategy_number(s)} ({s})" for s in active) + ")")
    return "Strategy: hyperparameter-only"


def observation_line(node: Node, tree: Tree) -> str:
    if node.error is not None:
        return f"Observation: run failed ({node.error}); counted as a failed node"
    r = node.avg_slope_ratio
    parent = tree.nodes.get(node.parent) if node.parent != "root" else None
    text = f"avg_slope_ratio={number(r)} ({node.status}), reward={node.reward:.3f}"
    if parent is not None:
        delta = node.reward - parent.reward
        verdict = "improved" if delta > 1e-9 else "regressed" if delta < -1e-9 else "no change"
        text += f", {verdict} vs parent {parent.id} (reward {parent.reward:.3f})"
    r2 = node.metrics.get("rate_constants_R2")
    if r2 is not None and r2 < 0.5:
        text += f"; WARNING rate_constants_R2={number(r2)} < 0.5 (Phase 1 freezing broken?)"
    if node.rationale:
        text += f"; proposal: {node.rationale}"
    return "Observation: " + text


def analysis_entry(node: Node, tree: Tree) -> str:
    ts = get_dotted(node.config, "training.homeostasis_time_step")
    ts = SLOT_TIME_STEPS.get(node.slot, ts) if ts is None else ts
    lines = [
        f"## Iter {node.id}: {node.status}",
        f"Node: id={node.id}, parent={node.parent}",
        f"Mode/Strategy: {node.mode}",
        f"Slot: slot_{node.slot} (time_step={ts})",
        config_line(node.config),
        metrics_line(node),
        visual_line(node),
        f"Mutation: {format_mutation(node.mutation)}",
        strategy_line(node),
        observation_line(node, tree),
        f"Next: parent={node.next_parent}",
    ]
    return "\n".join(lines) + "\n"


def logged_nodes(tree: Tree) -> list[Node]:
    """Nodes whose entry is final: completed, with the next parent decided."""
    nodes = [n for n in tree.nodes.values() if n.done and n.next_parent is not None]
    return sorted(nodes, key=lambda n: (n.round, n.id))


def render_analysis(tree: Tree, study: str) -> str:
    head = f"# {study} analysis (full log, append-only)\n\n"
    return head + "\n".join(analysis_entry(n, tree) for n in logged_nodes(tree))


def render_ucb(tree: Tree, block: int | None, c: float) -> str:
    """UCB lines for `block`; '' when None (a block boundary: next parent is root)."""
    if block is None:
        return ""
    lines = []
    for slot in tree.settings.get("slots", []):
        for e in tree.ucb(slot, block, c):
            n = tree.nodes[e.node]
            lines.append(f"Node {e.node}: UCB={e.score:.4f}, mean_reward={e.mean_reward:.4f}, "
                         f"visits={e.visits}, parent_visits={e.parent_visits}, "
                         f"parent={e.parent}, slot={slot}, status={n.status}, "
                         f"avg_slope_ratio={number(n.avg_slope_ratio)}")
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------- memory


def _best(nodes: list[Node]) -> Node | None:
    ok = [n for n in nodes if n.error is None]
    return max(ok, key=lambda n: (n.reward, -n.id)) if ok else None


def _short_config(config: dict) -> str:
    strategies = "+".join(s for s in STRATEGY_NAMES if get_dotted(config, strategy_key(s)))
    knobs = ", ".join(f"{short}={get_dotted(config, k)}" for k, short in SHORT_NAMES.items())
    return f"{knobs}, strategies={strategies or 'baseline'}"


def _principles(tree: Tree, done: list[Node]) -> list[str]:
    lines = []
    for slot in tree.settings.get("slots", []):
        best = _best([n for n in done if n.slot == slot])
        ts = SLOT_TIME_STEPS.get(slot)
        if best is None:
            lines.append(f"- slot_{slot} (time_step={ts}): no successful run yet")
            continue
        lines.append(f"- slot_{slot} (time_step={ts}): best node {best.id} ({best.status}, "
                     f"avg_slope_ratio={number(best.avg_slope_ratio)}, "
                     f"embedding_cluster_acc={number(best.metrics.get('embedding_cluster_acc'))}, "
                     f"reward={best.reward:.3f}) with {_short_config(best.config)}")
    effects: dict[str, list[int]] = {}
    for n in done:
        parent = tree.nodes.get(n.parent) if n.parent != "root" else None
        if parent is None or not parent.done or len(n.mutation) != 1:
            continue
        (key, (old, new)), = n.mutation.items()
        direction = "on" if new is True else "off" if new is False else (
            "up" if isinstance(new, (int, float)) and isinstance(old, (int, float))
            and new > old else "down")
        name = SHORT_NAMES.get(key, key.replace("training.strategies.", "").replace(".enabled", ""))
        stat = effects.setdefault(f"{name} {direction}", [0, 0])
        stat[0 if n.reward > parent.reward else 1] += 1
    for label, (better, worse) in sorted(effects.items()):
        lines.append(f"- {label}: improved reward {better}/{better + worse} times")
    r2 = [n.metrics["rate_constants_R2"] for n in done if "rate_constants_R2" in n.metrics]
    if r2 and min(r2) < 0.5:
        lines.append(f"- WARNING: rate_constants_R2 fell to {min(r2):.3f} (< 0.5) in some run")
    crashed = [n for n in done if n.error is not None]
    if crashed:
        lines.append(f"- {len(crashed)} run(s) crashed/diverged; last: node {crashed[-1].id}: "
                     f"{crashed[-1].error}")
    return lines


def _strategy_table(done: list[Node]) -> list[str]:
    groups: dict[str, list[Node]] = {}
    for n in done:
        label = "+".join(s for s in STRATEGY_NAMES if get_dotted(n.config, strategy_key(s)))
        groups.setdefault(label or "baseline", []).append(n)
    lines = ["| strategies | runs | converged | partial | failed | best avg_slope_ratio | "
             "mean reward |", "|---|---|---|---|---|---|---|"]
    for label, nodes in sorted(groups.items(), key=lambda kv: -max(n.reward for n in kv[1])):
        count = {s: sum(n.status == s for n in nodes) for s in (CONVERGED, PARTIAL, FAILED)}
        best = _best(nodes)
        lines.append(f"| {label} | {len(nodes)} | {count[CONVERGED]} | {count[PARTIAL]} | "
                     f"{count[FAILED]} | {number(best.avg_slope_ratio if best else None)} | "
                     f"{sum(n.reward for n in nodes) / len(nodes):.3f} |")
    return lines


def _node_line(n: Node) -> str:
    return (f"- Iter {n.id} [slot_{n.slot}] {n.status}: parent={n.parent}, mode={n.mode}, "
            f"avg_slope_ratio={number(n.avg_slope_ratio)}, "
            f"acc={number(n.metrics.get('embedding_cluster_acc'))}, reward={n.reward:.3f}, "
            f"mutation={format_mutation(n.mutation)}"
            + (f", error={n.error}" if n.error else ""))


def render_memory(tree: Tree, study: str, max_lines: int = MEMORY_MAX_LINES) -> str:
    done = [n for n in tree.sorted() if n.done]
    current = max((n.block for n in done), default=0)
    out = [f"# {study} memory (regenerated from the tree; at most {max_lines} lines)", "",
           "## Established principles"]
    out += _principles(tree, done)[:60] or ["- none yet"]
    out += ["", "## Strategy outcomes"] + _strategy_table(done)[:20]
    block_nodes = [n for n in done if n.block == current]
    out += ["", f"## Current block (block {current})"]
    budget = max_lines - len(out) - 4 - min(current, 40)
    shown = block_nodes[-max(budget, 1):]
    if len(shown) < len(block_nodes):
        out.append(f"- ({len(block_nodes) - len(shown)} earlier iterations of this block omitted)")
    out += [_node_line(n) for n in shown] or ["- no completed iteration yet"]
    if current > 0:
        out += ["", "## Previous blocks"]
        for b in range(max(0, current - 40), current):
            best = _best([n for n in done if n.block == b])
            desc = (f"best node {best.id} slot_{best.slot} avg_slope_ratio="
                    f"{number(best.avg_slope_ratio)} reward={best.reward:.3f} "
                    f"({_short_config(best.config)})" if best else "no successful run")
            out.append(f"- block {b}: {sum(n.block == b for n in done)} iterations, {desc}")
    return "\n".join(out[:max_lines]) + "\n"


def write_logs(tree: Tree, study_dir: Path, study: str, ucb_block: int | None, c: float) -> None:
    """Regenerate all three text files atomically."""
    write_text_atomically(study_dir / f"{study}_analysis.md", render_analysis(tree, study))
    write_text_atomically(study_dir / f"{study}_memory.md", render_memory(tree, study))
    write_text_atomically(study_dir / "ucb_scores.txt", render_ucb(tree, ucb_block, c))
