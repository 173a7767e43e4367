"""scripts/gpu_check.sh's collection policy (tests/_optional.py): a package missing from the
machine fails the test modules that import it, except under the GPU check (DSQUANT_GPU_CHECK=1),
where those modules are skipped and every other test is still collected."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["tests/interop/test_interop.py", "tests/backends/test_cuda_compile.py"]


def _collect(tmp_path, gpu_check: bool):
    hidden = tmp_path / "jax"                     # found before the installed JAX, and fails to import
    hidden.mkdir(exist_ok=True)
    (hidden / "__init__.py").write_text("raise ImportError('jax hidden by test_gpu_check')\n")
    env = {k: v for k, v in os.environ.items() if k != "DSQUANT_GPU_CHECK"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if gpu_check:
        env["DSQUANT_GPU_CHECK"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *MODULES], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_package_fails_the_collection(tmp_path):
    run = _collect(tmp_path, gpu_check=False)
    assert run.returncode == 2, run.stdout[-2000:]           # interrupted: an error during collection
    assert "jax hidden by test_gpu_check" in run.stdout


def test_under_the_gpu_check_it_skips_only_the_modules_that_need_it(tmp_path):
    run = _collect(tmp_path, gpu_check=True)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "tests/backends/test_cuda_compile.py::" in run.stdout         # the other module is collected
    assert "tests/interop/test_interop.py::" not in run.stdout
    assert "jax hidden by test_gpu_check); DSQUANT_GPU_CHECK=1: skipped, not failed" in run.stdout
