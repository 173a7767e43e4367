#!/usr/bin/env bash
# Every check the CUDA backend owes a GPU machine, in one run from a bare checkout: build dsquant
# in place, compile the kernels for this GPU (registers and spills), run the tests marked `gpu`,
# then the GPU benchmark, whose markdown table is printed last. Meant to finish in under 6 minutes
# on an H100 (build about 1, tests 1 to 2, benchmark under 1).
#
#   scripts/gpu_check.sh            PYTHON=python3 by default; with OUT=dir set, the test log and
#                                   the benchmark's JSON are also written there
# Exit status: the tests' (the benchmark runs either way, so a failing test still shows its table).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (one test) must not take 75% of the GPU from CuPy
start=$SECONDS
say() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - start))"; }

say "build in place"
if ! $PY setup.py -q build_ext --inplace -j "$(nproc)" > /tmp/dsquant-build.log 2>&1; then
  cat /tmp/dsquant-build.log
  exit 1
fi
$PY -c "import dsquant; print('dsquant', dsquant.__version__, 'built')"

say "device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
$PY -c "import cupy, torch; print('cupy', cupy.__version__, '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(),
'| torch', torch.__version__, '| GPUs', cupy.cuda.runtime.getDeviceCount())"

say "kernels for this GPU"
$PY -m dsquant kernels | tail -n 4

say "tests marked gpu"
set +e
$PY -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee ${OUT:+"$OUT/gpu-tests.log"} | tail -n 30
tests_rc=${PIPESTATUS[0]}
set -e
echo "pytest exit code: $tests_rc"

# --- compute-sanitizer (issue 13): memcheck and racecheck over a representative subset of the gpu
# tests (fake quantization of every dtype/scheme/rounding at small shapes, special values, the
# integer and ZeRO++ ops). Self-contained: skipped without compute-sanitizer; a report fails the run.
say "compute-sanitizer"
SAN_TESTS=(tests/backends/test_gpu.py -m gpu -p no:cacheprovider -q -x
           -k "special_values or every_16_bit_pattern or integer_ops_cupy_views or unsigned_half or zeropp_ops_torch_cuda or (fake_quantize_matches_cpu and b4)")
if command -v compute-sanitizer > /dev/null; then
  for tool in memcheck racecheck; do
    set +e
    timeout 600 compute-sanitizer --tool "$tool" --error-exitcode 99 --target-processes all \
      $PY -m pytest "${SAN_TESTS[@]}" 2>&1 | tee ${OUT:+"$OUT/sanitizer-$tool.log"} | tail -n 15
    san_rc=${PIPESTATUS[0]}
    set -e
    echo "compute-sanitizer $tool exit code: $san_rc"
    [ "$san_rc" -eq 0 ] || [ "$tests_rc" -ne 0 ] || tests_rc=$san_rc
  done
else
  echo "compute-sanitizer not found (CUDA toolkit, or pip install nvidia-cuda-sanitizer-api): skipped"
fi

say "benchmark"
$PY -m dsquant gpu-bench ${OUT:+--json "$OUT/gpu-bench.json"}
exit "$tests_rc"
