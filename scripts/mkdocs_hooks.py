"""mkdocs hooks (mkdocs.yml, ``hooks:``): every public object of dsquant has a docstring, and the
docstrings' Sphinx roles (``:func:`quantize```) render as plain code.

Public means: listed in ``__all__`` of ``dsquant``, ``dsquant.compat.deepspeed`` or
``dsquant.distributed``, and the public methods of the classes among them. A missing docstring is
logged as a warning, which ``mkdocs build --strict`` turns into a failed build. The modules are
imported (so dsquant must be installed or built in place): the compat module makes some of its
functions, and their docstrings, at import time.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.dsquant")
PUBLIC_MODULES = ("dsquant", "dsquant.compat.deepspeed", "dsquant.distributed")


def _undocumented() -> list[str]:
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        if not inspect.getdoc(module):
            missing.append(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (callable(obj) or inspect.isclass(obj)):
                continue                       # constants: documented where they are defined
            if not inspect.getdoc(obj):
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(obj) and not issubclass(obj, int):
                for attr, member in vars(obj).items():
                    if attr.startswith("_") or not callable(getattr(member, "__func__", member)):
                        continue
                    if not inspect.getdoc(member):
                        missing.append(f"{module_name}.{name}.{attr}")
    return missing


def on_config(config: Any) -> Any:
    for name in _undocumented():
        log.warning(f"{name} has no docstring (public API: it appears in the API reference)")
    return config


_ROLE = re.compile(r":(?:func|meth|class|attr|data|mod):(?=<code>)")


def on_page_content(html: str, **kwargs: Any) -> str:
    """``:func:`x``` in a docstring reaches the page as ``:func:<code>x</code>``: keep the code."""
    return _ROLE.sub("", html)
