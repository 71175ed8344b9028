"""Backward of the modulation GEMM (``modulation_gemm``): two GEMMs over the pixels.

With dM = dout * q (the gradient of the modulator), s the normalisation scale and
a = ctx_local + gates[..., L] * glob (ctx_all before s):

    d_ctx_all[m, k] = s * sum_n dM[m, n] * h_weight[n, k]           context_grad_kernel
    v[b, n]         = sum_{m in image b} gates[m, L] * dM[m, n]      (per-tile partials, same kernel)
    d_h_bias[n]     = sum_m dM[m, n]                                 (per-tile partials, same kernel)
    d_glob[b, k]    = sum_{m in image b} gates[m, L] * d_ctx_all[m, k] = s * (v @ h_weight)[b, k]
    d_h_weight[n, k] = s * sum_m dM[m, n] * ctx_local[m, k]          weight_grad_kernel (split-M)
                      + s * (v^T @ glob)[n, k]

The column sums v and d_h_bias ride on the tensor cores (rows of a [16, BM] @ dM product per
step, no cross-lane reductions); the global level's share of d_glob and d_h_weight are [B, C]
GEMMs, so ctx_local goes from memory to shared memory untouched in weight_grad. Partials are
fp32, one per tile or split, reduced afterwards in a fixed order: the gradients are bitwise
reproducible (no atomics).

dM is formed once, in context_grad (which needs it for its own GEMM), and written in the input
dtype (what the tensor cores take, so the same rounding as before): weight_grad's operands then go
from memory to the tensor cores untouched, instead of every (n, k) output block re-forming
dout * q in registers.

Bytes per output element (bf16): context_grad reads dout, q (4) and writes d_ctx_all, dM (4);
weight_grad reads dM, ctx_local (4). Instructions per output element (sm_90 SASS x trip counts,
FocalNet-T B = 128, bf16, q as a view of stride 2C + L + 1, so loaded 16 bits at a time),
stages 1 / 4: context_grad 0.73 / 2.18, weight_grad 0.22 / 1.14 (0.59 / 2.03 and 0.49 / 2.36 with
weight_grad forming dout * q itself per output block).
"""

import torch
import triton
import triton.language as tl

from focalfast.ops.sweep_geometry import PROGRAMS_PER_SM
from focalfast.ops.triton.chain_schedule import sm_count
from focalfast.ops.triton.modulation_gemm import block, dot_mode


@triton.jit
def context_grad_kernel(
    dout, q, h_weight, gates, d_ctx_all, d_mod, sums_part,
    HW, dout_stride, q_stride, gates_stride, sums_stride, scale,
    C: tl.constexpr, GATE: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(T, B, cdiv(C, BK))`` with T = cdiv(HW, BM): tiles never straddle two images. The
    programs of the first output block also write dM (``d_mod`` [B*HW, C], the input dtype: what
    the tensor cores take) and the tile's sums of gates[L] * dM and of dM (``sums_part``
    [2, B, T, C], ``sums_stride`` = B * T * C)."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    i = t * BM + tl.arange(0, BM)
    k = tl.program_id(2) * BK + tl.arange(0, BK)
    i_ok = i < HW
    k_ok = k < C
    m64 = b.to(tl.int64) * HW + i
    g_last = tl.load(gates + m64 * gates_stride + GATE, mask=i_ok, other=0.0).to(tl.float32)
    part = (b * tl.num_programs(0) + t) * C
    # Column sums of dM on the tensor cores: rows 0 and 1 of row_weights @ dM are the tile's
    # sum of gates[L] * dM and of dM (cross-lane reductions of every step cost more).
    rows = tl.arange(0, 16)
    row_weights = tl.where(rows[:, None] == 0, g_last[None, :], tl.where(rows[:, None] == 1, i_ok.to(tl.float32)[None, :], 0.0))
    first_block = tl.program_id(2) == 0  # the programs that write dM and its sums

    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for n0 in range(0, C, BN):
        n = n0 + tl.arange(0, BN)
        mn_ok = i_ok[:, None] & (n < C)[None, :]
        dm = tl.load(dout + m64[:, None] * dout_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        dm *= tl.load(q + m64[:, None] * q_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        w = tl.load(h_weight + n[:, None] * C + k[None, :], mask=(n < C)[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(dm, w.to(tl.float32), acc, input_precision=PRECISION)
            sums = tl.dot(row_weights, dm, input_precision=PRECISION)
        else:
            acc = tl.dot(dm.to(w.dtype), w, acc)
            sums = tl.dot(row_weights.to(w.dtype), dm.to(w.dtype))
        if first_block:
            tl.store(d_mod + m64[:, None] * C + n[None, :], dm.to(d_mod.dtype.element_ty), mask=mn_ok)
            tl.store(sums_part + rows[:, None] * sums_stride + part + n[None, :], sums,
                     mask=(rows < 2)[:, None] & (n < C)[None, :])

    tl.store(d_ctx_all + m64[:, None] * C + k[None, :], (acc * scale).to(d_ctx_all.dtype.element_ty),
             mask=i_ok[:, None] & k_ok[None, :])


@triton.jit
def weight_grad_kernel(
    d_mod, ctx_local, dw_part, M, C, rows_per_split, scale,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(cdiv(C, BN), cdiv(C, BK), splits)``; split p sums pixels [p, p + 1) * rows_per_split.
    Both operands (dM and ctx_local, ``[M, C]``) go from memory to the tensor cores untouched."""
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    k = tl.program_id(1) * BK + tl.arange(0, BK)
    split = tl.program_id(2)
    n_ok = n < C
    k_ok = k < C

    acc = tl.zeros((BN, BK), dtype=tl.float32)
    start = split * rows_per_split
    for m0 in range(start, tl.minimum(start + rows_per_split, M), BM):
        m = m0 + tl.arange(0, BM)
        m_ok = m < M
        m64 = m.to(tl.int64)
        dm_t = tl.load(d_mod + m64[None, :] * C + n[:, None], mask=n_ok[:, None] & m_ok[None, :], other=0.0)
        a = tl.load(ctx_local + m64[:, None] * C + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(dm_t.to(tl.float32), a.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(dm_t, a, acc)

    tl.store(dw_part + (split * C + n[:, None]) * C + k[None, :], acc * scale, mask=n_ok[:, None] & k_ok[None, :])


def context_grad(dout, dout_stride, q, q_stride, h_weight, gates, gates_stride, scale: float,
                 interpret: bool):
    """``(d_ctx_all [B,H,W,C], d_mod [B*H*W, C] (both the input dtype), d_glob [B, 1, C], v [B, C],
    d_h_bias [C])``, the last three fp32: dM = dout * q, v[b] = sum over image b of gates[..., L] * dM,
    d_glob = s * v @ h_weight."""
    B, H, W, C = q.shape
    HW = H * W
    # BM pixels x BK output channels, BN the reduction step; no spills in sm_90 builds.
    BM = block(HW, 32 if interpret else 64)
    if interpret:
        BN, BK, num_warps = block(C, 64), block(C, 64), 4
    else:  # all output channels (up to 256) in one program: dout * q is formed once per pixel
        # Reduction steps of 64 channels from C = 192 (fewer steps; at C = 96 two steps of 64
        # would pad a third); 4 warps (one warpgroup) up to BK = 128, else 8: 120-210 registers,
        # no spills or stack; 3 CTAs per SM at C = 96, else 1 (134 KB of shared memory).
        BN, BK = (32 if C <= 128 else 64), block(C, 256)
        num_warps = 4 if BK <= 128 else 8
    T = triton.cdiv(HW, BM)
    d_ctx_all = torch.empty((B, H, W, C), device=q.device, dtype=q.dtype)
    d_mod = torch.empty((B * HW, C), device=q.device, dtype=q.dtype)
    sums_part = torch.empty((2, B, T, C), device=q.device, dtype=torch.float32)
    dot_f32, precision = dot_mode(q.dtype, interpret)
    context_grad_kernel[(T, B, triton.cdiv(C, BK))](
        dout, q, h_weight, gates, d_ctx_all, d_mod, sums_part,
        HW, dout_stride, q_stride, gates_stride, B * T * C, scale,
        C, gates.shape[-1] - 1, dot_f32, precision, BM, BN, BK,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    v = sums_part[0].sum(1)
    d_glob = ((v * scale) @ h_weight.to(torch.float32))[:, None, :]
    return d_ctx_all, d_mod, d_glob, v, sums_part[1].sum((0, 1))


def weight_grad(d_mod, ctx_local, glob, v, scale: float, interpret: bool):
    """``d_h_weight`` [C, C] fp32: s * dM^T @ (ctx_local + gates[..., L] * glob), the global level
    as s * v^T @ glob (d_mod = dM [M, C] and v from ``context_grad``)."""
    M, C = d_mod.shape
    # BN x BK output tile (all of C = 96 in one: dout * q is formed once per pixel up to C = 128),
    # BM the reduction step; sm_90 builds: no spills, no stack (1 CTA of 8 warps per SM).
    BM, BN, BK, num_warps = 64, block(C, 128), block(C, 128), 8
    tiles = triton.cdiv(C, BN) * triton.cdiv(C, BK)
    # Enough splits for PROGRAMS_PER_SM programs per multiprocessor (the sweeps' target); two under the
    # interpreter (the split reduction still runs); one without a GPU plan (sm_count None).
    sms = sm_count(d_mod.device)
    target = 2 if interpret else PROGRAMS_PER_SM * sms if sms else 1
    splits = max(1, min(triton.cdiv(target, tiles), triton.cdiv(M, BM)))
    rows_per_split = triton.cdiv(triton.cdiv(M, splits), BM) * BM
    splits = triton.cdiv(M, rows_per_split)
    dw_part = torch.empty((splits + 1, C, C), device=d_mod.device, dtype=torch.float32)  # last: the global level's
    dot_f32, precision = dot_mode(d_mod.dtype, interpret)
    weight_grad_kernel[(triton.cdiv(C, BN), triton.cdiv(C, BK), splits)](
        d_mod, ctx_local, dw_part, M, C, rows_per_split, scale,
        dot_f32, precision, BM, BN, BK,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )
    torch.mm((v * scale).T, glob, out=dw_part[splits])
    return dw_part.sum(0)
