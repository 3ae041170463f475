"""A study: the four slots x training seeds (x strategy variants), one table to compare them.

Each cell is an ordinary Phase 2 run (its own MLflow run, nested under the study's parent
run). The table (markdown + CSV) has one row per run, failed runs included, and a summary per
slot x strategy with mean and spread of every metric.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metabolism.config import Config, LRSchedule, load_config
from metabolism.metrics import classify_slope_ratio

SUMMARY_METRICS = ["avg_slope_ratio", "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1",
                   "embedding_cluster_acc", "embedding_n_clusters", "rate_constants_R2",
                   "phase2_loss", "seconds"]


@dataclass
class Cell:
    slot: int
    seed: int
    variant: str  # name of the strategy variant ("slot default" = the config as it is)
    overrides: dict[str, Any]


VARIANTS = {  # overrides on top of each slot config: ablations of what it enables, and additions
    "default": {},
    "seed_baseline": {  # the seed's starting point: rollout loss only, no strategies
        "training.strategies.residual_supervision.enabled": False,
        "training.strategies.contrastive.enabled": False,
        "training.strategies.gradient_isolation.enabled": False,
        "training.strategies.lr_schedule.enabled": False,
        "training.learning_rate_embedding_homeostasis": 1e-3,
    },
    "rollout_only": {"training.strategies.residual_supervision.enabled": False},
    "mse_residual": {"training.strategies.residual_supervision.loss": "mse"},
    "no_contrastive": {"training.strategies.contrastive.enabled": False},
    "no_reassign": {"training.strategies.contrastive.reassign_at": []},
    "no_gradient_isolation": {"training.strategies.gradient_isolation.enabled": False},
    "no_lr_schedule": {"training.strategies.lr_schedule.enabled": False},
    "amplification": {"training.strategies.amplification.enabled": True},
    "lr_warmup_peak": {  # the seed's schedule, LRSchedule's defaults: 10x warmup, cosine to 0.1x
        f"training.strategies.lr_schedule.{k}": v
        for k, v in dataclasses.asdict(LRSchedule()).items() if k != "enabled"},
}


def plan(slots: list[int], seeds: list[int], variants: dict[str, dict[str, Any]],
         base_overrides: dict[str, Any]) -> list[Cell]:
    return [Cell(slot, seed, name, {**base_overrides, **ov, "training.seed": seed})
            for name, ov in variants.items() for slot in slots for seed in seeds]


def _run_cell(cell: Cell, config_dir: Path, data_root: Path, runs_root: Path,
              parent_run_id: str | None, study: str) -> dict[str, Any]:
    """Worker: one Phase 2 run; never raises, a failure becomes a FAILED row."""
    from metabolism.experiment import run_phase2

    row: dict[str, Any] = {"slot": cell.slot, "variant": cell.variant, "seed": cell.seed}
    start = time.perf_counter()
    try:
        cfg = load_config(Path(config_dir) / f"slot{cell.slot}.yaml", cell.overrides)
        row["time_step"] = cfg.training.homeostasis_time_step
        row["strategy"] = cfg.training.strategies.label()
        res = run_phase2(cfg, runs_root=runs_root, data_root=data_root,
                         parent_run_id=parent_run_id,
                         extra_tags={"study": study, "variant": cell.variant},
                         progress=False, quiet=True)
        row.update(res.metrics)
        row["status"] = "FINISHED"
        row["run_dir"] = str(res.run_dir)
    except Exception as exc:  # recorded, not fatal: the study goes on
        row["status"] = "FAILED"
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    row["seconds"] = time.perf_counter() - start
    return row


def run_cells(cells: list[Cell], *, config_dir: Path, data_root: Path, runs_root: Path,
              parent_run_id: str | None, study: str, workers: int) -> list[dict[str, Any]]:
    args = [(c, config_dir, data_root, runs_root, parent_run_id, study) for c in cells]
    if workers <= 1:
        return [_run_cell(*a) for a in args]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(_run_cell, *zip(*args)))


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std per (slot, variant) of every summary metric over finished seeds."""
    out = []
    keys = sorted({(r["slot"], r["variant"]) for r in rows})
    for slot, variant in keys:
        group = [r for r in rows if r["slot"] == slot and r["variant"] == variant]
        ok = [r for r in group if r["status"] == "FINISHED"]
        s: dict[str, Any] = {"slot": slot, "variant": variant, "runs": len(group),
                             "failed": len(group) - len(ok)}
        for m in SUMMARY_METRICS:
            vals = np.array([float(r[m]) for r in ok if m in r], dtype=float)
            s[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            s[f"{m}_std"] = float(vals.std()) if len(vals) else math.nan
        conv = [r for r in ok
                if classify_slope_ratio(r.get("avg_slope_ratio", math.nan)) == "converged"]
        s["converged"] = f"{len(conv)}/{len(group)}"
        out.append(s)
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


RUN_COLUMNS = ["slot", "time_step", "variant", "seed", "status", "avg_slope_ratio",
               "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1", "embedding_cluster_acc",
               "embedding_n_clusters", "rate_constants_R2", "phase2_loss", "seconds", "error"]


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str,
                 header_lines: list[str]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    sum_cols = ["slot", "variant", "runs", "failed", "converged"] + [
        f"{m}_{k}" for m in SUMMARY_METRICS for k in ("mean", "std")]
    md = [f"# {title}", "", *header_lines, "", "## Summary (mean and std over seeds)", "",
          markdown_table(summary, sum_cols), "", "## Every run", "",
          markdown_table(rows, RUN_COLUMNS), ""]
    md_path = out_dir / "study.md"
    md_path.write_text("\n".join(md))
    csv_path = out_dir / "study.csv"
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in RUN_COLUMNS, k))
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return md_path, csv_path


def base_config_summary(cfg: Config) -> str:
    return (f"regime {cfg.regime}: {cfg.simulation.n_metabolites} metabolites, "
            f"{cfg.simulation.n_metabolite_types} types, {cfg.simulation.n_reactions} reactions,"
            f" seed {cfg.simulation.seed}, lambda {cfg.simulation.lambda_per_type}, "
            f"baseline {cfg.simulation.baseline_per_type}")
