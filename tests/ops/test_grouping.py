"""Groupings besides DeepSpeed's groups= (block_size= as torchao, axis= as torch's per-channel ops)
for fake_quantize, quantize and dequantize on every backend, bit-exact against the reference of
reference_grouping.py; contiguous groupings give the same bits as the groups= they equal;
QuantizedTensor; argument errors."""
import math
import pickle
import zlib

import numpy as np
import pytest
import reference_grouping as ref
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsquant
import helpers
from dsquant.core import grouping
from helpers import same_bits

DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def groupings(draw, max_dims=3, max_len=12):
    """(shape, kwargs giving the grouping, per-axis block) with every form: tuples, ints, axes."""
    shape = tuple(draw(st.lists(st.integers(1, max_len), min_size=1, max_size=max_dims)))
    form = draw(st.sampled_from(["tuple", "int", "axis"]))
    if form == "axis":
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        return shape, {"axis": axis}, ref.block_of(shape, axis=axis)
    if form == "int":
        b = draw(st.sampled_from(_divisors(shape[-1])))
        return shape, {"block_size": b}, ref.block_of(shape, b)
    block = tuple(draw(st.sampled_from(_divisors(n))) for n in shape)
    return shape, {"block_size": block}, block


def _packable(shape, bits):
    per = 8 // bits if 8 % bits == 0 else 1
    return shape[-1] % per == 0


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(case=groupings(), bits=st.integers(2, 8), symmetric=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32))
def test_quantize_matches_reference(backend, case, bits, symmetric, dtype, seed):
    shape, kwargs, block = case
    if not _packable(shape, bits):
        bits = 8
    x = helpers.sample(dtype, shape, seed=seed, specials=True)
    r = dsquant.quantize(backend.put(x), bits=bits, symmetric=symmetric, **kwargs)
    exp_q, exp_params = ref.quantize(x, block, bits, symmetric, kwargs.get("axis"))
    assert backend.get(r.params).shape == exp_params.shape
    assert same_bits(backend.get(r.codes).view(np.uint8), exp_q)
    assert same_bits(backend.get(r.params), exp_params)
    y = dsquant.dequantize(r)
    assert same_bits(backend.get(y), ref.dequantize(exp_q, exp_params, shape, block, bits, dtype))
    assert backend.get(y).shape == shape and backend.get(y).dtype == x.dtype


@FUZZ
@given(case=groupings(), bits=st.integers(2, 16), symmetric=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32), stochastic=st.booleans())
def test_fake_quantize_matches_reference(backend, case, bits, symmetric, dtype, seed, stochastic):
    shape, kwargs, block = case
    x = helpers.sample(dtype, shape, seed=seed, specials=True)
    kw = dict(seed=seed, stochastic=True) if stochastic else {}
    y = dsquant.fake_quantize(backend.put(x), bits=bits, symmetric=symmetric, **kw, **kwargs)
    exp = ref.fake_quantize(x, block, bits, symmetric, stochastic, seed if stochastic else 0)
    assert same_bits(backend.get(y), exp)


# Larger cases (multi-thread splits, the CUDA kernels' large-group path), strided and contiguous
LARGE = {"rows128": ((64, 512), {"block_size": 128}), "tiles": ((256, 384), {"block_size": (128, 128)}),
         "cols": ((96, 700), {"axis": 1}), "rows": ((96, 700), {"axis": 0}),
         "tiles3d": ((4, 64, 48), {"block_size": (2, 16, 8)}), "channel3d": ((6, 10, 256), {"axis": 1})}


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("layout", LARGE)
def test_large_groupings_match_reference(backend, layout, bits):
    shape, kwargs = LARGE[layout]
    block = ref.block_of(shape, kwargs.get("block_size"), kwargs.get("axis"))
    x = helpers.sample("float32", shape, seed=zlib.crc32(layout.encode()))
    r = dsquant.quantize(backend.put(x), bits=bits, symmetric=False, **kwargs)
    exp_q, exp_params = ref.quantize(x, block, bits, False, kwargs.get("axis"))
    assert same_bits(backend.get(r.codes).view(np.uint8), exp_q)
    assert same_bits(backend.get(r.params), exp_params)
    assert same_bits(backend.get(dsquant.dequantize(r)), ref.dequantize(exp_q, exp_params, shape, block, bits,
                                                                        "float32"))
    y = dsquant.fake_quantize(backend.put(x), bits=bits, **kwargs)
    assert same_bits(backend.get(y), ref.fake_quantize(x, block, bits, True))


# ------------------------------------------------------------------------------ contiguous = groups=
CONTIGUOUS = {   # (shape, grouping kwargs, the groups= it is)
    "last_axis_block": ((8, 256), {"block_size": 128}, 16),
    "row_blocks": ((8, 256), {"block_size": (1, 128)}, 16),
    "one_per_row": ((8, 256), {"block_size": (1, 256)}, 8),
    "axis0": ((8, 256), {"axis": 0}, 8),
    "axis0_3d": ((5, 4, 6), {"axis": 0}, 5),
    "full_width_tiles": ((8, 256), {"block_size": (2, 256)}, 4),
    "whole": ((8, 256), {"block_size": (8, 256)}, 1),
    "1d": ((300,), {"block_size": 30}, 10),
    "leading_ones": ((1, 1, 64), {"axis": 2}, 64),
}


@pytest.mark.parametrize("case", CONTIGUOUS)
def test_contiguous_groupings_are_groups(backend, case):
    """Groupings whose groups are C-order runs are DeepSpeed's groups= exactly (same bits; the
    backends then read the array in place: not strided)."""
    shape, kwargs, groups = CONTIGUOUS[case]
    g = grouping.resolve(shape, **kwargs)
    assert g.groups == groups and not g.strided
    x = helpers.sample("float16", shape, seed=zlib.crc32(case.encode()))
    r = dsquant.quantize(backend.put(x), bits=4, symmetric=False, **kwargs)
    q, params = dsquant.quantize(backend.put(x), groups, bits=4, symmetric=False)
    assert same_bits(backend.get(r.codes), backend.get(q))
    assert same_bits(backend.get(r.params).reshape(groups, 2), backend.get(params))
    assert same_bits(backend.get(dsquant.fake_quantize(backend.put(x), bits=3, **kwargs)),
                     backend.get(dsquant.fake_quantize(backend.put(x), groups, bits=3)))


def test_short_block_size_pads_leading_axes():
    """torchao's rule: a block_size with fewer entries than axes has 1 for the leading axes."""
    x = helpers.sample("float32", (3, 4, 8), seed=8)
    assert grouping.resolve(x.shape, block_size=(2, 4)).block_size == (1, 2, 4)
    assert same_bits(dsquant.fake_quantize(x, block_size=(2, 4), bits=3), ref.fake_quantize(x, (1, 2, 4), 3, True))


@pytest.mark.parametrize("shape,kwargs", [((8, 256), {"axis": 1}), ((8, 256), {"block_size": (2, 128)}),
                                          ((4, 5, 6), {"axis": 1}), ((4, 6), {"block_size": (2, 3)})])
def test_strided_groupings(shape, kwargs):
    assert grouping.resolve(shape, **kwargs).strided


def test_axis_is_the_transpose_trick():
    """axis=1 of a 2-d weight gives what groups= gives on its transpose (the workaround it replaces)."""
    w = helpers.sample("float32", (64, 48), seed=3)
    got = dsquant.fake_quantize(w, axis=1, bits=4)
    assert same_bits(got, dsquant.fake_quantize(np.ascontiguousarray(w.T), groups=48, bits=4).T)
    r = dsquant.quantize(w, axis=-1, bits=8)
    q, params = dsquant.quantize(np.ascontiguousarray(w.T), groups=48, bits=8)
    assert same_bits(r.codes, q.T) and same_bits(r.params, params)


@pytest.mark.parametrize("kwargs", [{"axis": 1}, {"block_size": (3, 4)}, {"block_size": 4}])
def test_non_contiguous_input_and_out(kwargs):
    """Strided views in, and out= views, with strided and contiguous groupings."""
    base = helpers.sample("float32", (24, 18), seed=5)
    x = base.T[::2]                                   # (9, 24), neither C nor F order
    block = ref.block_of(x.shape, kwargs.get("block_size"), kwargs.get("axis"))
    exp = ref.fake_quantize(np.ascontiguousarray(x), block, 4, True)
    assert same_bits(dsquant.fake_quantize(x, bits=4, **kwargs), exp)
    out = np.zeros((24, 9), np.float32).T
    assert dsquant.fake_quantize(x, bits=4, out=out, **kwargs) is out
    assert same_bits(out, exp)
    r = dsquant.quantize(x, bits=4, **kwargs)
    exp_q, exp_params = ref.quantize(np.ascontiguousarray(x), block, 4, True, kwargs.get("axis"))
    assert same_bits(r.codes.view(np.uint8), exp_q) and same_bits(r.params, exp_params)
    out = np.zeros((24, 9), np.float64).T
    dsquant.dequantize(r, out=out)
    assert same_bits(out, ref.dequantize(exp_q, exp_params, x.shape, block, 4, "float64"))


def test_empty_arrays():
    x = np.zeros((0, 8), np.float32)
    r = dsquant.quantize(x, block_size=4, bits=4)
    assert r.codes.shape == (0, 4) and r.params.shape == (0, 2, 1)
    assert dsquant.dequantize(r).shape == (0, 8)
    assert dsquant.fake_quantize(x, axis=1).shape == (0, 8)
    assert dsquant.quantize(x, axis=1).params.shape == (0, 1)


# ------------------------------------------------------------------------------ QuantizedTensor
def test_quantized_tensor_remembers():
    """The issue's example: 4-bit codes of an (8, 256) array decode to (8, 256), with no arguments."""
    x = helpers.sample("bfloat16", (8, 256), seed=11)
    r = dsquant.quantize(x, bits=4, block_size=64, symmetric=False)
    q, params = r
    assert q is r.codes and params is r.params and len(r) == 2
    assert (r.bits, r.symmetric, r.shape, r.dtype) == (4, False, (8, 256), "bfloat16")
    assert (r.groups, r.block_size, r.axis, r.grouping.kind) == (32, (1, 64), None, "block_size")
    assert r.grouping.grid == (8, 4) and params.shape == (8, 4, 2)
    assert r.grouping.arguments() == {"block_size": (1, 64)}
    y = dsquant.dequantize(r)
    assert y.shape == (8, 256) and y.dtype == x.dtype
    assert same_bits(dsquant.dequantize(q, params, 4, block_size=64, dtype="bfloat16"), y)
    assert same_bits(dsquant.dequantize(q, params, 4, dtype="bfloat16"), y)    # params grid-shaped: blocks
    assert dsquant.dequantize(r, dtype="float32").dtype == np.float32
    assert repr(r) == ("QuantizedTensor(shape=(8, 256), dtype=bfloat16, bits=4, symmetric=False, "
                       "block_size=(1, 64), codes=numpy[8, 128], params=numpy[8, 4, 2])")
    back = pickle.loads(pickle.dumps(r))
    assert type(back) is dsquant.QuantizedTensor and back.grouping == r.grouping and back.bits == 4
    assert same_bits(dsquant.dequantize(back), y)


def test_quantized_tensor_of_groups_and_axis():
    x = helpers.sample("float32", (6, 10), seed=2)
    r = dsquant.quantize(x, 3, bits=8)
    assert (r.groups, r.block_size, r.axis, r.params.shape) == (3, None, None, (3, 1))
    assert repr(r).startswith("QuantizedTensor(shape=(6, 10), dtype=float32, bits=8, symmetric=True, groups=3,")
    r = dsquant.quantize(x, axis=1, bits=8)
    assert (r.groups, r.block_size, r.axis, r.params.shape) == (10, (6, 1), 1, (10, 1))
    assert same_bits(dsquant.dequantize(r), dsquant.dequantize(r.codes, r.params, axis=1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=8), "bits=8 contradicts"),
    (dict(axis=0), "axis=0 contradicts"),
    (dict(block_size=(2, 16)), r"block_size=\(2, 16\) contradicts"),
    (dict(groups=4), "groups=4 contradicts"),
    (dict(params=np.ones((4, 2, 1), np.float32)), "takes its params from r"),
])
def test_quantized_tensor_contradictions(kwargs, match):
    r = dsquant.quantize(np.ones((4, 32), np.float32), block_size=16, bits=4)
    with pytest.raises(ValueError, match=match):
        dsquant.dequantize(r, **kwargs)
    assert same_bits(dsquant.dequantize(r, bits=4, block_size=(1, 16)), np.ones((4, 32), np.float32) * 0.875)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_quantized_tensor_torch():
    """torch tensors in, torch tensors out, the plain path and the torch.library op path alike."""
    import dsquant.torch
    x = torch.from_numpy(helpers.sample("float32", (6, 8), seed=4))
    r = dsquant.quantize(x, axis=1, bits=4)
    assert isinstance(r.codes, torch.Tensor) and r.dtype == "float32" and tuple(r.params.shape) == (8, 1)
    exp_q, exp_params = ref.quantize(x.numpy(), (6, 1), 4, True, 1)
    assert same_bits(r.codes.numpy().view(np.uint8), exp_q) and same_bits(r.params.numpy(), exp_params)
    y = torch.compile(lambda t: dsquant.dequantize(dsquant.quantize(t, axis=1, bits=4)), fullgraph=True)(x)
    assert same_bits(y.numpy(), dsquant.dequantize(r).numpy())
    w = x.clone().requires_grad_()
    out = dsquant.fake_quantize(w, block_size=(3, 2), bits=3)        # through torch.ops.dsquant.fake_quantize
    assert same_bits(out.detach().numpy(), ref.fake_quantize(x.numpy(), (3, 2), 3, True))
    out.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_mask_clipped_follows_the_grouping():
    """mask_clipped's groups are the op's: axis=1 masks what groups= masks on the transpose."""
    import dsquant.torch as dt
    x = torch.from_numpy(helpers.sample("float32", (16, 6), seed=9))
    a = x.clone().requires_grad_()
    dt.fake_quantize(a, axis=1, bits=2, symmetric=False, mask_clipped=True).sum().backward()
    b = x.T.contiguous().requires_grad_()
    dt.fake_quantize(b, 6, bits=2, symmetric=False, mask_clipped=True).sum().backward()
    assert torch.equal(a.grad, b.grad.T) and not bool(a.grad.all())


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(groups=2, block_size=4), ValueError, "at most one of groups, block_size, axis"),
    (dict(block_size=4, axis=0), ValueError, "block_size and axis"),
    (dict(block_size=5), ValueError, r"does not divide shape \(4, 8\) along axis 1"),
    (dict(block_size=(3, 8)), ValueError, r"along axis 0 \(4 % 3 = 1\)"),
    (dict(block_size=(1, 2, 2)), ValueError, "has 3 entries but x has shape"),
    (dict(block_size=()), ValueError, "has 0 entries but x has shape"),
    (dict(block_size=(0, 8)), ValueError, "entry 0 is 0"),
    (dict(block_size=2.0), TypeError, "block_size must be an integer"),
    (dict(block_size=(1, True)), TypeError, r"block_size\[1\] must be an integer, got bool"),
    (dict(axis=2), ValueError, r"axis=2 is out of range .* \(axes -2..1\)"),
    (dict(axis="0"), TypeError, "axis must be an integer"),
])
@pytest.mark.parametrize("op", ["fake_quantize", "quantize"])
def test_errors(op, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        getattr(dsquant, op)(np.ones((4, 8), np.float32), **kwargs)


def test_dequantize_errors():
    r = dsquant.quantize(np.ones((4, 8), np.float32), block_size=4, bits=4)
    with pytest.raises(ValueError, match=r"params of shape \(4, 2, 1\) do not fit axis=1"):
        dsquant.dequantize(r.codes, r.params, 4, axis=1)
    with pytest.raises(ValueError, match="do not fit values of shape"):
        dsquant.dequantize(r.codes, np.ones((3, 2, 1), np.float32), 4)
    with pytest.raises(ValueError, match="0-d"):
        dsquant.quantize(np.array(1.0, np.float32), block_size=1)


def test_params_layout_is_deepspeeds_in_c_order():
    """grid-shaped params flatten (C order) to DeepSpeed's [groups, k] in the order of the grid."""
    x = helpers.sample("float32", (4, 6), seed=1)
    r = dsquant.quantize(x, block_size=(2, 3), bits=8, symmetric=False)
    for gi in range(2):
        for gj in range(2):
            tile = np.ascontiguousarray(x[2 * gi:2 * gi + 2, 3 * gj:3 * gj + 3])
            _, p = dsquant.quantize(tile, bits=8, symmetric=False)
            assert same_bits(r.params[gi, gj], p[0])
    assert math.prod(r.params.shape[:-1]) == r.groups == 4
