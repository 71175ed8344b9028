"""The ``h`` GEMM with the global level, the bias and the modulation fused around it.

Per pixel m of image b = m // (H*W), with s = 1 / (L + 1) under ``normalize_modulator`` else 1:

    a[m, :]   = ctx_local[m, :] + gates[m, L] * glob[b, :]       ctx_all before the scale s
    out[m, n] = x[m, n] * (s * sum_k a[m, k] * h_weight[n, k] + h_bias[n])

``x = q`` gives the op's output; ``x = dout`` gives dq (= dout * modulator) in the backward.
The global term is added to the A tile as it is loaded (a rank-1 update of the operand, not a
second GEMM), the scale, bias and ``x *`` are the epilogue. fp32 accumulation; fp32 operands use
``tf32x3`` on tensor cores (about fp32 accuracy).

Bytes per output element (bf16): read ctx_local, x (4), write out (2). Instructions per output
element (sm_90 SASS x trip counts, FocalNet-T stage 1, B = 128, bf16): 0.93 (x = q), 0.87 (dout).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def modulation_gemm_kernel(
    x, ctx_local, gates, glob, h_weight, h_bias, out,
    M, HW, C, x_stride, gates_stride, scale,
    GATE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(cdiv(M, BM), cdiv(C, BN))``; x has pixel stride ``x_stride``, out is ``[M, C]``."""
    m = tl.program_id(0) * BM + tl.arange(0, BM)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    m_ok = m < M
    n_ok = n < C
    m64 = m.to(tl.int64)
    img = m // HW
    g_last = tl.load(gates + m64 * gates_stride + GATE, mask=m_ok, other=0.0).to(tl.float32)

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, C, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < C
        mk_ok = m_ok[:, None] & k_ok[None, :]
        a = tl.load(ctx_local + m64[:, None] * C + k[None, :], mask=mk_ok, other=0.0).to(tl.float32)
        a += g_last[:, None] * tl.load(glob + img[:, None] * C + k[None, :], mask=mk_ok, other=0.0)
        w_t = tl.load(h_weight + n[None, :] * C + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a, w_t.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a.to(w_t.dtype), w_t, acc)

    y = acc * scale
    if HAS_BIAS:
        y += tl.load(h_bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mn_ok = m_ok[:, None] & n_ok[None, :]
    y *= tl.load(x + m64[:, None] * x_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
    tl.store(out + m64[:, None] * C + n[None, :], y.to(out.dtype.element_ty), mask=mn_ok)


def block(size: int, cap: int) -> int:
    """A GEMM block dim for ``size`` elements: a power of two in [16, cap] (tl.dot needs >= 16)."""
    return min(cap, max(16, triton.next_power_of_2(size)))


def dot_mode(dtype: torch.dtype, interpret: bool):
    """(DOT_F32, PRECISION): fp32 operands for fp32 inputs and in the interpreter (whose bf16
    tl.dot is wrong), else the input dtype on tensor cores."""
    return (dtype == torch.float32 or interpret), ("ieee" if interpret else "tf32x3")


def modulation_gemm(x, x_stride, ctx_local, gates, gates_stride, glob, h_weight, h_bias, scale: float,
                    interpret: bool):
    """``x * (scale * (ctx_local + gates[..., L] * glob) @ h_weight.T + h_bias)``, ``[B, H, W, C]``."""
    B, H, W, C = ctx_local.shape
    M = B * H * W
    out = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    if interpret:
        BM, BN, BK, num_warps = 32, block(C, 64), block(C, 64), 4
    else:  # sm_90 builds of these tiles use no local memory (checked with ptxas)
        BM, BN, BK, num_warps = 64, block(C, 128), block(C, 32), 4
    dot_f32, precision = dot_mode(x.dtype, interpret)
    grid = (triton.cdiv(M, BM), triton.cdiv(C, BN))
    modulation_gemm_kernel[grid](
        x, ctx_local, gates, glob, h_weight, h_bias if h_bias is not None else h_weight, out,
        M, H * W, C, x_stride, gates_stride, scale,
        gates.shape[-1] - 1, h_bias is not None, dot_f32, precision, BM, BN, BK,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    return out
