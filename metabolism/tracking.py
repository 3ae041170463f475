"""MLflow helpers: one local store under mlruns/, runs that end FAILED without losing data.

The default store is a SQLite database plus an artifact folder, both under ``mlruns/`` at the
repository root, so ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` shows every
run with no server. ``MLFLOW_TRACKING_URI`` overrides the store (a server, another file).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
MLRUNS_DIR = REPO_ROOT / "mlruns"

# MLflow is chatty on import and store creation; keep the user's terminal readable.
logging.getLogger("mlflow").setLevel(logging.ERROR)
logging.getLogger("alembic").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="mlflow")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


def tracking_uri() -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    MLRUNS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{MLRUNS_DIR / 'mlflow.db'}"


def ui_command() -> str:
    return f"mlflow ui --backend-store-uri {tracking_uri()}"


@contextlib.contextmanager
def _sqlite_store_lock(uri: str) -> Iterator[None]:
    """Serialize processes opening a SQLite store: MLflow creates and migrates the schema on
    first open, and two runs starting together on a fresh store otherwise both migrate it and
    one fails (alembic 'expected to match one row')."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    lock = Path(uri[len(prefix):]).with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def setup_experiment(name: str) -> str:
    """Point MLflow at our store and return the id of experiment `name` (created if new)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _sqlite_store_lock(uri):
        return _experiment_id(name)


def _experiment_id(name: str) -> str:
    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifact_location = None
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        artifact_location = (MLRUNS_DIR / "artifacts" / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created concurrently by a sibling process
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return (sha + ("-dirty" if dirty.stdout.strip() else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_params_flat(params: dict[str, Any]) -> None:
    """MLflow caps a batch at 100 params; log every key in chunks."""
    items = [(k, "null" if v is None else str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i:i + 100]))


def log_metrics_finite(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite metrics (MLflow rejects NaN in some stores); NaN ones become tags."""
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if finite:
        mlflow.log_metrics(finite, step=step)
    for k, v in metrics.items():
        if k not in finite:
            mlflow.set_tag(f"nonfinite.{k}", str(v))


@contextlib.contextmanager
def tracked_run(experiment: str, run_name: str | None = None, tags: dict[str, str] | None = None,
                parent_run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run that ends FINISHED, or FAILED (with the error as a tag) if the body raises.

    Everything logged before the failure stays in the store.
    """
    exp_id = setup_experiment(experiment)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or None, tags=all_tags,
                           nested=mlflow.active_run() is not None)
    try:
        yield run
    except BaseException as exc:
        with contextlib.suppress(Exception):
            mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


def machine_description() -> str:
    """'N-core <cpu>, torch X (+ GPU name)': the line a results table cites."""
    import torch

    from metabolism.compute import cpu_name
    cpu = cpu_name()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{os.cpu_count()}-core {cpu}, torch {torch.__version__}{gpu}"
