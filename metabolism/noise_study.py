"""The noise study: several studies' run tables (one per regime and slot subset) assembled
into one table and one figure of the metrics against the measurement noise, a line per slot.

The runs themselves are ordinary study runs (`experiments/study.py --regime
regimes/noise_1.yaml ...`); this module only reads their study.csv files, so cells run at
different times, or left out, assemble the same way.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metabolism.verdict import classify_slope_ratio, targets_met  # noqa: E402

PANELS = [("avg_slope_ratio", "avg_slope_ratio", (0.8, 1.2)),
          ("MLP_node_slope_ratio_0", "slope ratio, type 0", (0.8, 1.2)),
          ("MLP_node_slope_ratio_1", "slope ratio, type 1", (0.8, 1.2)),
          ("embedding_cluster_acc", "embedding_cluster_acc", (0.95, None))]


def read_rows(csv_paths: list[Path]) -> list[dict[str, Any]]:
    """Every row of the given study.csv files; numbers parsed, the study name added."""
    rows = []
    for path in csv_paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: study table missing (run experiments/study.py)")
        with path.open() as f:
            for raw in csv.DictReader(f):
                row: dict[str, Any] = {"study": path.parent.name}
                for k, v in raw.items():
                    try:
                        row[k] = float(v) if k not in ("status", "variant", "regime", "error",
                                                       "run_dir", "strategy") else v
                    except (TypeError, ValueError):
                        row[k] = v
                rows.append(row)
    return rows


def all_targets_met(row: dict[str, Any], n_types: int = 2) -> bool:
    """A finished run with every target of verdict.targets_met (the noise regimes have two
    types)."""
    return row.get("status") == "FINISHED" and targets_met(row, n_types)


def condition(row: dict[str, Any]) -> tuple[float, int]:
    return float(row.get("observation_noise", 0.0)), int(row.get("observe_every", 1))


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (noise, observe_every, slot): runs, converged, all four targets, means."""
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(*condition(r), int(r["slot"]))].append(r)
    out = []
    for (noise, every, slot), group in sorted(groups.items()):
        ok = [r for r in group if r.get("status") == "FINISHED"]
        line: dict[str, Any] = {
            "noise": noise, "observe_every": every, "slot": slot, "runs": len(group),
            "seeds": " ".join(str(int(r["seed"])) for r in sorted(group, key=lambda r: r["seed"])),
            "converged": sum(classify_slope_ratio(r.get("avg_slope_ratio", math.nan))
                             == "converged" for r in ok),
            "all_targets": sum(all_targets_met(r) for r in ok)}
        for key, _, _ in PANELS:
            vals = [r[key] for r in ok if isinstance(r.get(key), float)]
            line[key] = float(np.mean(vals)) if vals else math.nan
        out.append(line)
    return out


def plot_against_noise(rows: list[dict[str, Any]], path: Path) -> Path:
    """avg_slope_ratio, per-type ratios and cluster accuracy against the noise level (log
    axis, noise 0 drawn at a tenth of the smallest level), a line per slot (mean over seeds,
    every run a dot); sparse-sampling runs are drawn as open markers."""
    dense = [r for r in rows if condition(r)[1] == 1 and r.get("status") == "FINISHED"]
    sparse = [r for r in rows if condition(r)[1] > 1 and r.get("status") == "FINISHED"]
    levels = sorted({condition(r)[0] for r in rows if condition(r)[0] > 0}) or [1e-3]
    zero_at = levels[0] / 10

    def xpos(noise: float) -> float:
        return noise if noise > 0 else zero_at

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    slots = sorted({int(r["slot"]) for r in rows})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, label, band) in zip(axes, PANELS):
        for i, slot in enumerate(slots):
            color = colors[i % len(colors)]
            mine = [r for r in dense if int(r["slot"]) == slot and isinstance(r.get(key), float)]
            xs = sorted({xpos(condition(r)[0]) for r in mine})
            means = [np.mean([r[key] for r in mine if xpos(condition(r)[0]) == x]) for x in xs]
            ax.plot(xs, means, "-o", color=color, label=f"slot {slot}", ms=4)
            ax.scatter([xpos(condition(r)[0]) for r in mine], [r[key] for r in mine],
                       color=color, alpha=0.35, s=10)
            sp = [r for r in sparse if int(r["slot"]) == slot and isinstance(r.get(key), float)]
            if sp:
                ax.scatter([xpos(condition(r)[0]) for r in sp], [r[key] for r in sp],
                           facecolors="none", edgecolors=color, marker="s", s=30,
                           label=f"slot {slot}, observe_every {int(condition(sp[0])[1])}")
        lo, hi = band
        ax.axhline(lo, color="grey", ls=":", lw=0.8)
        if hi is not None:
            ax.axhline(hi, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([zero_at] + levels)
        ax.set_xticklabels(["0"] + [f"{100 * v:g}%" for v in levels])
        ax.set_xlabel("relative measurement noise")
        ax.set_title(label)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
