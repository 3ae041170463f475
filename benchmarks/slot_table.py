"""The slot runs of benchmarks/run_on_gpu.sh as one markdown table: wall time and metrics per
slot and device, GPU next to CPU.

    python benchmarks/slot_table.py bench-out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from metabolism.experiment import read_analysis_log

METRICS = ["avg_slope_ratio", "MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1",
           "embedding_cluster_acc", "embedding_n_clusters", "rate_constants_R2"]


def walls(out: Path) -> dict[tuple[str, str], int]:
    """(what, device) -> wall seconds, from walls.txt lines 'slot3 cuda wall_s 41'."""
    table = {}
    path = out / "walls.txt"
    for line in path.read_text().splitlines() if path.is_file() else []:
        what, device, _, seconds = line.split()
        table[(what, device)] = int(seconds)
    return table


def main(out: Path) -> None:
    wall = walls(out)
    print("| run | device | wall s | " + " | ".join(METRICS) + " |")
    print("|---|---|---|" + "---|" * len(METRICS))
    for device in ("cuda", "cpu"):
        for info in sorted((out / f"data-{device}").glob("sim-*/phase1-*.json")):
            p1 = json.loads(info.read_text())
            r2 = f"{p1['rate_constants_R2']:.4f}"
            print(f"| phase1 | {device} | {wall.get(('phase1', device), '?')} "
                  f"(trained {p1['seconds']:.0f}) | " + " | ".join(
                      r2 if m == "rate_constants_R2" else "" for m in METRICS) + " |")
        for slot in range(4):
            logs = sorted((out / f"runs-{device}").glob(f"*/slot{slot}-{device}*/analysis.log"))
            if not logs:
                continue
            m = read_analysis_log(logs[-1])
            print(f"| slot{slot} | {device} | {wall.get((f'slot{slot}', device), '?')} | "
                  + " | ".join(f"{m.get(k, float('nan')):.3g}" for k in METRICS) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-out"))
