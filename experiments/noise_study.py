"""Assemble the noise study: several studies' tables -> one table and one figure against the
measurement noise (a line per slot), logged to MLflow.

    python experiments/study.py --study noise_1-s01 --regime regimes/noise_1.yaml --slots 0 1
    python experiments/noise_study.py --name noise --studies noise_0p1-s01 noise_1-s01 ...

Writes studies/<name>/noise_study.md and noise_study.png; the MLflow run `noise-study-<name>`
holds both and the assembled CSV.
"""

import argparse
import csv
import io
from pathlib import Path

import mlflow

from metabolism import tracking
from metabolism.cli import run_main
from metabolism.config import DEFAULT_EXPERIMENT
from metabolism.noise_study import PANELS, plot_against_noise, read_rows, summary
from metabolism.files import write_text_atomically
from metabolism.formatting import cell
from metabolism.study import markdown_table

RUN_COLUMNS = ["study", "observation_noise", "observe_every", "slot", "seed", "status",
               "avg_slope_ratio", "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1",
               "embedding_cluster_acc", "embedding_n_clusters", "seconds", "error"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="noise", help="studies/<name>/ and the MLflow run")
    ap.add_argument("--studies", nargs="+", required=True,
                    help="study names (folders under --studies-root) to assemble")
    ap.add_argument("--studies-root", type=Path, default=Path("studies"))
    ap.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    args = ap.parse_args()

    rows = read_rows([args.studies_root / s / "study.csv" for s in args.studies])
    out = args.studies_root / args.name
    fig = plot_against_noise(rows, out / "noise_study.png")
    lines = summary(rows)
    cols = ["noise", "observe_every", "slot", "runs", "seeds", "converged", "all_targets"] + [
        k for k, _, _ in PANELS]
    rows = sorted(rows, key=lambda r: (r.get("observe_every", 1), r.get("observation_noise", 0),
                                       r["slot"], r["seed"]))
    md = out / "noise_study.md"
    write_text_atomically(md, "\n".join([
        f"# Noise study {args.name}", "", f"Studies: {', '.join(args.studies)}", "",
        "## Per noise level and slot (means over the seeds run)", "",
        markdown_table(lines, cols), "", "## Every run", "", markdown_table(rows, RUN_COLUMNS),
        "", f"![metrics against noise]({fig.name})", ""]))
    table = out / "noise_study.csv"
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows({k: cell(v) for k, v in line.items()} for line in lines)
    write_text_atomically(table, buf.getvalue())
    with tracking.tracked_run(args.experiment, f"noise-study-{args.name}",
                              {"kind": "noise_study", "study": args.name}):
        tracking.log_params_flat({"studies": " ".join(args.studies), "runs": len(rows)})
        for path in (md, fig, table):
            mlflow.log_artifact(str(path))
    print(md.read_text())
    print(f"figure: {fig}\ntable: {md}")


if __name__ == "__main__":
    run_main(main)
