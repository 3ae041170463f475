"""A study: the four slots x training seeds (x strategy variants), one table to compare them.

Each cell is an ordinary Phase 2 run (its own MLflow run, nested under the study's parent
run). The table (markdown + CSV) has one row per run, failed runs included, and a summary per
slot x strategy with mean and spread of every metric. The table is rewritten as each cell
finishes, and running the same study again runs only the cells without a finished row.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from metabolism.config import Config, ConfigError, LRSchedule, load_config
from metabolism.files import write_text_atomically
from metabolism.formatting import cell
from metabolism.metric_keys import n_types_in, per_type_metric_keys
from metabolism.verdict import classify_slope_ratio


# beside rate_constants_R2: Phase 1's error in the residual (data only) and the trust verdict
PHASE1_QUALITY_COLUMNS = ["phase1_law_error", "phase1_noise_to_signal", "phase1_trusted"]


def summary_metrics(n_types: int) -> list[str]:
    """The metrics summarised per slot x variant, with a slope ratio for each of n_types."""
    return ["avg_slope_ratio", *per_type_metric_keys(n_types, ("MLP_node_slope_ratio",)),
            "embedding_cluster_acc", "embedding_n_clusters", "rate_constants_R2",
            *PHASE1_QUALITY_COLUMNS, "phase2_loss", "seconds"]


def run_columns(n_types: int) -> list[str]:
    """The columns of the every-run table."""
    return ["slot", "time_step", "variant", "seed", "status", "avg_slope_ratio",
            *per_type_metric_keys(n_types, ("MLP_node_slope_ratio",)), "embedding_cluster_acc",
            "embedding_n_clusters", "rate_constants_R2", *PHASE1_QUALITY_COLUMNS, "phase2_loss",
            "seconds", "error"]


def n_types_of(rows: list[dict[str, Any]]) -> int:
    """The number of types the study's runs were evaluated on (the most any row holds)."""
    return max((n_types_in(r) for r in rows), default=0)


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
    "learned_neighbours": {"training.strategies.contrastive.neighbours_from": "learned",
                           "training.strategies.contrastive.reassign_from": "learned"},
    "no_gradient_isolation": {"training.strategies.gradient_isolation.enabled": False},
    "no_lr_schedule": {"training.strategies.lr_schedule.enabled": False},
    "conserved_law_own_offsets": {
        "training.strategies.residual_supervision.target": "conserved_law",
        "training.strategies.residual_supervision.conserved_law_offsets": "metabolite"},
    "residual": {"training.strategies.residual_supervision.target": "residual"},
    "amplification": {"training.strategies.amplification.enabled": True},
    # residual targets on noisy data (the slot configs' "auto" picks windows of the slot's T)
    "residual_difference": {"training.strategies.residual_supervision.targets": "difference"},
    "residual_savgol": {"training.strategies.residual_supervision.targets": "savgol"},
    "residual_window_64": {"training.strategies.residual_supervision.targets": "window",
                           "training.strategies.residual_supervision.window": 64},
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
    from metabolism.tracking import RunKilled

    row: dict[str, Any] = {"slot": cell.slot, "variant": cell.variant, "seed": cell.seed}
    start = time.perf_counter()
    try:
        cfg = load_config(Path(config_dir) / f"slot{cell.slot}.yaml", cell.overrides)
        row["time_step"] = cfg.training.homeostasis_time_step
        row["regime"] = cfg.regime
        row["observation_noise"] = cfg.simulation.observation_noise
        row["observe_every"] = cfg.simulation.observe_every
        row["strategy"] = cfg.training.strategies.label()
        res = run_phase2(cfg, runs_root=runs_root, data_root=data_root,
                         parent_run_id=parent_run_id,
                         extra_tags={"study": study, "variant": cell.variant,
                                     "cell": cell_label(cell)},
                         progress=False, quiet=True)
        row.update(res.metrics)
        row["status"] = "FINISHED"
        row["run_dir"] = str(res.run_dir)
    except RunKilled as exc:  # SIGTERM to this worker: its run ended KILLED, rerun on resume
        row["status"] = "KILLED"
        row["error"] = f"killed by {exc}"
    except Exception as exc:  # recorded, not fatal: the study goes on
        row["status"] = "FAILED"
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    row["seconds"] = time.perf_counter() - start
    return row


WORKER_DIED = "worker process died (killed, out of memory or crashed)"


def run_cells(cells: list[Cell], *, config_dir: Path, data_root: Path, runs_root: Path,
              parent_run_id: str | None, study: str, workers: int,
              on_row: Callable[[dict[str, Any]], None] = lambda row: None,
              on_worker_death: Callable[[set[int]], set[str]] = lambda pids: set(),
              ray_backend=None) -> list[dict[str, Any]]:
    """Run every cell; on_row(row) as each finishes (so the table grows while the study
    runs). A worker that dies fails its cell, not the study: the pool is recreated.
    on_worker_death(pids) ends the runs left RUNNING by dead processes and returns the labels
    (cell_label) of those owned by `pids`, the workers that died by themselves.
    ray_backend (a metabolism.explore.backends.RayBackend): one Ray task per cell instead."""
    args = [(c, config_dir, data_root, runs_root, parent_run_id, study) for c in cells]
    rows: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        on_row(row)

    if ray_backend is not None:
        for i, row in ray_backend.map(_run_cell, args):
            if isinstance(row, Exception):  # the task died: the cell is a FAILED row
                row = _failed_row(cells[i], f"ray task failed: {type(row).__name__}")
            done(row)
        return rows
    if workers <= 1:
        for a in args:
            row = _run_cell(*a)
            done(row)
            if row["status"] == "KILLED":  # SIGTERM reached this very process: stop the study
                from metabolism.tracking import RunKilled

                raise RunKilled(row["error"])
    else:
        _run_in_pools(args, workers, done, on_worker_death)
    return rows


def _failed_row(cell: Cell, error: str) -> dict[str, Any]:
    return {"slot": cell.slot, "variant": cell.variant, "seed": cell.seed, "status": "FAILED",
            "error": error}


def _row_of(fut: Any, cell: Cell) -> dict[str, Any]:
    """The worker's row, or a FAILED one if the call itself failed (e.g. could not pickle)."""
    exc = fut.exception()
    if exc is None:
        return fut.result()
    return _failed_row(cell, f"{type(exc).__name__}: {exc}".splitlines()[0][:300])


def cell_label(cell: Cell) -> str:
    """The `cell` tag of the cell's MLflow run: how a dead worker's cell is identified."""
    return f"slot{cell.slot}/{cell.variant}/seed{cell.seed}"


def _run_in_pools(args: list[tuple], workers: int, done: Callable[[dict[str, Any]], None],
                  on_worker_death: Callable[[set[int]], set[str]]) -> None:
    """At most `workers` cells in flight. When a worker dies the pool breaks and every cell
    in flight is lost with it. The cell whose run was left behind by a dead process
    (on_worker_death) is recorded FAILED; the others are run again. If none can be named,
    the lost cells are rerun one at a time, so one whose worker dies alone is known."""
    pending = deque(range(len(args)))
    suspects: set[int] = set()  # in flight when a pool broke: rerun alone
    pool = _new_pool(workers)
    running: dict[Any, int] = {}
    known: dict[int, Any] = {}  # pid -> the pool's worker process
    try:
        with _signals_as_requests() as stop_request:
            while pending or running:
                if stop_request():
                    raise KeyboardInterrupt(stop_request())
                alone = bool(suspects & (set(pending) | set(running.values())))
                while pending and len(running) < (1 if alone else workers):
                    i = pending.popleft()
                    running[pool.submit(_run_cell, *args[i])] = i
                    alone = alone or i in suspects
                # our own handles on the workers: a broken pool may drop its list of them
                known.update({w.pid: w for w in _workers(pool)})
                finished, _ = wait(running, timeout=2.0, return_when=FIRST_COMPLETED)
                lost = []
                if not finished and _a_worker_died(pool):
                    lost = list(running.values())  # the pool has not noticed (yet): do not wait
                    running.clear()
                for fut in finished:
                    i = running.pop(fut)
                    if isinstance(fut.exception(), BrokenProcessPool):
                        lost.append(i)
                    else:
                        suspects.discard(i)
                        done(_row_of(fut, args[i][0]))
                if not lost:
                    continue
                for fut, i in list(running.items()):  # the pool is gone: so are the others
                    if fut.done() and not isinstance(fut.exception(), BrokenProcessPool):
                        done(_row_of(fut, args[i][0]))
                    else:
                        lost.append(i)
                running.clear()
                victims = _await_victims(known)  # before the siblings are stopped
                _stop_workers(pool)
                dead = on_worker_death(victims)
                named = {i for i in lost if cell_label(args[i][0]) in dead}
                for i in lost:
                    if i in named or (not named and (len(lost) == 1 or i in suspects)):
                        suspects.discard(i)
                        done(_failed_row(args[i][0], WORKER_DIED))
                    else:
                        if not named:
                            suspects.add(i)
                        pending.appendleft(i)
                pool, known = _new_pool(workers), {}
    finally:  # done, or interrupted: an interrupted driver takes its workers with it
        _stop_workers(pool)


@contextlib.contextmanager
def _signals_as_requests() -> Iterator[Callable[[], str]]:
    """While the driver only waits on its workers, Ctrl-C and SIGTERM are noted and acted on
    at the top of the loop (within 2 s): raised at an arbitrary point they can land in a
    garbage-collector callback, where Python prints a traceback and drops them."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: ""
        return
    request: list[str] = []

    def note(signum, frame):
        request.append(f"signal {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: request[0] if request else ""
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _new_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                               initializer=_follow_the_driver, initargs=(os.getpid(),))


def _follow_the_driver(driver_pid: int) -> None:
    """Worker start-up: if the driver dies (even by kill -9, which runs no clean-up), SIGTERM
    this worker, so its run ends KILLED and is rerun by the next invocation, instead of
    running on for a table that no longer exists; then exit."""
    def watch() -> None:
        while os.getppid() == driver_pid:
            time.sleep(DRIVER_WATCH_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)  # ends the run in progress KILLED
        time.sleep(DRIVER_GONE_GRACE_SECONDS)
        os._exit(1)  # the pool's queues have no reader now: the worker would wait forever

    threading.Thread(target=watch, name="follow-driver", daemon=True).start()


DRIVER_WATCH_SECONDS = 2.0
DRIVER_GONE_GRACE_SECONDS = 20.0


def _workers(pool: ProcessPoolExecutor) -> list:
    return list((getattr(pool, "_processes", None) or {}).values())


def _a_worker_died(pool: ProcessPoolExecutor) -> bool:
    """The executor notices a dead worker only when it next wakes, and a worker it started
    on demand may never be watched while the others are busy; ask the processes."""
    return any(not p.is_alive() for p in _workers(pool))


def _died_by_themselves(workers: dict[int, Any]) -> set[int]:
    """Pids of workers that have exited other than by SIGTERM: killed from outside (kill -9,
    the OOM killer) or crashed. A sibling the broken pool terminates exits by SIGTERM, or
    ends its run KILLED itself, so its cell is run again rather than failed. exitcode can
    read None for a dead worker while the pool's own thread is collecting its exit status at
    the same moment, so the process itself is asked too."""
    from metabolism.tracking import process_is_dead

    return {pid for pid, p in workers.items()
            if p.exitcode != -signal.SIGTERM
            and (p.exitcode is not None or process_is_dead(pid))}


VICTIM_WAIT_SECONDS = 5.0


def _await_victims(workers: dict[int, Any], timeout: float = VICTIM_WAIT_SECONDS) -> set[int]:
    """_died_by_themselves, waiting up to `timeout` seconds for at least one. Right after the
    pool breaks, the killed worker can still read as alive (no exit status, not a zombie yet:
    seen under load, found 0.05 s later); naming no cell then, the driver would rerun both
    cells in flight instead of failing the dead one."""
    deadline = time.monotonic() + timeout
    while True:
        victims = _died_by_themselves(workers)
        if victims or time.monotonic() >= deadline:
            return victims
        time.sleep(0.05)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """SIGTERM every worker (its run ends KILLED), then SIGKILL any that has not exited: one
    blocked on the broken pool's queue would otherwise live on as an orphan."""
    procs = _workers(pool)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=20)
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- resuming

STATE_FILE = "study.json"


def _cell_key(row: dict[str, Any]) -> tuple:
    return (int(row["slot"]), str(row["variant"]), int(row["seed"]))


def _parse_csv_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(csv_path: Path) -> list[dict[str, Any]]:
    """The rows of a study.csv written earlier, values typed again (empty cells dropped)."""
    try:
        with Path(csv_path).open(newline="") as f:
            rows = [{k: _parse_csv_value(v) for k, v in r.items() if v not in ("", None)}
                    for r in csv.DictReader(f)]
        for r in rows:
            _cell_key(r)
    except (OSError, csv.Error, KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"{csv_path}: not a readable study table ({exc}); move it away to "
                          "start the study afresh") from None
    return rows


def resume_rows(out_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of an earlier run of this study that are kept (finished cells; a failed or
    killed cell is run again). Refuses a study started with other overrides."""
    state_path = Path(out_dir) / STATE_FILE
    if not state_path.is_file():
        return []
    try:
        stored = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{state_path}: unreadable ({exc})") from None
    given = json.loads(json.dumps(settings, default=str))
    if stored.get("overrides") != given["overrides"]:
        raise ConfigError(f"--regime/--override: study {Path(out_dir).name} was started with "
                          f"{stored.get('overrides')}, now {given['overrides']}; use those or "
                          "a new --study name")
    csv_path = Path(out_dir) / "study.csv"
    rows = read_rows(csv_path) if csv_path.is_file() else []
    return [r for r in rows if r.get("status") == "FINISHED"]


def save_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    write_text_atomically(Path(out_dir) / STATE_FILE,
                          json.dumps(settings, indent=1, default=str, sort_keys=True))


def missing_cells(cells: list[Cell], kept: list[dict[str, Any]]) -> list[Cell]:
    done = {_cell_key(r) for r in kept}
    return [c for c in cells if (c.slot, c.variant, c.seed) not in done]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std per (slot, variant) of every summary metric over finished seeds."""
    out = []
    metrics = summary_metrics(n_types_of(rows))
    keys = sorted({(r["slot"], r["variant"]) for r in rows})
    for slot, variant in keys:
        group = [r for r in rows if r["slot"] == slot and r["variant"] == variant]
        ok = [r for r in group if r["status"] == "FINISHED"]
        s: dict[str, Any] = {"slot": slot, "variant": variant, "runs": len(group),
                             "failed": len(group) - len(ok)}
        for m in metrics:
            vals = np.array([float(r[m]) for r in ok if m in r], dtype=float)
            s[f"{m}_mean"] = float(vals.mean()) if len(vals) else math.nan
            s[f"{m}_std"] = float(vals.std()) if len(vals) else math.nan
        conv = [r for r in ok
                if classify_slope_ratio(r.get("avg_slope_ratio", math.nan)) == "converged"]
        s["converged"] = f"{len(conv)}/{len(group)}"
        out.append(s)
    return out


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str,
                 header_lines: list[str]) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    n_types = n_types_of(rows)
    columns = run_columns(n_types)
    sum_cols = ["slot", "variant", "runs", "failed", "converged"] + [
        f"{m}_{k}" for m in summary_metrics(n_types) for k in ("mean", "std")]
    md = [f"# {title}", "", *header_lines, "", "## Summary (mean and std over seeds)", "",
          markdown_table(summary, sum_cols), "", "## Every run", "",
          markdown_table(rows, columns), ""]
    md_path = out_dir / "study.md"
    write_text_atomically(md_path, "\n".join(md))
    csv_path = out_dir / "study.csv"
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k not in columns, k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(rows)
    write_text_atomically(csv_path, buf.getvalue())  # rewritten after every cell: never torn
    return md_path, csv_path


def base_config_summary(cfg: Config) -> str:
    return (f"regime {cfg.regime}: {cfg.simulation.n_metabolites} metabolites, "
            f"{cfg.simulation.n_metabolite_types} types, {cfg.simulation.n_reactions} reactions,"
            f" seed {cfg.simulation.seed}, lambda {cfg.simulation.lambda_per_type}, "
            f"baseline {cfg.simulation.baseline_per_type}")
