"""Static types of the array arguments and results (for type checkers; nothing here runs checks).

dsquant takes any object with ``__dlpack__`` and answers in the caller's framework, so the ops are
typed with a TypeVar bound to the DLPack protocol: a NumPy array in, a NumPy array out; a torch
tensor in, a torch tensor out. (An unknown DLPack producer's results are NumPy or CuPy arrays at
run time: its static result type is the input's, which is the one inexact case.)
"""
from __future__ import annotations

from typing import Any, Protocol, TypeVar


class DLPackArray(Protocol):
    """Anything with ``__dlpack__``: NumPy, CuPy, torch and JAX arrays, and other producers."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...


ArrayT = TypeVar("ArrayT", bound=DLPackArray)     # the input's array type, kept by the result
ParamsT = TypeVar("ParamsT", bound=DLPackArray)   # a second input's type (params), kept likewise
