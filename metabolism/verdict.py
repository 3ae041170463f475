"""How a run is judged: the seed's converged / partial / failed classes and the targets.

Plain Python on a metrics dict, so the exploration loop, the study tables, the MLflow tags
and the command lines share one definition without importing torch.
"""

from __future__ import annotations

import math

from metabolism.metric_keys import per_type_metric_keys

# The seed's band for a converged avg_slope_ratio; every per-type ratio must sit in it too,
# and the embeddings must separate the true number of groups at this accuracy.
CONVERGED_SLOPE_RATIO = (0.8, 1.2)
TARGET_CLUSTER_ACC = 0.95


def classify_slope_ratio(avg_slope_ratio: float) -> str:
    """The seed's classification: converged / partial / failed."""
    r = avg_slope_ratio
    lo, hi = CONVERGED_SLOPE_RATIO
    if not math.isfinite(r):
        return "failed"
    if lo <= r <= hi:
        return "converged"
    if 0.3 <= r < lo or hi < r <= 3.0:
        return "partial"
    return "failed"


def targets_met(metrics: dict[str, float], n_types: int) -> bool:
    """avg_slope_ratio and every per-type slope ratio in 0.8-1.2, embedding_cluster_acc >=
    0.95 and embedding_n_clusters == n_types (the 'all targets' of the results tables)."""
    lo, hi = CONVERGED_SLOPE_RATIO
    keys = ["avg_slope_ratio", *per_type_metric_keys(n_types, ("MLP_node_slope_ratio",))]
    values = [metrics.get(k, math.nan) for k in keys]
    return (all(math.isfinite(v) and lo <= v <= hi for v in values)
            and metrics.get("embedding_cluster_acc", 0.0) >= TARGET_CLUSTER_ACC
            and metrics.get("embedding_n_clusters") == n_types)
