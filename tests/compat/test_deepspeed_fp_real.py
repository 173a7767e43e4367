"""DeepSpeed's own FP_Quantize (deepspeed.ops.fp_quantizer, 0.19.8) running on dsquant after
dsquant.compat.deepspeed.install() (OCP codes) and install(fp_compat=True) (DeepSpeed's code
space), on the CPU accelerator (DS_ACCELERATOR=cpu, no op build): records, meta tensors, scales
and selective dequantization bit for bit against the NumPy reference of tests/reference_fp_ds.py."""
import os
import types

os.environ.setdefault("DS_ACCELERATOR", "cpu")   # before deepspeed is imported: its accelerator is chosen then
os.environ.setdefault("DS_BUILD_OPS", "0")

import ml_dtypes
import numpy as np
import pytest
import torch

from _optional import require

deepspeed = require("deepspeed")   # the test extra installs it: missing fails here (skips only under the GPU check)

import deepspeed.ops.op_builder as op_builder  # noqa: E402
import reference_fp_ds as ref  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from dsquant.compat import deepspeed as ds_ops  # noqa: E402
from dsquant.compat import deepspeed_fp  # noqa: E402

fp_quantize = pytest.importorskip("deepspeed.ops.fp_quantizer.quantize",
                                  reason="this DeepSpeed version has no FP quantizer")

# DeepSpeed's wrapper: q_bits -> the mantissa bits it passes to the kernel, and the format that runs
FORMATS = [(8, 3, (8, 3)), (8, 2, (8, 2)), (12, 3, (12, 7)), (6, 3, (6, 2)), (4, 3, (4, 1))]
IDS = ["e4m3", "e5m2", "e4m7", "e3m2", "e2m1"]


@pytest.fixture(scope="module", autouse=True)
def installed():
    return ds_ops.install()


@pytest.fixture
def compat_installed():
    """install(fp_compat=True) for one test, then back to the default."""
    done = ds_ops.install(fp_compat=True)
    yield done
    ds_ops.install()


def _quantizer(group_size):
    return fp_quantize.FP_Quantize(types.SimpleNamespace(group_size=group_size))


def _bf16(shape, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(ml_dtypes.bfloat16)
    return x, torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)


def test_install_routes_the_fp_quantizer(installed):
    assert fp_quantize.fp_quant_module is deepspeed_fp
    assert op_builder.FPQuantizerBuilder().load() is deepspeed_fp
    assert get_accelerator().get_op_builder("FPQuantizerBuilder")().load() is deepspeed_fp
    assert "deepspeed.ops.fp_quantizer.quantize.fp_quant_module" in installed
    # the CPU accelerator's shared NotImplementedBuilder class itself is untouched
    other = get_accelerator().get_op_builder("InferenceBuilder")
    assert other.__module__.startswith("deepspeed.")
    assert not hasattr(other, "ops")


def test_install_fp_compat_routes_deepspeeds_code_space(compat_installed):
    assert fp_quantize.fp_quant_module is deepspeed_fp.DEEPSPEED
    assert op_builder.FPQuantizerBuilder().load() is deepspeed_fp.DEEPSPEED
    assert ds_ops.install(fp_compat=True) == compat_installed                 # idempotent


@pytest.mark.parametrize("q_bits,m,fmt", FORMATS[:2] + FORMATS[3:], ids=IDS[:2] + IDS[3:])
def test_ocp_records_round_trip(q_bits, m, fmt):
    """The default install: DeepSpeed's FP_Quantize writes and reads OCP records."""
    group_size = 64
    x, t = _bf16((4, 8, 32), q_bits * 10 + m + 1)
    q = _quantizer(group_size)
    records = q.quantize(t, q_bits=q_bits, q_mantisa_bits=m if q_bits == 8 else 3)
    want = ref.ocp_quantize_records(x.reshape(-1), group_size, *fmt)
    np.testing.assert_array_equal(records.numpy(), want)
    y = q.dequantize(records, q_bits=q_bits, q_mantisa_bits=m if q_bits == 8 else 3)
    codes, scales = ref.unpack_records(want, group_size, fmt[0])
    expected = ref.ocp_decode(codes, scales, group_size, *fmt, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.view(torch.uint16).numpy().reshape(-1), expected.view(np.uint16))
    with pytest.raises(ValueError, match="compat=True"):
        q.quantize(t, q_bits=12)


@pytest.mark.parametrize("q_bits,m,fmt", FORMATS, ids=IDS)
def test_records_round_trip(compat_installed, q_bits, m, fmt):
    group_size = 64
    x, t = _bf16((4, 8, 32), q_bits * 10 + m)
    q = _quantizer(group_size)
    records = q.quantize(t, q_bits=q_bits, q_mantisa_bits=m if q_bits == 8 else 3)
    assert isinstance(records, torch.Tensor) and records.dtype == torch.uint8
    want = ref.quantize_records(x.reshape(-1), group_size, *fmt)
    np.testing.assert_array_equal(records.numpy(), want)
    y = q.dequantize(records, q_bits=q_bits, q_mantisa_bits=m if q_bits == 8 else 3)
    assert y.dtype == torch.bfloat16 and tuple(y.shape) == x.shape
    codes, scales = ref.unpack_records(want, group_size, fmt[0])
    expected = ref.decode(codes, scales, group_size, *fmt, ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.view(torch.uint16).numpy().reshape(-1), expected.view(np.uint16))


def test_meta_tensors_and_scales(compat_installed):
    x, t = _bf16((2, 4, 64), 1)
    q = _quantizer(128)
    data, scale = q.quantize(t, return_meta_tensor=True)
    assert tuple(data.shape) == x.shape and tuple(scale.shape) == (4, 4)
    want = ref.quantize_records(x.reshape(-1), 128, 8, 3)
    np.testing.assert_array_equal(data.numpy().reshape(4, 128), want[:, :128])
    scales = q.get_scales()
    assert scales.dtype == torch.float32 and tuple(scales.shape) == (4, 1)
    assert scales.data_ptr() == scale.data_ptr()                      # a view, as DeepSpeed's
    np.testing.assert_array_equal(scales.numpy().reshape(-1), want[:, 128:].copy().view("<f4").reshape(-1))
    full = q.dequantize(torch.from_numpy(want))
    np.testing.assert_array_equal(q.dequantize(data, scale=scale).view(torch.uint16).numpy(),
                                  full.view(torch.uint16).numpy())


def test_selective_dequantize(compat_installed):
    x, t = _bf16((6, 4, 32), 2)
    q = _quantizer(32)
    records = q.quantize(t)
    full = q.dequantize(records)
    idx = torch.tensor([5, 0, 3], dtype=torch.int32)
    got = q.selective_dequantize(records, idx)
    assert tuple(got.shape) == (3, 4, 32)
    assert torch.equal(got.view(torch.uint16), full[idx.long()].view(torch.uint16))
    with pytest.raises(IndexError):
        q.selective_dequantize(records, torch.tensor([6], dtype=torch.int32))


def test_records_written_by_deepspeeds_kernel_decode_as_it_means(compat_installed):
    """Codes DeepSpeed's encoder writes (spec §7.3: 1.0 -> 0x38, 3.3 -> 0x45, 360 -> 0x7B, 480 -> 0x7F,
    -480 -> 0xFF, 0.001 -> 0x08, 0.0 -> 0x40, the NaN code 0x80), scale 0.25."""
    q = _quantizer(8)
    q.quantize(torch.zeros(8, dtype=torch.bfloat16))                  # DeepSpeed's wrapper needs a quantize first
    records = torch.tensor([[0x38, 0x45, 0x7B, 0x7F, 0xFF, 0x08, 0x40, 0x80, 0, 0, 0x80, 0x3E]], dtype=torch.uint8)
    y = q.dequantize(records).float().numpy()
    np.testing.assert_array_equal(y, np.array([1.0, 3.25, 352.0, 480.0, -480.0, 2.0 ** -6, 2.0, -(2.0 ** -7)]) * 0.25)


def test_any_dtype_and_group_size_past_deepspeeds_limit():
    """DeepSpeed's wrapper asserts bf16; the module functions take float32 and groups > 1,536."""
    x = np.random.default_rng(4).standard_normal(2 * 2048).astype(np.float32)
    out = torch.ones(2, 2048 + 4, dtype=torch.uint8)
    deepspeed_fp.DEEPSPEED.quantize(out, torch.from_numpy(x), 2048, False, 8, 3)
    np.testing.assert_array_equal(out.numpy(), ref.quantize_records(x, 2048, 8, 3))
