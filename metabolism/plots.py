"""Per-run figures of SPEC.md (matplotlib, headless). Evaluation-side: may read ground truth.

Each figure names its run (slot, seed, update) in the title, labels every line it draws and
shows where the training data lies, so a figure read alone cannot be misread.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metabolism.metric_keys import n_types_in  # noqa: E402
from metabolism.metrics import SweepResult  # noqa: E402
from metabolism.network import GroundTruth  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]
DPI = 160  # print resolution
# Concentrations outside these quantiles of the training data are shaded: few frames lie
# there, and MLP_node's curve is mostly extrapolation.
DATA_QUANTILES = (0.01, 0.99)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _title(what: str, context: str) -> str:
    return f"{what}\n{context}" if context else what


def plot_mlp_node(node_fn, sweep: SweepResult, truth: GroundTruth, path: Path,
                  concentrations: np.ndarray, context: str = "", n_points: int = 50) -> Path:
    """Learned MLP_node(c, a_i) per metabolite over its own observed range, the true law per
    type dashed, and below it the density of the training concentrations per type."""
    fig, (ax, ax_d) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    t = np.linspace(0, 1, n_points)[:, None]
    grid = sweep.low[None] + t * (sweep.high - sweep.low)[None]
    y = node_fn(grid)
    lo, hi = np.quantile(concentrations, DATA_QUANTILES)
    bins = np.linspace(concentrations.min(), concentrations.max(), 60)
    for k in range(len(truth.lambda_per_type)):
        color = COLORS[k % len(COLORS)]
        sel = np.flatnonzero(truth.types == k)
        for j, i in enumerate(sel):
            ax.plot(grid[:, i], y[:, i], color=color, alpha=0.45, lw=0.9,
                    label=(f"learned MLP_node, type {k} ({len(sel)} metabolites, mean slope "
                           f"{sweep.slopes[sel].mean():.3g})") if j == 0 else None)
        c = np.linspace(*np.quantile(concentrations[:, sel], DATA_QUANTILES), 50)
        lam, cb = truth.lambda_per_type[k], truth.baseline_per_type[k]
        ax.plot(c, -lam * (c - cb), "--", color="k", lw=2.4, zorder=4)
        ax.plot(c, -lam * (c - cb), "--", color=color, lw=1.6, zorder=5,
                label=f"true law, type {k}: -{lam:.3g} (c - {cb:.3g})")
        ax_d.hist(concentrations[:, sel].ravel(), bins=bins, color=color, alpha=0.5,
                  label=f"type {k}")
    for a in (ax, ax_d):
        a.axvspan(bins[0], lo, color="0.85", zorder=0)
        a.axvspan(hi, bins[-1], color="0.85", zorder=0,
                  label=(f"outside {DATA_QUANTILES[0]:.0%}-{DATA_QUANTILES[1]:.0%} of the data"
                         if a is ax else None))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("MLP_node(c, a_i)  (dc/dt)")
    ax.set_title(_title("learned homeostasis per metabolite vs the true law per type", context))
    ax.legend(fontsize=7, loc="best")
    ax_d.set_xlabel("concentration c")
    ax_d.set_ylabel("frames x\nmetabolites")
    ax_d.set_yscale("log")
    ax_d.set_xlim(bins[0], bins[-1])
    ax_d.legend(fontsize=7, title="training data", title_fontsize=7)
    return _save(fig, path)


def plot_rate_constants(true_log10_k: np.ndarray, corrected_log10_k: np.ndarray, r2: float,
                        path: Path, context: str = "") -> Path:
    """Frozen after Phase 1, so drawn once per run."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(true_log10_k, corrected_log10_k, s=8, alpha=0.6, label="reaction")
    lo = min(true_log10_k.min(), corrected_log10_k.min())
    hi = max(true_log10_k.max(), corrected_log10_k.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="learned = true")
    ax.set_xlabel("true log10 k")
    ax.set_ylabel("learned log10 k + n_substrates log10 alpha")
    ax.set_title(_title(f"rate constants (frozen Phase 1), R2 = {r2:.3f}", context),
                 fontsize=10)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_embeddings(embeddings: np.ndarray, types: np.ndarray, clusters: np.ndarray,
                    matched: np.ndarray, acc: float, eps: float, path: Path,
                    context: str = "") -> Path:
    """a_i at equal axis scales (DBSCAN's eps is a distance): colour = true type, marker =
    cluster found, red ring (with its index and true type) = metabolite whose cluster is
    matched to another type."""
    fig, ax = plt.subplots(figsize=(5.6, 5.6))
    emb = embeddings if embeddings.shape[1] >= 2 else np.c_[embeddings, np.zeros(len(embeddings))]
    markers = "os^DvP*X<>"
    for c in np.unique(clusters):
        sel_c = clusters == c
        marker = "x" if c == -1 else markers[int(c) % len(markers)]
        for k in np.unique(types):
            sel = sel_c & (types == k)
            if sel.any():
                ax.scatter(emb[sel, 0], emb[sel, 1], s=22, marker=marker,
                           color=COLORS[int(k) % len(COLORS)], alpha=0.8, zorder=2)
    wrong = matched != types
    ax.scatter(emb[wrong, 0], emb[wrong, 1], s=140, facecolors="none", edgecolors="red",
               linewidths=1.6, zorder=3, label=f"misassigned ({int(wrong.sum())})")
    for j, i in enumerate(np.flatnonzero(wrong)[:12]):  # name them: they hide in a group
        ax.annotate(f"#{i}: type {types[i]}", emb[i], textcoords="offset points",
                    xytext=(10, 10 + 9 * j), fontsize=6, color="red")
    for k in np.unique(types):
        ax.scatter([], [], s=22, marker="o", color=COLORS[int(k) % len(COLORS)],
                   label=f"true type {k}")
    for c in np.unique(clusters):
        ax.scatter([], [], s=22, marker="x" if c == -1 else markers[int(c) % len(markers)],
                   color="0.3", label="DBSCAN noise" if c == -1 else f"found cluster {c}")
    # eps as a scale bar: points closer than this are neighbours for DBSCAN
    x0, y0 = emb[:, 0].min(), emb[:, 1].min()
    ax.plot([x0, x0 + eps], [y0, y0], color="k", lw=2)
    ax.annotate(f"eps = {eps:g}", (x0, y0), textcoords="offset points", xytext=(0, 4),
                fontsize=7)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("a_0")
    ax.set_ylabel("a_1")
    n_found = len(set(clusters.tolist()) - {-1})
    ax.set_title(_title(f"embeddings: {n_found} clusters found, accuracy {acc:.2f}", context),
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_loss(losses: list[float], path: Path, components: dict[str, list[float]] | None = None,
              events: dict[str, list[int]] | None = None, context: str = "") -> Path:
    """The training objective per optimizer update, its components, and the updates where a
    strategy switched on or acted (vertical lines)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(len(losses))
    ax.plot(steps, losses, color="k", lw=1.6,
            label="training loss per update (phase2_train_loss, the optimized objective)")
    for j, (name, values) in enumerate((components or {}).items()):
        if len(values) == len(losses):
            ax.plot(steps, values, lw=1.0, alpha=0.8, color=COLORS[(j + 1) % len(COLORS)],
                    label=name)
    positive = [v for v in losses if v > 0]
    if positive and len(positive) == len(losses):
        ax.set_yscale("log")
    for j, (name, at) in enumerate((events or {}).items()):
        for i, step in enumerate(at):
            ax.axvline(step, color=COLORS[(j + 4) % len(COLORS)], ls=":", lw=1.4,
                       label=f"{name} (update {', '.join(map(str, at))})" if i == 0 else None)
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("loss")
    ax.set_title(_title("Phase 2 training loss", context), fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_study(rows: list[dict], path: Path, title: str) -> Path | None:
    """A study at a glance: every finished run's per-type slope ratios (left) and cluster
    accuracy with the number of clusters found (right), by slot, seeds side by side; the
    target bands shaded, so a regime's misses show without reading the table. None when no
    run finished."""
    ok = [r for r in rows if r.get("status") == "FINISHED"]
    if not ok:
        return None
    n_types = max(n_types_in(r) for r in ok)
    cells = sorted({(r["variant"], r["seed"]) for r in ok})
    offset = {c: (j - (len(cells) - 1) / 2) * 0.6 / max(1, len(cells)) for j, c in
              enumerate(cells)}
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    ax_r.axhspan(0.8, 1.2, color="0.9", label="target 0.8-1.2")
    ax_a.axhspan(0.95, 1.0, color="0.9", label="target >= 0.95")
    for k in range(n_types):
        pts = [(int(r["slot"]) + offset[(r["variant"], r["seed"])],
                float(r[f"MLP_node_slope_ratio_{k}"]))
               for r in ok if f"MLP_node_slope_ratio_{k}" in r]
        ax_r.scatter(*zip(*pts), s=22, color=COLORS[k % len(COLORS)], label=f"type {k}",
                     zorder=2)
    for r in ok:
        x, acc = int(r["slot"]) + offset[(r["variant"], r["seed"])], float(
            r["embedding_cluster_acc"])
        ax_a.scatter(x, acc, s=22, color="k", zorder=2)
        ax_a.annotate(f"{int(float(r['embedding_n_clusters']))}", (x, acc), fontsize=6,
                      textcoords="offset points", xytext=(3, 3))
    slots = sorted({int(r["slot"]) for r in ok})
    for ax, label in ((ax_r, "MLP_node slope ratio (learned / true), per type"),
                      (ax_a, "embedding cluster accuracy (label: clusters found)")):
        ax.set_xticks(slots, [f"slot {s}" for s in slots])
        ax.set_xlim(slots[0] - 0.5, slots[-1] + 0.5)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{title}: {len(ok)} finished runs, "
                 f"{len({s for _, s in cells})} seeds per slot", fontsize=10)
    return _save(fig, path)
