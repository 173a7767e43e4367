"""The CUDA kernels compile with NVRTC for sm_80 and sm_90 without a GPU: every instantiation,
no spills, no local memory, units of elements stored 16 bytes at a time (the SASS, read with
nvdisasm); the compile cache is keyed on every header; compile errors are readable. Needs
cuda-bindings and nvdisasm (``pip install -e .[compile]``, which the test command installs):
like the interop tests, these fail rather than skip when they are missing."""
import collections
import glob
import io
import re
import shutil
import subprocess

import numpy as np
import pytest

from dsquant.backends.cuda import cli as _kernels_cli
from dsquant.backends.cuda import kernels as _kernels
from dsquant.backends.cuda import launch as _launch
from dsquant.core import dtypes
from _optional import require

require("cuda.bindings.nvrtc")   # missing: fail here, loudly (skip under gpu_check.sh)


@pytest.mark.parametrize("target", _kernels.CHECK_ARCHS)
@pytest.mark.parametrize("module", sorted(_kernels.MODULES))
def test_every_instantiation_compiles_without_spills(kernel_cache, module, target):
    compiled = _kernels.compile_module(module, target)
    assert compiled.path.is_file() and compiled.path.parent == kernel_cache
    resources = compiled.resources()
    assert sorted(resources) == sorted(_kernels.MODULES[module]), "kernels missing from ptxas' report"
    bad = {name: r for name, r in resources.items() if r["stack"] or r["spill_stores"] or r["spill_loads"]}
    assert not bad, f"local memory (stack frame or spills): {bad}"
    assert all(0 < r["registers"] <= 255 for r in resources.values())


def test_cli_compile_only_reports_every_kernel(kernel_cache, capsys):
    argv = ["--compile-only"] + [a for t in _kernels.CHECK_ARCHS for a in ("--arch", t)]
    assert _kernels_cli.main(argv) == 0
    out = capsys.readouterr().out
    total = sum(len(names) for names in _kernels.MODULES.values())
    for target in _kernels.CHECK_ARCHS:
        assert f"{target}: {total} kernels" in out   # one summary line per target, every module counted
        assert "0 spill bytes, 0 stack bytes" in out
    assert out.rstrip().endswith("OK: sm_80 sm_90")


def test_cli_rejects_an_unknown_architecture(capsys):
    assert _kernels_cli.main(["--compile-only", "--arch", "sm_1"]) == 1
    assert "cannot compile for sm_1" in capsys.readouterr().err


def test_numerics_options_are_pinned():
    options = _kernels.options_for("sm_90")
    for flag in ("-ftz=false", "--fmad=false", "-prec-div=true", "-prec-sqrt=true", "-arch=sm_90"):
        assert flag in options
    assert "-Xptxas=-v" in options
    assert "-arch=compute_90" in _kernels.options_for("compute_90")


def test_cache_key_covers_every_header(tmp_path, monkeypatch):
    for source in _kernels.source_dir().iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(_kernels, "source_dir", lambda: tmp_path)
    before = _kernels.cache_key("dsq_fake.cu", "sm_90")
    header = tmp_path / "dsq_philox.cuh"          # reached only through #include
    header.write_bytes(header.read_bytes() + b"\n// edited\n")
    assert _kernels.cache_key("dsq_fake.cu", "sm_90") != before
    assert _kernels.cache_key("dsq_fake.cu", "sm_80") != _kernels.cache_key("dsq_fake.cu", "sm_90")


def test_compile_error_shows_options_log_and_numbered_source(tmp_path, monkeypatch):
    (tmp_path / "dsq_math.cuh").write_text("// stand-in\n")
    (tmp_path / "broken.cu").write_text("__global__ void k(int* p) {\n  *p = undeclared;\n}\n")
    monkeypatch.setattr(_kernels, "source_dir", lambda: tmp_path)
    monkeypatch.setattr(_kernels, "MODULES", {"broken.cu": ("k",)})
    monkeypatch.setenv("DSQUANT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(_kernels.CompileError) as info:
        _kernels.compile_module("broken.cu", "sm_90")
    text = str(info.value)
    assert "-ftz=false" in text and "--fmad=false" in text
    assert "undeclared" in text                               # NVRTC's log
    assert "    2    *p = undeclared;" in text                 # the numbered source
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cli_prints_compile_errors(tmp_path, monkeypatch):
    (tmp_path / "dsq_math.cuh").write_text("")
    (tmp_path / "broken.cu").write_text("this is not CUDA\n")
    monkeypatch.setattr(_kernels, "source_dir", lambda: tmp_path)
    monkeypatch.setattr(_kernels, "MODULES", {"broken.cu": ("k",)})
    out = io.StringIO()
    assert not _kernels_cli.check("sm_80", out=out)
    assert "NVRTC could not compile broken.cu for sm_80" in out.getvalue()


@pytest.mark.parametrize("capability, target", [(90, "sm_90"), (80, "sm_80")])
def test_target_is_the_device_architecture(capability, target):
    assert _kernels.target_for(capability) == target


def test_target_for_an_architecture_newer_than_nvrtc_is_ptx():
    newest = max(_kernels.supported_archs())
    assert _kernels.target_for(newest + 1) == f"compute_{newest}"   # the driver compiles the PTX


def test_ptx_an_older_driver_cannot_load_is_refused_with_the_fix():
    newest = max(_kernels.supported_archs())
    major, minor = _kernels.nvrtc_version()
    same = major * 1000 + minor * 10                       # cudaDriverGetVersion of a driver for this CUDA
    older = same - 10 if minor else same - 100
    with pytest.raises(RuntimeError) as info:
        _kernels.target_for(newest + 10, driver=older)
    text = str(info.value)
    assert f"sm_{newest + 10}" in text and f"NVRTC {major}.{minor}" in text
    assert f"supports CUDA {older // 1000}.{older % 1000 // 10}" in text
    assert "pip install -U nvidia-cuda-nvrtc" in text and f"a driver for CUDA {major}.{minor} or newer" in text
    assert _kernels.target_for(newest + 10, driver=same) == f"compute_{newest}"   # that driver takes the PTX
    assert _kernels.target_for(90, driver=older) == "sm_90"   # machine code loads on older drivers of the major


def test_target_for_an_architecture_older_than_nvrtc_is_an_error():
    with pytest.raises(RuntimeError, match="none at or below"):
        _kernels.target_for(min(_kernels.supported_archs()) - 1)


def test_source_dir_holds_the_kernels():
    root = _kernels.source_dir()
    assert {"dsq_math.cuh", "dsq_philox.cuh"} <= {p.name for p in root.iterdir()}
    assert all((root / module).is_file() for module in _kernels.MODULES)


# ------------------------------------------------------------------------------ launch arguments
_SCALARS = {"x": np.int64, "y": np.uint64, "i": np.int32, "j": np.uint32}


def _parameters(mangled: str) -> list:
    """Parameter types of a dsq kernel from its mangled name: 'ptr' or a NumPy scalar type. Handles
    what the kernels use: pointers to (const) nested names or substitutions, and x/y/i/j; a bare
    substitution repeats an earlier parameter's type, which in these kernels is a pointer."""
    rest = mangled[mangled.index("EEEv") + 4:] if "EEEv" in mangled else mangled[mangled.index("Ev") + 2:]
    params = []
    while rest:
        if rest[0] == "S":
            rest = rest[rest.index("_") + 1:]
            params.append("ptr")
        elif rest[0] == "P":
            rest = rest[1:].removeprefix("K")
            if rest[0] == "N":
                rest = rest[rest.index("E") + 1:]
            elif rest[0] == "S":
                rest = rest[rest.index("_") + 1:]
            else:
                rest = rest[1:]
            params.append("ptr")
        else:
            params.append(_SCALARS[rest[0]])
            rest = rest[1:]
    return params


def test_launch_arguments_match_the_kernel_signatures(kernel_cache):
    """Every plan passes exactly the kernel's parameter types (pointers as uint64): a mismatch
    would be read as garbage by the GPU, silently."""
    lowered = _kernels.compile_module("dsq_fake.cu", "sm_90").lowered
    assert _parameters(lowered[_kernels.fake_resident(0, True, False, 1)]) == (
        ["ptr", "ptr", np.int64, np.int64, np.int32, np.int32, np.uint64, np.uint64])
    seen = set()
    for dtype in range(4):
        for sym in (True, False):
            for stoch in (True, False):
                for numel, groups in ((1000, 10), (1 << 20, 2)):
                    for launch in _launch.fake_quantize(dtype, 0x100, 0x200, numel, groups, 8, sym, stoch, 1, 2,
                                                        keys=0x300):
                        expected = [np.uint64 if p == "ptr" else p for p in _parameters(lowered[launch.kernel])]
                        assert [type(a) for a in launch.args] == expected, launch.kernel
                        seen.add(launch.kernel.split("<")[0])
    assert seen == {"dsq::fake_resident", "dsq::stats_clear", "dsq::stats_chunks", "dsq::fake_chunks"}


def test_integer_launch_arguments_match_the_kernel_signatures(kernel_cache):
    lowered = {**_kernels.compile_module("dsq_fake.cu", "sm_90").lowered,
               **_kernels.compile_module("dsq_int.cu", "sm_90").lowered}
    assert _parameters(lowered[_kernels.dequant_signed(0, True, 2)]) == (
        ["ptr", "ptr", "ptr", "ptr", np.int64, np.int64, np.int64, np.int32])
    plans = [_launch.dequantize_unsigned_half(0x100, 0x200, 0x300, 0x400, 4, 6, bits) for bits in (4, 8)]
    for dtype in range(4):
        for sym in (True, False):
            for bits in (2, 3, 4, 8):
                plans.append(_launch.dequantize(dtype, 0x100, 0x200, 0x300, 4000, 8, bits, sym))
                for numel, groups in ((1000, 10), (1 << 20, 2), (1020, 340)):   # resident, chunked, seams
                    plans.append(_launch.quantize(dtype, 0x100, 0x200, 0x300, numel, groups, bits, sym, keys=0x400))
    seen = set()
    for launch in (launch for plan in plans for launch in plan):
        expected = [np.uint64 if p == "ptr" else p for p in _parameters(lowered[launch.kernel])]
        assert [type(a) for a in launch.args] == expected, launch.kernel
        seen.add(launch.kernel.split("<")[0])
    assert seen == {"dsq::int_quant_resident", "dsq::int_quant_seams", "dsq::stats_clear", "dsq::stats_chunks",
                    "dsq::int_quant_chunks", "dsq::dequant_codes"}


# ------------------------------------------------------------------------------ 16-byte stores
def _nvdisasm() -> str:
    """nvdisasm: on PATH, in a CUDA toolkit, or from the nvidia-cuda-nvdisasm wheel that the
    compile extra installs. Missing: fail (the store check must run in CI)."""
    import nvidia   # namespace package of NVIDIA's wheels (nvrtc, runtime, nvdisasm)
    found = shutil.which("nvdisasm") or next(
        (p for root in nvidia.__path__ for p in sorted(glob.glob(f"{root}/*/bin/nvdisasm"))), None) or next(
        iter(sorted(glob.glob("/usr/local/cuda*/bin/nvdisasm"))), None)
    assert found, "nvdisasm not found: pip install -e .[compile] (brings nvidia-cuda-nvdisasm)"
    return found


def _sass_instructions(cubin) -> dict:
    """{mangled kernel name: Counter of its global load/store opcodes} from nvdisasm's listing."""
    listing = subprocess.run([_nvdisasm(), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    kernels, current = {}, None
    for line in listing.splitlines():
        if m := re.match(r"\.text\.(\S+):", line):
            current = kernels[m.group(1)] = collections.Counter()
        elif current is not None and (m := re.search(r"\b((?:LDG|STG)\.\S+|STL\S*|LDL\S*)", line)):
            current[m.group(1)] += 1
    return kernels


def _unit_store_kernels():
    """(name expression, 16-byte stores it must make per step: units per thread x vectors per unit)
    for every kernel that writes whole units of elements."""
    for dtype, d in enumerate(dtypes.FLOAT_DTYPES):
        vectors = d.unit_elements * d.itemsize // 16
        for sym in (True, False):
            for stoch in (True, False):
                yield _kernels.fake_chunks(dtype, sym, stoch), _kernels.CHUNK_UNITS * vectors
                for r in _kernels.RESIDENT_UNITS:
                    yield _kernels.fake_resident(dtype, sym, stoch, r), r * vectors
            for per in _kernels.CODES_PER_BYTE:
                yield _kernels.dequant_signed(dtype, sym, per), _kernels.CHUNK_UNITS * vectors
    for per in (1, 2):
        yield _kernels.dequant_unsigned_half(per), _kernels.CHUNK_UNITS   # float16 out: one vector a unit


@pytest.mark.parametrize("target", _kernels.CHECK_ARCHS)
def test_units_are_stored_16_bytes_at_a_time(kernel_cache, target):
    """Where a unit of elements is written, the SASS has one 16-byte store (STG.E.128) per vector of
    every unit a thread writes per step; ptxas otherwise splits them (issue 15)."""
    sass, lowered = {}, {}
    for module in ("dsq_fake.cu", "dsq_int.cu"):
        compiled = _kernels.compile_module(module, target)
        sass.update(_sass_instructions(compiled.path))
        lowered.update(compiled.lowered)
    expected = dict(_unit_store_kernels())
    writers = ("dsq::fake_resident<", "dsq::fake_chunks<", "dsq::dequant_codes<")
    assert sorted(expected) == sorted(n for names in _kernels.MODULES.values() for n in names if n.startswith(writers))
    got = {name: sass[lowered[name]]["STG.E.128"] for name in expected}
    short = {name: (got[name], n) for name, n in expected.items() if got[name] < n}
    assert not short, f"(16-byte stores, needed) per kernel: {short}"
    assert all(sass[lowered[name]]["LDG.E.128"] for name in expected if "fake_" in name)   # loads are vectors too
    assert not any(k.startswith(("STL", "LDL")) for c in sass.values() for k in c), "local memory"
