"""The tree plot: one panel per slot, iterations left to right, edges parent -> child.

The y axis is avg_slope_ratio (target 1.0, dashed), so a good branch is visibly a path that
climbs to the line; colour is the seed's status; dotted verticals mark block boundaries.
"""

from __future__ import annotations

from pathlib import Path

from metabolism.explore.tree import CONVERGED, FAILED, PARTIAL, PENDING, ROOT, Tree

COLORS = {CONVERGED: "tab:green", PARTIAL: "tab:orange", FAILED: "tab:red", PENDING: "0.7"}
Y_MAX = 3.2


def _y(node) -> float:
    r = node.avg_slope_ratio
    return Y_MAX if r is None or r > Y_MAX else max(r, -0.2)


def plot_tree(tree: Tree, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = tree.settings.get("slots") or sorted({n.slot for n in tree.nodes.values()})
    block_size = int(tree.settings.get("block_size", 0) or 0)
    fig, axes = plt.subplots(len(slots), 1, figsize=(10, 2.4 * len(slots)), sharex=True,
                             squeeze=False)
    last = max(tree.nodes, default=1)
    for ax, slot in zip(axes[:, 0], slots):
        nodes = [n for n in tree.sorted() if n.slot == slot]
        for n in nodes:
            if n.parent == ROOT:
                x0 = n.block * block_size + 0.5 if block_size else n.id - 1
                ax.plot([x0, n.id], [0, _y(n)], color="0.6", lw=0.8, ls="--")
                ax.plot([x0], [0], "ks", ms=4)
            else:
                p = tree.nodes[n.parent]
                ax.plot([p.id, n.id], [_y(p), _y(n)], color="0.4", lw=0.8)
        for status, color in COLORS.items():
            xs = [n.id for n in nodes if n.status == status]
            ys = [_y(n) for n in nodes if n.status == status]
            if xs:
                ax.scatter(xs, ys, c=color, s=30, zorder=3)
        ax.axhline(1.0, color="k", ls="--", lw=0.6)
        if block_size:
            for b in range(block_size, last + 1, block_size):
                ax.axvline(b + 0.5, color="0.5", ls=":", lw=0.8)
        ax.set_ylabel(f"slot_{slot}\navg_slope_ratio")
        ax.set_ylim(-0.3, Y_MAX + 0.2)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=c, label=s) for s, c in COLORS.items()]
    axes[0, 0].legend(handles=handles, loc="upper left", fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("iteration (root = black square; crashed runs drawn at the top)")
    fig.suptitle(f"Exploration tree: {tree.settings.get('study', '')}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
