"""Backward of the modulation GEMM (``modulation_gemm``): two GEMMs over the pixels.

With dM = dout * q (the gradient of the modulator), s the normalisation scale and
a = ctx_local + gates[..., L] * glob (ctx_all before s):

    d_ctx_all[m, k] = s * sum_n dM[m, n] * h_weight[n, k]           context_grad_kernel
    d_glob[b, k]    = sum_{m in image b} gates[m, L] * d_ctx_all[m, k]   (per-tile partials)
    d_h_weight[n, k] = s * sum_m dM[m, n] * a[m, k]                  weight_grad_kernel
    d_h_bias[n]      = sum_m dM[m, n]                                 (split-M partials)

Partials are fp32, one per tile or split, reduced afterwards in a fixed order: the gradients
are bitwise reproducible (no atomics).

Bytes per output element (bf16): context_grad reads dout, q (4) and writes d_ctx_all (2);
weight_grad reads dout, q, ctx_local (6). Instructions per output element (sm_90 SASS x trip
counts, FocalNet-T B = 128, bf16, q as a view of stride 2C + L + 1, so loaded 16 bits at a time),
stages 1 / 2 / 3 / 4: context_grad 1.07 / 1.36 / 2.33 / 2.81 (2.26 / 2.20 / 4.19 / 7.16 with
64 x 64 output blocks, which formed dout * q once per block of output channels), weight_grad
1.08 / 2.16 / 2.51 / 5.07 (2.39 / 2.70 / 5.40 / 10.80 with 64 x 64 blocks).
"""

import torch
import triton
import triton.language as tl

from focalfast.ops.sweep_geometry import PROGRAMS_PER_SM
from focalfast.ops.triton.chain_schedule import sm_count
from focalfast.ops.triton.modulation_gemm import block, dot_mode


@triton.jit
def context_grad_kernel(
    dout, q, h_weight, gates, d_ctx_all, d_glob_part,
    HW, C, dout_stride, q_stride, gates_stride, scale,
    GATE: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(T, B, cdiv(C, BK))`` with T = cdiv(HW, BM): tiles never straddle two images."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    i = t * BM + tl.arange(0, BM)
    k = tl.program_id(2) * BK + tl.arange(0, BK)
    i_ok = i < HW
    k_ok = k < C
    m64 = b.to(tl.int64) * HW + i

    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for n0 in range(0, C, BN):
        n = n0 + tl.arange(0, BN)
        mn_ok = i_ok[:, None] & (n < C)[None, :]
        dm = tl.load(dout + m64[:, None] * dout_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        dm *= tl.load(q + m64[:, None] * q_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        w = tl.load(h_weight + n[:, None] * C + k[None, :], mask=(n < C)[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(dm, w.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(dm.to(w.dtype), w, acc)

    dc = acc * scale
    tl.store(d_ctx_all + m64[:, None] * C + k[None, :], dc.to(d_ctx_all.dtype.element_ty),
             mask=i_ok[:, None] & k_ok[None, :])
    g_last = tl.load(gates + m64 * gates_stride + GATE, mask=i_ok, other=0.0).to(tl.float32)
    d_glob = tl.sum(dc * g_last[:, None], axis=0)
    tl.store(d_glob_part + (b * tl.num_programs(0) + t) * C + k, d_glob, mask=k_ok)


@triton.jit
def weight_grad_kernel(
    dout, q, ctx_local, gates, glob, dw_part, db_part,
    M, HW, C, rows_per_split, dout_stride, q_stride, gates_stride, scale,
    GATE: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(cdiv(C, BN), cdiv(C, BK), splits)``; split p sums pixels [p, p + 1) * rows_per_split."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    split = tl.program_id(2)
    n_ok = n < C
    k_ok = k < C

    acc = tl.zeros((BN, BK), dtype=tl.float32)
    db = tl.zeros((BN,), dtype=tl.float32)
    start = split * rows_per_split
    for m0 in range(start, tl.minimum(start + rows_per_split, M), BM):
        m = m0 + tl.arange(0, BM)
        m_ok = m < M
        m64 = m.to(tl.int64)
        mn_ok = m_ok[:, None] & n_ok[None, :]
        mk_ok = m_ok[:, None] & k_ok[None, :]
        dm = tl.load(dout + m64[:, None] * dout_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        dm *= tl.load(q + m64[:, None] * q_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        g_last = tl.load(gates + m64 * gates_stride + GATE, mask=m_ok, other=0.0).to(tl.float32)
        a = tl.load(ctx_local + m64[:, None] * C + k[None, :], mask=mk_ok, other=0.0).to(tl.float32)
        a += g_last[:, None] * tl.load(glob + (m // HW)[:, None] * C + k[None, :], mask=mk_ok, other=0.0)
        if DOT_F32:
            acc = tl.dot(tl.trans(dm), a, acc, input_precision=PRECISION)
        else:
            acc = tl.dot(tl.trans(dm.to(ctx_local.dtype.element_ty)), a.to(ctx_local.dtype.element_ty), acc)
        db += tl.sum(dm, axis=0)

    tl.store(dw_part + (split * C + n[:, None]) * C + k[None, :], acc * scale,
             mask=n_ok[:, None] & k_ok[None, :])
    if tl.program_id(1) == 0:
        tl.store(db_part + split * C + n, db, mask=n_ok)


def context_grad(dout, dout_stride, q, q_stride, h_weight, gates, gates_stride, scale: float,
                 interpret: bool):
    """``d_ctx_all`` [B,H,W,C] (input dtype) and the per-tile partials of d_glob, [B, T, C] fp32."""
    B, H, W, C = q.shape
    HW = H * W
    # BM pixels x BK output channels, BN the reduction step; no spills in sm_90 builds.
    BM = block(HW, 32 if interpret else 64)
    if interpret:
        BN, BK, num_warps = block(C, 64), block(C, 64), 4
    else:  # all output channels (up to 256) in one program: dout * q is formed once per pixel
        BN, BK = block(C, 32), block(C, 256)
        num_warps = 4 if BK <= 128 else 8
    T = triton.cdiv(HW, BM)
    d_ctx_all = torch.empty((B, H, W, C), device=q.device, dtype=q.dtype)
    d_glob_part = torch.empty((B, T, C), device=q.device, dtype=torch.float32)
    dot_f32, precision = dot_mode(q.dtype, interpret)
    context_grad_kernel[(T, B, triton.cdiv(C, BK))](
        dout, q, h_weight, gates, d_ctx_all, d_glob_part,
        HW, C, dout_stride, q_stride, gates_stride, scale,
        gates.shape[-1] - 1, dot_f32, precision, BM, BN, BK,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    return d_ctx_all, d_glob_part


def weight_grad(dout, dout_stride, q, q_stride, ctx_local, gates, gates_stride, glob, scale: float,
                has_bias: bool, interpret: bool):
    """``(d_h_weight [C, C], d_h_bias [C] or None)`` in fp32."""
    B, H, W, C = q.shape
    M = B * H * W
    # BN x BK output tile (all of C = 96 in one: dout * q is formed once per pixel up to C = 128),
    # BM the reduction step; sm_90 builds: 246 registers, no spills, no stack (1 CTA of 8 warps per SM).
    BM, BN, BK, num_warps = 64, block(C, 128), block(C, 128), 8
    tiles = triton.cdiv(C, BN) * triton.cdiv(C, BK)
    # Enough splits for PROGRAMS_PER_SM programs per multiprocessor (the sweeps' target); two under the
    # interpreter (the split reduction still runs); one without a GPU plan (sm_count None).
    sms = sm_count(q.device)
    target = 2 if interpret else PROGRAMS_PER_SM * sms if sms else 1
    splits = max(1, min(triton.cdiv(target, tiles), triton.cdiv(M, BM)))
    rows_per_split = triton.cdiv(triton.cdiv(M, splits), BM) * BM
    splits = triton.cdiv(M, rows_per_split)
    dw_part = torch.empty((splits, C, C), device=q.device, dtype=torch.float32)
    db_part = torch.empty((splits, C), device=q.device, dtype=torch.float32)
    dot_f32, precision = dot_mode(q.dtype, interpret)
    weight_grad_kernel[(triton.cdiv(C, BN), triton.cdiv(C, BK), splits)](
        dout, q, ctx_local, gates, glob, dw_part, db_part,
        M, H * W, C, rows_per_split, dout_stride, q_stride, gates_stride, scale,
        gates.shape[-1] - 1, dot_f32, precision, BM, BN, BK,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    return dw_part.sum(0), (db_part.sum(0) if has_bias else None)
