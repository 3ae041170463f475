"""Seeds for randomized kernel tests: reproducible by default, random on request.

Each test gets a fixed seed derived from its own name, so a failure reruns identically. Set
KERNEL_TEST_SEED=<int> to force one seed everywhere, or KERNEL_TEST_SEED=random to draw fresh
seeds (a wider search; every assertion message still names the seed it used).
"""

from __future__ import annotations

import os
import zlib

ENV = "KERNEL_TEST_SEED"


def kernel_seed(name: str) -> int:
    """The seed for the test called `name` (see the module docstring for the override)."""
    forced = os.environ.get(ENV, "").strip()
    if forced == "random":
        return int.from_bytes(os.urandom(4), "little")
    if forced:
        return int(forced)
    return zlib.crc32(name.encode())


def describe() -> str:
    """One line for the pytest header: which seeds this session draws."""
    forced = os.environ.get(ENV, "").strip()
    if forced == "random":
        return f"{ENV}=random: fresh seeds, reported on failure"
    if forced:
        return f"{ENV}={forced}: every kernel test uses this seed"
    return f"kernel test seeds: fixed per test (set {ENV}=random for fresh ones)"
