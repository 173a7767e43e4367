"""The CUDA kernels of ``cuda/*.cu``: which template instantiations exist, and compiling them with
NVRTC into a cubin cached on disk. Needs ``cuda-bindings`` (NVRTC) but neither a GPU nor CuPy, so
the compile check runs anywhere; ``device`` loads the cubins with CuPy.

NVRTC is driven directly rather than through ``cupy.RawModule(code=...)`` because CuPy appends
``-ftz=true`` after the caller's options and NVRTC honours the last occurrence: the numerics
(no flush-to-zero, no FMA contraction, IEEE division and square root) must be pinned here.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ...core import dtypes, missing

# Options every kernel is compiled with (docs/numerics.md): they are part of the numerics contract.
PINNED_OPTIONS = ("-ftz=false", "--fmad=false", "-prec-div=true", "-prec-sqrt=true", "-std=c++17",
                  "-default-device")
CHECK_ARCHS = ("sm_80", "sm_90")          # what the compile check covers

# dsquant dtype code (dsq::DType) -> format struct of cuda/dsq_math.cuh, elements per thread unit,
# bytes of its order key (Fmt::key): columns of the one dtype table.
FORMATS = tuple(f"dsq::{d.cxx_format}" for d in dtypes.FLOAT_DTYPES)
UNIT_ELEMENTS = tuple(d.unit_elements for d in dtypes.FLOAT_DTYPES)
KEY_BYTES = tuple(d.key_bytes for d in dtypes.FLOAT_DTYPES)
RESIDENT_UNITS = (1, 4)                   # units per thread (R) of fake_resident
CHUNK_UNITS = 4                           # units per thread and step of stats_chunks / fake_chunks


def _b(flag: bool) -> str:
    return "true" if flag else "false"


# ------------------------------------------------------------------------------ name expressions
def fake_resident(dtype: int, symmetric: bool, stochastic: bool, units: int) -> str:
    return f"dsq::fake_resident<{FORMATS[dtype]}, {_b(symmetric)}, {_b(stochastic)}, {units}>"


def stats_clear(dtype: int) -> str:
    return f"dsq::stats_clear<{FORMATS[dtype]}>"


def stats_chunks(dtype: int, symmetric: bool) -> str:
    return f"dsq::stats_chunks<{FORMATS[dtype]}, {_b(symmetric)}, {CHUNK_UNITS}>"


def fake_chunks(dtype: int, symmetric: bool, stochastic: bool) -> str:
    return f"dsq::fake_chunks<{FORMATS[dtype]}, {_b(symmetric)}, {_b(stochastic)}, {CHUNK_UNITS}>"


def _fake_instantiations() -> tuple[str, ...]:
    names = []
    for dtype in range(len(FORMATS)):
        names.append(stats_clear(dtype))
        for sym in (True, False):
            names.append(stats_chunks(dtype, sym))
            for stoch in (False, True):
                names.append(fake_chunks(dtype, sym, stoch))
                names.extend(fake_resident(dtype, sym, stoch, r) for r in RESIDENT_UNITS)
    return tuple(names)


CODES_PER_BYTE = (1, 2, 4)                # Per of the integer kernels (core.formats.codes_per_byte of the bits)


def int_quant_resident(dtype: int, symmetric: bool, per: int, units: int) -> str:
    return f"dsq::int_quant_resident<{FORMATS[dtype]}, {_b(symmetric)}, {per}, {units}>"


def int_quant_chunks(dtype: int, symmetric: bool, per: int) -> str:
    return f"dsq::int_quant_chunks<{FORMATS[dtype]}, {_b(symmetric)}, {per}, {CHUNK_UNITS}>"


def int_quant_seams(dtype: int, symmetric: bool) -> str:
    return f"dsq::int_quant_seams<{FORMATS[dtype]}, {_b(symmetric)}>"


def dequant_signed(dtype: int, symmetric: bool, per: int) -> str:
    return f"dsq::dequant_codes<dsq::SignedCodes<{FORMATS[dtype]}, {_b(symmetric)}>, {per}, {CHUNK_UNITS}>"


def dequant_unsigned_half(per: int) -> str:
    return f"dsq::dequant_codes<dsq::UnsignedHalf, {per}, {CHUNK_UNITS}>"


def _int_instantiations() -> tuple[str, ...]:
    names = [dequant_unsigned_half(per) for per in (1, 2)]
    for dtype in range(len(FORMATS)):
        for sym in (True, False):
            names.append(int_quant_seams(dtype, sym))
            for per in CODES_PER_BYTE:
                names.append(int_quant_chunks(dtype, sym, per))
                names.append(dequant_signed(dtype, sym, per))
                names.extend(int_quant_resident(dtype, sym, per, r) for r in RESIDENT_UNITS)
    return tuple(names)


def int_quant_given(dtype: int, symmetric: bool, per: int) -> str:
    return f"dsq::int_quant_given<{FORMATS[dtype]}, {_b(symmetric)}, {per}>"


def _static_instantiations() -> tuple[str, ...]:
    return tuple(int_quant_given(d, sym, per) for d in range(len(FORMATS)) for sym in (True, False)
                 for per in CODES_PER_BYTE)


# ZeRO++ ops (dsq_zeropp.cu): LoCo error buffer formats by dsquant dtype code; float32 stands in
# (unused) for "no error buffer".
ERROR_FORMATS = FORMATS[:3]


def swizzle_quant(dtype: int, error_dtype: int | None) -> str:
    loco = error_dtype is not None
    return f"dsq::swizzle_quant<{FORMATS[dtype]}, {ERROR_FORMATS[error_dtype if loco else 2]}, {_b(loco)}>"


def quant_reduce(error_dtype: int | None) -> str:
    loco = error_dtype is not None
    return f"dsq::quant_reduce<{ERROR_FORMATS[error_dtype if loco else 2]}, {_b(loco)}>"


def _zeropp_instantiations() -> tuple[str, ...]:
    errors = (None, *range(len(ERROR_FORMATS)))
    return tuple(swizzle_quant(d, e) for d in range(len(FORMATS)) for e in errors) + tuple(
        quant_reduce(e) for e in errors)


# source file in cuda/ -> every instantiation it is compiled with
MODULES = {"dsq_fake.cu": _fake_instantiations(), "dsq_int.cu": _int_instantiations(),
           "dsq_zeropp.cu": _zeropp_instantiations(), "dsq_static.cu": _static_instantiations()}


def module_of(name: str) -> str:
    for module, names in MODULES.items():
        if name in names:
            return module
    raise KeyError(f"{name!r} is not a kernel instantiation of dsquant")


# ------------------------------------------------------------------------------ sources and cache
def source_dir() -> Path:
    """Where the CUDA sources are: ``dsquant/_cuda_src`` in an installed package (setup.py ships
    ``cuda/`` there), ``<repo>/cuda`` in a source checkout or an editable install."""
    package = Path(__file__).resolve().parents[2]        # dsquant/
    for candidate in (package / "_cuda_src", package.parent / "cuda"):
        if (candidate / "dsq_math.cuh").is_file():
            return candidate
    raise FileNotFoundError(f"dsquant's CUDA sources (dsq_math.cuh) are neither in {package / '_cuda_src'} "
                            f"nor in {package.parent / 'cuda'}; reinstall dsquant")


def cache_dir() -> Path:
    """Compiled kernels: ``$DSQUANT_CACHE_DIR``, else ``~/.cache/dsquant``."""
    return Path(os.environ.get("DSQUANT_CACHE_DIR") or Path.home() / ".cache" / "dsquant")


def _sources() -> dict[str, bytes]:
    """Every file of the source directory, by name: the cache key covers all of them, since a
    header reached through -I is invisible to a key made from the main file alone."""
    root = source_dir()
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.suffix in (".cu", ".cuh")}


# ------------------------------------------------------------------------------ NVRTC
def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        try:
            from cuda import nvrtc  # cuda-python before cuda.bindings existed
        except ImportError:
            raise missing.MissingDependency(f"compiling dsquant's CUDA kernels needs NVRTC through cuda-bindings: "
                                            f"{missing.CUDA}; or, for the compile check on a machine without a "
                                            f"GPU, {missing.COMPILE}") from None
    return nvrtc


def _call(nvrtc, result):
    """Unpack a cuda-bindings result tuple, raising on an NVRTC error."""
    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise RuntimeError(f"NVRTC error {int(err)}: {msg.decode(errors='replace')}")
    return values[0] if len(values) == 1 else tuple(values)


def nvrtc_version() -> tuple[int, int]:
    nvrtc = _nvrtc()
    return tuple(_call(nvrtc, nvrtc.nvrtcVersion()))


def supported_archs() -> tuple[int, ...]:
    """Compute capabilities this NVRTC can emit machine code (SASS) for, e.g. (75, 80, 86, 90, ...)."""
    nvrtc = _nvrtc()
    return tuple(int(a) for a in _call(nvrtc, nvrtc.nvrtcGetSupportedArchs()))


def _version(v: tuple[int, int]) -> str:
    return ".".join(map(str, v))


def target_for(capability: int, driver: int | None = None) -> str:
    """The NVRTC target for a device of compute capability `capability` (e.g. 90): its own
    machine code when this NVRTC knows the architecture, else PTX for the newest older virtual
    architecture it knows, which the driver compiles when the module is loaded.

    `driver` is the CUDA version the driver supports (``cudaDriverGetVersion``: 13000 for 13.0).
    A driver loads PTX of its own CUDA version or older only, so when the target is PTX from a
    newer NVRTC this raises, naming the versions and what to install, instead of the driver's
    "unsupported toolchain" at load time."""
    archs = supported_archs()
    if capability in archs:
        return f"sm_{capability}"
    older = [a for a in archs if a <= capability]
    if not older:
        raise RuntimeError(f"NVRTC {_version(nvrtc_version())} supports compute capabilities "
                           f"{archs}, none at or below the device's {capability}")
    major, minor = nvrtc_version()
    if driver is not None and driver < major * 1000 + minor * 10:
        raise RuntimeError(ptx_unloadable(capability, driver))
    return f"compute_{max(older)}"


def ptx_unloadable(capability: int, driver: int, error: str | None = None) -> str:
    """Why a GPU newer than NVRTC's list cannot run dsquant's kernels with this driver, and the
    fix; `error`: the driver's own words, when it refused to load the PTX."""
    v = _version(nvrtc_version())
    d = f"{driver // 1000}.{driver % 1000 // 10}"
    archs = ", ".join(f"sm_{a}" for a in supported_archs())
    why = (f"the driver (CUDA {d}) could not load the PTX NVRTC {v} made instead: {error}" if error else
           f"the PTX it makes instead cannot be loaded by this driver, which supports CUDA {d} (a driver "
           f"loads PTX of its own CUDA version or older)")
    return (f"dsquant cannot run its kernels on this GPU (compute capability {capability // 10}.{capability % 10}, "
            f"sm_{capability}): NVRTC {v} makes machine code only for {archs}, and {why}. Install an NVRTC "
            f"that knows sm_{capability} (pip install -U nvidia-cuda-nvrtc cuda-bindings for CUDA 13, "
            f"nvidia-cuda-nvrtc-cu12 for CUDA 12), or a driver for CUDA {v} or newer (nvidia-smi shows the "
            f"driver's CUDA version).")


class CompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message holds the options, the log and the source."""


@dataclass
class Compiled:
    """A compiled module: the binary on disk (cubin for sm_XX targets, PTX for compute_XX) and the
    lowered (mangled) name of every name expression."""
    module: str
    target: str
    path: Path
    lowered: dict[str, str]
    log: str

    def resources(self) -> dict[str, dict[str, int]]:
        """Registers, stack frame and spills per name expression, from ptxas' report in the log."""
        by_mangled = _parse_ptxas(self.log)
        return {name: by_mangled[mangled] for name, mangled in self.lowered.items() if mangled in by_mangled}


_PTXAS_FUNCTION = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")


def _parse_ptxas(log: str) -> dict[str, dict[str, int]]:
    info: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if m := _PTXAS_FUNCTION.search(line):
            current = info.setdefault(m.group(1), {})
        elif current is not None and (m := _PTXAS_FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := _PTXAS_REGS.search(line)):
            current["registers"] = int(m.group(1))
    return info


def cache_key(module: str, target: str, sources: dict[str, bytes] | None = None) -> str:
    """What a compiled module depends on: NVRTC's version, the target, the options, the name
    expressions, and the content of every source file (headers included)."""
    sources = _sources() if sources is None else sources
    return hashlib.sha256(json.dumps({
        "nvrtc": nvrtc_version(), "module": module, "target": target, "options": options_for(target),
        "names": MODULES[module], "sources": {k: hashlib.sha256(v).hexdigest() for k, v in sources.items()},
    }, sort_keys=True).encode()).hexdigest()[:32]


def options_for(target: str) -> tuple[str, ...]:
    arch = f"-arch={target}"
    verbose = ("-Xptxas=-v",) if target.startswith("sm_") else ()   # ptxas runs for sm_ targets only
    return PINNED_OPTIONS + (arch,) + verbose


_lock = threading.Lock()


def compile_module(module: str, target: str) -> Compiled:
    """Compile (or take from the disk cache) every instantiation of ``cuda/<module>`` for `target`
    (``sm_90``, or ``compute_90`` for PTX)."""
    sources = _sources()
    if module not in sources:
        raise FileNotFoundError(f"no kernel source {module} in {source_dir()}")
    names = MODULES[module]
    options = options_for(target)
    nvrtc = _nvrtc()
    key = cache_key(module, target, sources)
    suffix = ".cubin" if target.startswith("sm_") else ".ptx"
    root = cache_dir()
    binary, meta = root / f"{key}{suffix}", root / f"{key}.json"
    with _lock:
        if binary.is_file() and meta.is_file():
            saved = json.loads(meta.read_text())
            return Compiled(module, target, binary, saved["lowered"], saved["log"])
        image, lowered, log = _compile(nvrtc, module, sources[module], names, options, target)
        root.mkdir(parents=True, exist_ok=True)
        _write_atomic(binary, image)
        _write_atomic(meta, json.dumps({"module": module, "target": target, "options": options,
                                        "lowered": lowered, "log": log}, indent=1).encode())
        return Compiled(module, target, binary, lowered, log)


def _compile(nvrtc, module: str, source: bytes, names, options, target):
    include = f"-I{source_dir()}"
    prog = _call(nvrtc, nvrtc.nvrtcCreateProgram(source, module.encode(), 0, [], []))
    try:
        for name in names:
            _call(nvrtc, nvrtc.nvrtcAddNameExpression(prog, name.encode()))
        opts = [o.encode() for o in (*options, include)]
        err, = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _call(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog))
        buf = b" " * size
        _call(nvrtc, nvrtc.nvrtcGetProgramLog(prog, buf))
        log = buf.rstrip(b"\x00 ").decode(errors="replace")
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            numbered = "\n".join(f"{i:5d}  {line}" for i, line in
                                 enumerate(source.decode(errors="replace").splitlines(), 1))
            raise CompileError(f"NVRTC could not compile {module} for {target}\n"
                               f"options: {' '.join((*options, include))}\n--- log ---\n{log}\n"
                               f"--- {module} ---\n{numbered}")
        lowered = {n: _call(nvrtc, nvrtc.nvrtcGetLoweredName(prog, n.encode())).decode() for n in names}
        if target.startswith("sm_"):
            size = _call(nvrtc, nvrtc.nvrtcGetCUBINSize(prog))
            image = b" " * size
            _call(nvrtc, nvrtc.nvrtcGetCUBIN(prog, image))
        else:
            size = _call(nvrtc, nvrtc.nvrtcGetPTXSize(prog))
            image = b" " * size
            _call(nvrtc, nvrtc.nvrtcGetPTX(prog, image))
            image = image.rstrip(b"\x00")
        return image, lowered, log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
