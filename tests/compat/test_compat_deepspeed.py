"""dsquant.compat.deepspeed: DeepSpeed's op-module names, signatures and return types; DeepSpeed's
own acceptance criteria (reference semantics §9) through the module with torch CPU tensors; the
experimental inference dequantization against NumPy float16 arithmetic."""
import inspect

import numpy as np
import pytest
import torch

import dsquant
import reference_int as ref
from dsquant.compat import deepspeed as ds

FAKE = {  # name: (dtype, stochastic, asymmetric)
    "ds_quantize_fp32": (torch.float32, False, False), "ds_quantize_fp16": (torch.float16, False, False),
    "ds_sr_quantize_fp32": (torch.float32, True, False), "ds_sr_quantize_fp16": (torch.float16, True, False),
    "ds_quantize_asym_fp32": (torch.float32, False, True), "ds_quantize_asym_fp16": (torch.float16, False, True),
    "ds_sr_quantize_asym_fp32": (torch.float32, True, True),
    "ds_sr_quantize_asym_fp16": (torch.float16, True, True),
}
SIGNATURES = {
    **{name: ["vals", "groups", "bits"] for name in FAKE},
    "quantize": ["input", "groups", "num_bits", "quant_type"],
    "dequantize": ["q", "params", "groups", "num_bits", "quant_type"],
    "dequantize_fp32": ["q", "params", "groups", "num_bits", "quant_type"],
    "dequantize_int4_to_half_experimental": ["data", "scale", "min", "num_group", "group_size"],
    "dequantize_int8_to_half_experimental": ["data", "scale", "min", "num_group", "group_size"],
    # ZeRO++ (pt_binding.cpp:179-368); the reductions add a keyword-only fp16_accumulation option
    "swizzle_quant": ["input", "groups", "num_bits", "quant_type", "pipeline_size", "nodes", "devices_per_node"],
    "quantized_reduction": ["q_in", "scales_in", "in_groups", "out_groups", "num_bits", "quant_type",
                            "devices_per_node", "fp16_accumulation"],
    "loco_swizzle_quant": ["input", "error_feedback", "err_beta", "groups", "num_bits", "quant_type",
                           "pipeline_size", "nodes", "devices_per_node"],
    "loco_quantized_reduction": ["q_in", "scales_in", "error_feedback", "err_beta", "in_groups", "out_groups",
                                 "num_bits", "quant_type", "devices_per_node", "fp16_accumulation"],
}


# ------------------------------------------------------------------------------ surface
@pytest.mark.parametrize("name", SIGNATURES)
def test_signatures(name):
    assert list(inspect.signature(getattr(ds, name)).parameters) == SIGNATURES[name]


def test_quantization_type():
    assert int(ds.QuantizationType.Symmetric) == 0 and int(ds.QuantizationType.Asymmetric) == 1
    assert ds.Symmetric is ds.QuantizationType.Symmetric and ds.Asymmetric is ds.QuantizationType.Asymmetric
    assert set(ds.__all__) == set(SIGNATURES) | {"QuantizationType", "Symmetric", "Asymmetric"}


# ------------------------------------------------------------------------------ fake quantization
# what each name takes: DeepSpeed's ds_quantizer sends float16 to _fp16, every other dtype to _fp32
TAKES = {torch.float16: (torch.float16,), torch.float32: (torch.float32, torch.bfloat16, torch.float64)}
BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


@pytest.mark.parametrize("name,dtype", [pytest.param(name, dtype, id=f"{name}-{str(dtype)[6:]}")
                                        for name in FAKE for dtype in TAKES[FAKE[name][0]]])
def test_fake_quantization_in_place(name, dtype):
    _, stochastic, asymmetric = FAKE[name]
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected = x.clone()
    dsquant.manual_seed(7)
    dsquant.ds_quantizer(expected, 4, 6, sr=stochastic, asym=asymmetric)
    dsquant.manual_seed(7)
    out = getattr(ds, name)(x, 4, 6)
    assert out is x
    assert torch.equal(x.view(BITS_VIEW[dtype]), expected.view(BITS_VIEW[dtype]))
    assert not torch.equal(x, torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).to(dtype))


@pytest.mark.parametrize("name,wrong", [
    pytest.param(name, wrong, id=f"{name}-{str(wrong)[6:]}") for name in FAKE
    for wrong in (torch.float16, torch.float32, torch.bfloat16, torch.float64, torch.int32, torch.int8)
    if wrong not in TAKES[FAKE[name][0]]])
def test_fake_quantization_wrong_dtype_is_type_error(name, wrong):
    x = torch.zeros(8, dtype=wrong)
    with pytest.raises(TypeError, match=f"{name} quantizes"):
        getattr(ds, name)(x, 1, 8)


def test_fake_quantization_numpy():
    x = np.linspace(-1, 1, 16, dtype=np.float16)
    assert ds.ds_quantize_fp16(x, 2, 4) is x
    with pytest.raises(TypeError):
        ds.ds_quantize_fp32(x, 2, 4)


def _fake_reference(x, bits, groups):
    """DeepSpeed's test_fake_quantization reference (semantics §9)."""
    q_range = 2 ** bits
    flat = torch.nan_to_num(x.float().reshape(groups, -1), nan=0.0)
    mn, mx = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    scale = q_range / (2 * torch.max(mn.abs(), mx.abs() + 1e-5))
    q = torch.round(flat * scale).clamp(-q_range // 2, q_range // 2 - 1)
    return (q.to(torch.int8) / scale.to(torch.float16)).reshape(x.shape)


@pytest.mark.parametrize("shape", [(16, 4096), (128, 256)])
@pytest.mark.parametrize("groups", [1, 16])
@pytest.mark.parametrize("bits", [8, 4])
def test_deepspeed_fake_quantization_criterion(shape, groups, bits):
    x = torch.rand(shape, dtype=torch.float16, generator=torch.Generator().manual_seed(groups * bits))
    expected = _fake_reference(x.clone(), bits, groups)
    got = ds.ds_quantize_fp16(x.clone(), groups, bits)
    assert got.dtype == expected.dtype == torch.float16
    assert torch.allclose(got, expected, rtol=2e-2, atol=5e-3)


# ------------------------------------------------------------------------------ quantize / dequantize
def _reference_round_trip(x, groups, bits, symmetric):
    """DeepSpeed's test_quantize reference (semantics §9): standard zero point, float32."""
    flat = x.float().reshape(groups, -1)
    q_min, q_max = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if symmetric:
        absmax = flat.abs().amax(-1, keepdim=True)
        scale = torch.where(absmax == 0, torch.ones_like(absmax), 2 ** bits / (2 * absmax))
        q = torch.clamp(torch.round(flat * scale), q_min, q_max)
        return (q / scale).reshape(x.shape)
    mx, mn = flat.amax(-1, keepdim=True), flat.amin(-1, keepdim=True)
    scale = torch.where(mx == mn, torch.ones_like(mx), 2 ** bits / (mx - mn))
    zero_point = q_min - mn * scale
    q = torch.clamp(torch.round(flat * scale + zero_point), q_min, q_max)
    return ((q - zero_point) / scale).reshape(x.shape)


def _criterion_grid():
    for groups in (1, 13, 512):
        for elems in (8, 16, 32, 64, 128, 256, 4096, 8192, 12288, 16384):
            for scheme in ("sym", "asym"):
                for bits in (4, 8):
                    for case in ("randn", "all_zeros"):
                        yield pytest.param(groups, elems, scheme, bits, case,
                                           id=f"{groups}x{elems}-{scheme}-{bits}b-{case}")


@pytest.mark.parametrize("groups,elems,scheme,bits,case", list(_criterion_grid()))
def test_deepspeed_quantize_criterion(groups, elems, scheme, bits, case):
    quant_type = ds.Symmetric if scheme == "sym" else ds.Asymmetric
    gen = torch.Generator().manual_seed(elems)
    if case == "all_zeros":
        x = torch.zeros((groups, elems), dtype=torch.float16)
    else:
        x = torch.randn((groups, elems), dtype=torch.float16, generator=gen)
    q, params = ds.quantize(x, groups, bits, quant_type)
    y = ds.dequantize(q, params, groups, bits, quant_type)
    assert y.dtype == torch.float16 and y.shape == x.shape
    assert torch.isfinite(y).all()
    err = (x.double() - y.double()).abs().sum()
    ref_err = (x.double() - _reference_round_trip(x, groups, bits, scheme == "sym").double()).abs().sum()
    assert err <= 1.05 * ref_err


@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_and_dequantize_return_types(scheme, bits):
    quant_type = ds.Symmetric if scheme == "sym" else ds.Asymmetric
    x = torch.randn(6, 40, dtype=torch.float16, generator=torch.Generator().manual_seed(bits))
    result = ds.quantize(x, 12, bits, quant_type)
    assert isinstance(result, list) and len(result) == 2
    q, params = result
    assert q.dtype == torch.int8 and q.shape == (6, 40 * bits // 8)
    assert params.dtype == torch.float32 and params.shape == (12, 1 if scheme == "sym" else 2)
    exp_q, exp_params = ref.quantize_ref(x.numpy(), 12, bits, scheme == "sym")
    assert np.array_equal(q.numpy().view(np.uint8).reshape(-1), exp_q)
    assert np.array_equal(params.numpy().view(np.uint32), exp_params.view(np.uint32))
    for name, dtype in (("dequantize", torch.float16), ("dequantize_fp32", torch.float32)):
        y = getattr(ds, name)(q, params, 12, bits, quant_type)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
        expected = ref.dequantize_ref(exp_q, exp_params, bits, str(dtype).rpartition(".")[2])
        assert np.array_equal(y.numpy().reshape(-1), expected)


def test_dequantize_groups_argument():
    # DeepSpeed's callers pass groups = params.numel(): right for symmetric params, 2x the group
    # count for asymmetric ones. Both spellings give the same result; params decide the groups.
    x = torch.randn(4, 32, dtype=torch.float16, generator=torch.Generator().manual_seed(3))
    q, params = ds.quantize(x, 8, 8, ds.Asymmetric)
    by_count = ds.dequantize_fp32(q, params, 8, 8, ds.Asymmetric)
    by_numel = ds.dequantize_fp32(q, params, params.numel(), 8, ds.Asymmetric)
    flat_params = ds.dequantize_fp32(q, params.reshape(-1), 8, 8, ds.Asymmetric)
    assert torch.equal(by_count, by_numel) and torch.equal(by_count, flat_params)
    with pytest.raises(ValueError, match="groups must be 8"):
        ds.dequantize_fp32(q, params, 4, 8, ds.Asymmetric)
    with pytest.raises(ValueError, match="2 float"):
        ds.dequantize_fp32(q, params[:, :1].contiguous().reshape(-1)[:7], 7, 8, ds.Asymmetric)


def test_quant_type_errors():
    x = torch.zeros(8, dtype=torch.float16)
    with pytest.raises(ValueError, match="Symmetric"):
        ds.quantize(x, 1, 8, 2)
    with pytest.raises(TypeError, match="QuantizationType"):
        ds.quantize(x, 1, 8, "Symmetric")


def test_numpy_arrays():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16)
    q, params = ds.quantize(x, 4, 4, ds.Symmetric)
    assert isinstance(q, np.ndarray) and q.shape == (4, 8)
    y = ds.dequantize(q, params, 4, 4, ds.Symmetric)
    assert isinstance(y, np.ndarray) and y.dtype == np.float16


def test_other_bit_widths_and_dtypes():
    # DeepSpeed's quantize only has 4- and 8-bit kernels and reads every input as fp16
    x = torch.randn(3, 8, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0))
    q, params = ds.quantize(x, 3, 2, ds.Asymmetric)
    assert q.shape == (3, 2)
    exp_q, exp_params = ref.quantize_ref(x.view(torch.uint16).numpy().view(ref.BF16), 3, 2, False)
    assert np.array_equal(q.numpy().view(np.uint8).reshape(-1), exp_q)
    y = ds.dequantize_fp32(q, params, 3, 2, ds.Asymmetric)
    assert np.array_equal(y.numpy().reshape(-1), ref.dequantize_ref(exp_q, exp_params, 2, "float32"))


# ------------------------------------------------------------------------------ experimental dequantization
def test_experimental_table():
    data = torch.tensor([0x3F, 0x80], dtype=torch.uint8)          # nibbles 3, 15, 8, 0
    scale = torch.tensor([2.0, 0.5], dtype=torch.float16)
    minimum = torch.tensor([-1.0, 0.25], dtype=torch.float16)
    y = ds.dequantize_int4_to_half_experimental(data, scale, minimum, 2, 2)
    assert y.dtype == torch.float16 and y.tolist() == [[0.5, 6.5], [16.25, 0.25]]
    y = ds.dequantize_int8_to_half_experimental(data, scale, minimum, 2, 1)
    assert y.tolist() == [[30.5], [256.25]]                          # 63 / 2 - 1, 128 / 0.5 + 0.25


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("num_group,group_size", [(1, 8), (3, 6), (31, 16), (33, 128), (64, 2)])
def test_experimental_matches_float16_arithmetic(bits, num_group, group_size):
    rng = np.random.default_rng(num_group * group_size + bits)
    data = rng.integers(0, 256, size=num_group * group_size * bits // 8, dtype=np.uint8)
    scale = rng.uniform(0.01, 20, size=num_group).astype(np.float16)
    minimum = rng.uniform(-5, 5, size=num_group).astype(np.float16)
    fn = ds.dequantize_int4_to_half_experimental if bits == 4 else ds.dequantize_int8_to_half_experimental
    y = fn(torch.from_numpy(data), torch.from_numpy(scale), torch.from_numpy(minimum), num_group, group_size)
    assert y.dtype == torch.float16 and y.shape == (num_group, group_size)
    expected = ref.uint_half_ref(data, scale, minimum, num_group, group_size, bits)
    assert np.array_equal(y.numpy().view(np.uint16), expected.view(np.uint16))
    y_np = fn(data, scale, minimum, num_group, group_size)           # NumPy in, NumPy out
    assert isinstance(y_np, np.ndarray) and np.array_equal(y_np.view(np.uint16), expected.view(np.uint16))


def test_experimental_special_scales():
    # scale 0 -> +Inf for codes > 0 and the canonical NaN 0x7E00 for code 0 (0/0); a subnormal
    # scale; an Inf minimum; a NaN minimum with a payload also gives the canonical NaN
    data = np.array([0x01, 0x20, 0x11], dtype=np.uint8)
    scale = np.array([0.0, 6e-8, 1.0], dtype=np.float16)
    minimum = np.array([0.0, np.inf, 0.0], dtype=np.float16)
    minimum.view(np.uint16)[2] = 0xFE01
    y = ds.dequantize_int4_to_half_experimental(data, scale, minimum, 3, 2)
    expected = ref.uint_half_ref(data, scale, minimum, 3, 2, 4)
    bits = y.view(np.uint16).reshape(-1)
    assert bits[0] == 0x7E00 and (bits[4:] == 0x7E00).all()
    assert np.array_equal(y.reshape(-1)[1:4], expected.reshape(-1)[1:4])


@pytest.mark.parametrize("args,exc,match", [
    ((np.zeros(3, np.uint8), np.ones(1, np.float16), np.ones(1, np.float16), 1, 8), ValueError, "4 bytes|8 4-bit"),
    ((np.zeros(4, np.uint8), np.ones(1, np.float32), np.ones(1, np.float16), 1, 8), TypeError,
     "scale has dtype float32"),
    ((np.zeros(4, np.uint8), np.ones(2, np.float16), np.ones(1, np.float16), 1, 8), ValueError, "scale must have"),
    ((np.zeros(4, np.float16), np.ones(1, np.float16), np.ones(1, np.float16), 1, 8), TypeError, "data has dtype"),
    ((np.zeros(4, np.uint8), np.ones(1, np.float16), np.ones(1, np.float16), 0, 8), ValueError, "positive"),
    ((np.zeros(1, np.uint8), np.ones(1, np.float16), np.ones(1, np.float16), 1, 1), ValueError, "codes"),
], ids=["data_size", "scale_dtype", "scale_size", "data_dtype", "zero_groups", "odd_count"])
def test_experimental_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        ds.dequantize_int4_to_half_experimental(*args)


# ------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["sym", "asym"])
@pytest.mark.parametrize("bits", [4, 8])
def test_torch_cuda_matches_cpu(scheme, bits):
    quant_type = ds.Symmetric if scheme == "sym" else ds.Asymmetric
    x = torch.randn(13, 4096, dtype=torch.float16, generator=torch.Generator().manual_seed(bits))
    q, params = ds.quantize(x.cuda(), 13, bits, quant_type)
    assert q.is_cuda and params.is_cuda
    q_cpu, params_cpu = ds.quantize(x, 13, bits, quant_type)
    assert torch.equal(q.cpu(), q_cpu) and torch.equal(params.cpu().view(torch.int32), params_cpu.view(torch.int32))
    y = ds.dequantize(q, params, 13, bits, quant_type)
    assert y.is_cuda and torch.equal(y.cpu().view(torch.int16),
                                     ds.dequantize(q_cpu, params_cpu, 13, bits, quant_type).view(torch.int16))
    data = torch.randint(0, 256, (7 * 24 * bits // 8,), dtype=torch.uint8)
    scale, minimum = torch.rand(7, dtype=torch.float16) + 0.5, torch.randn(7, dtype=torch.float16)
    fn = ds.dequantize_int4_to_half_experimental if bits == 4 else ds.dequantize_int8_to_half_experimental
    y = fn(data.cuda(), scale.cuda(), minimum.cuda(), 7, 24)
    assert y.is_cuda and torch.equal(y.cpu().view(torch.int16), fn(data, scale, minimum, 7, 24).view(torch.int16))
    v = x.cuda()
    assert ds.ds_quantize_fp16(v, 13, bits) is v
