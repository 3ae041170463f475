"""Compare slots side by side from MLflow: one table row per slot, one figure point per run.

    python experiments/compare_slots.py --study main
    python experiments/compare_slots.py --filter "tags.regime = 'default'" --latest

Reads finished runs that carry a slot tag (phase2.py, study.py and explore.py runs), prints a
markdown table per slot (runs, converged, targets met, avg_slope_ratio, per-type slope
ratios, embedding_cluster_acc and clusters as mean (min–max)) and every run by name, and
writes a figure. --filter takes any MLflow search expression (tags.*, params.*, metrics.*).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from metabolism.cli import HelpFormatter, run_main
from metabolism.config import DEFAULT_EXPERIMENT


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    p.add_argument("--study", help="only the runs of this study (tags.study)")
    p.add_argument("--filter", default="",
                   help="MLflow search expression, e.g. \"tags.regime = 'default'\"")
    p.add_argument("--latest", action="store_true",
                   help="only the newest run per slot and seed")
    p.add_argument("--out", type=Path, default=Path("slot_comparison.png"),
                   help="figure path")
    args = p.parse_args()
    from metabolism.slot_comparison import ComparisonError, collect, plot, run_table, slot_table

    parts = [f for f in (args.filter, f"tags.study = '{args.study}'" if args.study else "") if f]
    try:
        runs = collect(args.experiment, " and ".join(parts), latest=args.latest)
    except ComparisonError as exc:
        raise ValueError(str(exc)) from None
    print(slot_table(runs))
    print()
    print(run_table(runs))
    title = f"{args.experiment}" + (f", study {args.study}" if args.study else "") + \
        (f", {args.filter}" if args.filter else "")
    print(f"\nfigure: {plot(runs, args.out, title)}")


if __name__ == "__main__":
    run_main(main)
