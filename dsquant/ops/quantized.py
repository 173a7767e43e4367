"""The result of :func:`dsquant.quantize`: ``(codes, params)`` as a tuple that also remembers how
they were made, so :func:`dsquant.dequantize` needs nothing else."""
from __future__ import annotations

from typing import Any, Generic, TypeVar

from ..core.grouping import Grouping

CodesT = TypeVar("CodesT")
ParamsT = TypeVar("ParamsT")


class QuantizedTensor(tuple[CodesT, ParamsT], Generic[CodesT, ParamsT]):
    """``(codes, params)`` of :func:`dsquant.quantize`, with what decoding them needs.

    A 2-tuple, so ``q, params = dsquant.quantize(x, ...)`` works as before; ``dsquant.dequantize(r)``
    reads everything else from it.

    Attributes:
        codes: int8 codes (``r[0]``): `shape` with the last dimension times ``bits/8`` when packed.
        params: float32 params (``r[1]``): ``grouping.grid + (1,)`` (symmetric: ``1/scale``) or
            ``+ (2,)`` (asymmetric: ``1/scale``, offset); ``[groups, 1|2]`` for ``groups=``.
        bits: 2..8.
        symmetric: the scheme.
        grouping: a :class:`dsquant.core.grouping.Grouping` (``kind``, ``groups``, ``block_size``,
            ``axis``, ``grid``); ``groups``, ``block_size`` and ``axis`` are also attributes here.
        shape: the shape of the quantized array.
        dtype: its dtype's name (``"float32"``, ``"bfloat16"``, ...): what dequantize returns by default.
    """

    # attributes live in the instance dict (a tuple subclass with __slots__ = () could hold none)
    codes: CodesT
    params: ParamsT
    bits: int
    symmetric: bool
    grouping: Grouping
    dtype: str

    def __new__(cls, codes: CodesT, params: ParamsT, bits: int, symmetric: bool, grouping: Grouping,
                dtype: str) -> QuantizedTensor[CodesT, ParamsT]:
        self = super().__new__(cls, (codes, params))
        self.codes, self.params = codes, params
        self.bits, self.symmetric, self.grouping, self.dtype = bits, symmetric, grouping, dtype
        return self

    def __reduce__(self) -> tuple[Any, ...]:          # pickle: through __new__'s arguments
        return (QuantizedTensor, (self.codes, self.params, self.bits, self.symmetric, self.grouping, self.dtype))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.grouping.shape

    @property
    def groups(self) -> int:
        return self.grouping.groups

    @property
    def block_size(self) -> tuple[int, ...] | None:
        return self.grouping.block_size

    @property
    def axis(self) -> int | None:
        return self.grouping.axis

    def __repr__(self) -> str:
        return (f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, bits={self.bits}, "
                f"symmetric={self.symmetric}, {self.grouping}, codes={_describe(self.codes)}, "
                f"params={_describe(self.params)})")


def _describe(a: Any) -> str:
    shape = tuple(a.shape)
    return f"{type(a).__module__.split('.')[0]}[{', '.join(map(str, shape))}]"
