"""The rollout kernels compile ahead of time for the H100 (sm_90) with no GPU present.

Runs in a subprocess with TRITON_INTERPRET unset (interpreted kernels cannot be compiled) and
checks the real pipeline yields PTX and a cubin that fit the H100's shared memory. The cold
compile is slow (minutes on 2 cores), so the configurations compile in parallel processes.
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
import json
from concurrent.futures import ProcessPoolExecutor

JOBS = {
    "float32-forward": dict(dtype="float32", kernels=("forward",)),
    "float32-backward": dict(dtype="float32", kernels=("backward",)),
    "float64-backward": dict(dtype="float64", kernels=("backward",), reaction_grad=False),
    # a non-default shape: odd hidden width, 2 layers, 4 substrate slots, small odd N/R
    "float32-small": dict(dtype="float32", hidden=24, layers=2, substrate_slots=4,
                          n_metabolites=33, n_reactions=70),
}

def job(name):
    from kernels.aot import H100_MAX_SHARED, compile_kernels
    out = {}
    for kname, k in compile_kernels(90, **JOBS[name]).items():
        out[kname] = dict(ptx=len(k.asm["ptx"]), cubin=len(k.asm["cubin"]),
                          target=".target sm_90" in k.asm["ptx"],
                          shared=k.metadata.shared, limit=H100_MAX_SHARED)
    return name, out

if __name__ == "__main__":
    with ProcessPoolExecutor(max_workers=2) as pool:
        result = dict(pool.map(job, JOBS))
    print("AOT" + json.dumps(result))
"""


def test_aot_compile_for_h100_without_gpu(tmp_path):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(ROOT), TRITON_DEFAULT_FP_FUSION="1")
    script = tmp_path / "aot_compile.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("AOT"))
    result = json.loads(line[3:])
    compiled = {f"{job}/{k}": r for job, ks in result.items() for k, r in ks.items()}
    assert set(compiled) == {"float32-forward/forward", "float32-backward/backward",
                             "float64-backward/backward", "float32-small/forward",
                             "float32-small/backward"}
    for name, r in compiled.items():
        assert r["ptx"] > 0 and r["cubin"] > 0, name
        assert r["target"], f"{name}: PTX not for sm_90"
        assert 0 < r["shared"] <= r["limit"], f"{name}: needs {r['shared']} B of shared memory"
