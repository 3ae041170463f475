"""Metrics of SPEC.md on synthetic inputs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metabolism.config import EvaluationConfig
from metabolism.metrics import (cluster_accuracy, corrected_log10_k, embedding_metrics,
                                r2_linear_fit, slope_metrics, sweep_node)
from metabolism.network import GroundTruth, metabolite_types
from metabolism.verdict import classify_slope_ratio, targets_met


def _truth(n=40, t=2, lam=(0.001, 0.002), cb=(4.0, 6.0)) -> GroundTruth:
    return GroundTruth(log10_k=np.zeros(3), types=metabolite_types(n, t),
                       lambda_per_type=np.asarray(lam, float),
                       baseline_per_type=np.asarray(cb, float))


def _ranges(n, seed=0):
    rng = np.random.default_rng(seed)
    low = rng.uniform(0.5, 3.0, n)
    return low, low + rng.uniform(1.0, 5.0, n)


@pytest.mark.parametrize("t,lam,cb", [(2, (0.001, 0.002), (4.0, 6.0)),
                                      (3, (0.01, 0.5, 2e-4), (1.0, 3.0, 7.5))])
def test_perfect_linear_node_gives_ratio_one(t, lam, cb):
    n = 30
    truth = _truth(n, t, lam, cb)

    def node_fn(grid):  # the ground-truth homeostatic law, per metabolite
        return -truth.lam[None, :] * (grid - truth.baseline[None, :])

    low, high = _ranges(n)
    sweep = sweep_node(node_fn, low, high, 50)
    np.testing.assert_allclose(sweep.slopes, -truth.lam, rtol=1e-9)
    np.testing.assert_allclose(sweep.offsets, truth.lam * truth.baseline, rtol=1e-9)
    m = slope_metrics(sweep, truth)
    for k in range(t):
        assert m[f"MLP_node_slope_ratio_{k}"] == pytest.approx(1.0, rel=1e-9)
        assert m[f"MLP_node_offset_ratio_{k}"] == pytest.approx(1.0, rel=1e-9)
        assert m[f"MLP_node_gt_slope_{k}"] == pytest.approx(-lam[k])
        assert m[f"MLP_node_gt_offset_{k}"] == pytest.approx(lam[k] * cb[k])
        assert m[f"MLP_node_slope_{k}"] == pytest.approx(-lam[k])
    assert m["avg_slope_ratio"] == pytest.approx(1.0, rel=1e-9)
    assert classify_slope_ratio(m["avg_slope_ratio"]) == "converged"


def test_flat_node_gives_zero():
    n = 20
    truth = _truth(n)
    low, high = _ranges(n)
    sweep = sweep_node(lambda g: np.zeros_like(g), low, high, 50)
    m = slope_metrics(sweep, truth)
    for k in range(2):
        assert m[f"MLP_node_slope_ratio_{k}"] == 0.0
        assert m[f"MLP_node_offset_ratio_{k}"] == 0.0
    assert m["avg_slope_ratio"] == 0.0
    assert classify_slope_ratio(m["avg_slope_ratio"]) == "failed"


def test_half_slope_per_type_and_average():
    n = 20
    truth = _truth(n)
    low, high = _ranges(n)
    factor = np.where(truth.types == 0, 0.5, 2.0)
    sweep = sweep_node(lambda g: -factor * truth.lam * (g - truth.baseline), low, high, 50)
    m = slope_metrics(sweep, truth)
    assert m["MLP_node_slope_ratio_0"] == pytest.approx(0.5)
    assert m["MLP_node_slope_ratio_1"] == pytest.approx(2.0)
    assert m["avg_slope_ratio"] == pytest.approx(1.25)


def test_sweep_uses_given_range_and_points():
    seen = {}

    def node_fn(grid):
        seen["grid"] = grid
        return grid ** 2

    low, high = np.array([1.0, 2.0]), np.array([3.0, 10.0])
    sweep = sweep_node(node_fn, low, high, 7)
    assert seen["grid"].shape == (7, 2)
    np.testing.assert_allclose(seen["grid"][0], low)
    np.testing.assert_allclose(seen["grid"][-1], high)
    np.testing.assert_array_equal(sweep.low, low)
    np.testing.assert_array_equal(sweep.high, high)
    # least-squares line of c^2 on a symmetric grid around m has slope 2m
    np.testing.assert_allclose(sweep.slopes, [4.0, 12.0], rtol=1e-9)


def _blobs(centers, n_per, spread, seed=0):
    rng = np.random.default_rng(seed)
    return np.concatenate([c + spread * rng.standard_normal((n_per, 2)) for c in centers])


def test_two_tight_far_clusters():
    emb = _blobs([np.array([0.0, 0.0]), np.array([5.0, 5.0])], 25, 0.005)
    types = metabolite_types(50, 2)
    m = embedding_metrics(emb, types, EvaluationConfig())
    assert m["embedding_cluster_acc"] == 1.0
    assert m["embedding_n_clusters"] == 2.0
    assert m["embedding_silhouette"] > 0.9


def test_two_clusters_swapped_labels_still_perfect():
    emb = _blobs([np.array([5.0, 5.0]), np.array([0.0, 0.0])], 25, 0.005, seed=1)
    m = embedding_metrics(emb, 1 - metabolite_types(50, 2), EvaluationConfig())
    assert m["embedding_cluster_acc"] == 1.0


def test_single_blob_half_accuracy():
    emb = _blobs([np.array([1.0, -1.0])], 50, 0.005)
    m = embedding_metrics(emb, metabolite_types(50, 2), EvaluationConfig())
    assert m["embedding_n_clusters"] == 1.0
    assert m["embedding_cluster_acc"] == 0.5
    assert m["embedding_silhouette"] == 0.0


def test_dbscan_threshold_is_used():
    # clusters 0.3 apart: one cluster at eps=0.5, two at eps=0.1
    emb = _blobs([np.array([0.0, 0.0]), np.array([0.3, 0.0])], 20, 0.003)
    types = metabolite_types(40, 2)
    assert embedding_metrics(emb, types, EvaluationConfig())["embedding_n_clusters"] == 2.0
    wide = EvaluationConfig(cluster_distance_threshold=0.5)
    assert embedding_metrics(emb, types, wide)["embedding_n_clusters"] == 1.0


def test_cluster_accuracy_permutation_invariant():
    true = np.repeat([0, 1, 2], 10)
    perm = {0: 7, 1: 3, 2: 5}
    pred = np.array([perm[t] for t in true])
    assert cluster_accuracy(pred, true) == 1.0
    pred2 = pred.copy()
    pred2[:2] = 3
    assert cluster_accuracy(pred2, true) == pytest.approx(28 / 30)
    # noise label (-1) is a cluster of its own and can only match one type
    assert cluster_accuracy(np.full(30, -1), true) == pytest.approx(1 / 3)


def test_r2_linear_fit():
    x = np.linspace(-2, -1, 30)
    assert r2_linear_fit(x, 3.0 * x - 7.0) == pytest.approx(1.0)
    assert r2_linear_fit(x, -0.5 * x + 1) == pytest.approx(1.0)  # any line, any sign
    rng = np.random.default_rng(0)
    noisy = x + rng.normal(0, 0.3, x.shape)
    r2 = r2_linear_fit(x, noisy)
    assert 0.0 < r2 < 0.9
    a, b = np.polyfit(x, noisy, 1)
    expected = 1 - np.sum((noisy - a * x - b) ** 2) / np.sum((noisy - noisy.mean()) ** 2)
    assert r2 == pytest.approx(expected)
    assert r2_linear_fit(x, np.ones_like(x)) == 0.0


def test_corrected_log10_k():
    learned = np.array([-1.0, -2.0, -1.5])
    n_sub = np.array([1, 2, 0])
    out = corrected_log10_k(learned, n_sub, 10.0)
    np.testing.assert_allclose(out, [0.0, 0.0, -1.5])
    out = corrected_log10_k(learned, n_sub, 0.5)
    np.testing.assert_allclose(out, learned + n_sub * math.log10(0.5))


@pytest.mark.parametrize("r,label", [
    (1.0, "converged"), (0.8, "converged"), (1.2, "converged"), (0.95, "converged"),
    (0.79, "partial"), (0.3, "partial"), (0.5, "partial"), (1.21, "partial"), (3.0, "partial"),
    (0.29, "failed"), (3.01, "failed"), (0.0, "failed"), (-1.0, "failed"), (10.0, "failed"),
    (float("nan"), "failed"), (float("inf"), "failed"),
])
def test_classify_slope_ratio(r, label):
    assert classify_slope_ratio(r) == label


def _all_targets(**changes):
    m = {"avg_slope_ratio": 1.05, "MLP_node_slope_ratio_0": 1.15, "MLP_node_slope_ratio_1": 0.95,
         "MLP_node_slope_ratio_2": 1.0, "embedding_cluster_acc": 0.96, "embedding_n_clusters": 3}
    m.update(changes)
    return m


@pytest.mark.parametrize("changes,met", [
    ({}, True),
    ({"MLP_node_slope_ratio_2": 1.21}, False),       # one type out of band, avg inside
    ({"MLP_node_slope_ratio_2": float("nan")}, False),
    ({"embedding_cluster_acc": 0.949}, False),
    ({"embedding_n_clusters": 2}, False),             # right accuracy, wrong number of groups
    ({"avg_slope_ratio": 0.79}, False),
])
def test_targets_met_checks_every_type_accuracy_and_group_count(changes, met):
    assert targets_met(_all_targets(**changes), n_types=3) is met
