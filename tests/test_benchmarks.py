"""The benchmarks follow pytest-benchmark's conventions: ratios in the JSON, groups in numeric
order, the promised rounds, one stored peak per machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT


def test_groups_sort_in_numeric_order():
    from benchmarks.test_rollout_throughput import group_name

    sizes = [(100, 256, 8, t) for t in (4, 16, 32, 64)] + [(1000, 2560, 64, 16),
                                                           (10000, 25600, 1024, 16)]
    names = [group_name("fwd", *s) for s in sizes]
    assert sorted(names) == sorted(names, key=lambda n: [int(x.split("=")[1])
                                                         for x in n.split()[1:]])
    assert sorted(group_name("fwd", 100, 256, 8, t) for t in (64, 4, 32, 16)) == [
        group_name("fwd", 100, 256, 8, t) for t in (4, 16, 32, 64)]


def test_peak_is_measured_once_per_machine_and_stored(tmp_path, monkeypatch):
    from benchmarks import flops

    cache = tmp_path / "peak.json"
    monkeypatch.setenv(flops.PEAK_CACHE_ENV, str(cache))
    calls = []
    monkeypatch.setattr(flops, "measure_peak_flops", lambda device: calls.append(device) or 5e10)
    flops.peak_flops.cache_clear()
    try:
        assert flops.peak_flops("cpu") == 5e10
        flops.peak_flops.cache_clear()  # a new pytest session
        assert flops.peak_flops("cpu") == 5e10
    finally:
        flops.peak_flops.cache_clear()
    assert calls == ["cpu"]
    stored = json.loads(cache.read_text())
    assert list(stored) == [flops.machine_key("cpu")]
    assert stored[flops.machine_key("cpu")]["flops"] == 5e10


@pytest.mark.slow
def test_side_by_side_ratio_is_recorded_in_the_benchmark_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "METABOLISM_PEAK_CACHE": str(tmp_path / "p")}
    res = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p",
                          "no:cacheprovider", "-k", "vectorized_reference_vs_naive_loop",
                          f"--benchmark-json={out}"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (bench,) = json.loads(out.read_text())["benchmarks"]
    info = bench["extra_info"]
    assert info["speedup"] == pytest.approx(info["slow_ms"] / info["fast_ms"])
    assert info["fast_variant"] == "torch-vectorized" and info["slow_variant"] == "naive-loop"
    assert info["rounds_each"] == 5 and info["target_speedup"] == 10.0
    assert bench["group"].startswith("speedup fwd")
