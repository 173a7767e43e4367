"""ZeRO++ ops on the CPU (swizzle_quantize, quantized_reduction, LoCo variants, DeepSpeed names):
bit-exact against the independent reference (reference_zeropp.py), exact permutation tables,
DeepSpeed's asymmetric indexing bug, group sizes past DeepSpeed's limits, errors."""

import numpy as np
import pytest
import torch

import dsquant
import reference_int as ref
import reference_zeropp as zref
from dsquant.compat import deepspeed as ds_ops
from dsquant.core import registry
from helpers import same_bits
from test_quantize import sample

SCHEMES = {"sym": True, "asym": False}


def as_bytes(q):
    return np.asarray(q).reshape(-1).view(np.uint8)


# ------------------------------------------------------------------------------ the permutation
def test_swizzle_order_example_from_the_spec():
    """pipe=1, C=1, nodes=2, dpn=4: partitions 0..7 come out as 0 4 1 5 2 6 3 7."""
    assert zref.swizzle_order(8, 1, 2, 4).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    x = np.arange(8, dtype=np.float32) + 10
    q, params = dsquant.swizzle_quantize(x, 8, bits=8, symmetric=False, nodes=2, devices_per_node=4)
    # a one-element asymmetric group is its offset, code 0
    assert params[:, 1].tolist() == [10, 14, 11, 15, 12, 16, 13, 17]
    assert as_bytes(q).tolist() == [0] * 8


def test_swizzle_inverse_map_of_the_spec():
    """The spec's inverse formula recovers every input group from its output position."""
    groups, pipe, nodes, dpn = 3 * 2 * 2 * 3, 2, 2, 3
    C, P = groups // (nodes * dpn * pipe), nodes * dpn
    x = np.arange(groups, dtype=np.float32) - 7
    _, params = dsquant.swizzle_quantize(x, groups, bits=8, symmetric=False, pipeline=pipe, nodes=nodes,
                                         devices_per_node=dpn)
    for o in range(groups):
        xo, qo = o % C, o // C
        y, r = qo // P, qo % P
        d, n = r // nodes, r % nodes
        assert params[o, 1] == x[((n * dpn + d) * pipe + y) * C + xo]


def test_swizzle_bytes_4bit_table():
    """Exact bytes: 2 nodes x 2 devices, groups of 2 elements with codes known by hand."""
    # group g = [g + 1, -(g + 1)]: absmax g+1, scale 8/(g+1): codes [8 -> 7, -8] -> byte 0x78
    x = np.array([[g + 1, -(g + 1)] for g in range(4)], dtype=np.float16)
    q, params = dsquant.swizzle_quantize(x, 4, bits=4, nodes=2, devices_per_node=2)
    assert as_bytes(q).tolist() == [0x78] * 4
    # params are 1/scale = (g + 1)/8 in output order 0 2 1 3
    assert params[:, 0].tolist() == [1 / 8, 3 / 8, 2 / 8, 4 / 8]


# (groups, S, pipeline, nodes, dpn): S = 1 and 3 (groups share bytes), odd S, DeepSpeed's limit
# S <= 40,960 passed, and S over the 2^15 large-group threshold (two-pass path); S = 1001: tiles of
# 512 that lie in one group (AVX-512 codes them 16 at a time), one ending 4 values after a vector,
# tiles across two groups, and, reduced, in-group runs that start inside a byte; S = 100: sub-batches
# of 40 groups (the CPU loops code each ~4096 values while the next are fetched), the last of 24
SWIZZLES = {"S1": (16, 1, 1, 2, 2), "S3_pipe2": (24, 3, 2, 2, 3), "S13": (8, 13, 1, 2, 4),
            "S64_1x4": (8, 64, 1, 1, 4), "S40962": (4, 40962, 1, 2, 2), "S70000_pipe2": (4, 70000, 2, 1, 2),
            "S1001": (4, 1001, 1, 2, 2), "S100_2x4": (64, 100, 1, 2, 4)}


@pytest.mark.parametrize("layout", SWIZZLES)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("dtype", ref.DTYPES)
def test_swizzle_matches_reference(dtype, bits, scheme, layout):
    groups, S, pipe, nodes, dpn = SWIZZLES[layout]
    n = groups * S
    if n % ref.codes_per_byte(bits):
        pytest.skip("not a whole number of bytes")   # covered by test_swizzle_errors
    x = sample(dtype, (n,), seed=groups * S + bits)
    q, params = dsquant.swizzle_quantize(x, groups, bits, symmetric=SCHEMES[scheme], pipeline=pipe,
                                         nodes=nodes, devices_per_node=dpn)
    exp_q, exp_params = zref.swizzle_ref(x, groups, bits, SCHEMES[scheme], pipe, nodes, dpn)
    assert q.shape == (n // ref.codes_per_byte(bits),) and q.dtype == np.int8
    same_bits(as_bytes(q), exp_q)
    same_bits(params, exp_params)


@pytest.mark.parametrize("layout", ["S1", "S3_pipe2", "S13", "S64_1x4", "S1001", "S100_2x4"])
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_every_backend_matches_reference(backend, dtype, bits, scheme, layout):
    """swizzle_quantize, then quantized_reduction of its slabs, on every backend (conftest.backend)."""
    groups, S, pipe, nodes, dpn = SWIZZLES[layout]
    sym = SCHEMES[scheme]
    x = sample(dtype, (groups * S,), seed=groups * S + bits + 1)
    q, params = dsquant.swizzle_quantize(backend.put(x), groups, bits, symmetric=sym, pipeline=pipe, nodes=nodes,
                                         devices_per_node=dpn)
    exp_q, exp_params = zref.swizzle_ref(x, groups, bits, sym, pipe, nodes, dpn)
    same_bits(as_bytes(backend.get(q)), exp_q)
    same_bits(backend.get(params), exp_params)
    r, rp = dsquant.quantized_reduction(q, params, groups, groups // dpn, bits, symmetric=sym, devices_per_node=dpn)
    exp_r, exp_rp = zref.reduction_ref(exp_q.view(np.int8), exp_params, groups, groups // dpn, bits, sym, dpn)
    same_bits(as_bytes(backend.get(r)), exp_r)
    same_bits(backend.get(rp), exp_rp)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_swizzle_every_16_bit_value(backend, dtype, bits, scheme):
    """Every bit pattern of the dtype (NaN, Inf, subnormals, both zeros), in 128 groups of 512
    consecutive patterns (each group its own scale, whole tiles of one group: the AVX-512 loops code
    them 16 at a time), on every backend and tier, against the reference."""
    x = np.arange(1 << 16, dtype=np.uint16).view(ref.DTYPES[dtype])
    sym = SCHEMES[scheme]
    q, params = dsquant.swizzle_quantize(backend.put(x), 128, bits, symmetric=sym, nodes=2, devices_per_node=2)
    exp_q, exp_params = zref.swizzle_ref(x, 128, bits, sym, 1, 2, 2)
    same_bits(as_bytes(backend.get(q)), exp_q)
    same_bits(backend.get(params), exp_params)


def test_swizzle_torch_in_torch_out():
    x = torch.randn(8, 64, dtype=torch.bfloat16)
    q, params = dsquant.swizzle_quantize(x, 16, bits=4, nodes=2, devices_per_node=2)
    assert isinstance(q, torch.Tensor) and q.dtype == torch.int8 and params.dtype == torch.float32
    exp_q, exp_params = zref.swizzle_ref(x.view(torch.uint16).numpy().view(ref.BF16), 16, 4, True, 1, 2, 2)
    same_bits(as_bytes(q.numpy()), exp_q)
    same_bits(params.numpy(), exp_params)


# ------------------------------------------------------------------------------ reduction
def quantized_slabs(devices, n, in_groups, bits, symmetric, seed, dtype="float32"):
    """Codes and params of `devices` slabs of n values (what a device receives in qgZ)."""
    x = sample(dtype, (devices * n,), seed, specials=False)
    data, params = ref.quantize_ref(x, in_groups, bits, symmetric)
    return data.view(np.int8), params


# (devices, values per slab, in_groups, out_groups): out-group sizes 1 and 3, in-groups that do
# not line up with out-groups, DeepSpeed's out-group limit 98,304 passed, one device
REDUCTIONS = {"D2_S1": (2, 24, 48, 24), "D4_mixed": (4, 60, 20, 4), "D3_S3": (3, 48, 6, 16),
              "D1": (1, 64, 4, 2), "D2_big_out": (2, 100000, 4, 1), "D4_large": (4, 70000, 8, 2)}


@pytest.mark.parametrize("layout", REDUCTIONS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_reduction_matches_reference(bits, scheme, layout):
    devices, n, in_groups, out_groups = REDUCTIONS[layout]
    sym = SCHEMES[scheme]
    q, params = quantized_slabs(devices, n, in_groups, bits, sym, seed=n + bits)
    r, rp = dsquant.quantized_reduction(q, params, in_groups, out_groups, bits, symmetric=sym,
                                        devices_per_node=devices)
    exp_q, exp_params = zref.reduction_ref(q, params, in_groups, out_groups, bits, sym, devices)
    assert r.shape == (q.size // devices,)
    same_bits(as_bytes(r), exp_q)
    same_bits(rp, exp_params)


# (devices, values per slab, in_groups, out_groups) for every backend and tier: in-group runs that
# start inside a byte (odd S_in), runs shorter than one 16-value vector (S_in 3, 7), runs of a few
# vectors plus a tail (S_in 37), runs longer than a tile (1030), out-groups that cut in-groups;
# in- and out-groups of whole 64-byte blocks (the AVX-512 loops' blocked order: 256 values for 2
# bits, 128 for 4), with more slabs than one pass of tables holds (17), and out-groups of 128
# (whole blocks for 4 bits only)
REDUCTION_RUNS = {"Sin3": (2, 24, 16, 6), "Sin7_D3": (3, 56, 24, 7), "Sin37": (4, 148, 16, 2),
                  "Sin1030_D2": (2, 4120, 8, 5), "blocks_D3": (3, 4096, 6, 4), "blocks_D17": (17, 512, 17, 2),
                  "blocks_S128": (2, 512, 4, 4)}


@pytest.mark.parametrize("special", [False, True], ids=["plain", "special_params"])
@pytest.mark.parametrize("half", [False, True], ids=["f32_sum", "f16_sum"])
@pytest.mark.parametrize("layout", REDUCTION_RUNS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_reduction_runs_every_backend(backend, bits, scheme, layout, half, special):
    """quantized_reduction on every backend and CPU tier (the AVX-512 loops look 2- and 4-bit codes
    up in a table, the others unpack them): ragged in-group runs, float16 sums, and params that
    are huge, infinite or NaN (sums that overflow float16, Inf, NaN)."""
    devices, n, in_groups, out_groups = REDUCTION_RUNS[layout]
    sym = SCHEMES[scheme]
    q, params = quantized_slabs(devices, n, in_groups, bits, sym, seed=n + bits + 5, dtype="float16")
    if special:
        params = params.copy()
        params[::5, 0] *= np.float32(3e4)     # beyond float16 once summed
        params[1, 0] = np.inf
        params[-1, 0] = np.nan
        if not sym:
            params[2, 1] = -np.inf
    r, rp = dsquant.quantized_reduction(backend.put(q), backend.put(params), in_groups, out_groups, bits,
                                        symmetric=sym, devices_per_node=devices, half_accumulate=half)
    exp_q, exp_params = zref.reduction_ref(q, params, in_groups, out_groups, bits, sym, devices, half=half)
    same_bits(as_bytes(backend.get(r)), exp_q)
    same_bits(backend.get(rp), exp_params)


def test_reduction_asymmetric_several_devices_is_not_deepspeeds_indexing():
    """DeepSpeed reads slab j's asymmetric params at floats j·gpt + 2h (defect 27): dsquant reads
    row j·gpt + h, so its sums are right where DeepSpeed's are not."""
    devices, n, in_groups = 4, 64, 8
    q, params = quantized_slabs(devices, n, in_groups, 8, False, seed=3)
    r, rp = dsquant.quantized_reduction(q, params, in_groups, n, 8, symmetric=False, devices_per_node=devices)
    got = ref.dequantize_ref(as_bytes(r), rp, 8, np.float32)        # one value per group: exact sums
    right = zref.slab_sums(q, params, in_groups, 8, devices)
    same_bits(got, right)
    wrong = zref.buggy_slab_sums(q, params, in_groups, 8, devices)
    assert np.abs(got - wrong).max() > 0.1 * np.abs(right).max()


def test_reduction_is_a_sum_of_the_exact_values():
    """One-element asymmetric groups are exact: the result is the plain sum."""
    x = np.array([1.5, -2.0, 3.25, 4.0, 0.5, 8.0], dtype=np.float32)
    q, params = dsquant.quantize(x, 6, bits=8, symmetric=False)
    r, rp = dsquant.quantized_reduction(q, params, 6, 2, bits=8, symmetric=False, devices_per_node=3)
    assert dsquant.dequantize(r, rp, bits=8).tolist() == [1.5 + 3.25 + 0.5, -2.0 + 4.0 + 8.0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_reduction_half_accumulation_matches_float16_arithmetic(scheme):
    devices, n, in_groups = 4, 4096, 64
    sym = SCHEMES[scheme]
    q, params = quantized_slabs(devices, n, in_groups, 4, sym, seed=11, dtype="float16")
    params = params * np.float32(3000)     # sums near float16's range: rounding at every add
    r, rp = dsquant.quantized_reduction(q, params, in_groups, 16, 4, symmetric=sym, devices_per_node=devices,
                                        half_accumulate=True)
    exp_q, exp_params = zref.reduction_ref(q, params, in_groups, 16, 4, sym, devices, half=True)
    same_bits(as_bytes(r), exp_q)
    same_bits(rp, exp_params)
    f32_q, _ = zref.reduction_ref(q, params, in_groups, 16, 4, sym, devices)
    assert not np.array_equal(exp_q, f32_q)     # the option changes something


# ------------------------------------------------------------------------------ LoCo
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_loco_swizzle_three_steps(dtype, scheme):
    groups, S, nodes, dpn, beta = 8, 96, 2, 2, 0.75
    sym = SCHEMES[scheme]
    err = np.zeros(groups * S, dtype=np.float32)
    exp_err = err.copy()
    for step in range(3):
        x = sample(dtype, (groups * S,), seed=step, specials=False)
        q, params = dsquant.loco_swizzle_quantize(x, err, beta, groups, 4, symmetric=sym, nodes=nodes,
                                                  devices_per_node=dpn)
        exp_q, exp_params, exp_err = zref.loco_swizzle_ref(x, exp_err, beta, groups, 4, sym, 1, nodes, dpn)
        same_bits(as_bytes(q), exp_q)
        same_bits(params, exp_params)
        same_bits(err, exp_err)
    assert np.abs(err).max() > 0


@pytest.mark.parametrize("scheme", SCHEMES)
def test_loco_reduction_three_steps(scheme):
    devices, n, in_groups, out_groups, beta = 2, 4000, 8, 10, 0.5
    sym = SCHEMES[scheme]
    err = np.zeros(n, dtype=np.float32)
    exp_err = err.copy()
    for step in range(3):
        q, params = quantized_slabs(devices, n, in_groups, 4, sym, seed=20 + step)
        r, rp = dsquant.loco_quantized_reduction(q, params, err, beta, in_groups, out_groups, 4, symmetric=sym,
                                                 devices_per_node=devices)
        exp_q, exp_params, exp_err = zref.loco_reduction_ref(q, params, exp_err, beta, in_groups, out_groups, 4,
                                                            sym, devices)
        same_bits(as_bytes(r), exp_q)
        same_bits(rp, exp_params)
        same_bits(err, exp_err)


def test_loco_float16_error_buffer_is_rounded_float32_error():
    x = sample("float16", (1024,), seed=5, specials=False)
    err16 = np.zeros(1024, dtype=np.float16)
    q, params = dsquant.loco_swizzle_quantize(x, err16, 0.25, 16, 4, nodes=2, devices_per_node=2)
    _, _, exp_err = zref.loco_swizzle_ref(x, np.zeros(1024, np.float32), 0.25, 16, 4, True, 1, 2, 2)
    same_bits(err16, exp_err.astype(np.float16))


def test_loco_error_feedback_reduces_the_accumulated_error():
    """What LoCo is for: with beta = 0 the residual is carried to the next step, so the sum of
    dequantized steps tracks the sum of the inputs far better than without feedback."""
    rng = np.random.default_rng(0)
    n, groups, steps = 4096, 16, 20
    err = np.zeros(n, dtype=np.float32)
    total, plain, fed = (np.zeros(n) for _ in range(3))
    for _ in range(steps):
        x = (rng.standard_normal(n) * 0.1 + 0.03).astype(np.float32)
        total += x
        q, p = dsquant.swizzle_quantize(x, groups, 4)
        plain += dsquant.dequantize(q, p, 4)
        q, p = dsquant.loco_swizzle_quantize(x, err, 0.0, groups, 4)
        fed += dsquant.dequantize(q, p, 4)
    assert np.abs(fed - total).max() < 0.5 * np.abs(plain - total).max()


# ------------------------------------------------------------------------------ errors
SWIZZLE_ERRORS = [
    (dict(groups=6, nodes=2, devices_per_node=2), ValueError, "multiple of nodes \\* devices_per_node"),
    (dict(groups=8, pipeline=3), ValueError, "pipeline"),
    (dict(groups=7), ValueError, "does not divide"),
    (dict(groups=8, bits=9), ValueError, "bits must be in 2..8"),
    (dict(groups=8, nodes=0), ValueError, "nodes must be a positive integer"),
    (dict(groups=8, symmetric=1), TypeError, "symmetric must be True or False"),
]


@pytest.mark.parametrize("kwargs,exc,match", SWIZZLE_ERRORS)
def test_swizzle_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dsquant.swizzle_quantize(np.zeros(48, np.float32), **kwargs)


def test_swizzle_odd_count_of_packed_codes():
    with pytest.raises(ValueError, match="multiple of 2 elements"):
        dsquant.swizzle_quantize(np.zeros(9, np.float32), 9, bits=4)


def test_swizzle_rejects_int_input():
    with pytest.raises(TypeError, match="dtype int32"):
        dsquant.swizzle_quantize(np.zeros(8, np.int32), 8)


REDUCTION_ERRORS = [
    (dict(in_groups=8, out_groups=4, devices_per_node=3), "not a multiple of 3"),
    (dict(in_groups=6, out_groups=4, devices_per_node=4), "in_groups=6 must be a multiple of devices_per_node"),
    (dict(in_groups=8, out_groups=3, devices_per_node=2), "out_groups=3 does not divide"),
    (dict(in_groups=20, out_groups=4, devices_per_node=2),
     "in_groups / devices_per_node = 10 groups per slab do not divide"),
    (dict(in_groups=4, out_groups=4, devices_per_node=2, symmetric=False), "asymmetric params must have shape"),
]


@pytest.mark.parametrize("kwargs,match", REDUCTION_ERRORS)
def test_reduction_errors(kwargs, match):
    q = np.zeros(32, np.int8)             # 64 4-bit values
    params = np.ones((kwargs["in_groups"], 1), np.float32)
    with pytest.raises(ValueError, match=match):
        dsquant.quantized_reduction(q, params, bits=4, **kwargs)


def test_reduction_shape_rule():
    with pytest.raises(ValueError, match="reshape q to 1-D"):
        dsquant.quantized_reduction(np.zeros((4, 3), np.int8), np.ones((4, 1), np.float32), 4, 2, 8,
                                    devices_per_node=4)
    q = np.zeros((3, 6), np.int8)
    r, _ = dsquant.quantized_reduction(q, np.ones((6, 1), np.float32), 6, 3, 8, devices_per_node=2)
    assert r.shape == (3, 3)


@pytest.mark.parametrize("error,exc,match", [
    (np.zeros(63, np.float32), ValueError, "error must have 64 elements"),
    (np.zeros(64, np.float64), TypeError, "expected float32 or float16 or bfloat16"),
    (np.zeros(128, np.float32)[::2], BufferError, "C-contiguous"),
    (torch.zeros(64), TypeError, "must be of the input's framework"),
])
def test_loco_error_buffer_checks(error, exc, match):
    with pytest.raises(exc, match=match):
        dsquant.loco_swizzle_quantize(np.zeros(64, np.float32), error, 0.5, 8)


def test_loco_read_only_error_and_bad_beta():
    err = np.zeros(64, np.float32)
    err.flags.writeable = False
    with pytest.raises(BufferError, match="read-only"):
        dsquant.loco_swizzle_quantize(np.zeros(64, np.float32), err, 0.5, 8)
    with pytest.raises(ValueError, match="beta .* must be in \\[0, 1\\]"):
        dsquant.loco_swizzle_quantize(np.zeros(64, np.float32), np.zeros(64, np.float32), 1.5, 8)


def test_backend_without_zeropp_ops_is_a_clear_error(monkeypatch):
    # a device whose backend does not implement the ZeRO++ ops: NotImplementedError naming the op
    x = np.ones(64, np.float32)
    q, params = dsquant.quantize(x, 4, 4)
    for op in ("swizzle_quantize", "quantized_reduction"):
        monkeypatch.delitem(registry._TABLE, (op, "cpu"))
    with pytest.raises(NotImplementedError, match="swizzle_quantize is not implemented for arrays on cpu"):
        dsquant.swizzle_quantize(x, 4)
    with pytest.raises(NotImplementedError, match="quantized_reduction is not implemented"):
        dsquant.quantized_reduction(q, params, 4, 4, devices_per_node=1)


# ------------------------------------------------------------------------------ DeepSpeed names
def test_compat_swizzle_quant_and_reduction_torch():
    x = torch.randn(4 * 256, dtype=torch.float16)
    q, s = ds_ops.swizzle_quant(x, 16, 4, ds_ops.Symmetric, 1, 2, 2)
    exp_q, exp_s = zref.swizzle_ref(x.numpy(), 16, 4, True, 1, 2, 2)
    same_bits(as_bytes(q.numpy()), exp_q)
    same_bits(s.numpy(), exp_s)
    r, rs = ds_ops.quantized_reduction(q, s, 16, 8, 4, ds_ops.Symmetric, 2)
    exp_r, exp_rs = zref.reduction_ref(q.numpy(), s.numpy(), 16, 8, 4, True, 2)
    same_bits(as_bytes(r.numpy()), exp_r)
    same_bits(rs.numpy(), exp_rs)
    r16, _ = ds_ops.quantized_reduction(q, s.reshape(-1), 16, 8, 4, ds_ops.Symmetric, 2, fp16_accumulation=True)
    exp16, _ = zref.reduction_ref(q.numpy(), s.numpy(), 16, 8, 4, True, 2, half=True)
    same_bits(as_bytes(r16.numpy()), exp16)


def test_compat_loco_variants_update_fp16_error_in_place():
    x = torch.randn(1024, dtype=torch.float16)
    err = torch.zeros(1024, dtype=torch.float16)
    q, s = ds_ops.loco_swizzle_quant(x, err, 0.8, 8, 4, ds_ops.Asymmetric, 1, 2, 2)
    _, _, exp_err = zref.loco_swizzle_ref(x.numpy(), np.zeros(1024, np.float32), 0.8, 8, 4, False, 1, 2, 2)
    same_bits(err.numpy(), exp_err.astype(np.float16))
    err2 = torch.zeros(512, dtype=torch.float16)
    r, rs = ds_ops.loco_quantized_reduction(q, s, err2, 0.8, 8, 4, 4, ds_ops.Asymmetric, 2)
    exp_r, exp_rs, exp_err2 = zref.loco_reduction_ref(q.numpy(), s.numpy(), np.zeros(512, np.float32), 0.8, 8, 4,
                                                      4, False, 2)
    same_bits(as_bytes(r.numpy()), exp_r)
    same_bits(err2.numpy(), exp_err2.astype(np.float16))
