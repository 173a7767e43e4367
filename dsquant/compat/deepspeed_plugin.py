"""Make DeepSpeed use dsquant's quantizer in one call: the machinery behind
``dsquant.compat.deepspeed.install()`` (which passes its own module as `ops`).

DeepSpeed loads its quantizer extension through ``QuantizerBuilder().load()`` and keeps the module
in a global of each user. :func:`install` sets every one of those caches that the installed
DeepSpeed has and swaps the quantizer's own builder (never a class other builders share: on the
CPU accelerator ``QuantizerBuilder`` is DeepSpeed's generic ``NotImplementedBuilder``):

* ``deepspeed.ops.quantizer.quantizer.quantizer_cuda_module`` (``ds_quantizer``, MoQ; gone in 0.19.8)
* ``deepspeed.runtime.comm.coalesced_collectives.quantizer_module`` (qgZ)
* ``deepspeed.runtime.zero.partition_parameters.CUDAQuantizer.quantizer_cuda_module`` (qwZ)
* ``deepspeed.inference.quantization.utils.quantizer_module`` (inference int4/int8 weights)
* ``deepspeed.ops.op_builder.QuantizerBuilder`` and the accelerator's ``get_op_builder("QuantizerBuilder")``

and routes DeepSpeed's FP quantizer (``FP_Quantize``) to :mod:`dsquant.compat.deepspeed_fp` the same
way: ``deepspeed.ops.fp_quantizer.quantize.fp_quant_module`` (its cache), the builder name that
module imported, ``deepspeed.ops.op_builder.FPQuantizerBuilder`` and the accelerator's
``get_op_builder("FPQuantizerBuilder")``.

It is idempotent and cheap after the first call; call it on every rank after importing deepspeed
and before ``deepspeed.initialize``. For ranks started by DeepSpeed's launcher, set
``DSQUANT_DEEPSPEED=1`` (the launcher passes the environment on) and have every rank's interpreter
run :func:`install_from_env` at start, e.g. from a ``sitecustomize.py`` on ``PYTHONPATH``::

    import dsquant.compat.deepspeed
    dsquant.compat.deepspeed.install_from_env()

which installs as soon as the program imports deepspeed (without importing it earlier).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys

ENV = "DSQUANT_DEEPSPEED"

# (module, attribute path) of every cache of the quantizer module, in the DeepSpeed versions that have it
CACHES = (
    ("deepspeed.ops.quantizer.quantizer", "quantizer_cuda_module"),
    ("deepspeed.runtime.comm.coalesced_collectives", "quantizer_module"),
    ("deepspeed.runtime.zero.partition_parameters", "CUDAQuantizer.quantizer_cuda_module"),
    ("deepspeed.inference.quantization.utils", "quantizer_module"),
)


class QuantizerBuilder:
    """DeepSpeed's op-builder interface for the quantizer, loading :mod:`dsquant.compat.deepspeed`."""
    BUILD_VAR = "DS_BUILD_QUANTIZER"
    NAME = "quantizer"
    ops = None          # the module load() returns, set by install()

    def __init__(self, name=None):
        self.name = self.NAME if name is None else name

    def absolute_name(self):
        return "dsquant.compat.deepspeed"

    def is_compatible(self, verbose=False):
        return True

    def load(self, verbose=True):
        return self.ops

    def jit_load(self, verbose=True):
        return self.ops


class FPQuantizerBuilder(QuantizerBuilder):
    """DeepSpeed's op-builder interface for the FP quantizer, loading :mod:`dsquant.compat.deepspeed_fp`."""
    BUILD_VAR = "DS_BUILD_FP_QUANTIZER"
    NAME = "fp_quantizer"
    ops = None

    def absolute_name(self):
        return "dsquant.compat.deepspeed_fp"


# builder name -> dsquant's builder, answered by the accelerator's get_op_builder
BUILDERS = {"QuantizerBuilder": QuantizerBuilder, "FPQuantizerBuilder": FPQuantizerBuilder}


def _wrap_get_op_builder(accelerator) -> None:
    """The accelerator's get_op_builder answering the names of BUILDERS with dsquant's builders
    (this instance only; every other name goes to the original)."""
    original = accelerator.get_op_builder
    if getattr(original, "dsquant", False):
        return

    def get_op_builder(class_name):
        return BUILDERS.get(class_name) or original(class_name)
    get_op_builder.dsquant = True
    accelerator.get_op_builder = get_op_builder


def _install_fp(fp_ops) -> list[str]:
    """Route DeepSpeed's FP quantizer to `fp_ops`: its builder names and FP_Quantize's module cache."""
    import deepspeed.ops.op_builder as op_builder

    FPQuantizerBuilder.ops = fp_ops
    op_builder.FPQuantizerBuilder = FPQuantizerBuilder
    done = ["deepspeed.ops.op_builder.FPQuantizerBuilder", "get_accelerator().get_op_builder('FPQuantizerBuilder')"]
    try:
        quantize = importlib.import_module("deepspeed.ops.fp_quantizer.quantize")
    except ImportError:              # a DeepSpeed without the FP quantizer (or its imports fail here)
        return done
    if hasattr(quantize, "FPQuantizerBuilder"):
        quantize.FPQuantizerBuilder = FPQuantizerBuilder
        done.append("deepspeed.ops.fp_quantizer.quantize.FPQuantizerBuilder")
    if hasattr(quantize, "fp_quant_module"):
        quantize.fp_quant_module = fp_ops
        done.append("deepspeed.ops.fp_quantizer.quantize.fp_quant_module")
    return done


def install(ops, fp_ops=None) -> list[str]:
    """Point every quantizer cache of the imported DeepSpeed at `ops` (and the FP quantizer's at
    `fp_ops`, by default :mod:`dsquant.compat.deepspeed_fp`); returns what was set.

    Modules of the list above that this DeepSpeed version lacks are skipped."""
    import deepspeed.ops.op_builder as op_builder
    from deepspeed.accelerator import get_accelerator

    QuantizerBuilder.ops = ops
    done = ["deepspeed.ops.op_builder.QuantizerBuilder", "get_accelerator().get_op_builder('QuantizerBuilder')"]
    op_builder.QuantizerBuilder = QuantizerBuilder
    _wrap_get_op_builder(get_accelerator())
    for module_name, path in CACHES:
        try:
            target = importlib.import_module(module_name)
        except ImportError:
            continue
        *owners, attribute = path.split(".")
        for owner in owners:
            target = getattr(target, owner, None)
        if target is None or not hasattr(target, attribute):
            continue
        setattr(target, attribute, ops)
        done.append(f"{module_name}.{path}")
    if fp_ops is None:
        fp_ops = importlib.import_module("dsquant.compat.deepspeed_fp")   # the OCP codes
    return done + _install_fp(fp_ops)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs install(ops) right after the top-level ``deepspeed`` package has been imported."""

    def __init__(self, ops):
        self.ops = ops

    def find_spec(self, fullname, path, target=None):
        if fullname != "deepspeed":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_install(module):
            exec_module(module)
            install(self.ops)
        spec.loader.exec_module = exec_then_install
        return spec


def install_from_env(ops) -> bool:
    """When the environment variable ``DSQUANT_DEEPSPEED`` is 1: :func:`install` now if deepspeed
    is imported, else as soon as it is. Returns whether the variable asked for it."""
    if os.environ.get(ENV, "") != "1":
        return False
    if "deepspeed" in sys.modules:
        install(ops)
    elif not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(ops))
    return True
