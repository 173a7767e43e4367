#!/usr/bin/env bash
# The CPU extension built with AddressSanitizer + UndefinedBehaviorSanitizer, running the CPU
# test suite's fast subset. The build happens in a copy of the tracked files (build/sanitize/), so
# the normal in-place build is left alone. Any sanitizer report stops the process (UBSan errors are
# not recoverable here), so a clean exit means a clean run.
#
#   scripts/sanitize.sh [pytest arguments]   default: the fast subset below; PYTHON=python3
#
# Python itself is not instrumented, so libasan is preloaded; leak detection is off (CPython and
# the frameworks keep allocations alive until exit by design). JAX is left out: jaxlib aborts under
# a preloaded ASan runtime (a CHECK in ASan's __cxa_throw interceptor on jaxlib's exceptions); so
# are the NVRTC compile checks (NVRTC cannot load its builtins library under ASan). The normal
# suite runs both.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=build/sanitize
FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"

# the in-place build needs the build requirements (pyproject.toml) in this environment; an
# isolated `pip install` did not leave them there
$PY -c 'import Cython' 2>/dev/null || $PY -m pip install -q "Cython>=3.0" "setuptools>=77" wheel
rm -rf "$DIR" && mkdir -p "$DIR"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$DIR"
echo "== build with $FLAGS"
(cd "$DIR" && CFLAGS="$FLAGS" LDFLAGS="$FLAGS" $PY setup.py -q build_ext --inplace -j "$(nproc)" > build.log 2>&1) \
  || { cat "$DIR/build.log"; exit 1; }

if [ $# -eq 0 ]; then
  # every CPU op, layout, dtype and error path; hypothesis on its short profile; the fuzz test's
  # default calls; fork safety
  # torch's custom ops are left out: an exception raised through them (a refused call) aborts in
  # ASan's __cxa_throw interceptor, as jaxlib's do; so is the CUDA emulator (fibers: ASan cannot
  # follow swapcontext stacks)
  set -- tests/ops tests/compat tests/interop tests/backends/test_threads.py tests/backends/test_fork.py \
    tests/test_fuzz.py -m "not gpu and not slow" \
    -k "not jax and not compiles_for_the_device and not emulated and not torch and not training and not deepspeed"
fi
echo "== pytest $*"
cd "$DIR"
LD_PRELOAD="$($PY -c 'import subprocess; print(subprocess.check_output(["gcc", "-print-file-name=libasan.so"], text=True).strip())')" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
DSQUANT_FUZZ_FRAMEWORKS=numpy HYPOTHESIS_PROFILE=dev PYTHONPATH="$PWD" \
  $PY -m pytest -q -p no:cacheprovider "$@"
