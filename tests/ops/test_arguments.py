"""Edge arguments: group counts above the element count (empty inputs included), integers beyond
any C type, bool seeds and seeds without stochastic rounding are refused with the contract's
errors (ValueError / TypeError), never OverflowError or MemoryError (issue 13)."""
import numpy as np
import pytest

import dsquant
from dsquant.compat import deepspeed as ds_ops
from dsquant.ops.integer import dequantize_unsigned_half

EMPTY = np.empty(0, np.float32)
FOUR = np.ones(4, np.float32)
HUGE = (2**27, 2**31, 2**40, 2**63 - 1, 2**63, 2**64, 2**200)


def _codes():
    return dsquant.quantize(np.arange(8, dtype=np.float32), 2, 4)


GROUP_CALLS = {
    "fake_quantize": lambda x, g: dsquant.fake_quantize(x, g, 4),
    "ds_quantizer": lambda x, g: dsquant.ds_quantizer(x.copy(), g, 4),
    "quantize": lambda x, g: dsquant.quantize(x, g, 4),
    "swizzle_quantize": lambda x, g: dsquant.swizzle_quantize(x, g, 4),
    "loco_swizzle_quantize": lambda x, g: dsquant.loco_swizzle_quantize(x, np.zeros(x.size, np.float32), 0.5, g, 4),
    "compat.quantize": lambda x, g: ds_ops.quantize(x, g, 4, ds_ops.Symmetric),
    "compat.swizzle_quant": lambda x, g: ds_ops.swizzle_quant(x, g, 4, ds_ops.Symmetric, 1, 1, 1),
}


@pytest.mark.parametrize("groups", HUGE + (2,), ids=str)
@pytest.mark.parametrize("op", list(GROUP_CALLS))
def test_empty_input_is_one_group(op, groups):
    with pytest.raises(ValueError, match="more than the 0 elements.*empty input has groups=1"):
        GROUP_CALLS[op](EMPTY, groups)


@pytest.mark.parametrize("op", list(GROUP_CALLS))
def test_empty_input_with_one_group(op):
    out = GROUP_CALLS[op](EMPTY, 1)
    params = out[1] if isinstance(out, (tuple, list)) else None
    assert params is None or params.shape[0] == 1


@pytest.mark.parametrize("groups", (8, 2**40, 2**64), ids=str)
@pytest.mark.parametrize("op", list(GROUP_CALLS))
def test_more_groups_than_elements(op, groups):
    with pytest.raises(ValueError, match="more than the 4 elements"):
        GROUP_CALLS[op](FOUR, groups)


def test_reduction_out_groups_beyond_the_values():
    q, p = _codes()
    for out_groups in (9, 2**63, 2**64):
        with pytest.raises(ValueError, match="out_groups"):
            dsquant.quantized_reduction(q, p, 2, out_groups, bits=4, devices_per_node=1)


# every integer argument, far outside int32/int64/uint64 and negative: ValueError or TypeError
def _int_cases():
    q, p = _codes()
    h = np.ones(1, np.float16)
    byte = np.zeros(1, np.uint8)
    calls = {
        "fake_quantize.bits": lambda v: dsquant.fake_quantize(FOUR, 1, v),
        "fake_quantize.groups": lambda v: dsquant.fake_quantize(FOUR, v, 4),
        "fake_quantize.seed": lambda v: dsquant.fake_quantize(FOUR, 1, 4, stochastic=True, seed=v),
        "ds_quantizer.bit_num": lambda v: dsquant.ds_quantizer(FOUR.copy(), 1, v),
        "ds_quantizer.groups": lambda v: dsquant.ds_quantizer(FOUR.copy(), v, 4),
        "quantize.bits": lambda v: dsquant.quantize(FOUR, 1, v),
        "quantize.groups": lambda v: dsquant.quantize(FOUR, v, 4),
        "dequantize.bits": lambda v: dsquant.dequantize(q, p, v),
        "swizzle.pipeline": lambda v: dsquant.swizzle_quantize(FOUR, 1, 4, pipeline=v),
        "swizzle.nodes": lambda v: dsquant.swizzle_quantize(FOUR, 1, 4, nodes=v),
        "swizzle.devices_per_node": lambda v: dsquant.swizzle_quantize(FOUR, 1, 4, devices_per_node=v),
        "reduction.in_groups": lambda v: dsquant.quantized_reduction(q, p, v, 1, 4, devices_per_node=1),
        "reduction.out_groups": lambda v: dsquant.quantized_reduction(q, p, 2, v, 4, devices_per_node=1),
        "reduction.devices_per_node": lambda v: dsquant.quantized_reduction(q, p, 2, 1, 4, devices_per_node=v),
        "reduction.bits": lambda v: dsquant.quantized_reduction(q, p, 2, 1, v, devices_per_node=1),
        "unsigned_half.num_group": lambda v: dequantize_unsigned_half(byte, h, h, v, 2, 4),
        "unsigned_half.group_size": lambda v: dequantize_unsigned_half(byte, h, h, 1, v, 4),
        "unsigned_half.bits": lambda v: dequantize_unsigned_half(byte, h, h, 1, 2, v),
        "compat.dequantize.groups": lambda v: ds_ops.dequantize(q, p, v, 4, ds_ops.Symmetric),
        "compat.quantize.num_bits": lambda v: ds_ops.quantize(FOUR, 1, v, ds_ops.Symmetric),
        "compat.quant_type": lambda v: ds_ops.quantize(FOUR, 1, 4, v),
        "compat.reduction.in_groups": lambda v: ds_ops.quantized_reduction(q, p, v, 1, 4, ds_ops.Symmetric, 1),
        "manual_seed": lambda v: dsquant.manual_seed(v),
    }
    for name, call in calls.items():
        seed = name.endswith("seed")          # seeds are 64-bit unsigned: 2**31 and 2**63 are fine
        for value in ((2**64, 2**200) if seed else (2**31, 2**63, 2**64, 2**200)) + (-1, -2**63 - 1, -2**200):
            yield pytest.param(call, value, id=f"{name}={value}")


@pytest.mark.parametrize("call,value", list(_int_cases()))
def test_integers_out_of_range(call, value):
    with pytest.raises((ValueError, TypeError)):
        call(value)


@pytest.mark.parametrize("value", (True, False, np.True_), ids=repr)
def test_bool_seed_is_a_type_error(value):
    with pytest.raises(TypeError, match="seed must be an integer"):
        dsquant.fake_quantize(FOUR, stochastic=True, seed=value)
    with pytest.raises(TypeError, match="seed must be an integer"):
        dsquant.manual_seed(value)


@pytest.mark.parametrize("value", (1.0, "1", None), ids=repr)
def test_non_integer_seed_is_a_type_error(value):
    with pytest.raises(TypeError, match="seed must be an integer"):
        dsquant.manual_seed(value)


@pytest.mark.parametrize("seed", (0, 7, 2**64 - 1))
def test_seed_without_stochastic_rounding_is_refused(seed):
    with pytest.raises(ValueError, match="stochastic=False"):
        dsquant.fake_quantize(FOUR, seed=seed)


def test_seed_with_stochastic_rounding_is_used():
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    a = dsquant.fake_quantize(x, 1, 2, stochastic=True, seed=1)
    b = dsquant.fake_quantize(x, 1, 2, stochastic=True, seed=2)
    assert not np.array_equal(a, b)
    assert np.array_equal(a, dsquant.fake_quantize(x, 1, 2, stochastic=True, seed=1))
