#!/usr/bin/env bash
# Every check the CUDA backend owes a GPU machine, in one run from a bare checkout, built to bring
# back whatever it can: versions, build in place, the kernels compiled for this GPU (registers
# and spills), the tests marked `gpu`, then the GPU benchmark, whose tables are printed row by row.
# Every step runs even if an earlier one failed, each under `timeout` and all within BUDGET
# seconds (default 540, inside a 600-second device call); a summary of the steps comes last.
#
#   scripts/gpu_check.sh             PYTHON=python3 by default; OUT=dir: every step's log, the
#                                    benchmark's JSON and the summary are also written there
#   scripts/gpu_check.sh --dry-run   a machine without a GPU (CI): the build is skipped (the tree
#                                    is installed already), the GPU steps skip, the tests are
#                                    collected and skipped as on any machine without a GPU
#
# Exit status: the tests' (pytest's), or 1 when no GPU was found outside --dry-run. The tests run
# with DSQUANT_GPU_CHECK=1: a package the GPU machine lacks (JAX, ml_dtypes, cuda-bindings) then
# skips the test modules that import it instead of failing the collection (tests/_optional.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
BUDGET=${BUDGET:-540}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
export DSQUANT_GPU_CHECK=1 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (a few tests) must not take 75% of the GPU from CuPy
start=$SECONDS
summary=()

left() { echo $((BUDGET - (SECONDS - start))); }

# step NAME LIMIT CMD...: runs CMD under timeout (LIMIT or what is left of BUDGET), its output
# into $LOGS/NAME.log and, filtered by $SHOW (a command reading the output), to stdout.
step() {
  local name=$1 limit=$2 t0=$SECONDS rc
  shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  printf '\n== %s (at %ss, limit %ss)\n' "$name" "$((SECONDS - start))" "$limit"
  if [ "$limit" -le 0 ]; then
    summary+=("$name: not run (BUDGET=${BUDGET}s spent)")
    return 124
  fi
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | ${SHOW:-cat}
  rc=${PIPESTATUS[0]}
  local status="ok"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && status="TIMED OUT after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$status" = "ok" ] && status="FAILED (exit $rc)"
  summary+=("$name: $status in $((SECONDS - t0))s")
  return "$rc"
}

skip() {   # skip NAME REASON
  printf '\n== %s: skipped (%s)\n' "$1" "$2"
  summary+=("$1: skipped ($2)")
}

versions() {
  echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
    nvidia-smi | sed -n '3p'   # the header line with the driver's CUDA version
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - <<'EOF'
def show(label, fn):
    try:
        print(f"{label}: {fn()}")
    except Exception as exc:   # noqa: BLE001 - report and go on
        print(f"{label}: unavailable ({type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''})")

def nvrtc():
    from cuda.bindings import nvrtc
    err, major, minor = nvrtc.nvrtcVersion()
    err2, archs = nvrtc.nvrtcGetSupportedArchs()
    return f"{major}.{minor}, sm_{' sm_'.join(map(str, archs))}"

def cupy():
    import cupy
    rt = cupy.cuda.runtime
    return (f"{cupy.__version__}, runtime {rt.runtimeGetVersion()}, driver supports CUDA {rt.driverGetVersion()}, "
            f"{rt.getDeviceCount()} GPU(s)")

def torch():
    import torch
    return f"{torch.__version__}, CUDA {torch.version.cuda}, GPU available: {torch.cuda.is_available()}"

def jax():
    import jax
    return f"{jax.__version__}, devices {jax.devices()}"

show("NVRTC (cuda-bindings)", nvrtc)
show("CuPy", cupy)
show("torch", torch)
show("JAX", jax)
EOF
  "$PY" -m pip show cupy-cuda13x cupy-cuda12x cuda-bindings nvidia-cuda-nvrtc torch jax jaxlib jax-cuda13-plugin \
    ml_dtypes numpy cython setuptools pytest pytest-timeout hypothesis 2>&1 | grep -E '^(Name|Version|WARNING)'
  return 0
}

build() {
  # without build isolation (no network) the image's setuptools reads pyproject.toml, whose
  # license = "Apache-2.0" (PEP 639) needs setuptools 77 or newer
  "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' || {
    echo "setuptools $("$PY" -c 'import setuptools; print(setuptools.__version__)' 2>&1) is older than 77:" \
         "carry a newer setuptools wheel (docs/gpu.md)"; return 1; }
  "$PY" -m pip install --no-build-isolation --no-deps -e . > "$LOGS/build-pip.txt" 2>&1 || { cat "$LOGS/build-pip.txt"; return 1; }
  rm -f "$LOGS/build-pip.txt"
  "$PY" -m dsquant info
}

export PY LOGS
export -f versions build   # so that `timeout` can run them (through bash)
SHOW=cat step versions 60 bash -c versions

if [ "$DRY_RUN" = 1 ]; then
  skip build "--dry-run: this tree is installed already"
  SHOW=cat step import 60 "$PY" -m dsquant info
else
  SHOW="tail -n 25" step build 300 bash -c build
fi

if "$PY" -c "import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() == 0)" > /dev/null 2>&1; then
  gpu=1
else
  gpu=0
fi

if [ "$gpu" = 1 ]; then
  SHOW="tail -n 6" step kernels 150 "$PY" -m dsquant kernels
else
  skip kernels "no CUDA GPU visible to CuPy"
fi

# The tests marked gpu (on a machine without a GPU they are collected and skipped, which is what
# --dry-run checks). pytest-timeout bounds each test where it is installed; `timeout` the whole.
per_test=()
if "$PY" -c "import pytest_timeout" > /dev/null 2>&1; then
  per_test=(--timeout=120)
else
  echo "pytest-timeout is not installed: tests run without a per-test limit (carry its wheel: docs/gpu.md)"
fi
SHOW="tail -n 30" step gpu-tests 330 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rfEs --maxfail=20 \
  --durations=10 "${per_test[@]}" tests/
tests_rc=$?

# compute-sanitizer memcheck and racecheck (issue 13) over a representative subset of the gpu tests:
# fake quantization at 4 bits for every dtype, scheme and rounding, special values, every 16-bit
# pattern, the integer, unsigned-half and ZeRO++ ops. A report fails the run (exit 99).
SAN_TESTS="special_values or every_16_bit_pattern or integer_ops_cupy_views or unsigned_half or zeropp_ops_torch_cuda or (fake_quantize_matches_cpu and b4)"
for tool in memcheck racecheck; do
  if [ "$gpu" = 1 ] && command -v compute-sanitizer > /dev/null; then
    SHOW="tail -n 15" step "sanitizer-$tool" 240 compute-sanitizer --tool "$tool" --error-exitcode 99 \
      --target-processes all "$PY" -m pytest -m gpu -q -p no:cacheprovider -x -k "$SAN_TESTS" tests/backends/test_gpu.py
    san_rc=$?
    [ "$tests_rc" -ne 0 ] || tests_rc=$san_rc
  else
    skip "sanitizer-$tool" "needs a CUDA GPU and compute-sanitizer (CUDA toolkit, or pip nvidia-cuda-sanitizer-api)"
  fi
done

if [ "$gpu" = 1 ]; then
  SHOW=cat step gpu-bench 240 "$PY" -m dsquant gpu-bench --json "$LOGS/gpu-bench.json"
else
  skip gpu-bench "no CUDA GPU visible to CuPy"
fi

printf '\n== summary (%ss; logs in %s)\n' "$((SECONDS - start))" "${OUT:-$LOGS (set OUT to keep them)}"
printf '%s\n' "${summary[@]}" | tee "$LOGS/summary.txt"
if [ "$gpu" = 0 ] && [ "$DRY_RUN" = 0 ]; then
  echo "no CUDA GPU was found: nothing was measured" | tee -a "$LOGS/summary.txt"
  exit 1
fi
echo "exit status: the tests' ($tests_rc)" | tee -a "$LOGS/summary.txt"
exit "$tests_rc"
