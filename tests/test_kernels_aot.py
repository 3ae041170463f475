"""The rollout kernels compile ahead of time for the H100 (sm_90) with no GPU present.

Runs in a subprocess with TRITON_INTERPRET unset (interpreted kernels cannot be compiled) and
checks the real pipeline yields PTX and a cubin that fit the H100's shared memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
from kernels.aot import H100_MAX_SHARED, compile_kernels
out = {}
for dtype, rg in (("float32", True), ("float64", False)):
    for name, k in compile_kernels(90, dtype, reaction_grad=rg).items():
        if dtype == "float64" and name == "forward":
            continue
        out[f"{dtype}-{name}"] = dict(ptx=len(k.asm.get("ptx", "")), cubin=len(k.asm.get("cubin", b"")),
                                      target=".target sm_90" in k.asm["ptx"],
                                      shared=k.metadata.shared, limit=H100_MAX_SHARED)
# a non-default shape: odd hidden width, 2 layers, 4 substrate slots, small odd N/R
for name, k in compile_kernels(90, "float32", hidden=24, layers=2, substrate_slots=4,
                               n_metabolites=33, n_reactions=70).items():
    out[f"float32-small-{name}"] = dict(ptx=len(k.asm["ptx"]), cubin=len(k.asm["cubin"]),
                                        target=".target sm_90" in k.asm["ptx"],
                                        shared=k.metadata.shared, limit=H100_MAX_SHARED)
print("AOT" + json.dumps(out))
"""


def test_aot_compile_for_h100_without_gpu():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("AOT"))
    result = json.loads(line[3:])
    assert set(result) == {"float32-forward", "float32-backward", "float64-backward",
                           "float32-small-forward", "float32-small-backward"}
    for name, r in result.items():
        assert r["ptx"] > 0 and r["cubin"] > 0, name
        assert r["target"], f"{name}: PTX not for sm_90"
        assert 0 < r["shared"] <= r["limit"], f"{name}: needs {r['shared']} B of shared memory"
