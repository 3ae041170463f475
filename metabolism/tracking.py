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
import signal
import socket
import subprocess
import sys
import threading
import time
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
from mlflow.entities import Metric  # noqa: E402
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


from metabolism.cli import QUICK_EXPERIMENT  # noqa: E402
from metabolism.config import DEFAULT_EXPERIMENT  # noqa: E402

# Shown on the experiment's page in the UI (its mlflow.note.content tag).
EXPERIMENT_DESCRIPTIONS = {
    DEFAULT_EXPERIMENT: (
        "Phase 2 homeostasis runs: one run per slot config and seed (run name: origin-slot-"
        "time step-seed-time; origin is run, study-<name> or explore-<study>-iter<n>).\n\n"
        "Compare first: avg_slope_ratio (1.0 best), MLP_node_slope_ratio_<type>, "
        "embedding_cluster_acc, embedding_n_clusters; tags verdict (converged / partial / "
        "failed on avg_slope_ratio) and targets_met (every slope ratio in 0.8-1.2, accuracy "
        ">= 0.95, the true number of groups). Filter e.g. tags.slot = '3', "
        "tags.study = 'main'. Ground-truth constants are params (ground_truth.*)."),
    QUICK_EXPERIMENT: (
        "Smoke tests (--quick): a tiny regime and a few updates that check the pipeline runs. "
        "Their numbers say nothing about the method."),
}


def setup_experiment(name: str) -> str:
    """Point MLflow at our store and return the id of experiment `name` (created if new).

    Every command that uses the store comes through here, so it is also where runs left
    RUNNING by a dead process are marked KILLED (`reap_orphaned_runs`)."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with _sqlite_store_lock(uri):
        exp_id = _experiment_id(name)
    with contextlib.suppress(Exception):  # bookkeeping: never stops the command itself
        reap_orphaned_runs(exp_id)
    return exp_id


# --------------------------------------------------------------------------- orphaned runs

PROCESS_TAG = "process"  # "<host>:<pid>:<start time>" of the process that owns a RUNNING run


def _process_start_time(pid: int) -> str:
    """Start time of a process in clock ticks since boot ('' if unknown): tells a live
    process from a later one that got the same pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_process_start_time(pid)}"


def process_pid(tag: str) -> int | None:
    """The pid in a process tag ("<host>:<pid>:<start time>"), if it is one of this host's."""
    host, _, rest = tag.partition(":")
    pid_text = rest.partition(":")[0]
    return int(pid_text) if host == socket.gethostname() and pid_text.isdigit() else None


def _owner_is_dead(tag: str) -> bool:
    """True only when the owner provably no longer exists: same host, and its pid is gone, a
    zombie (dead, its exit status not yet collected by its parent), or now belongs to a
    process that started at another time."""
    host, _, rest = tag.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's run (or an old tag): cannot tell, leave it
    pid = int(pid_text)
    if process_is_dead(pid):
        return True
    return bool(started) and _process_start_time(pid) not in ("", started)


def process_is_dead(pid: int) -> bool:
    """Gone, or a zombie (dead, its exit status not yet collected by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by someone else
        pass
    return process_is_zombie(pid)


def process_is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def reap_orphaned_runs(experiment_id: str, client: MlflowClient | None = None) -> list[str]:
    """Mark KILLED (tag `reaped`) every RUNNING run of the experiment whose process is dead:
    a kill -9, an OOM kill or a lost worker leaves its run RUNNING forever otherwise.
    Returns the run ids it ended."""
    client = client or MlflowClient()
    reaped = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=5000):
        tag = run.data.tags.get(PROCESS_TAG, "")
        if tag and _owner_is_dead(tag):
            client.set_tag(run.info.run_id, "reaped", f"owner process {tag} no longer exists")
            client.set_terminated(run.info.run_id, status="KILLED")
            reaped.append(run.info.run_id)
    return reaped


class MetricBuffer:
    """Per-update metrics sent in batches of `every` (one MLflow call each): a run killed
    mid-training keeps its curve up to the last batch, at 1/every of the per-step cost."""

    def __init__(self, run_id: str, every: int = 50, client: MlflowClient | None = None):
        self.run_id, self.every = run_id, every
        self.client = client or MlflowClient()
        self.pending: list[Metric] = []

    def add(self, name: str, value: float, step: int) -> None:
        if math.isfinite(value):
            self.pending.append(Metric(name, float(value), int(time.time() * 1000), step))
        if len(self.pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self.pending), 1000):  # MLflow's cap per batch
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []


class RunKilled(KeyboardInterrupt):
    """SIGTERM arrived: unwinds the run exactly like Ctrl-C, so it ends KILLED with its data."""


@contextlib.contextmanager
def _signals_end_runs() -> Iterator[None]:
    """While a run is open in the main thread, SIGTERM raises RunKilled (default: the process
    just dies and the run stays RUNNING). SIGINT already raises KeyboardInterrupt.

    A signal raised while a garbage-collector callback runs is printed and dropped by Python;
    so the request is also remembered, check_killed() (called at every training update)
    raises it again, and the dropped one is not printed as a traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        _kill_request.append(f"signal {signal.Signals(signum).name}")
        raise RunKilled(_kill_request[0])

    def unraisable(info) -> None:
        if not isinstance(info.exc_value, KeyboardInterrupt):  # RunKilled: raised again later
            previous_hook(info)

    previous = signal.signal(signal.SIGTERM, on_term)
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        sys.unraisablehook = previous_hook
        _kill_request.clear()


_kill_request: list[str] = []


def check_killed() -> None:
    """Raise RunKilled if SIGTERM arrived (in case its first raise was dropped)."""
    if _kill_request:
        raise RunKilled(_kill_request[0])


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait (pending) until the block is done, then arrive as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _end_killed(run_id: str, why: str) -> None:
    """End the active run KILLED; if the interrupted MLflow call left the fluent session
    unusable, end it through a fresh client so it is never left RUNNING."""
    try:
        mlflow.set_tag("killed_by", why)
        mlflow.end_run(status="KILLED")
    except Exception:
        with contextlib.suppress(Exception):
            mlflow.end_run(status="KILLED")  # pops the fluent stack even if the store failed
        c = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
        c.set_tag(run_id, "killed_by", why)
        c.set_terminated(run_id, status="KILLED")


# MLflow 3's UI opens an experiment of unknown kind in its GenAI view; ours are training runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _describe(client: MlflowClient, exp) -> None:
    wanted = dict([EXPERIMENT_KIND])
    if exp.name in EXPERIMENT_DESCRIPTIONS:
        wanted["mlflow.note.content"] = EXPERIMENT_DESCRIPTIONS[exp.name]
    for key, value in wanted.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)


def local_artifact_root(uri: str) -> Path | None:
    """Where a local SQLite store keeps its artifacts: beside the database file.

    Decided from the store's URI, never from the environment: mlflow.set_tracking_uri itself
    exports MLFLOW_TRACKING_URI, and MLflow's own default would be ./mlruns of whatever folder
    the process runs in (the user's store, when tests run from the repository).
    A server or other store chooses its own artifact location (None).
    """
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]).parent / "artifacts" if uri.startswith(prefix) else None


def client() -> MlflowClient:
    """A client on our store (never MLflow's default ./mlflow.db of the current folder)."""
    return MlflowClient(tracking_uri=tracking_uri())


def _experiment_id(name: str) -> str:
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = local_artifact_root(uri)
        artifact_location = (root / name).as_uri() if root else None
        try:
            client.create_experiment(name, artifact_location=artifact_location)
        except mlflow.exceptions.MlflowException:  # created concurrently by a sibling process
            pass
        exp = client.get_experiment_by_name(name)
    _describe(client, exp)
    return exp.experiment_id


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
                parent_run_id: str | None = None,
                failure_tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run that ends FINISHED, FAILED (with the error and `failure_tags` as tags) if the body
    raises, or KILLED on Ctrl-C / SIGTERM; tagged with its process so a later command can tell
    when it was left RUNNING by a dead one. Everything logged before the end stays in the store.
    """
    exp_id = setup_experiment(experiment)
    all_tags = {PROCESS_TAG: process_tag(), **(tags or {})}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    with _signals_end_runs():
        with _signals_held():  # a signal inside start_run would leave the new run RUNNING
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name or None,
                                   tags=all_tags, nested=mlflow.active_run() is not None)
        try:
            yield run
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM as RunKilled
            with _signals_held():  # a second signal must not interrupt the ending itself
                _end_killed(run.info.run_id, str(exc) or "SIGINT (Ctrl-C)")
            raise
        except BaseException as exc:
            with contextlib.suppress(Exception):
                mlflow.set_tag("error", f"{type(exc).__name__}: {exc}"[:5000])
                mlflow.set_tags(failure_tags or {})
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
