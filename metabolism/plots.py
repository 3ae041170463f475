"""Per-run figures of SPEC.md (matplotlib, headless). Evaluation-side: may read ground truth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metabolism.metrics import SweepResult  # noqa: E402
from metabolism.network import GroundTruth  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_mlp_node(node_fn, sweep: SweepResult, truth: GroundTruth, path: Path,
                  n_points: int = 50) -> Path:
    """Learned MLP_node(c, a_i) per metabolite (thin) over its sweep range, GT dashed per type."""
    fig, ax = plt.subplots(figsize=(6, 4))
    t = np.linspace(0, 1, n_points)[:, None]
    grid = sweep.low[None] + t * (sweep.high - sweep.low)[None]
    y = node_fn(grid)
    for k in range(len(truth.lambda_per_type)):
        color = COLORS[k % len(COLORS)]
        sel = np.flatnonzero(truth.types == k)
        for i in sel:
            ax.plot(grid[:, i], y[:, i], color=color, alpha=0.25, lw=0.8)
        c = np.linspace(grid[:, sel].min(), grid[:, sel].max(), 50)
        lam, cb = truth.lambda_per_type[k], truth.baseline_per_type[k]
        ax.plot(c, -lam * (c - cb), "--", color=color, lw=2,
                label=f"type {k}: GT slope {-lam:.4g}, learned {sweep.slopes[sel].mean():.4g}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("concentration c")
    ax.set_ylabel("MLP_node(c, a_i)")
    ax.set_title("learned homeostasis per metabolite (GT dashed)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_rate_constants(true_log10_k: np.ndarray, corrected_log10_k: np.ndarray, r2: float,
                        path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(true_log10_k, corrected_log10_k, s=8, alpha=0.6)
    lo = min(true_log10_k.min(), corrected_log10_k.min())
    hi = max(true_log10_k.max(), corrected_log10_k.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true log10 k")
    ax.set_ylabel("learned log10 k (corrected)")
    ax.set_title(f"rate constants, R2 = {r2:.3f}")
    return _save(fig, path)


def plot_embeddings(embeddings: np.ndarray, types: np.ndarray, acc: float, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    emb = embeddings if embeddings.shape[1] >= 2 else np.c_[embeddings, np.zeros(len(embeddings))]
    for k in np.unique(types):
        sel = types == k
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, color=COLORS[int(k) % len(COLORS)],
                   label=f"type {k}")
    ax.set_xlabel("a_0")
    ax.set_ylabel("a_1")
    ax.set_title(f"embeddings (cluster acc {acc:.2f})")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_loss(losses: list[float], path: Path, label: str = "phase2_loss") -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(losses)), losses, color="tab:blue", lw=2, label=label)
    if len(losses) and min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer update")
    ax.set_ylabel("loss")
    ax.legend()
    return _save(fig, path)
