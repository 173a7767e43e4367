"""Installing and importing: what ``import dsquant`` loads, the error from a source tree without
compiled extensions, and (DSQUANT_TEST_README_INSTALL=1, run by .ci/run) the README's main command
in a fresh clone and a fresh virtual environment."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import dsquant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Loaded later, on first use: frameworks, the CPU backend, and what only info() or the CLI need.
NOT_AT_IMPORT = ("torch", "jax", "jaxlib", "cupy", "ml_dtypes", "importlib.metadata", "json", "argparse",
                 "safetensors", "tqdm", "dsquant.backends.cpu.host", "dsquant.backends.cuda.device", "dsquant.bench")


def test_import_defers_what_can_wait():
    code = ("import sys, numpy; before = set(sys.modules); import dsquant; "
            f"print(sorted(m for m in {NOT_AT_IMPORT!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_version_is_pyproject_version():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        declared = re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)
    assert dsquant.__version__ == declared


def test_source_tree_without_extensions_says_what_to_run(tmp_path):
    # a checkout where nothing was built: `python -m dsquant` there imports ./dsquant
    shutil.copytree(os.path.join(ROOT, "dsquant"), tmp_path / "dsquant",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.cpp", "__pycache__"))
    shutil.copy(os.path.join(ROOT, "setup.py"), tmp_path / "setup.py")
    result = subprocess.run([sys.executable, "-m", "dsquant", "bench"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: dsquant is being imported from its source tree"), result.stderr
    assert "pip install -e ." in last and "`dsquant` command" in last
    assert result.stderr.count("Error") == 1, result.stderr      # one error, not a chain


def _readme_command(heading: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.search(rf"^{heading}.*?^```bash\n(.+?)\n```", text, re.M | re.S).group(1)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DSQUANT_TEST_README_INSTALL") != "1",
                    reason="builds dsquant in a fresh venv (minutes); .ci/run sets DSQUANT_TEST_README_INSTALL=1")
def test_readme_main_command_in_a_fresh_clone(tmp_path):
    command = _readme_command("Run the main job")
    assert command.endswith(" bench"), command
    clone = tmp_path / "dsquant"
    subprocess.run(["git", "clone", "-q", ROOT, str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if sys.prefix != sys.base_prefix:   # a fresh shell: this test's virtual environment not on PATH
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not os.path.abspath(p).startswith(sys.prefix))
    result = subprocess.run(["bash", "-c", command + " --quick"], capture_output=True, text=True, cwd=clone,
                            env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "CPU benchmark (--quick)" in result.stdout
    assert "| fake_quantize | float32 | 8 | symmetric | 128 | nearest |" in result.stdout
    # the checkpoint job before the bench: the demo MLP quantized to int4, its table and total
    assert "| layers.0.up.weight | 1536x512 | float16 | int4, blocks of 128 |" in result.stdout
    assert "| layers.0.up.bias | 1536 | float16 | as is: small (1536 < 4096 elements) | 0 (exact) |" in result.stdout
    assert re.search(r"^compression: 3\.\d\dx of the tensor bytes", result.stdout, re.M), result.stdout
    assert (clone / "mlp-int4.safetensors").is_file()
    # what the README says about `python -m dsquant` with that install: it runs from any other
    # directory, and in the checkout's root says why it cannot
    python = str(clone / ".venv" / "bin" / "python")
    elsewhere = subprocess.run([python, "-m", "dsquant", "bench", "--quick"], capture_output=True, text=True,
                               cwd=tmp_path, env=env, timeout=600)
    assert elsewhere.returncode == 0 and "CPU benchmark (--quick)" in elsewhere.stdout, elsewhere.stderr
    in_root = subprocess.run([python, "-m", "dsquant", "info"], capture_output=True, text=True, cwd=clone, env=env)
    assert in_root.returncode == 1
    assert in_root.stderr.strip().splitlines()[-1].startswith("ImportError: dsquant is being imported from its source")
