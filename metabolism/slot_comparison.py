"""Slot-vs-slot comparison of finished Phase 2 runs, read back from MLflow.

The recipe the README shows: pick runs with an MLflow filter (a study, a regime, a time
window), get one table row per slot (runs, verdicts, targets met, the compared metrics as mean
and range) and a figure with one point per run against the target bands.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from metabolism.config import SLOT_TIME_STEPS
from metabolism.verdict import CONVERGED_SLOPE_RATIO, TARGET_CLUSTER_ACC

TYPE_RATIO = re.compile(r"^MLP_node_slope_ratio_(\d+)$")


class ComparisonError(ValueError):
    """No runs match; one line naming the filter."""


@dataclass
class SlotRun:
    run_id: str
    name: str
    slot: int
    seed: str
    verdict: str
    targets_met: str
    start_time: int
    metrics: dict[str, float] = field(default_factory=dict)

    def type_ratios(self) -> list[float]:
        found = sorted((int(m.group(1)), v) for k, v in self.metrics.items()
                       if (m := TYPE_RATIO.match(k)))
        return [v for _, v in found]


def collect(experiment: str, filter_string: str = "", latest: bool = False) -> list[SlotRun]:
    """Finished runs of `experiment` that have a slot, matching the MLflow `filter_string`.

    latest: keep only the newest run per (slot, seed).
    """
    from metabolism import tracking

    exp_id = tracking.setup_experiment(experiment)
    query = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    try:
        found = tracking.client().search_runs([exp_id], filter_string=query,
                                              order_by=["attributes.start_time DESC"],
                                              max_results=50000)
    except Exception as exc:  # MLflow's parser names the bad token
        raise ComparisonError(f"--filter {filter_string!r}: {str(exc).splitlines()[0]}") from exc
    runs, seen = [], set()
    for r in found:
        t = r.data.tags
        if not t.get("slot", "").isdigit() or "avg_slope_ratio" not in r.data.metrics:
            continue
        key = (int(t["slot"]), r.data.params.get("training.seed", "?"))
        if latest and key in seen:
            continue
        seen.add(key)
        runs.append(SlotRun(r.info.run_id, r.info.run_name or r.info.run_id, key[0], key[1],
                            t.get("verdict", "?"), t.get("targets_met", "?"),
                            r.info.start_time, dict(r.data.metrics)))
    if not runs:
        raise ComparisonError(f"no finished slot runs in experiment {experiment!r} match "
                              f"{filter_string or '(no filter)'!r}")
    return sorted(runs, key=lambda r: (r.slot, r.seed, r.start_time))


def _span(values: list[float], fmt: str = ".3f") -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return "n/a"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return format(mean, fmt)
    return f"{mean:{fmt}} ({min(vals):{fmt}}–{max(vals):{fmt}})"


def slot_table(runs: list[SlotRun]) -> str:
    """Markdown: one row per slot; metrics as mean (min–max) over its runs."""
    n_types = max(len(r.type_ratios()) for r in runs)
    head = (["slot (T)", "runs", "converged", "targets met", "avg_slope_ratio"]
            + [f"slope ratio type {t}" for t in range(n_types)]
            + ["embedding_cluster_acc", "clusters"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for slot in sorted({r.slot for r in runs}):
        mine = [r for r in runs if r.slot == slot]
        ratios = [r.type_ratios() for r in mine]
        clusters = sorted({int(r.metrics.get("embedding_n_clusters", -1)) for r in mine})
        row = ([f"{slot} ({SLOT_TIME_STEPS.get(slot, '?')})", str(len(mine)),
                f"{sum(r.verdict == 'converged' for r in mine)}/{len(mine)}",
                f"{sum(r.targets_met == 'true' for r in mine)}/{len(mine)}",
                _span([r.metrics["avg_slope_ratio"] for r in mine])]
               + [_span([x[t] for x in ratios if t < len(x)]) for t in range(n_types)]
               + [_span([r.metrics.get("embedding_cluster_acc", math.nan) for r in mine]),
                  " / ".join(map(str, clusters))])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_table(runs: list[SlotRun]) -> str:
    """Markdown: every run, so a reader can find it in the MLflow UI by name."""
    n_types = max(len(r.type_ratios()) for r in runs)
    head = (["run", "slot", "seed", "verdict", "targets met", "avg"]
            + [f"r{t}" for t in range(n_types)] + ["acc", "clusters"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        row = ([f"`{r.name}`", str(r.slot), r.seed, r.verdict, r.targets_met,
                f"{r.metrics['avg_slope_ratio']:.3f}"]
               + [f"{v:.3f}" for v in r.type_ratios()]
               + [f"{r.metrics.get('embedding_cluster_acc', math.nan):.3f}",
                  f"{r.metrics.get('embedding_n_clusters', math.nan):.0f}"])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(runs: list[SlotRun], path: Path, title: str = "") -> Path:
    """Two panels, slots on the x axis, one marker per run: slope ratios against the converged
    band (avg filled, per type hollow) and cluster accuracy against its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = sorted({r.slot for r in runs})
    xpos = {s: i for i, s in enumerate(slots)}
    fig, (ax_r, ax_a) = plt.subplots(1, 2, figsize=(10, 4))
    lo, hi = CONVERGED_SLOPE_RATIO
    ax_r.axhspan(lo, hi, color="tab:green", alpha=0.12, label=f"converged band {lo}–{hi}")
    ax_r.axhline(1.0, color="k", lw=0.6)
    ax_a.axhline(TARGET_CLUSTER_ACC, color="tab:green", ls="--",
                 label=f"target {TARGET_CLUSTER_ACC}")
    markers = "os^Dv<>"
    for s in slots:
        mine = [r for r in runs if r.slot == s]
        jitter = [(i - (len(mine) - 1) / 2) * 0.06 for i in range(len(mine))]
        for r, dx in zip(mine, jitter):
            x = xpos[s] + dx
            ax_r.plot(x, r.metrics["avg_slope_ratio"], "o", color="tab:blue", ms=6)
            for t, v in enumerate(r.type_ratios()):
                ax_r.plot(x, v, markers[(t + 1) % len(markers)], mfc="none",
                          color=f"C{t + 1}", ms=6)
            ax_a.plot(x, r.metrics.get("embedding_cluster_acc", math.nan), "o",
                      color="tab:green" if r.targets_met == "true" else "tab:red", ms=6)
    n_types = max(len(r.type_ratios()) for r in runs)
    ax_r.plot([], [], "o", color="tab:blue", label="avg_slope_ratio")
    for t in range(n_types):
        ax_r.plot([], [], markers[(t + 1) % len(markers)], mfc="none", color=f"C{t + 1}",
                  label=f"slope ratio, type {t}")
    ax_a.plot([], [], "o", color="tab:green", label="run meets all targets")
    ax_a.plot([], [], "o", color="tab:red", label="run misses a target")
    labels = [f"slot {s}\n(T={SLOT_TIME_STEPS.get(s, '?')})" for s in slots]
    for ax, ylabel in ((ax_r, "learned / true slope"), (ax_a, "embedding_cluster_acc")):
        ax.set_xticks(range(len(slots)), labels)
        ax.set_xlim(-0.5, len(slots) - 0.5)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7, loc="lower left")
    accs = [r.metrics.get("embedding_cluster_acc", math.nan) for r in runs]
    ax_a.set_ylim(min([0.9] + [a - 0.02 for a in accs if math.isfinite(a)]), 1.005)
    ax_r.set_title("slope ratios per run (1.0 = ground truth)")
    ax_a.set_title("embedding cluster accuracy per run")
    fig.suptitle(title or f"{len(runs)} runs, {len(slots)} slots")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
