"""Benchmark session setup: skipping the `scale` cases (the marker is declared in
pyproject.toml, where tests/ importing these modules sees it too), one thread count, and
the FLOP/s summary table."""

from __future__ import annotations

import os

import pytest
import torch

RESULTS: list[dict] = []  # filled by the throughput benchmarks, printed at the end


def pytest_collection_modifyitems(config, items):
    if os.environ.get("METABOLISM_BENCH_SCALE") == "1":
        return
    skip = pytest.mark.skip(reason="at-scale case: set METABOLISM_BENCH_SCALE=1 to run")
    for item in items:
        if "scale" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Fixed intra-op threads: comparisons on a shared small CPU are noisy enough already."""
    n = int(os.environ.get("METABOLISM_BENCH_THREADS", "1"))
    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(prev)


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("rollout throughput vs arithmetic floor")
    tr.write_line(f"{'group':<34} {'variant':<20} {'ms':>9} {'steps*samples/s':>16} "
                  f"{'GFLOP/s':>9} {'peak GFLOP/s':>12} {'floor ms':>9} {'% of floor':>10}")
    for r in sorted(RESULTS, key=lambda r: (r["sort_key"], r["ms"])):
        tr.write_line(f"{r['group']:<34} {r['variant']:<20} {r['ms']:>9.2f} "
                      f"{r['throughput']:>16.0f} {r['gflops']:>9.2f} {r['peak_gflops']:>12.1f} "
                      f"{r['floor_ms']:>9.3f} {100 * r['floor_ms'] / r['ms']:>9.1f}%")
