"""The per-run figures say what they show: labelled curves, the data's range, run context in
the title, equal-aspect embeddings with clusters and misassigned metabolites, loss events."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from metabolism import plots
from metabolism.metrics import matched_types, sweep_node
from metabolism.network import GroundTruth

CONTEXT = "slot 3 (T=64), seed 2, regime default, update 600/600"


@pytest.fixture
def figures(monkeypatch):
    """Each figure a plot function saves, kept open for inspection."""
    kept = []
    real = plots._save

    def keep(fig, path):
        kept.append(fig)
        fig.tight_layout()
        fig.savefig(path, dpi=plots.DPI)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    assert real is not None


def _truth(n=30):
    types = np.repeat([0, 1], n // 2)
    return GroundTruth(log10_k=np.zeros(4), types=types,
                       lambda_per_type=np.array([0.001, 0.002]),
                       baseline_per_type=np.array([4.0, 6.0]))


def test_mlp_node_plot_labels_curves_and_shows_where_the_data_lies(tmp_path, figures):
    truth = _truth()
    rng = np.random.default_rng(0)
    conc = rng.uniform(2, 8, size=(200, 30))
    conc[0, 0] = 40.0  # one far outlier stretches the axis: must be shaded, not hidden

    def node_fn(c):
        return -0.0015 * (c - 5.0)

    sweep = sweep_node(node_fn, conc.min(0), conc.max(0), 20)
    path = plots.plot_mlp_node(node_fn, sweep, truth, tmp_path / "m.png", conc, CONTEXT)
    assert Image.open(path).info["dpi"][0] == pytest.approx(plots.DPI, abs=1)
    ax, ax_density = figures[0].axes[:2]
    labels = ax.get_legend_handles_labels()[1]
    for k in (0, 1):
        assert any(lbl.startswith(f"learned MLP_node, type {k}") for lbl in labels), labels
        assert any(lbl.startswith(f"true law, type {k}") for lbl in labels), labels
    assert any("of the data" in lbl for lbl in labels)
    assert CONTEXT in ax.get_title()
    # the shaded band starts at the data's 99% quantile, well below the outlier
    shaded = [p for p in ax.patches if p.get_x() > 0]
    assert shaded and min(p.get_x() for p in shaded) < 8.5
    assert ax_density.patches, "no density of the training data"
    assert "concentration" in ax_density.get_xlabel()


def test_embedding_plot_is_equal_aspect_and_rings_misassigned_metabolites(tmp_path, figures):
    types = np.array([0] * 10 + [1] * 10)
    emb = np.r_[np.zeros((10, 2)), np.ones((10, 2)) * [3.0, 0.2]] + 0.01
    clusters = np.array([0] * 10 + [1] * 9 + [0])  # one type-1 metabolite in type 0's group
    matched = matched_types(clusters, types)
    assert (matched != types).sum() == 1
    plots.plot_embeddings(emb, types, clusters, matched, 0.95, 0.1, tmp_path / "e.png",
                          CONTEXT)
    ax = figures[0].axes[0]
    assert ax.get_aspect() == 1.0
    labels = ax.get_legend_handles_labels()[1]
    assert "misassigned (1)" in labels
    assert {"found cluster 0", "found cluster 1", "true type 0", "true type 1"} <= set(labels)
    ring = next(c for c in ax.collections if c.get_label() == "misassigned (1)")
    np.testing.assert_allclose(ring.get_offsets(), emb[19:20])
    assert CONTEXT in ax.get_title() and "2 clusters found" in ax.get_title()


def test_loss_plot_names_the_training_loss_its_terms_and_strategy_events(tmp_path, figures):
    losses = list(np.linspace(1.0, 0.1, 50))
    plots.plot_loss(losses, tmp_path / "l.png",
                    {"rollout term": [0.5] * 50, "contrastive term": [0.1] * 50},
                    {"contrastive attraction starts": [25], "embeddings reassigned": [40]},
                    CONTEXT)
    ax = figures[0].axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0].startswith("training loss per update")
    assert "rollout term" in labels and "contrastive term" in labels
    assert "contrastive attraction starts (update 25)" in labels
    assert "embeddings reassigned (update 40)" in labels
    vlines = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == ":")
    assert vlines == [25, 40]
    assert CONTEXT in ax.get_title()


def test_study_plot_shows_every_finished_run_of_every_type_and_skips_failures(tmp_path,
                                                                              figures):
    rows = [{"slot": s, "seed": seed, "variant": "default", "status": "FINISHED",
             "MLP_node_slope_ratio_0": 1.0 + 0.01 * seed, "MLP_node_slope_ratio_1": 0.9,
             "MLP_node_slope_ratio_2": 1.3 + s, "embedding_cluster_acc": 0.9 + 0.01 * s,
             "embedding_n_clusters": 3} for s in (0, 2) for seed in (0, 1)]
    rows.append({"slot": 1, "seed": 0, "variant": "default", "status": "FAILED"})
    path = plots.plot_study(rows, tmp_path / "study.png", "Study x, regime three_types")
    assert path.exists()
    ax_r, ax_a = figures[0].axes
    # one scatter per type, each with a point per finished run
    per_type = {c.get_label(): c.get_offsets() for c in ax_r.collections if c.get_label()
                .startswith("type")}
    assert sorted(per_type) == ["type 0", "type 1", "type 2"]
    assert all(len(pts) == 4 for pts in per_type.values())
    assert sorted(np.asarray(per_type["type 2"])[:, 1]) == [1.3, 1.3, 3.3, 3.3]
    assert sorted(float(c.get_offsets()[0, 1]) for c in ax_a.collections) == [
        0.9, 0.9, 0.92, 0.92]
    assert [t.get_text() for t in ax_r.get_xticklabels()] == ["slot 0", "slot 2"]
    assert "three_types" in figures[0]._suptitle.get_text()
    assert plots.plot_study(rows[-1:], tmp_path / "none.png", "failed only") is None
