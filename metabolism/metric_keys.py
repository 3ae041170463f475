"""Names of the per-type metrics, for any number of types.

Plain Python (no torch, scipy or sklearn), so the command lines, study tables and exploration
logs can name the metrics without paying for the libraries that compute them.
"""

from __future__ import annotations

PER_TYPE_METRICS = ("MLP_node_slope", "MLP_node_offset", "MLP_node_gt_slope",
                    "MLP_node_gt_offset", "MLP_node_slope_ratio", "MLP_node_offset_ratio")


def per_type_metric_keys(n_types: int, names: tuple[str, ...] = PER_TYPE_METRICS) -> list[str]:
    """The per-type metric names for n_types types, grouped by name: every table, log and
    comparison lists per-type metrics through this, so none drops a type."""
    return [f"{name}_{t}" for name in names for t in range(n_types)]


def n_types_in(metrics: dict) -> int:
    """How many types a run's metrics cover (0 for a failed run without them)."""
    n = 0
    while f"MLP_node_slope_ratio_{n}" in metrics:
        n += 1
    return n
