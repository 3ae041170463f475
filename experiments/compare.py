"""Compare the slots of an exploration study from MLflow: best node per slot + trajectories.

    python experiments/compare.py --study s1 [--experiment phase2_homeostasis] [--out x.png]

Prints one line per slot (best node by reward, its metrics) and writes a plot of
avg_slope_ratio, embedding_cluster_acc and best-reward-so-far over iterations, per slot.
MLFLOW_TRACKING_URI selects the store (default: the local sqlite store under mlruns/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from metabolism.cli import HelpFormatter, run_main
from metabolism.config import DEFAULT_EXPERIMENT, ConfigError, check_name
from metabolism.explore.compare import (CompareError, collect_study_runs, format_table,
                                        plot_trajectories)

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--study", required=True, help="exploration study name (tags.study)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    p.add_argument("--out", type=Path, help="plot path (default studies/<study>/compare.png)")
    args = p.parse_args(argv)
    try:
        check_name(args.study, "--study")  # the default plot path is built from it
        rows = collect_study_runs(args.study, args.experiment)
    except (CompareError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"study {args.study}: {len(rows)} iterations (experiment {args.experiment})")
    print(format_table(rows))
    out = args.out or REPO_ROOT / "studies" / args.study / "compare.png"
    print(f"plot: {plot_trajectories(rows, out, f'study {args.study}')}")
    return 0


if __name__ == "__main__":
    run_main(main)
