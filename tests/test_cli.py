"""The command line (``dsquant`` / ``python -m dsquant``): argparse everywhere, and one line, never a
traceback, for each missing optional dependency or launcher."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from dsquant.__main__ import COMMANDS, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code_or_args, *, block=()):
    """Run the CLI in a fresh interpreter (in this checkout) with the modules in `block` made
    unimportable, as if they were not installed."""
    blocked = "".join(f"sys.modules[{name!r}] = None; " for name in block)
    code = f"import sys; {blocked}from dsquant.__main__ import main; sys.exit(main({list(code_or_args)!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def assert_one_line(result, *needles):
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_version(capsys):
    import dsquant
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"dsquant {dsquant.__version__}"


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"], prog="dsquant")
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dsquant")
    for name in COMMANDS:
        assert f"\n  {name} " in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"], prog="dsquant")
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dsquant {command} ")


def test_unknown_command_is_named(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as exit_:
        main(["bnech"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bnech'" in err and "bench" in err


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_unknown_option_of_a_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--quik"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --quik" in capsys.readouterr().err


def test_info_reports_cpu_isa_and_openmp_threads(capsys):
    assert main(["info"]) == 0
    about = json.loads(capsys.readouterr().out)
    from dsquant.backends.cpu import _cpu
    assert about["cpu_isa"] == _cpu.isas()[-1] and about["cpu_isa"] in ("avx512", "avx2", "baseline")
    assert about["openmp_threads"] >= 1 and about["cpu_threads"] >= 1


def test_info_cpu_isa_follows_dsquant_cpu_baseline():
    code = "import dsquant; print(dsquant.info()['cpu_isa'])"
    env = dict(os.environ, DSQUANT_CPU_BASELINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.strip() == "baseline"


def test_bench_quick_states_what_it_measures(capsys):
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "vs copy:" in out and "vs NumPy:" in out and "GB/s:" in out   # a legend for every ratio column
    assert "new/out:" in out and "target:" in out
    head = "| op | dtype | bits | scheme | group | rounding | ms | GB/s | vs copy | new/out | vs NumPy | target |"
    assert head in out
    assert "| op | dtype | bits | scheme | group | rounding | GB/s | vs copy | new/out | target |" in out
    assert "| ratio |" not in out
    assert "vs sym:" in out and "| asymmetric |" in out and ">= 0.9 vs sym" in out   # asymmetric rows, their target
    assert ("| bfloat16 |" in out) == (importlib.util.find_spec("ml_dtypes") is not None)


def test_kernels_compile_only_without_cuda_bindings():
    assert_one_line(run(["kernels", "--compile-only"], block=("cuda", "cuda.bindings")),
                    "cuda-bindings", 'pip install ".[compile]"')


def test_kernels_without_nvrtc_library(monkeypatch, capsys):
    pathfinder = pytest.importorskip("cuda.pathfinder")
    from dsquant.backends.cuda import cli, kernels

    def no_library():   # what cuda-bindings raises when it finds no libnvrtc
        raise pathfinder.DynamicLibNotFoundError('Failure finding "libnvrtc.so.13": No such file')
    monkeypatch.setattr(kernels, "supported_archs", no_library)
    assert main(["kernels", "--compile-only"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load NVRTC" in err[0] and 'pip install ".[compile]"' in err[0]
    assert cli.missing.COMPILE in err[0]


def test_kernels_without_cupy_for_the_visible_gpus():
    result = run(["kernels"], block=("cupy",))
    assert_one_line(result, "CuPy", 'pip install ".[cuda13]"', "--compile-only")


def test_gpu_bench_without_cupy():
    assert_one_line(run(["gpu-bench"], block=("cupy",)), "CuPy", 'pip install ".[cuda13]"', ".[cuda12]")


def test_qgz_bench_without_mpi4py():
    assert_one_line(run(["qgz-bench"], block=("mpi4py",)), "mpi4py", 'pip install ".[mpi]"')


def test_qgz_bench_outside_mpiexec():
    pytest.importorskip("mpi4py")
    assert_one_line(run(["qgz-bench", "--numel", "4096"]), "mpiexec -n 4", "this run has 1")
