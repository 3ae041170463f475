"""The runner plug-in: the callable that performs one slot run.

A runner is any importable callable `runner(cfg, parent_run_id, extra_tags) -> result`, named
by a `module:attr` spec (so it crosses process and Ray boundaries by name). The result needs
`status`, `metrics`, `run_dir`, `mlflow_run_id` and `plots` like
`metabolism.experiment.RunResult`; a runner signals a failed or diverged run by raising.

The default runner is the real Phase 2 run. The synthetic ones below are deterministic
stand-ins (metrics computed from the config) for tests and dry runs of the loop itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from metabolism.config import Config, config_from_dict

DEFAULT_RUNNER = "metabolism.explore.runners:phase2_runner"
RUNNER_ENV = "METABOLISM_EXPLORE_RUNNER"


class RunnerError(ValueError):
    """A runner spec that cannot be resolved; the message is one line."""


@dataclass
class RunOutcome:
    """What the loop learns of one slot run, from any runner and any backend (picklable, so it
    crosses process and Ray boundaries)."""

    ok: bool
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str | None = None
    plots: dict[str, str] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> RunOutcome:
        """A run that produced nothing: `error` says why in one line."""
        return cls(ok=False, error=error)


def resolve_runner(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RunnerError(f"--runner {spec}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunnerError(f"--runner {spec}: cannot import {module_name} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RunnerError(f"--runner {spec}: {module_name} has no callable {attr}")
    return fn


def check_runner(spec: str) -> None:
    """Fail at startup, not inside every worker: the spec resolves and the default runner's
    training code (metabolism.experiment) is importable."""
    resolve_runner(spec)
    if spec == DEFAULT_RUNNER and importlib.util.find_spec("metabolism.experiment") is None:
        raise RunnerError(f"--runner {spec}: metabolism.experiment (run_phase2) is not "
                          "importable")


# Where the real runner puts data and runs, and whether it draws a progress bar: environment
# variables, because pool and Ray workers inherit the environment but not our arguments.
RUN_OPTION_ENV = {"data_root": "METABOLISM_DATA_ROOT", "runs_root": "METABOLISM_RUNS_ROOT",
                  "progress": "METABOLISM_PROGRESS"}


def export_run_options(*, data_root: Path, runs_root: Path, progress: bool) -> dict[str, str]:
    """Set the run options in this process's environment (pool workers inherit it) and return
    them, for backends whose workers do not inherit it (Ray: pass them as runtime_env)."""
    options = {RUN_OPTION_ENV["data_root"]: str(Path(data_root).resolve()),
               RUN_OPTION_ENV["runs_root"]: str(Path(runs_root).resolve()),
               RUN_OPTION_ENV["progress"]: "1" if progress else "0"}
    os.environ.update(options)
    return options


def phase2_runner(cfg: Config, parent_run_id: str | None, extra_tags: dict[str, str]):
    """The real Phase 2 training run (metabolism.experiment.run_phase2)."""
    from metabolism.experiment import run_phase2

    env = os.environ.get
    progress = env(RUN_OPTION_ENV["progress"], "0") == "1"
    return run_phase2(cfg, parent_run_id=parent_run_id, extra_tags=extra_tags,
                      data_root=Path(env(RUN_OPTION_ENV["data_root"], "data")),
                      runs_root=Path(env(RUN_OPTION_ENV["runs_root"], "runs")),
                      progress=progress, quiet=not progress)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    reason = text[0] if text else ""
    return f"{type(exc).__name__}: {reason}"[:500] if reason else type(exc).__name__


def execute_job(runner_spec: str, config: dict[str, Any], parent_run_id: str | None,
                tags: dict[str, str]) -> RunOutcome:
    """Run one job wherever we are (pool worker, Ray worker); never raises."""
    try:
        cfg = config_from_dict(config, source=f"<node {tags.get('node_id')}>")
        result = resolve_runner(runner_spec)(cfg, parent_run_id, dict(tags))
        status = str(getattr(result, "status", "FINISHED"))
        metrics = {k: float(v) for k, v in dict(getattr(result, "metrics", {}) or {}).items()}
        out = RunOutcome(
            ok=status == "FINISHED",
            metrics=metrics,
            run_dir=str(result.run_dir) if getattr(result, "run_dir", None) else None,
            plots={k: str(v) for k, v in (getattr(result, "plots", {}) or {}).items()},
            mlflow_run_id=getattr(result, "mlflow_run_id", None) or None,
            error=None if status == "FINISHED" else f"run ended with status {status}",
        )
        bad = [k for k in ("avg_slope_ratio",) if not math.isfinite(metrics.get(k, math.nan))]
        if out.ok and bad:
            out.ok, out.error = False, f"diverged: {bad[0]} is not finite"
        return out
    except Exception as exc:  # a failed run must become a failed node, not a dead loop
        return RunOutcome.failed(_one_line(exc))


# --------------------------------------------------------------------------- synthetic runners


@dataclass
class SyntheticResult:
    status: str
    metrics: dict[str, float]
    run_dir: Path | None = None
    mlflow_run_id: str = ""
    plots: dict[str, Path] = field(default_factory=dict)


def synthetic_metrics(cfg: Config) -> dict[str, float]:
    """A smooth, deterministic landscape with SPEC.md's metric keys.

    avg_slope_ratio grows with lr_node_homeo (best near a slot-dependent value) and with
    training duration; residual supervision helps; embeddings follow MLP_node.
    """
    tr, sim = cfg.training, cfg.simulation
    lr_star = 0.03 * math.sqrt(16 / tr.homeostasis_time_step)
    r = (tr.learning_rate_node_homeostasis / lr_star) ** 0.8
    r *= min(1.0, math.sqrt(tr.data_augmentation_loop / 1500))
    if tr.strategies.residual_supervision.enabled:
        r *= 1.3
    acc = 0.5 + 0.5 * min(1.0, r) * min(1.0, tr.learning_rate_embedding_homeostasis / 3e-3)
    acc *= 1.0 if tr.strategies.contrastive.enabled else 0.9
    m: dict[str, float] = {"phase2_loss": 1e-3 / (1 + r), "phase2_node_magnitude": 1e-3 * r}
    ratios = []
    for t in range(sim.n_metabolite_types):
        lam, cb = sim.lambda_per_type[t], sim.baseline_per_type[t]
        rt = r * (0.95 + 0.1 * t)
        ratios.append(rt)
        m.update({f"MLP_node_slope_{t}": -lam * rt, f"MLP_node_gt_slope_{t}": -lam,
                  f"MLP_node_offset_{t}": lam * cb * rt, f"MLP_node_gt_offset_{t}": lam * cb,
                  f"MLP_node_slope_ratio_{t}": rt, f"MLP_node_offset_ratio_{t}": rt})
    m.update(avg_slope_ratio=sum(ratios) / len(ratios), embedding_cluster_acc=round(acc, 4),
             embedding_n_clusters=2.0 if acc > 0.7 else 1.0,
             embedding_silhouette=acc - 0.3, rate_constants_R2=0.87)
    return m


def synthetic_runner(cfg: Config, parent_run_id: str | None, extra_tags: dict[str, str]):
    """Metrics from `synthetic_metrics`, logged as an MLflow run when a parent is given."""
    metrics = synthetic_metrics(cfg)
    run_id = ""
    if parent_run_id:
        from metabolism.tracking import log_metrics_finite, tracked_run

        name = f"node{extra_tags.get('node_id', '')}_slot{cfg.slot}"
        with tracked_run(cfg.tracking.experiment, name, tags=extra_tags,
                         parent_run_id=parent_run_id) as run:
            log_metrics_finite(metrics)
            run_id = run.info.run_id
    return SyntheticResult("FINISHED", metrics, mlflow_run_id=run_id)


def failing_slot1_runner(cfg: Config, parent_run_id: str | None, extra_tags: dict[str, str]):
    """Diverges on slot 1 (like a NaN loss), synthetic elsewhere."""
    if cfg.slot == 1:
        if parent_run_id:
            from metabolism.tracking import tracked_run

            with tracked_run(cfg.tracking.experiment, f"node{extra_tags.get('node_id')}_slot1",
                             tags=extra_tags, parent_run_id=parent_run_id):
                raise FloatingPointError("phase2_loss is NaN at step 12 (diverged)")
        raise FloatingPointError("phase2_loss is NaN at step 12 (diverged)")
    return synthetic_runner(cfg, parent_run_id, extra_tags)


def sleepy_runner(cfg: Config, parent_run_id: str | None, extra_tags: dict[str, str]):
    """Synthetic after EXPLORE_FAKE_SLEEP seconds; logs start/done to EXPLORE_FAKE_CALLS.

    Nodes numbered EXPLORE_FAKE_HOLD_FROM or later never finish, so a fault test can kill the
    loop at a known point instead of racing a timer."""
    calls = os.environ.get("EXPLORE_FAKE_CALLS")
    node = extra_tags.get("node_id", "?")
    hold_from = os.environ.get("EXPLORE_FAKE_HOLD_FROM")

    def note(what: str) -> None:
        if calls:
            with open(calls, "a") as fh:
                fh.write(f"{what} {node}\n")

    note("start")
    time.sleep(float(os.environ.get("EXPLORE_FAKE_SLEEP", "1.0")))
    while hold_from and node.isdigit() and int(node) >= int(hold_from):
        time.sleep(0.1)
    result = synthetic_runner(cfg, parent_run_id, extra_tags)
    note("done")
    return result
