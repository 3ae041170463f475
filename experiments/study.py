"""Run the four slots for several training seeds (and strategy variants), write a table.

    python experiments/study.py --study main --seeds 0 1 2
    python experiments/study.py --study three_types --regime regimes/three_types.yaml
    python experiments/study.py --study ablation --variants default seed_baseline
    python experiments/study.py --study main --backend ray --address auto   # on a Ray cluster

Writes studies/<study>/study.md and study.csv (one row per run, failures included, plus mean
and spread per slot x variant), rewritten as each run ends, and logs them to an MLflow parent
run with every slot run nested under it. Running the same command again (after a kill, or
with more seeds) runs only the cells that have no finished row.
"""

import argparse
import time
from pathlib import Path

import yaml

from metabolism.cli import (HelpFormatter, add_common_args, add_compute_args, compute_overrides,
                            run_main)
from metabolism.config import (CONFIG_DIR, ConfigError, check_name, flatten, load_config,
                               parse_override, resolve_config_path)
from metabolism.study import (VARIANTS, base_config_summary, missing_cells, plan, resume_rows,
                              run_cells, save_settings, write_report)

REPO_ROOT = Path(__file__).resolve().parent.parent


def regime_overrides(path: str | None) -> dict:
    """A regime file holds `regime:` plus simulation/model/phase1 sections; flattened."""
    if not path:
        return {}
    try:
        p = resolve_config_path(path)
    except ConfigError:
        raise ConfigError(f"--regime {path}: regime file not found") from None
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"--regime {p}: not valid YAML ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--regime {p}: must be a mapping (regime: name, simulation: ...), "
                          f"got a {type(data).__name__}")
    return flatten(data)


def dead_cells(experiment_id: str, pids: set[int]) -> set[str]:
    """End the runs of workers that died (KILLED) and return the `cell` tags of those owned
    by `pids`."""
    from metabolism import tracking  # imported here, not at the top: keeps --help fast

    client = tracking.client()
    cells = set()
    for run_id in tracking.reap_orphaned_runs(experiment_id, client):
        tags = client.get_run(run_id).data.tags
        if tracking.process_pid(tags.get(tracking.PROCESS_TAG, "")) in pids:
            cells.add(tags.get("cell", ""))
    return cells


def make_ray_backend(address: str | None, cfg):
    """A Ray backend whose tasks log to this study's MLflow store and import this checkout;
    one GPU per task when the cluster has GPUs, unless the runs are pinned to the CPU."""
    from metabolism import tracking
    from metabolism.explore.backends import BackendError, RayBackend

    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "PYTHONPATH": str(REPO_ROOT)}
    try:
        return RayBackend(address, runtime_env={"env_vars": env},
                          gpus_per_run=0.0 if cfg.compute.device == "cpu" else None)
    except BackendError as exc:
        raise ConfigError(str(exc)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--study", required=True, help="name: studies/<name>/ and the MLflow run")
    ap.add_argument("--slots", type=int, nargs="+", default=[0, 1, 2, 3],
                    help="slot configs to run (slotN.yaml in --config-dir)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training seeds (training.seed) per slot and variant")
    ap.add_argument("--variants", nargs="+", default=["default"], choices=sorted(VARIANTS),
                    help="strategy variants (overrides on each slot config)")
    ap.add_argument("--regime", help="YAML with regime + simulation/phase1 overrides")
    ap.add_argument("--override", "-o", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key of every run (repeatable)")
    ap.add_argument("--workers", type=int, default=1,
                    help="local backend: runs in parallel (processes)")
    ap.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: this machine (--workers processes); ray: one Ray task per run")
    ap.add_argument("--address", help="Ray cluster ('auto', 'ray://host:10001', or 'local' "
                    "for a private local cluster)")
    ap.add_argument("--config-dir", type=Path, default=CONFIG_DIR,
                    help="folder with slot0.yaml..slot3.yaml")
    ap.add_argument("--studies-root", type=Path, default=Path("studies"),
                    help="study tables go to <studies-root>/<study>/")
    add_common_args(ap)
    add_compute_args(ap)
    ap.add_argument("--no-rebuild", action="store_true",
                    help="refuse a cached dataset or Phase 1 checkpoint that fails its check")
    args = ap.parse_args()
    check_name(args.study, "--study")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: must be >= 1")
    import mlflow  # heavy: after --help

    from metabolism import plots, tracking
    from metabolism.experiment import ensure_phase1

    base = regime_overrides(args.regime)
    base.update(compute_overrides(args))
    for text in args.override:
        k, v = parse_override(text)
        base[k] = v
    # validate every slot config up front: a bad override fails before any run starts
    cfgs = {s: load_config(args.config_dir / f"slot{s}.yaml", base) for s in args.slots}
    cells = plan(args.slots, args.seeds, {v: VARIANTS[v] for v in args.variants}, base)

    out_dir = args.studies_root / args.study
    # what defines the study's results (where it computes does not): a resume must match it
    settings = {"overrides": {k: v for k, v in base.items() if not k.startswith("compute.")}}
    kept = resume_rows(out_dir, settings)  # rows of cells an earlier run finished
    todo = missing_cells(cells, kept)
    first = cfgs[args.slots[0]]
    ray_backend = make_ray_backend(args.address, first) if args.backend == "ray" else None
    roots = {k: getattr(args, k).resolve() for k in ("data_root", "runs_root")}  # for workers
    # built (or verified) once, before the workers start
    ckpt, p1 = ensure_phase1(first, roots["data_root"], rebuild=not args.no_rebuild,
                             progress=not args.no_progress)
    experiment = first.tracking.experiment
    save_settings(out_dir, settings)
    rows = list(kept)
    start = time.perf_counter()

    def write_table() -> tuple[Path, Path]:
        header = [f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: "
                  f"{tracking.machine_description()}; wall time "
                  f"{time.perf_counter() - start:.0f} s"
                  + (f" ({len(kept)} runs kept from an earlier invocation)" if kept else ""),
                  f"Regime: {base_config_summary(first)}",
                  f"Phase 1 checkpoint: {ckpt.name}, rate_constants_R2 = "
                  f"{p1['rate_constants_R2']:.4f} (trained in {p1['seconds']:.0f} s)"]
        if len(rows) - len(kept) < len(todo):
            header.append(f"Incomplete: {len(todo) - (len(rows) - len(kept))} of {len(cells)} "
                          "runs missing; run the same command again to run only those")
        return write_report(rows, out_dir, f"Study {args.study}", header)

    def on_row(row: dict) -> None:
        rows.append(row)
        write_table()

    with tracking.tracked_run(experiment, f"study-{args.study}", {"study": args.study,
                              "kind": "study"}) as parent:
        tracking.log_params_flat({"slots": args.slots, "seeds": args.seeds,
                                  "variants": args.variants, "regime": first.regime,
                                  **{f"override.{k}": v for k, v in base.items()}})
        print(f"study '{args.study}': {len(cells)} runs ({len(kept)} done before, "
              f"{len(todo)} to run), MLflow parent run {parent.info.run_id}", flush=True)
        try:
            run_cells(todo, config_dir=args.config_dir.resolve(), **roots,
                      parent_run_id=parent.info.run_id, study=args.study,
                      workers=args.workers, on_row=on_row,
                      on_worker_death=lambda pids: dead_cells(parent.info.experiment_id, pids),
                      ray_backend=ray_backend)
        finally:  # interrupted or not, the table holds every run that ended
            if ray_backend is not None:
                ray_backend.close()
            # a worker stopped by SIGKILL (it ignored SIGTERM) cannot end its own run
            dead_cells(parent.info.experiment_id, set())
            md, csv_path = write_table()
            mlflow.log_artifact(str(md))
            mlflow.log_artifact(str(csv_path))
            figure = plots.plot_study(rows, out_dir / "study.png",
                                      f"Study {args.study}, regime {first.regime}")
            if figure is not None:
                mlflow.log_artifact(str(figure))
            n_ok = sum(r["status"] == "FINISHED" for r in rows)
            mlflow.log_metrics({"runs_finished": n_ok, "runs_failed": len(rows) - n_ok})
    print(md.read_text())
    print(f"table: {md}\ncsv: {csv_path}")


if __name__ == "__main__":
    run_main(main)
