"""The ImportError for a dsquant whose compiled extensions are missing (imported only then).

The usual cause is Python importing the source tree: run in a checkout, ``python -m dsquant`` or
``import dsquant`` finds ``./dsquant`` (no compiled extensions after a plain ``pip install .``)
before the installed package, and would otherwise fail with a confusing circular-import error.
"""
from __future__ import annotations

import importlib.machinery
import os

_EXTENSIONS = (("interop", "_array"), ("backends", "cpu", "_cpu"))


def _built(package: str, parts: tuple[str, ...]) -> bool:
    stem = os.path.join(package, *parts)
    return any(os.path.exists(stem + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def unbuilt_error() -> ImportError | None:
    """The ImportError to raise when an extension module is not built, else None."""
    package = os.path.dirname(os.path.abspath(__file__))
    missing = [".".join(parts) for parts in _EXTENSIONS if not _built(package, parts)]
    if not missing:
        return None
    checkout = os.path.dirname(package)
    if os.path.exists(os.path.join(checkout, "setup.py")):
        return ImportError(
            f"dsquant is being imported from its source tree {package}, whose compiled extensions "
            f"({', '.join(missing)}) are not built. If dsquant is installed (pip install .), run Python "
            f"from another directory or use the `dsquant` command; to work in this checkout, build it "
            f"in place: pip install -e . (or python setup.py build_ext --inplace)")
    return ImportError(f"dsquant at {package} lacks its compiled extensions ({', '.join(missing)}); "
                       f"reinstall it (pip install --force-reinstall . in a dsquant checkout)")
