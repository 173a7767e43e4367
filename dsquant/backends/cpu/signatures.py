"""The argument list of every CPU kernel, written once on the Python side.

Each signature lists the fields of the kernel's C++ argument struct (kernels.hpp, zeropp.hpp) in
order, with ``struct`` codes of their C types; packing with native alignment (and the struct's
trailing padding) gives the struct's bytes. At import every layout's size is checked against the
C++ ``sizeof``, so a field added on one side only fails loudly instead of shifting arguments.
"""
from __future__ import annotations

import operator
import struct

from . import _cpu, forksafe

_run = forksafe.guard(_cpu.run)      # safe to call in a forked child (forksafe.py)

# C type -> struct code: pointers are addresses (int), bool is C++ bool (one byte).
_CODES = {"ptr": "P", "i64": "q", "u64": "Q", "int": "i", "float": "f", "bool": "?"}


class Signature:
    """A CPU kernel and its arguments: ``sig(dtype, **fields)`` runs it."""

    def __init__(self, kernel: str, fields: str):
        self.kernel = kernel
        pairs = [f.split(":") for f in fields.split()]
        self.fields = tuple(name for name, _ in pairs)
        # the trailing "0q" pads the end to 8-byte alignment, as the C++ struct's sizeof does
        self.layout = struct.Struct("@" + "".join(_CODES[c] for _, c in pairs) + "0q")
        index, size = _cpu.kernels()[kernel]
        if size != self.layout.size:
            raise ImportError(f"dsquant's CPU kernel {kernel} takes a {size}-byte argument struct but "
                              f"signatures.py describes {self.layout.size} bytes: the two lists differ")
        self.index = index
        self._values = operator.itemgetter(*self.fields)     # the fields' values in order, in C

    def __call__(self, dtype: int = 0, **values) -> None:
        try:
            args = self.layout.pack(*self._values(values)) if len(values) == len(self.fields) else None
        except KeyError:
            args = None
        if args is None:
            raise TypeError(f"{self.kernel} takes {', '.join(self.fields)}; got {', '.join(values)}")
        _run(self.index, dtype, args)

    def run(self, dtype: int, *values) -> None:
        """The kernel with its fields' values given in the order of `fields`: the per-call fast
        path (a keyword call builds a dict of every field, a third of a small call's Python cost)."""
        _run(self.index, dtype, self.layout.pack(*values))


FAKE_QUANTIZE = Signature("fake_quantize", "in_:ptr out:ptr n:i64 groups:i64 bits:int symmetric:bool "
                                           "stochastic:bool seed:u64 offset:u64 threads:int")
INT_QUANTIZE = Signature("int_quantize", "in_:ptr q:ptr params:ptr n:i64 groups:i64 bits:int symmetric:bool "
                                         "threads:int")
INT_DEQUANTIZE = Signature("int_dequantize", "q:ptr params:ptr out:ptr n:i64 groups:i64 bits:int symmetric:bool "
                                             "threads:int")
INT_QUANTIZE_GIVEN = Signature("int_quantize_given", "in_:ptr params:ptr q:ptr n:i64 groups:i64 bits:int "
                                                     "symmetric:bool threads:int")
UINT_DEQUANTIZE_HALF = Signature("uint_dequantize_half", "q:ptr scale:ptr minimum:ptr out:ptr num_group:i64 "
                                                         "group_size:i64 bits:int threads:int")
SWIZZLE_QUANTIZE = Signature("swizzle_quantize", "in_:ptr q:ptr params:ptr err:ptr err_dtype:int beta:float "
                                                 "n:i64 groups:i64 pipe:i64 nodes:i64 dpn:i64 bits:int "
                                                 "symmetric:bool threads:int")
QUANTIZED_REDUCTION = Signature("quantized_reduction", "q_in:ptr params_in:ptr q:ptr params:ptr err:ptr "
                                                       "err_dtype:int beta:float n:i64 in_groups:i64 groups:i64 "
                                                       "devices:i64 bits:int symmetric:bool half_accumulate:bool "
                                                       "threads:int")
FP_DS_QUANTIZE = Signature("fp_ds_quantize", "in_:ptr codes:ptr scales:ptr n:i64 group_size:i64 code_stride:i64 "
                                             "scale_stride:i64 bits:int mantissa:int space:int stochastic:bool "
                                             "seed:u64 offset:u64 threads:int")
FP_DS_DEQUANTIZE = Signature("fp_ds_dequantize", "codes:ptr scales:ptr out:ptr rows:ptr n:i64 group_size:i64 "
                                                 "code_stride:i64 scale_stride:i64 row_elems:i64 bits:int "
                                                 "mantissa:int space:int threads:int")
FP_QUANTIZE = Signature("fp_quantize", "in_:ptr codes:ptr scales:ptr tensor_scale:ptr out:ptr n:i64 groups:i64 "
                                       "fmt:int scaling:int rounding:int stochastic:bool saturate:bool seed:u64 "
                                       "offset:u64 threads:int")
FP_DEQUANTIZE = Signature("fp_dequantize", "codes:ptr scales:ptr tensor_scale:ptr out:ptr n:i64 groups:i64 fmt:int "
                                           "scaling:int threads:int")
