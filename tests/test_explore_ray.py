"""The Ray backend on a private local Ray cluster (skipped when the `ray` extra is absent)."""

from pathlib import Path

import pytest

from explore_helpers import make_study
from metabolism.explore.backends import BackendError, RayBackend
from metabolism.explore.tree import FAILED

ROOT = Path(__file__).resolve().parent.parent

try:
    import ray  # noqa: F401
    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False


def test_missing_ray_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(BackendError, match="ray is not installed") as err:
        RayBackend("auto")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (optional extra: metabolism[ray])")
def test_ray_backend_runs_each_slot_as_a_task(tmp_path):
    backend = RayBackend("local", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        assert backend.gpus_per_run == 0.0  # no GPU here: one CPU per run
        study = make_study(tmp_path, iterations=4, block_size=2, slots=(0, 1),
                           runner="metabolism.explore.runners:failing_slot1_runner",
                           backend=backend)
        tree = study.run()
    finally:
        backend.close()
    assert sorted(tree.nodes) == [1, 2, 3, 4]
    assert [n.status == FAILED and n.error is not None for n in tree.sorted()] == [
        False, True, False, True]
    assert tree.nodes[1].metrics["avg_slope_ratio"] > 0


@pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (optional extra: metabolism[ray])")
def test_ray_backend_needs_an_address():
    with pytest.raises(BackendError, match="--address is required"):
        RayBackend(None)


def test_ray_backend_gets_the_run_options_and_store_explicitly(tmp_path, monkeypatch):
    """Ray workers on other machines inherit no environment, so explore.py must hand the data
    and runs roots and the tracking store to the Ray backend as runtime_env (no ray needed:
    the backend factory is replaced by one that records what it was given)."""
    import importlib.util

    from explore_helpers import write_slot_yamls
    from metabolism.explore.backends import BackendError

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("explore_cli_ray", root / "experiments" / "explore.py")
    explore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(explore)
    seen = {}

    def fake_backend(name, address, workers, runtime_env=None):
        seen.update(name=name, runtime_env=runtime_env)
        raise BackendError("stop here")

    monkeypatch.setattr(explore, "make_backend", fake_backend)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    rc = explore.main(["--study", "r", "--iterations", "4", "--block-size", "4", "--backend",
                       "ray", "--address", "auto", "--config-dir",
                       str(write_slot_yamls(tmp_path / "cfg")), "--studies-root",
                       str(tmp_path / "s"), "--data-root", str(tmp_path / "d"),
                       "--runs-root", str(tmp_path / "r"), "--no-mlflow"])
    assert rc == 2 and seen["name"] == "ray"
    env = seen["runtime_env"]["env_vars"]
    assert env["METABOLISM_DATA_ROOT"] == str((tmp_path / "d").resolve())
    assert env["METABOLISM_RUNS_ROOT"] == str((tmp_path / "r").resolve())
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path}/m.db"
