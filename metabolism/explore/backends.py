"""Where slot runs execute: a local process pool (default) or an existing Ray cluster.

Both take a list of jobs and yield `(node_id, outcome)` as runs complete, in completion
order; an outcome is the `runners.RunOutcome` of `runners.execute_job`. A worker that dies (killed,
out of memory) yields a failed outcome for its job instead of stopping the loop.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Iterator

from metabolism.explore.runners import RunOutcome, execute_job


class BackendError(RuntimeError):
    """A backend cannot start; the message is one line."""


@dataclass
class Job:
    node_id: int
    runner: str
    config: dict[str, Any]
    parent_run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)


def _init_worker(threads: int) -> None:
    """Share the cores between runs, and die with the loop (Linux) so a killed study leaves
    no orphan run that would finish later and log a duplicate iteration."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
        except OSError:
            pass


class InlineBackend:
    """Runs jobs one after another in this process: for debugging (pdb works) and fast tests."""

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, RunOutcome]]:
        for j in jobs:
            yield j.node_id, execute_job(j.runner, j.config, j.parent_run_id, j.tags)

    def close(self) -> None:
        pass


class LocalBackend:
    """One process per slot run, at most min(4, CPUs) at once (spawned: torch-safe)."""

    def __init__(self, max_workers: int | None = None):
        cpus = os.cpu_count() or 1
        self.max_workers = max(1, min(4, cpus, max_workers or 4))
        self._threads = max(1, cpus // self.max_workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.max_workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self._threads,))
        return self._pool

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, RunOutcome]]:
        pool = self._get_pool()
        futures = {pool.submit(execute_job, j.runner, j.config, j.parent_run_id, j.tags): j
                   for j in jobs}
        pending = set(futures)
        broken = False
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    broken = True
                    outcome = RunOutcome.failed("worker process died (killed or out of memory)")
                except Exception as exc:  # pickling errors and the like
                    outcome = RunOutcome.failed(f"{type(exc).__name__}: {exc}".splitlines()[0])
                yield futures[fut].node_id, outcome
        if broken:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class RayBackend:
    """Each slot run is a Ray task with its own CPU (and its own GPU when the cluster has any).

    `address` is an existing cluster ('auto', 'ray://host:10001', ...); 'local' starts a
    private local cluster (what the tests use).
    """

    def __init__(self, address: str | None, runtime_env: dict | None = None,
                 gpus_per_run: float | None = None, num_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise BackendError("--backend ray: ray is not installed "
                               "(pip install 'metabolism[ray]')") from None
        self.ray = ray
        if not address:
            raise BackendError("--backend ray: --address is required ('auto', "
                               "'ray://host:port', or 'local' for a private local cluster)")
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        if address == "local":
            kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
            kwargs["include_dashboard"] = False
        else:
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except Exception as exc:
            raise BackendError(f"--address {address}: cannot connect to Ray "
                               f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                               ) from None
        if gpus_per_run is None:
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        self.gpus_per_run = gpus_per_run

    def map(self, fn, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        """fn(*args) for every args in calls, one Ray task each (one CPU, gpus_per_run GPUs);
        yields (index into calls, result) in completion order. A task that dies yields the
        exception instead of a result. fn must be importable by name on the workers."""
        ray = self.ray
        remote = ray.remote(num_cpus=1, num_gpus=self.gpus_per_run, max_retries=0)(fn)
        refs = {remote.remote(*args): i for i, args in enumerate(calls)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # worker died, node lost
                    result = exc
                yield refs[ref], result

    def run(self, jobs: list[Job]) -> Iterator[tuple[int, RunOutcome]]:
        calls = [(j.runner, j.config, j.parent_run_id, j.tags) for j in jobs]
        for i, outcome in self.map(execute_job, calls):
            if isinstance(outcome, Exception):
                outcome = RunOutcome.failed(f"ray task failed: {type(outcome).__name__}")
            yield jobs[i].node_id, outcome

    def close(self) -> None:
        self.ray.shutdown()


def make_backend(name: str, address: str | None = None, max_workers: int | None = None,
                 runtime_env: dict | None = None):
    if name == "local":
        return LocalBackend(max_workers)
    if name == "inline":
        return InlineBackend()
    if name == "ray":
        return RayBackend(address, runtime_env=runtime_env)
    raise BackendError(f"--backend {name}: unknown backend (local, inline or ray)")
