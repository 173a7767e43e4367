"""The quantized-checkpoint schema (version 1, docs/checkpoints.md): which tensors are quantized
(the selection policy), the per-tensor record written into the safetensors metadata, and the
encoding of one tensor to the stored arrays and back. No file access here (that is files.py)."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import checks, dtypes, formats
from ..core.grouping import Grouping, resolve
from ..ops.integer import dequantize, quantize
from ..ops.quantized import QuantizedTensor

SCHEMA_KEY = "dsquant.schema"        # __metadata__ key: the schema version, a decimal string
TENSORS_KEY = "dsquant.tensors"      # __metadata__ key: JSON object, tensor name -> record
WRITER_KEY = "dsquant.version"       # __metadata__ key: the dsquant version that wrote the file (informative)
SCHEMA_VERSION = 1
RAW = "raw"                          # the format of a tensor stored unchanged
INT_FORMATS = {f"int{b}": b for b in range(formats.INT_BITS[0], formats.INT_BITS[1] + 1)}
FORMATS = (RAW, *INT_FORMATS)        # what this version writes and reads; later: fp8_e4m3, ...
PARAM_FIELDS = {True: ("inv_scale",), False: ("inv_scale", "offset")}    # by `symmetric`
GROUPINGS = ("groups", "block_size", "axis")   # the keys of a record's "grouping" (the ops' arguments)

# safetensors dtype names <-> NumPy (ml_dtypes for bfloat16) names, for what dsquant reads and writes
ST_TO_NUMPY = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
               "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
               "U8": "uint8", "BOOL": "bool"}
NUMPY_TO_ST = {v: k for k, v in ST_TO_NUMPY.items()}
ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
            "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class Policy:
    """What to quantize and how: `bits`-bit codes in blocks of `block_size` consecutive elements
    along the last axis; tensors whose name matches an `include` pattern (all when empty) and no
    `exclude` pattern (fnmatch, e.g. ``"*.weight"``), with at least `skip_small` elements."""
    bits: int = 8
    block_size: int = 128
    symmetric: bool = True
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    skip_small: int = 0

    def __post_init__(self) -> None:
        checks.bits(self.bits, formats.INT_BITS)
        checks.positive(self.block_size, "block_size")
        checks.bool_arg(self.symmetric, "symmetric")
        if checks.int_arg(self.skip_small, "skip_small") < 0:
            raise ValueError(f"skip_small must be 0 or more elements, got {self.skip_small}")


@dataclass(frozen=True)
class Plan:
    """One source tensor: its record (the JSON written into the metadata), the arrays stored for it
    (key, safetensors dtype, shape), and why it is kept unchanged (empty when quantized)."""
    name: str
    record: dict[str, Any]
    stored: tuple[tuple[str, str, tuple[int, ...]], ...]
    kept_because: str = ""


def codes_key(name: str) -> str:
    return f"{name}:codes"


def params_key(name: str) -> str:
    return f"{name}:params"


def keep_reason(name: str, shape: Sequence[int], dtype: str, policy: Policy) -> str:
    """Why the tensor `name` is stored unchanged under `policy`, or '' when it is quantized."""
    numel = math.prod(shape)
    if dtype not in dtypes.BY_NAME:
        return f"not a float tensor ({dtype})"
    if policy.include and not any(fnmatch.fnmatchcase(name, p) for p in policy.include):
        return "not included"
    if any(fnmatch.fnmatchcase(name, p) for p in policy.exclude):
        return "excluded"
    if numel < policy.skip_small or numel == 0:
        return f"small ({numel} < {policy.skip_small} elements)" if numel else "empty"
    if not shape:
        return "0-d (blocks run along the last axis)"
    last = shape[-1]
    if last % policy.block_size:
        return f"last dimension {last} is not a multiple of the block size {policy.block_size}"
    per = formats.codes_per_byte(policy.bits)
    if last % per:
        return f"last dimension {last} does not pack {per} {policy.bits}-bit codes per byte"
    return ""


def plan(name: str, shape: Sequence[int], dtype: str, policy: Policy) -> Plan:
    """The record and stored arrays of tensor `name` (NumPy dtype name `dtype`) under `policy`."""
    shape = tuple(int(n) for n in shape)
    reason = keep_reason(name, shape, dtype, policy)
    if reason:
        if dtype not in NUMPY_TO_ST:
            raise TypeError(f"tensor {name!r} has dtype {dtype}, which dsquant cannot store; "
                            f"supported: {', '.join(NUMPY_TO_ST)}")
        record = {"format": RAW, "data": name, "shape": list(shape), "dtype": dtype}
        return Plan(name, record, ((name, NUMPY_TO_ST[dtype], shape),), reason)
    return _quantized_plan(name, resolve(shape, block_size=policy.block_size), policy.bits, policy.symmetric, dtype)


def plan_quantized(name: str, r: QuantizedTensor[Any, Any]) -> Plan:
    """The plan of a tensor that the caller quantized already (any grouping dsquant.quantize takes)."""
    return _quantized_plan(name, r.grouping, r.bits, r.symmetric, r.dtype)


def _quantized_plan(name: str, g: Grouping, bits: int, symmetric: bool, dtype: str) -> Plan:
    (kind, value), = g.arguments().items()
    fields = PARAM_FIELDS[symmetric]
    record = {"format": f"int{bits}", "bits": bits, "symmetric": symmetric,
              "grouping": {kind: list(value) if isinstance(value, tuple) else value}, "groups": g.groups,
              "codes": codes_key(name), "packed": formats.codes_per_byte(bits) > 1,
              "params": params_key(name), "params_fields": list(fields), "shape": list(g.shape), "dtype": dtype}
    stored = ((codes_key(name), "I8", formats.code_shape(g.shape, bits, name)),
              (params_key(name), "F32", g.params_shape(symmetric)))
    return Plan(name, record, stored)


def grouping_arguments(record: dict[str, Any]) -> dict[str, Any]:
    """The grouping keyword argument of dsquant.quantize / dequantize that a record describes."""
    (kind, value), = record["grouping"].items()
    return {kind: tuple(value) if kind == "block_size" else value}


def encode(x: Any, p: Plan) -> dict[str, np.ndarray]:
    """The stored arrays of tensor `x` (an array, or a QuantizedTensor of :func:`plan_quantized`)
    under its plan `p`."""
    record = p.record
    if record["format"] == RAW:
        return {record["data"]: np.asarray(x)}
    r = x if isinstance(x, QuantizedTensor) else quantize(
        np.ascontiguousarray(x), bits=record["bits"], symmetric=record["symmetric"], **grouping_arguments(record))
    return {record["codes"]: np.asarray(r.codes), record["params"]: np.asarray(r.params)}


def check_record(name: str, record: Any) -> Grouping | None:
    """The grouping of a version-1 record this dsquant can decode (None for raw tensors); a
    ValueError naming what is wrong otherwise."""
    fmt = record.get("format") if isinstance(record, dict) else None
    if fmt not in FORMATS:
        raise ValueError(f"tensor {name!r} is stored in format {fmt!r}, which this dsquant cannot read "
                         f"(it reads {', '.join(FORMATS)}); a newer dsquant may")
    if fmt == RAW:
        return None
    grouping = record.get("grouping")
    if not isinstance(grouping, dict) or len(grouping) != 1 or next(iter(grouping)) not in GROUPINGS:
        raise ValueError(f"tensor {name!r} has grouping {grouping!r}, which this dsquant cannot decode "
                         f"(it reads one of {', '.join(GROUPINGS)})")
    try:
        g = resolve(tuple(record["shape"]), **grouping_arguments(record))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tensor {name!r}: grouping {grouping} does not fit shape {record['shape']}: {exc}") from None
    if (g.groups != record["groups"] or record["bits"] != INT_FORMATS[fmt]
            or record["params_fields"] != list(PARAM_FIELDS[record["symmetric"]])):
        raise ValueError(f"tensor {name!r}: inconsistent record {record}")
    return g


def as_quantized(name: str, record: dict[str, Any], read: Callable[[str], np.ndarray]) -> QuantizedTensor[Any, Any]:
    """The QuantizedTensor of a quantized tensor's record and `read(key)` of its stored arrays."""
    g = check_record(name, record)
    assert g is not None, "a raw tensor has no QuantizedTensor"
    return QuantizedTensor(read(record["codes"]), read(record["params"]), record["bits"], record["symmetric"], g,
                           record["dtype"])


def decode(name: str, record: dict[str, Any], read: Callable[[str], np.ndarray], dtype: Any = None) -> np.ndarray:
    """Tensor `name` from its record and `read(key)` of the stored arrays: dequantized to `dtype`
    (default: the original dtype), or the stored array itself for raw tensors."""
    if check_record(name, record) is None:
        return read(record["data"])
    values: np.ndarray = dequantize(as_quantized(name, record, read), dtype=dtype)
    return values


def relative_error(x: np.ndarray, y: np.ndarray, chunk: int = 1 << 16) -> float:
    """||y - x|| / ||x|| (Frobenius, float64), in chunks so the temporaries stay small; 0 for two
    zero tensors."""
    xf, yf = x.reshape(-1), y.reshape(-1)
    num = den = 0.0
    for i in range(0, xf.size, chunk):
        a = xf[i:i + chunk].astype(np.float64)
        num += float(np.sum(np.square(yf[i:i + chunk].astype(np.float64) - a)))
        den += float(np.sum(np.square(a)))
    return math.sqrt(num / den) if den else (0.0 if num == 0 else math.inf)
