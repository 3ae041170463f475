#!/usr/bin/env bash
# One GPU lease: the kernel tests compiled on CUDA, then the default and at-scale benchmarks.
# Logs and JSON go to $OUT (default ./bench-out). Needs torch, triton, pytest, pytest-benchmark.
# PARTS picks from 'sweep tests default scale' (default: tests default scale); BENCH_K filters
# the default benchmarks like pytest -k.
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
PARTS=${PARTS:-tests default scale}
if [[ " $PARTS " == *" sweep "* ]]; then
  $PY benchmarks/sweep_fused.py 2>&1 | tee "$OUT/sweep.log"
fi
if [[ " $PARTS " == *" tests "* ]]; then
  # tests/conftest.py imports the whole library (MLflow); the kernel tests need only kernels/
  $PY -m pytest --noconftest -p no:cacheprovider tests/test_kernels_triton.py -q 2>&1 | tee "$OUT/kernel_tests.log"
fi
if [[ " $PARTS " == *" default "* ]]; then
  $PY -m pytest benchmarks -q -p no:cacheprovider --benchmark-json="$OUT/bench_default.json" \
      -k "${BENCH_K:-}" 2>&1 | tee "$OUT/bench_default.log"
fi
if [[ " $PARTS " == *" scale "* ]]; then
  # the fused kernel and the eager reference first: the compiled and looped variants take longest
  METABOLISM_BENCH_SCALE=1 $PY -m pytest benchmarks -q -p no:cacheprovider -m scale \
      -k "fused or vectorized" --benchmark-json="$OUT/bench_scale.json" 2>&1 | tee "$OUT/bench_scale.log"
  METABOLISM_BENCH_SCALE=1 $PY -m pytest benchmarks -q -p no:cacheprovider -m scale \
      -k "compile or naive" --benchmark-json="$OUT/bench_scale2.json" 2>&1 | tee "$OUT/bench_scale2.log"
fi
