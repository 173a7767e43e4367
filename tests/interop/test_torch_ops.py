"""dsquant's torch custom ops (dsquant/torch.py): the straight-through gradient of fake_quantize
against its definition computed here in NumPy, ds_quantizer's version counter and leaf rule,
opcheck, and torch.compile(fullgraph=True) with the inductor backend on the CPU."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import dsquant
import dsquant.torch as dst
import reference as ref
from helpers import check_exact, sample

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype == ref.BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ref.BF16)
    return t.numpy()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("mask_clipped", [False, True], ids=["identity", "mask"])
def test_fake_quantize_values_and_ste_gradient(dtype, symmetric, mask_clipped):
    x = sample(dtype, (8, 48), seed=3, specials=True)
    groups, bits = 16, 3
    w = to_torch(x).requires_grad_()
    y = dst.fake_quantize(w, groups, bits, symmetric=symmetric, mask_clipped=mask_clipped)
    assert y.grad_fn is not None and y.dtype == w.dtype
    check_exact(to_numpy(y), ref.fake_quantize(x, groups, bits, symmetric))
    upstream = sample("float32", (8, 48), seed=4).astype(x.dtype)
    y.backward(to_torch(upstream))
    mask = ref.ste_mask(x, groups, bits, symmetric) if mask_clipped else np.ones(x.shape, bool)
    expected = np.where(mask, upstream, np.zeros_like(upstream))
    check_exact(to_numpy(w.grad), expected)
    if mask_clipped:   # the data has clipped peaks (so this test can see a wrong mask) and kept elements
        assert 0 < (~mask).sum() < mask.sum()


def test_front_end_records_autograd_only_when_asked():
    w = torch.randn(64, requires_grad=True)
    assert dsquant.fake_quantize(w, 4, 4).grad_fn is not None
    assert dsquant.fake_quantize(w.detach(), 4, 4).grad_fn is None
    with torch.no_grad():
        assert dsquant.fake_quantize(w, 4, 4).grad_fn is None
    y = dsquant.fake_quantize(w, 4, 4, stochastic=True, seed=9)
    check_exact(to_numpy(y), ref.fake_quantize(to_numpy(w), 4, 4, stochastic=True, seed=9))


@pytest.mark.parametrize("seed", [0, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1])
def test_seeds_cover_64_bits(seed):
    x = sample("float32", 256, seed=5)
    y = dst.fake_quantize(to_torch(x).requires_grad_(), 8, 2, stochastic=True, seed=seed)
    check_exact(to_numpy(y), ref.fake_quantize(x, 8, 2, stochastic=True, seed=seed))


def test_quantize_dequantize_have_no_gradient():
    x = sample("float32", (4, 32), seed=6)
    w = to_torch(x).requires_grad_()
    q, params = dst.quantize(w, 4, 4)
    assert q.dtype == torch.int8 and not params.requires_grad
    y = dst.dequantize(q, params, 4, dtype=torch.float16)
    assert not y.requires_grad and y.dtype == torch.float16
    check_exact(to_numpy(y), dsquant.dequantize(*dsquant.quantize(x, 4, 4), 4, dtype="float16"))


def test_ds_quantizer_bumps_the_version_counter():
    x = sample("float32", 64, seed=7)
    leaf = to_torch(x).requires_grad_()
    h = leaf * 1.0
    saved = h.exp()                          # exp saves its result; sin saves h itself
    used = h.sin()
    version = h._version
    assert dsquant.ds_quantizer(h, 4, 4) is h
    assert h._version > version
    check_exact(to_numpy(h), ref.fake_quantize(x, 4, 4))
    saved.sum().backward(retain_graph=True)  # exp's backward does not need h
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        used.sum().backward()


def test_ds_quantizer_refuses_a_leaf_that_requires_grad():
    p = torch.nn.Parameter(torch.randn(32))
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        dsquant.ds_quantizer(p, 2, 4)
    assert torch.equal(p.detach(), before)
    with torch.no_grad():
        dsquant.ds_quantizer(p, 2, 4)
    check_exact(to_numpy(p), ref.fake_quantize(to_numpy(before), 2, 4))


def test_errors_through_the_ops():
    w = torch.randn(10, requires_grad=True)
    with pytest.raises(ValueError, match="does not divide"):
        dsquant.fake_quantize(w, 3)
    with pytest.raises(ValueError, match="bits"):
        dsquant.fake_quantize(w, 1, 1)
    with pytest.raises(TypeError, match="dtype"):
        dsquant.ds_quantizer(torch.ones(4, dtype=torch.int32))


OPCHECK = {
    "fake_quantize": lambda: (torch.randn(6, 8, requires_grad=True), 4, 4, True, False, None, True),
    "fake_quantize_sr": lambda: (torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True), 3, 5, False, True, 11,
                                 False),
    "quantize": lambda: (torch.randn(6, 8), 6, 4, False),
    "dequantize": lambda: (*dsquant.quantize(torch.randn(6, 8), 3, 4), 4, torch.float16),
    "ds_quantizer": lambda: (torch.randn(6, 8), 2, 8, False, True),
}


@pytest.mark.parametrize("case", list(OPCHECK))
def test_opcheck(case):
    op = getattr(torch.ops.dsquant, case.removesuffix("_sr")).default
    torch.library.opcheck(op, OPCHECK[case]())


# inductor itself uses torch.jit.script_method, which warns in torch 2.13 (not dsquant's code)
COMPILE_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(COMPILE_WARNING)
def test_torch_compile_fullgraph():
    """One compiled graph (no breaks: fullgraph) with every op, forward and backward, against eager."""
    def step(w, x, buf):
        wq = dsquant.fake_quantize(w, groups=8, bits=4)
        wm = dst.fake_quantize(w, groups=8, bits=4, symmetric=False, mask_clipped=True)
        q, params = dsquant.quantize(wq, 8, 4)
        buf = buf.clone()
        dsquant.ds_quantizer(buf, 4, 4)
        y = x @ wq.t() + x @ wm.t() + x @ dsquant.dequantize(q, params, 4).t()
        return (y * y).mean() + buf.sum()

    rng = np.random.default_rng(8)
    w = torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32)).requires_grad_()
    x = torch.from_numpy(rng.standard_normal((5, 16)).astype(np.float32))
    buf = torch.from_numpy(rng.standard_normal(32).astype(np.float32))
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    loss = compiled(w, x, buf)
    loss.backward()
    grad, w.grad = w.grad.clone(), None
    eager = step(w, x, buf)
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, w.grad, rtol=1e-5, atol=1e-6)


def test_torch_ops_module_is_loaded_only_when_needed():
    code = ("import sys, torch, dsquant; dsquant.fake_quantize(torch.ones(4)); a = 'dsquant.torch' in sys.modules;"
            "dsquant.fake_quantize(torch.ones(4, requires_grad=True)); b = 'dsquant.torch' in sys.modules;"
            "print(a, b); sys.exit(a or not b)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("mask_clipped", [False, True], ids=["identity", "mask"])
def test_cuda_tensors_match_the_cpu(mask_clipped):
    x = sample("bfloat16", (16, 64), seed=10, specials=True)
    grads = []
    for device in ("cpu", "cuda"):
        w = to_torch(x).to(device).requires_grad_()
        y = dst.fake_quantize(w, 32, 4, stochastic=True, seed=1, mask_clipped=mask_clipped)
        (y.float() * torch.arange(y.numel(), device=device).reshape(y.shape)).sum().backward()
        grads.append((to_numpy(y.cpu()), to_numpy(w.grad.cpu())))
    check_exact(grads[1][0], grads[0][0])
    check_exact(grads[1][1], grads[0][1])
