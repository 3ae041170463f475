"""How a run degrades when it shares the CPU: alone vs next to one other CPU-bound process.

    python benchmarks/shared_cpu.py                       # threads 1 and 0 (torch default)
    python benchmarks/shared_cpu.py --threads 1 2 0 --repeats 3

The workload is a shortened main command: Phase 1 on the default regime (`--phase1-steps`
Adam steps, one start) and the slot 3 Phase 2 (`--phase2-updates` updates) on its result, each
timed in a fresh subprocess with `compute.threads` set. For each thread setting the script
alternates "alone" and "with one busy-loop process" runs and reports the median seconds and
the ratio loaded / alone: on 2 cores a run that gets half the CPU should take about 2x.
Both conditions are measured in the same run, interleaved, so background load on a shared
machine hits both; it still adds noise, so state the machine's other load with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workload(threads: int, phase1_steps: int, phase2_updates: int, data_root: Path) -> dict:
    """One shortened Phase 1 + slot 3 Phase 2 in this process; seconds of each part."""
    import dataclasses

    import torch

    from metabolism import compute
    from metabolism.config import load_config
    from metabolism.data import dataset_dir, ensure_dataset, load_training_data
    from metabolism.experiment import new_model
    from metabolism.phase1 import train_phase1
    from metabolism.phase2 import train_phase2

    cfg = load_config("slot3.yaml", {"compute.threads": threads, "compute.device": "cpu"})
    compute.setup(cfg.compute)
    ensure_dataset(cfg, data_root)
    data = load_training_data(dataset_dir(cfg, data_root))
    torch.manual_seed(0)
    model = new_model(data, cfg)
    p1 = dataclasses.replace(cfg.phase1, n_steps=phase1_steps, n_restarts=1)
    t0 = time.perf_counter()
    train_phase1(model, data, p1, progress=False)
    t1 = time.perf_counter()
    tr = dataclasses.replace(cfg.training, data_augmentation_loop=phase2_updates)
    train_phase2(model, data, tr, progress=False)
    t2 = time.perf_counter()
    return {"threads": torch.get_num_threads(), "phase1_s": t1 - t0, "phase2_s": t2 - t1}


def measure(threads: int, args, data_root: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads),
           "--phase1-steps", str(args.phase1_steps),
           "--phase2-updates", str(args.phase2_updates), "--data-root", str(data_root)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def busy_process() -> subprocess.Popen:
    """One CPU-bound process (a Python busy loop: one core's worth of demand)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                    help="compute.threads values to compare (0 = torch default)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--phase1-steps", type=int, default=150)
    ap.add_argument("--phase2-updates", type=int, default=30)
    ap.add_argument("--data-root", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(workload(args.threads[0], args.phase1_steps, args.phase2_updates,
                                  args.data_root)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        data_root = args.data_root or Path(tmp)
        measure(1, argparse.Namespace(phase1_steps=1, phase2_updates=1), data_root)  # dataset
        rows = []
        for threads in args.threads:
            times: dict[str, list[dict]] = {"alone": [], "loaded": []}
            for _ in range(args.repeats):
                times["alone"].append(measure(threads, args, data_root))
                hog = busy_process()
                try:
                    times["loaded"].append(measure(threads, args, data_root))
                finally:
                    hog.kill()
                    hog.wait()
            row = {"threads": threads, "torch_threads": times["alone"][0]["threads"]}
            for part in ("phase1_s", "phase2_s"):
                for cond in ("alone", "loaded"):
                    row[f"{part}_{cond}"] = statistics.median(t[part] for t in times[cond])
                row[f"{part}_ratio"] = row[f"{part}_loaded"] / row[f"{part}_alone"]
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n{os.cpu_count()} cores; load average before the end: {os.getloadavg()[0]:.1f}; "
          f"Phase 1 {args.phase1_steps} steps, slot 3 Phase 2 {args.phase2_updates} updates, "
          f"median of {args.repeats}")
    print("| compute.threads (torch threads) | Phase 1 alone / with 1 busy process (s) | ratio "
          "| Phase 2 slot 3 alone / with 1 busy process (s) | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['threads']} ({r['torch_threads']}) | {r['phase1_s_alone']:.1f} / "
              f"{r['phase1_s_loaded']:.1f} | {r['phase1_s_ratio']:.2f}x | "
              f"{r['phase2_s_alone']:.1f} / {r['phase2_s_loaded']:.1f} | "
              f"{r['phase2_s_ratio']:.2f}x |")


if __name__ == "__main__":
    main()
