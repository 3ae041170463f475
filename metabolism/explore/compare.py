"""Cross-slot comparison of a study, read back from MLflow (not from the study folder).

Reading the tracking store proves the study is fully recorded there: one row per iteration
(the latest non-KILLED run per node_id), the best node per slot, and per-slot trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from metabolism.config import SLOT_TIME_STEPS
from metabolism.explore.tree import reward
from metabolism.formatting import number
from metabolism.metric_keys import n_types_in, per_type_metric_keys


class CompareError(ValueError):
    """Nothing to compare; one line saying what is missing."""


@dataclass
class IterationRow:
    node_id: int
    slot: int
    block: int
    parent: str
    mutation: str
    run_status: str
    node_status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    @property
    def reward(self) -> float:
        return 0.0 if self.error else reward(self.metrics)


def collect_study_runs(study: str, experiment: str) -> list[IterationRow]:
    from metabolism import tracking

    experiment_id = tracking.setup_experiment(experiment)
    client = tracking.client()
    runs = client.search_runs([experiment_id], filter_string=f"tags.study = '{study}'",
                              order_by=["attributes.start_time DESC"], max_results=50000)
    # Prefer the run the loop recorded (it sets node_status) over any stray duplicate.
    runs = sorted(runs, key=lambda r: "node_status" not in r.data.tags)
    rows: dict[int, IterationRow] = {}
    for r in runs:
        t = r.data.tags
        if "node_id" not in t or r.info.status == "KILLED":
            continue
        nid = int(t["node_id"])
        if nid in rows:  # keep one run per node
            continue
        rows[nid] = IterationRow(nid, int(t.get("slot", -1)), int(t.get("block", -1)),
                                 t.get("parent_id", "?"), t.get("mutation", ""),
                                 r.info.status, t.get("node_status", ""), dict(r.data.metrics),
                                 t.get("error", ""))
    if not rows:
        raise CompareError(f"--study {study}: no iteration runs in MLflow experiment "
                           f"{experiment!r}")
    return [rows[k] for k in sorted(rows)]


def _num(x, fmt=".4g") -> str:
    """A table number; 'n/a' for a missing or non-finite one."""
    return number(x, fmt, nonfinite="n/a")


def best_per_slot(rows: list[IterationRow]) -> dict[int, IterationRow]:
    best: dict[int, IterationRow] = {}
    for r in rows:
        if r.error:
            continue
        if r.slot not in best or r.reward > best[r.slot].reward:
            best[r.slot] = r
    return best


def format_table(rows: list[IterationRow]) -> str:
    best = best_per_slot(rows)
    slots = sorted({r.slot for r in rows})
    ratios = per_type_metric_keys(max((n_types_in(r.metrics) for r in rows), default=0),
                                  ("MLP_node_slope_ratio",))
    names = [k.replace("MLP_node_", "") for k in ratios]
    head = ("slot  time_step  runs  failed  crashed  best_node  avg_slope_ratio  "
            + "".join(f"{n:<15}" for n in names)
            + "embedding_cluster_acc  rate_constants_R2  reward")
    lines = [head, "-" * len(head)]
    for s in slots:
        mine = [r for r in rows if r.slot == s]
        failed = sum(1 for r in mine if r.error or r.node_status == "failed")
        crashed = sum(1 for r in mine if r.error)
        b = best.get(s)
        m = b.metrics if b else {}
        lines.append(
            f"{s:<4}  {SLOT_TIME_STEPS.get(s, '?'):<9}  {len(mine):<4}  {failed:<6}  {crashed:<7}  "
            f"{(b.node_id if b else '-')!s:<9}  {_num(m.get('avg_slope_ratio')):<15}  "
            + "".join(f"{_num(m.get(k)):<15}" for k in ratios)
            + f"{_num(m.get('embedding_cluster_acc')):<21}  "
            f"{_num(m.get('rate_constants_R2')):<17}  {_num(b.reward if b else None, '.3f')}")
    for s in slots:
        if s in best:
            lines.append(f"best slot_{s}: node {best[s].node_id}, parent={best[s].parent}, "
                         f"mutation={best[s].mutation}")
    return "\n".join(lines)


def plot_trajectories(rows: list[IterationRow], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("avg_slope_ratio", "embedding_cluster_acc")
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(14, 3.8))
    for s in sorted({r.slot for r in rows}):
        mine = [r for r in rows if r.slot == s]
        label = f"slot_{s} (T={SLOT_TIME_STEPS.get(s, '?')})"
        for ax, key in zip(axes, keys):
            pts = [(r.node_id, r.metrics[key]) for r in mine if key in r.metrics]
            if pts:
                ax.plot(*zip(*pts), "o-", ms=3, label=label)
        axes[-1].plot([r.node_id for r in mine],
                      [max(x.reward for x in mine[:i + 1]) for i in range(len(mine))],
                      "-", label=label)
    for ax, key in zip(axes, keys + ("best reward so far",)):
        ax.set_title(key)
        ax.set_xlabel("iteration")
    axes[0].axhline(1.0, color="k", ls="--", lw=0.6)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
