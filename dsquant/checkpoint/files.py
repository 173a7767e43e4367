"""Quantized checkpoints in safetensors files (schema in docs/checkpoints.md): save_quantized and
load_quantized on dicts of NumPy arrays, and quantize_file / dequantize_file, which stream one
tensor at a time so that memory is bounded by the largest tensor rather than the file."""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from .._info import __version__
from ..core import dtypes
from ..core.missing import MissingDependency
from ..ops.quantized import QuantizedTensor
from . import schema
from .schema import Plan, Policy

if TYPE_CHECKING:
    from types import TracebackType

SAFETENSORS = 'pip install safetensors (dsquant depends on it; a dsquant checkout: pip install .)'
BF16 = 'pip install ".[bf16]" in a dsquant checkout (ml_dtypes: bfloat16 NumPy arrays)'


@dataclass(frozen=True)
class TensorReport:
    """One tensor of a quantized checkpoint: how it is stored, its error, its bytes."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    stored_as: str             # "int4, blocks of 128", or "as is: <why>"
    relative_error: float      # ||dequantized - original|| / ||original||; 0 when stored as is, NaN for a
                               # QuantizedTensor given to save_quantized (the original is not known)
    bytes_before: int
    bytes_after: int


def _safe_open() -> Any:
    try:
        from safetensors import safe_open
    except ImportError:
        raise MissingDependency(f"reading safetensors files needs the safetensors package: {SAFETENSORS}") from None
    return safe_open


def _need_bfloat16(dtypes_seen: Sequence[str]) -> None:
    if "bfloat16" in dtypes_seen:
        try:
            import ml_dtypes  # noqa: F401 - registers NumPy's bfloat16, which safetensors' NumPy API needs
        except ImportError:
            raise MissingDependency(f"bfloat16 tensors as NumPy arrays need ml_dtypes: {BF16}") from None


def _nbytes(st_dtype: str, shape: Sequence[int]) -> int:
    return schema.ITEMSIZE[st_dtype] * math.prod(shape)


def _stored_as(p: Plan) -> str:
    if p.kept_because:
        return f"as is: {p.kept_because}"
    (kind, value), = p.record["grouping"].items()
    blocks = f"blocks of {value[-1]}" if kind == "block_size" and all(b == 1 for b in value[:-1]) else \
        f"{kind}={tuple(value) if isinstance(value, list) else value}"
    return f"{p.record['format']}{'' if p.record['symmetric'] else ' asym'}, {blocks}"


def _report(p: Plan, x: Any, stored: Mapping[str, np.ndarray]) -> TensorReport:
    """How tensor `x` was stored, and its relative error read back from what was stored (NaN for
    a QuantizedTensor given by the caller: the original is not known)."""
    after = sum(a.nbytes for a in stored.values())
    if isinstance(x, QuantizedTensor):
        size = math.prod(x.shape) * dtypes.BY_NAME[x.dtype].itemsize
        return TensorReport(p.name, x.shape, x.dtype, _stored_as(p), math.nan, size, after)
    error = 0.0 if p.kept_because else schema.relative_error(x, schema.decode(p.name, p.record, stored.__getitem__))
    return TensorReport(p.name, tuple(x.shape), x.dtype.name, _stored_as(p), error, x.nbytes, after)


def _metadata(source: Mapping[str, str], plans: Sequence[Plan]) -> dict[str, str]:
    import json
    kept = {k: v for k, v in source.items() if not k.startswith("dsquant.")}
    return {**kept, schema.SCHEMA_KEY: str(schema.SCHEMA_VERSION), schema.WRITER_KEY: __version__,
            schema.TENSORS_KEY: json.dumps({p.name: p.record for p in plans}, separators=(",", ":"))}


def _check_names(plans: Sequence[Plan]) -> None:
    seen: dict[str, str] = {}
    for p in plans:
        for key, _, _ in p.stored:
            if key in seen:
                raise ValueError(f"tensor {p.name!r} would be stored as {key!r}, which tensor {seen[key]!r} "
                                 f"already uses; rename one of them")
            seen[key] = p.name


def read_records(metadata: Mapping[str, str] | None, path: str) -> dict[str, dict[str, Any]]:
    """The per-tensor records of a dsquant file's metadata (checked: version, formats)."""
    import json
    metadata = metadata or {}
    if schema.SCHEMA_KEY not in metadata:
        raise ValueError(f"{path} is not a dsquant quantized checkpoint (its metadata has no "
                         f"{schema.SCHEMA_KEY!r}); write one with dsquant.save_quantized or "
                         f"`dsquant quantize-checkpoint`")
    version = metadata[schema.SCHEMA_KEY]
    if not version.isdigit() or int(version) > schema.SCHEMA_VERSION:
        raise ValueError(f"{path} uses dsquant checkpoint schema {version!r}; this dsquant reads versions "
                         f"1..{schema.SCHEMA_VERSION}: upgrade dsquant")
    records: dict[str, dict[str, Any]] = json.loads(metadata[schema.TENSORS_KEY])
    for name, record in records.items():
        schema.check_record(name, record)
    return records


class StreamWriter:
    """A safetensors file written one tensor at a time: the header (every key, dtype, shape and
    offset) is known up front, each tensor's bytes go to their offset as they come. Tensors are laid
    out widest dtype first (as safetensors does), so each is aligned to its item size. The file
    appears at `path` only when every tensor was written (``<path>.partial`` until then)."""

    def __init__(self, path: str, items: Sequence[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]):
        import json
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        self.slots: dict[str, tuple[int, int]] = {}
        offset = 0
        for key, st_dtype, shape in sorted(items, key=lambda item: -schema.ITEMSIZE[item[1]]):
            size = _nbytes(st_dtype, shape)
            header[key] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.slots[key] = (offset, size)
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)          # the data starts 8-byte aligned
        self.path, self.partial = path, path + ".partial"
        self.file: BinaryIO = open(self.partial, "wb")
        self.file.write(len(blob).to_bytes(8, "little") + blob)
        self.base = 8 + len(blob)
        self.file.truncate(self.base + offset)
        self.pending = set(self.slots)

    def write(self, key: str, array: np.ndarray) -> None:
        offset, size = self.slots[key]
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if data.size != size:
            raise ValueError(f"{key}: {data.size} bytes, but the header says {size}")
        self.file.seek(self.base + offset)
        self.file.write(data.data)
        self.pending.discard(key)

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.file.close()
        if kind is None and not self.pending:
            os.replace(self.partial, self.path)
            return
        os.remove(self.partial)
        if kind is None:
            raise RuntimeError(f"{self.path}: tensors {sorted(self.pending)} were never written")


def _progress(total: int, enabled: bool | None) -> Any:
    """A tqdm bar over `total` bytes on a terminal (stderr), when tqdm is installed; else None."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, leave=False)


def _source_tensors(path: str) -> tuple[list[tuple[str, str, tuple[int, ...]]], dict[str, str]]:
    """(name, NumPy dtype name, shape) of every tensor of a safetensors file, and its metadata."""
    with _safe_open()(path, framework="np") as f:
        metadata = f.metadata() or {}
        found = []
        for name in f.keys():
            piece = f.get_slice(name)
            st_dtype = piece.get_dtype()
            if st_dtype not in schema.ST_TO_NUMPY:
                raise TypeError(f"{path}: tensor {name!r} has dtype {st_dtype}, which dsquant cannot read "
                                f"(it reads {', '.join(schema.ST_TO_NUMPY)})")
            found.append((name, schema.ST_TO_NUMPY[st_dtype], tuple(piece.get_shape())))
    _need_bfloat16([d for _, d, _ in found])
    return found, metadata


def _one_at_a_time(path: str, keys: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """The tensors `keys` of a safetensors file, one at a time. The file is reopened for each: a
    safe_open handle maps the whole file, and every page it has read stays in the process's resident
    set until the handle closes (one handle over a file grows RSS by the file's size)."""
    safe_open = _safe_open()
    for key in keys:
        with safe_open(path, framework="np") as f:
            array = f.get_tensor(key)
        yield key, array
        del array                  # before the next one is read: one tensor at a time


def quantize_file(src: str, dst: str, policy: Policy, *, progress: bool | None = None) -> list[TensorReport]:
    """Quantize the safetensors file `src` into `dst` (schema version 1), one tensor at a time.

    Args:
        src: a safetensors file of float (and any other) tensors.
        dst: the quantized file to write (replaced only once complete).
        policy: which tensors to quantize, and how (bits, block size, symmetric).
        progress: a progress bar on stderr (tqdm); None: when stderr is a terminal.

    Returns:
        One report per tensor, in the source's order.
    """
    found, metadata = _source_tensors(src)
    if schema.SCHEMA_KEY in metadata:
        raise ValueError(f"{src} is already a dsquant quantized checkpoint; quantize the original, or "
                         f"`dsquant dequantize-checkpoint` it first")
    plans = {name: schema.plan(name, shape, dtype, policy) for name, dtype, shape in found}
    _check_names(list(plans.values()))
    items = [item for p in plans.values() for item in p.stored]
    reports = []
    bar = _progress(sum(_nbytes(schema.NUMPY_TO_ST[d], s) for _, d, s in found), progress)
    with StreamWriter(dst, items, _metadata(metadata, list(plans.values()))) as out:
        for name, x in _one_at_a_time(src, list(plans)):
            p = plans[name]
            stored = schema.encode(x, p)
            for key, array in stored.items():
                out.write(key, array)
            reports.append(_report(p, x, stored))
            del x, stored
            if bar is not None:
                bar.update(reports[-1].bytes_before)
    if bar is not None:
        bar.close()
    return reports


def dequantize_file(src: str, dst: str, *, dtype: Any = None, progress: bool | None = None) -> list[TensorReport]:
    """Write the dequantized tensors of the dsquant file `src` to the plain safetensors file `dst`
    (original names, shapes and dtypes, or `dtype` for the quantized ones), one tensor at a time.

    Returns:
        One report per tensor: bytes before are the stored bytes, after the dequantized ones.
    """
    with _safe_open()(src, framework="np") as f:
        metadata = f.metadata() or {}
    records = read_records(metadata, src)
    out_dtype = {name: r["dtype"] if r["format"] == schema.RAW or dtype is None else str(dtype)
                 for name, r in records.items()}
    _need_bfloat16(list(out_dtype.values()))
    items = [(name, schema.NUMPY_TO_ST[out_dtype[name]], tuple(r["shape"])) for name, r in records.items()]
    kept = {k: v for k, v in metadata.items() if not k.startswith("dsquant.")}
    reports = []
    bar = _progress(sum(_nbytes(st, shape) for _, st, shape in items), progress)
    with StreamWriter(dst, items, kept) as out:
        for name, r in records.items():
            keys = [r["data"]] if r["format"] == schema.RAW else [r["codes"], r["params"]]
            stored = dict(_one_at_a_time(src, keys))
            y = schema.decode(name, r, stored.__getitem__, None if r["format"] == schema.RAW else out_dtype[name])
            out.write(name, y)
            reports.append(TensorReport(name, tuple(y.shape), str(y.dtype), r["format"], 0.0,
                                        sum(a.nbytes for a in stored.values()), y.nbytes))
            del y, stored
            if bar is not None:
                bar.update(reports[-1].bytes_after)
    if bar is not None:
        bar.close()
    return reports


def save_quantized(path: str | os.PathLike[str], tensors: Mapping[str, Any], *, bits: int = 8, block_size: int = 128,
                   symmetric: bool = True, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   skip_small: int = 0, metadata: Mapping[str, str] | None = None) -> list[TensorReport]:
    """Quantize a dict of NumPy arrays and save it as a self-describing safetensors file.

    Float tensors (float16, bfloat16, float32, float64) become `bits`-bit integer codes in
    DeepSpeed's format (docs/format.md) with one float32 params row per block of `block_size`
    consecutive elements along the last axis; a tensor is stored unchanged when it is not float, is
    not selected (`include` / `exclude` fnmatch patterns on its name, `skip_small` elements), or its
    last dimension is not a multiple of `block_size`. The metadata records everything
    :func:`load_quantized` needs (docs/checkpoints.md, schema version 1).

    Args:
        path: the .safetensors file to write.
        tensors: name -> array (NumPy, or anything ``numpy.asarray`` takes), or a
            :class:`dsquant.QuantizedTensor` of NumPy arrays from ``dsquant.quantize`` (any grouping:
            ``groups=``, ``block_size=`` tiles, ``axis=``), stored as it is (its report's
            ``relative_error`` is NaN: the original is not known).
        bits: 2..8; 8, 4 and 2 are packed (8/bits codes per byte).
        block_size: elements per group, along the last axis (it must divide the last dimension).
        symmetric: True: one params field per group (``inv_scale``); False: two (``inv_scale``, ``offset``).
        include: fnmatch patterns; when given, only tensors whose name matches one are quantized.
        exclude: fnmatch patterns of tensors stored unchanged.
        skip_small: tensors with fewer elements are stored unchanged.
        metadata: extra ``__metadata__`` entries (strings), kept in the file.

    Returns:
        One report per tensor (how it was stored, its relative error, bytes before and after).

    Examples:
        >>> import numpy as np, dsquant, tempfile, os
        >>> w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float16)
        >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
        >>> [r.stored_as for r in dsquant.save_quantized(path, {"w": w, "b": w[0]}, bits=4, skip_small=1000)]
        ['int4, blocks of 128', 'as is: small (256 < 1000 elements)']
        >>> back = dsquant.load_quantized(path)
        >>> back["w"].dtype, back["w"].shape, bool(np.abs(back["w"] - w).max() <= np.abs(w).max() / 8)
        (dtype('float16'), (64, 256), True)
    """
    policy = Policy(bits, block_size, symmetric, tuple(include), tuple(exclude), skip_small)
    arrays = {name: t if isinstance(t, QuantizedTensor) else np.asarray(t) for name, t in tensors.items()}
    _need_bfloat16([a.dtype if isinstance(a, QuantizedTensor) else a.dtype.name for a in arrays.values()])
    plans = [schema.plan_quantized(name, a) if isinstance(a, QuantizedTensor) else
             schema.plan(name, a.shape, a.dtype.name, policy) for name, a in arrays.items()]
    _check_names(plans)
    stored: dict[str, np.ndarray] = {}
    reports = []
    for p in plans:
        x = arrays[p.name]
        mine = schema.encode(x, p)
        stored.update((k, np.ascontiguousarray(v)) for k, v in mine.items())
        reports.append(_report(p, x, mine))
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise MissingDependency(f"writing safetensors files needs the safetensors package: {SAFETENSORS}") from None
    save_file(stored, os.fspath(path), metadata=_metadata(dict(metadata or {}), plans))
    return reports


def load_quantized(path: str | os.PathLike[str], *, dtype: Any = None,
                   dequantize: bool = True) -> dict[str, Any]:
    """The tensors of a file written by :func:`save_quantized` or ``dsquant quantize-checkpoint``.

    Args:
        path: the .safetensors file.
        dtype: the dtype of the dequantized tensors (a name or NumPy dtype); default: each
            tensor's original dtype. Tensors stored as they were keep theirs.
        dequantize: False: quantized tensors come back as :class:`dsquant.QuantizedTensor`
            (NumPy codes and params; ``dsquant.dequantize(r)`` decodes one), not as values.

    Returns:
        name -> NumPy array (original names, shapes and dtypes), or QuantizedTensor.

    Torch users: ``model.load_state_dict({k: torch.from_numpy(v) for k, v in
    dsquant.load_quantized(path).items()})`` (bfloat16 arrays: ``load_quantized(path, dtype="float32")``,
    or ``torch.from_numpy(v.view("uint16")).view(torch.bfloat16)``).
    """
    path = os.fspath(path)
    with _safe_open()(path, framework="np") as f:
        records = read_records(f.metadata(), path)
        _need_bfloat16([r["dtype"] for r in records.values()] + ([str(dtype)] if dtype is not None else []))
        out: dict[str, Any] = {}
        for name, r in records.items():
            if r["format"] == schema.RAW:
                out[name] = f.get_tensor(r["data"])
            elif dequantize:
                out[name] = schema.decode(name, r, f.get_tensor, dtype)
            else:
                out[name] = schema.as_quantized(name, r, f.get_tensor)
        return out


def format_report(reports: Sequence[TensorReport], src_bytes: int | None = None,
                  dst_bytes: int | None = None) -> str:
    """The per-tensor table (Markdown) and a closing line with the total compression."""
    lines = ["| tensor | shape | dtype | stored as | rel. error | bytes before | bytes after |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        error = f"{r.relative_error:.2e}" if not r.stored_as.startswith("as is") else "0 (exact)"
        lines.append(f"| {r.name} | {'x'.join(map(str, r.shape)) or '()'} | {r.dtype} | {r.stored_as} | {error} "
                     f"| {r.bytes_before} | {r.bytes_after} |")
    before, after = sum(r.bytes_before for r in reports), sum(r.bytes_after for r in reports)
    quantized = [r for r in reports if not r.stored_as.startswith("as is")]
    total = (f"| total ({len(quantized)} of {len(reports)} quantized) | | | | | {before} | {after} |")
    lines.append(total)
    ratio = before / after if after else math.inf
    summary = f"compression: {ratio:.2f}x of the tensor bytes ({before} -> {after})"
    if src_bytes is not None and dst_bytes is not None:
        summary += f"; files: {src_bytes} -> {dst_bytes} bytes ({src_bytes / dst_bytes:.2f}x)"
    return "\n".join(lines) + "\n\n" + summary
