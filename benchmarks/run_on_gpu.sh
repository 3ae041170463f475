#!/usr/bin/env bash
# One GPU lease, one script: the kernel and device tests compiled on CUDA, Phase 1 and the four
# slot runs end to end on CUDA (wall times + metrics, next to the same runs on this machine's
# CPU), then the default and at-scale benchmarks. Logs, JSON and the slot table (slots.md) go to
# $OUT (default ./bench-out). Needs the package installed (pip install -e ".[test]").
# PARTS picks from 'tests slots cpu default sweep scale' (default: tests slots cpu default
# scale; about 12 min on an H100-class GPU, 'cpu' adds the CPU runs in parallel, one thread
# each); BENCH_K filters the default benchmarks like pytest -k. SLOT_ARGS adds flags to the
# slot runs (e.g. SLOT_ARGS=--quick PARTS=cpu for a dry run of this script on a CPU).
set -uo pipefail
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
PARTS=${PARTS:-tests slots cpu default scale}
if [[ " $PARTS " == *" sweep "* ]]; then
  $PY benchmarks/sweep_fused.py 2>&1 | tee "$OUT/sweep.log"
fi
if [[ " $PARTS " == *" tests "* ]]; then
  # tests/conftest.py imports the whole library (MLflow); the kernel tests need only kernels/
  $PY -m pytest --noconftest -p no:cacheprovider tests/test_kernels_triton.py -q 2>&1 | tee "$OUT/kernel_tests.log"
fi
if [[ " $PARTS " == *" tests "* ]]; then
  # the training path on CUDA: device placement, fused kernel in Phase 2, kernel vs torch run
  $PY -m pytest -p no:cacheprovider tests/test_compute.py tests/test_training_backends.py -q \
      2>&1 | tee "$OUT/training_tests.log"
fi
slot_runs() {  # $1 = device; Phase 1 (timed alone), then the four slots one after another
  local dev=$1
  export MLFLOW_TRACKING_URI="sqlite:///$PWD/$OUT/mlflow.db"
  local start=$SECONDS
  $PY experiments/phase1.py --config slot3.yaml --device "$dev" --no-progress ${SLOT_ARGS:-} \
      --data-root "$OUT/data-$dev" 2>&1 | tee "$OUT/phase1_$dev.log"
  echo "phase1 $dev wall_s $((SECONDS - start))" | tee -a "$OUT/walls.txt"
  for slot in 0 1 2 3; do
    start=$SECONDS
    $PY experiments/phase2.py --config "slot$slot.yaml" --device "$dev" --no-progress ${SLOT_ARGS:-} \
        --data-root "$OUT/data-$dev" --runs-root "$OUT/runs-$dev" -o "tracking.run_name=slot$slot-$dev" \
        2>&1 | tee "$OUT/slot${slot}_$dev.log"
    echo "slot$slot $dev wall_s $((SECONDS - start))" | tee -a "$OUT/walls.txt"
  done
}
if [[ " $PARTS " == *" cpu "* ]]; then
  # the same runs on this machine's CPU, in the background while the GPU runs
  (slot_runs cpu > "$OUT/cpu_runs.log" 2>&1) &
  CPU_PID=$!
fi
if [[ " $PARTS " == *" slots "* ]]; then
  slot_runs cuda
fi
if [[ -n "${CPU_PID:-}" ]]; then wait "$CPU_PID"; fi
if [[ " $PARTS " == *" slots "* || " $PARTS " == *" cpu "* ]]; then
  $PY benchmarks/slot_table.py "$OUT" | tee "$OUT/slots.md"
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
