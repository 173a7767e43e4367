"""Independent NumPy reference of the ZeRO++ ops (docs/zeropp.md), built on reference_int.py.

The swizzle is the forward map of DeepSpeed's kernel (input group -> output group, spec §5.1),
while dsquant's kernels use the inverse map; the reduction is written as whole-array NumPy
float32 arithmetic (or float16 arithmetic for DeepSpeed's accumulation).
"""
from __future__ import annotations

import numpy as np

import reference_int as ref


def swizzle_order(groups: int, pipe: int, nodes: int, dpn: int) -> np.ndarray:
    """order[g_out] = g_in, from DeepSpeed's forward formula g_out = (y·P + d·nodes + n)·C + x."""
    P = nodes * dpn
    C = groups // (P * pipe)
    order = np.full(groups, -1, dtype=np.int64)
    for g_in in range(groups):
        x, rest = g_in % C, g_in // C
        y, z = rest % pipe, rest // pipe
        n, d = z // dpn, z % dpn
        order[(y * P + d * nodes + n) * C + x] = g_in
    assert (order >= 0).all()
    return order


def swizzled(x: np.ndarray, groups: int, pipe: int, nodes: int, dpn: int) -> np.ndarray:
    """The elements of x in swizzled group order (flat)."""
    return np.asarray(x).reshape(groups, -1)[swizzle_order(groups, pipe, nodes, dpn)].reshape(-1)


def swizzle_ref(x, groups, bits, symmetric, pipe=1, nodes=1, dpn=1):
    """(code bytes, params) of swizzle_quantize: quantize of the swizzled elements."""
    return ref.quantize_ref(swizzled(x, groups, pipe, nodes, dpn), groups, bits, symmetric)


def dequant_f32(data, params, bits):
    """float32 values of codes with params (one row per group), flat."""
    return ref.dequantize_ref(data, params, bits, np.float32)


def slab_sums(data, params, in_groups, bits, devices, half=False):
    """float32 sum over the slabs of their dequantized values, slab by slab (or in float16)."""
    data = np.asarray(data).reshape(-1).view(np.uint8).reshape(devices, -1)
    k = params.shape[1]
    prm = np.asarray(params).reshape(devices, in_groups // devices, k)
    total = np.zeros(data.shape[1] * ref.codes_per_byte(bits), dtype=np.float16 if half else np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for d in range(devices):
            term = ref.dequantize_ref(data[d], prm[d], bits, np.float32, saturate=False)   # unsaturated, as the kernel
            total = total + term.astype(np.float16) if half else total + term
    return total.astype(np.float32)


def buggy_slab_sums(data, params, in_groups, bits, devices):
    """DeepSpeed's asymmetric indexing (spec §5.2, defect 27): slab j reads floats j·gpt + 2h, +1."""
    flat = np.asarray(params).reshape(-1)
    gpt = in_groups // devices
    data = np.asarray(data).reshape(-1).view(np.uint8).reshape(devices, -1)
    total = np.zeros(data.shape[1] * ref.codes_per_byte(bits), dtype=np.float32)
    for d in range(devices):
        rows = np.stack([flat[d * gpt + 2 * h: d * gpt + 2 * h + 2] for h in range(gpt)])
        total = total + dequant_f32(data[d], rows, bits)
    return total


def reduction_ref(data, params, in_groups, out_groups, bits, symmetric, devices, half=False):
    return ref.quantize_ref(slab_sums(data, params, in_groups, bits, devices, half), out_groups, bits, symmetric)


def loco_step(v: np.ndarray, err: np.ndarray, beta: float, groups: int, bits: int, symmetric: bool):
    """Quantize float32 values v; return (bytes, params, new float32 error)."""
    data, params = ref.quantize_ref(v, groups, bits, symmetric)
    dq = dequant_f32(data, params, bits)
    with np.errstate(invalid="ignore", over="ignore"):
        r = v - dq
    r = np.where(np.isfinite(r), r, np.float32(0))
    b = np.float32(beta)
    new = (b * err).astype(np.float32) + ((np.float32(1) - b) * r).astype(np.float32)
    return data, params, new.astype(np.float32)


def loco_swizzle_ref(x, err, beta, groups, bits, symmetric, pipe=1, nodes=1, dpn=1):
    """float32-compute inputs (float16, bfloat16, float32) with a float32 error in output order."""
    v = swizzled(x, groups, pipe, nodes, dpn).astype(np.float32) + err.astype(np.float32)
    return loco_step(v, err.astype(np.float32), beta, groups, bits, symmetric)


def loco_reduction_ref(data, params, err, beta, in_groups, out_groups, bits, symmetric, devices):
    v = slab_sums(data, params, in_groups, bits, devices) + err.astype(np.float32)
    return loco_step(v, err.astype(np.float32), beta, out_groups, bits, symmetric)


def qgz_ref(grads, groups, bits, symmetric, nodes, dpn, divisor, errors=None, beta=0.0, combine=None):
    """Every rank's float32 result of the quantized all-to-all reduce (docs/zeropp.md), with the
    exchanges done by indexing: rank n·dpn + d gets slab d of its node's swizzled codes, sums them,
    and gets piece n of the reduced codes of rank m·dpn + d of every node m.

    With `errors` (per rank: [float32 intra-node error in swizzled order, float32 inter-node
    error]), the LoCo variant: the errors are replaced by their updated values. With `combine`, the
    nodes' float32 parts are combined by ``combine(parts)`` instead (`divisor` unused)."""
    def swizzle(r):
        x = grads[r].reshape(-1)
        if errors is None:
            return swizzle_ref(x, groups, bits, symmetric, 1, nodes, dpn)
        q, p, errors[r][0] = loco_swizzle_ref(x, errors[r][0], beta, groups, bits, symmetric, 1, nodes, dpn)
        return q, p

    def reduce(r, q, p):
        if errors is None:
            return reduction_ref(q, p, groups, groups // dpn, bits, symmetric, dpn)
        rq, rp, errors[r][1] = loco_reduction_ref(q, p, errors[r][1], beta, groups, groups // dpn, bits, symmetric, dpn)
        return rq, rp

    swz = [swizzle(r) for r in range(len(grads))]
    k = swz[0][1].shape[1]
    reduced = []
    for r in range(nodes * dpn):
        node, d = divmod(r, dpn)
        local = [swz[node * dpn + j] for j in range(dpn)]
        q = np.concatenate([np.asarray(q).reshape(-1).view(np.uint8).reshape(dpn, -1)[d] for q, _ in local])
        p = np.concatenate([np.asarray(p).reshape(dpn, -1, k)[d] for _, p in local])
        reduced.append(reduce(r, q, p))
    results = []
    for r in range(nodes * dpn):
        n, d = divmod(r, dpn)
        parts = []
        for m in range(nodes):
            q, p = reduced[m * dpn + d]
            parts.append(dequant_f32(np.asarray(q).reshape(-1).view(np.uint8).reshape(nodes, -1)[n],
                                     np.asarray(p).reshape(nodes, -1, k)[n], bits))
        if combine is not None:
            results.append(combine(parts))
            continue
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        results.append(total / np.float32(divisor))
    return results
