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
