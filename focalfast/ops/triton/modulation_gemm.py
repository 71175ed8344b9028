"""The ``h`` GEMM with the global level, the bias and the modulation fused around it.

Per pixel m of image b = m // (H*W), with s = 1 / (L + 1) under ``normalize_modulator`` else 1:

    out[m, n] = x[m, n] * (s * sum_k ctx_local[m, k] * h_weight[n, k] + gates[m, L] * h_glob[b, n] + h_bias[n])

with h_glob = s * glob @ h_weight.T (``[B, C]`` fp32, a small GEMM of its own): the global level
of ``a = ctx_local + gates[..., L] * glob`` (ctx_all before s) is linear, so it moves out of the
operand into the epilogue, and both operands go from memory to shared memory untouched
(asynchronous copies feeding wgmma on sm_90, no pass through registers). ``x = q`` gives the
op's output; ``x = dout`` gives dq (= dout * modulator) in the backward. fp32 accumulation; fp32
operands use ``tf32x3`` on tensor cores (about fp32 accuracy).

Bytes per output element (bf16): read ctx_local, x (4), write out (2). Instructions per output
element (sm_90 SASS x trip counts, FocalNet-T B = 128, bf16, x as a view of odd pixel stride, so
loaded 16 bits at a time), stages 1 / 2 / 3 / 4: 0.63 / 0.67 / 0.70 / 0.79 (x = q), 0.59 / 0.63 / 0.65
/ 0.75 (dout); 0.93 / 1.25 / 1.41 / 2.36 with the global level added to the A tile in registers.
C is a compile-time constant (one build per width): the K loop's trip count is known, so the
software pipeliner emits no zero-trip path and needs no runtime bounds (about 0.07 of the above).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def modulation_gemm_kernel(
    x, ctx_local, gates, h_glob, h_weight, h_bias, out,
    M, HW, x_stride, gates_stride, scale,
    C: tl.constexpr, GATE: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    """Grid ``(cdiv(C, BN), cdiv(M, BM))`` (the programs sharing an A tile run side by side);
    x has pixel stride ``x_stride``, ctx_local and out are ``[M, C]``, h_glob ``[B, C]`` fp32."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    m = tl.program_id(1) * BM + tl.arange(0, BM)
    m_ok = (m < M) | EVEN_M  # constant true (no masks) where the blocks divide the sizes
    n_ok = (n < C) | EVEN_N
    m64 = m.to(tl.int64)

    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, C, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = (k < C) | EVEN_K
        a = tl.load(ctx_local + m64[:, None] * C + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_t = tl.load(h_weight + n[None, :] * C + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), w_t.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(a, w_t, acc)

    mn_ok = m_ok[:, None] & n_ok[None, :]
    g_last = tl.load(gates + m64 * gates_stride + GATE, mask=m_ok, other=0.0).to(tl.float32)
    y = acc * scale + g_last[:, None] * tl.load(h_glob + (m // HW)[:, None] * C + n[None, :], mask=mn_ok, other=0.0)
    if HAS_BIAS:
        y += tl.load(h_bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y *= tl.load(x + m64[:, None] * x_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
    tl.store(out + m64[:, None] * C + n[None, :], y.to(out.dtype.element_ty), mask=mn_ok)


def block(size: int, cap: int) -> int:
    """A GEMM block dim for ``size`` elements: a power of two in [16, cap] (tl.dot needs >= 16)."""
    return min(cap, max(16, triton.next_power_of_2(size)))


def tile_block(size: int, cap: int) -> int:
    """The power of two in [16, cap] whose tiles cover ``size`` with the least padding (ties: the
    larger): C = 96 gives 32 (three full tiles), not 128 (a quarter of every tile idle)."""
    sizes = [16 << i for i in range(max(1, cap.bit_length() - 4))]
    return min(sizes, key=lambda b: (triton.cdiv(size, b) * b, -b))


def dot_mode(dtype: torch.dtype, interpret: bool):
    """(DOT_F32, PRECISION): fp32 operands for fp32 inputs and in the interpreter (whose bf16
    tl.dot is wrong), else the input dtype on tensor cores."""
    return (dtype == torch.float32 or interpret), ("ieee" if interpret else "tf32x3")


def global_term(glob, h_weight_f32, scale: float):
    """``h_glob`` = s * glob @ h_weight.T, ``[B, C]`` fp32 (``h_weight_f32``: h_weight in fp32)."""
    return (glob * scale) @ h_weight_f32.T


def modulation_gemm(x, x_stride, ctx_local, gates, gates_stride, h_glob, h_weight, h_bias, scale: float,
                    interpret: bool):
    """``x * (scale * ctx_local @ h_weight.T + gates[..., L] * h_glob[b] + h_bias)``, ``[B, H, W, C]``
    (``h_glob`` from ``global_term``)."""
    B, H, W, C = ctx_local.shape
    M = B * H * W
    out = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    if interpret:
        BM, BN, BK, num_warps = 32, block(C, 64), block(C, 64), 4
    else:
        # One warpgroup (4 warps) on a BM x BN tile of 8192 outputs: 64 fp32 accumulators per thread,
        # about 200 registers, no spills or stack; 2 CTAs (8 warps) per SM, bound by registers.
        # BN: the least padding (C = 96 -> 32: full tiles, A re-read per N tile from L2 by
        # asynchronous copies, cheaper than a quarter of every epilogue idle); BM as large as the
        # accumulators allow, over which the epilogue's per-row address math is spread.
        BN, BK, num_warps = tile_block(C, 128), tile_block(C, 64), 4
        BM = 8192 // BN
    dot_f32, precision = dot_mode(x.dtype, interpret)
    grid = (triton.cdiv(C, BN), triton.cdiv(M, BM))
    modulation_gemm_kernel[grid](
        x, ctx_local, gates, h_glob, h_weight, h_bias if h_bias is not None else h_weight, out,
        M, H * W, x_stride, gates_stride, scale,
        C, gates.shape[-1] - 1, h_bias is not None, dot_f32, precision, BM, BN, BK, M % BM == 0, C % BN == 0,
        C % BK == 0,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    return out
