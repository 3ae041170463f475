"""Evaluation metrics of SPEC.md. The only module (with plots) that reads ground truth.

Definitions are fixed here so runs stay comparable: the slope sweep covers each metabolite's
own observed concentration range in the training data, DBSCAN uses the configured
threshold (default 0.1) with min_samples 5 and noise as its own cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import DBSCAN
from sklearn.metrics import silhouette_score

from metabolism.config import EvaluationConfig
from metabolism.metric_keys import PER_TYPE_METRICS, n_types_in, per_type_metric_keys  # noqa: F401
from metabolism.network import GroundTruth, Stoichiometry


# ----------------------------------------------------------------------------- rate constants


def corrected_log10_k(learned_log10_k: np.ndarray, n_substrates: np.ndarray,
                      sub_scale: float) -> np.ndarray:
    """learned + n_substrates * log10(alpha): undo the k <-> MLP_sub scale degeneracy."""
    return learned_log10_k + n_substrates * np.log10(max(sub_scale, 1e-30))


def r2_linear_fit(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the least-squares line y ~ a x + b."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    a, b = np.polyfit(x, y, 1)
    ss_res = np.sum((y - (a * x + b)) ** 2)
    ss_tot = np.sum((y - y.mean()) ** 2)
    return float(1.0 - ss_res / ss_tot)


def rate_constants_r2(learned_log10_k: np.ndarray, stoich: Stoichiometry, sub_scale: float,
                      truth: GroundTruth) -> float:
    corrected = corrected_log10_k(learned_log10_k, stoich.n_substrates, sub_scale)
    return r2_linear_fit(truth.log10_k, corrected)


# ----------------------------------------------------------------------------- MLP_node slopes


@dataclass
class SweepResult:
    slopes: np.ndarray  # (N,) per-metabolite fitted slope
    offsets: np.ndarray  # (N,)
    low: np.ndarray  # (N,) sweep range
    high: np.ndarray


def sweep_node(node_fn, c_low: np.ndarray, c_high: np.ndarray, n_points: int) -> SweepResult:
    """Fit y = a c + b to MLP_node(c, a_i) over n_points in [c_low_i, c_high_i] per metabolite.

    node_fn maps a (P, N) concentration grid to the (P, N) MLP_node outputs.
    """
    t = np.linspace(0.0, 1.0, n_points)[:, None]
    grid = c_low[None, :] + t * (c_high - c_low)[None, :]  # (P, N)
    y = np.asarray(node_fn(grid), dtype=float)
    gc = grid - grid.mean(0)
    var = (gc ** 2).sum(0)
    slopes = np.where(var > 0, (gc * (y - y.mean(0))).sum(0) / np.where(var > 0, var, 1), 0.0)
    offsets = y.mean(0) - slopes * grid.mean(0)
    return SweepResult(slopes=slopes, offsets=offsets, low=c_low, high=c_high)


# the metrics evaluated once per type t, logged as f"{name}_{t}"
def slope_metrics(sweep: SweepResult, truth: GroundTruth) -> dict[str, float]:
    n_types = len(truth.lambda_per_type)
    values: dict[str, list[float]] = {name: [] for name in PER_TYPE_METRICS}
    for t in range(n_types):
        sel = truth.types == t
        lam, cb = truth.lambda_per_type[t], truth.baseline_per_type[t]
        slope, offset = float(sweep.slopes[sel].mean()), float(sweep.offsets[sel].mean())
        gt_slope, gt_offset = float(-lam), float(lam * cb)
        values["MLP_node_slope"].append(slope)
        values["MLP_node_offset"].append(offset)
        values["MLP_node_gt_slope"].append(gt_slope)
        values["MLP_node_gt_offset"].append(gt_offset)
        values["MLP_node_slope_ratio"].append(slope / gt_slope if gt_slope != 0 else float("nan"))
        values["MLP_node_offset_ratio"].append(
            offset / gt_offset if gt_offset != 0 else float("nan"))
    out = dict(zip(per_type_metric_keys(n_types),
                   [v for name in PER_TYPE_METRICS for v in values[name]]))
    out["avg_slope_ratio"] = float(np.mean(values["MLP_node_slope_ratio"]))
    return out


def residual_error_vs_truth(x: np.ndarray, residual: np.ndarray,
                            truth: GroundTruth) -> dict[str, float]:
    """Phase 1's error in the Phase 2 residual, against the true law (evaluation side only):
    median over metabolites of the robust spread (MAD sigma) of residual - (-lambda (c - cb)),
    absolute and relative to the median spread of the true law over the data."""
    err = residual + truth.lam * (x - truth.baseline)
    mad = 1.4826 * np.median(np.abs(err - np.median(err, 0)), 0)
    law = truth.lam * 1.4826 * np.median(np.abs(x - np.median(x, 0)), 0)
    return {"phase1_residual_error_truth": float(np.median(mad)),
            "phase1_residual_error_truth_relative": float(np.median(mad) / np.median(law))}


# ----------------------------------------------------------------------------- embeddings


def matched_types(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per metabolite, the true type its predicted cluster is matched to by the best
    one-to-one matching (Hungarian); -1 where its cluster got no type."""
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    t_ids, t_inv = np.unique(true, return_inverse=True)
    counts = np.zeros((len(p_ids), len(t_ids)))
    np.add.at(counts, (p_inv, t_inv), 1)
    rows, cols = linear_sum_assignment(-counts)
    type_of_cluster = np.full(len(p_ids), -1, dtype=np.int64)
    type_of_cluster[rows] = t_ids[cols]
    return type_of_cluster[p_inv]


def cluster_accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of metabolites whose cluster is matched to their own type."""
    return float(np.mean(matched_types(pred, true) == np.asarray(true)))


def dbscan_labels(embeddings: np.ndarray, cfg: EvaluationConfig) -> np.ndarray:
    """The clusters the metrics score (noise is -1)."""
    return DBSCAN(eps=cfg.cluster_distance_threshold,
                  min_samples=cfg.dbscan_min_samples).fit_predict(embeddings)


def embedding_metrics(embeddings: np.ndarray, types: np.ndarray,
                      cfg: EvaluationConfig) -> dict[str, float]:
    labels = dbscan_labels(embeddings, cfg)
    # noise (-1) counts as one cluster of its own for the accuracy
    n_clusters = len(set(labels) - {-1})
    n_labels = len(set(labels))
    sil = 0.0
    if 2 <= n_labels <= len(labels) - 1:
        sil = float(silhouette_score(embeddings, labels))
    return {"embedding_cluster_acc": cluster_accuracy(labels, types),
            "embedding_n_clusters": float(n_clusters),
            "embedding_silhouette": sil}


# ----------------------------------------------------------------------------- everything


def node_fn_of(model) -> callable:
    """Wrap model.node for numpy grids (P, N) -> (P, N), no gradients."""
    def fn(grid: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            c = torch.as_tensor(grid, dtype=model.S.dtype, device=model.S.device)
            return model.node(c).cpu().double().numpy()
    return fn


def evaluate(model, concentrations: np.ndarray, stoich: Stoichiometry, truth: GroundTruth,
             cfg: EvaluationConfig) -> tuple[dict[str, float], SweepResult]:
    """All metrics except phase2_loss (the trainer reports that)."""
    node_fn = node_fn_of(model)
    metrics: dict[str, float] = {}
    metrics["phase2_node_magnitude"] = float(np.abs(node_fn(concentrations)).mean())
    sweep = sweep_node(node_fn, concentrations.min(0), concentrations.max(0), cfg.n_sweep_points)
    metrics.update(slope_metrics(sweep, truth))
    emb = model.embeddings.detach().cpu().double().numpy()
    metrics.update(embedding_metrics(emb, truth.types, cfg))
    metrics["rate_constants_R2"] = rate_constants_r2(
        model.log10_k.detach().cpu().double().numpy(), stoich, model.sub_scale(), truth)
    return metrics, sweep
