"""Backward of the modulation GEMM (``modulation_gemm``): two GEMMs over the pixels.

With dM = dout * q (the gradient of the modulator), s the normalisation scale and
a = ctx_local + gates[..., L] * glob (ctx_all before s):

    d_ctx_all[m, k] = s * sum_n dM[m, n] * h_weight[n, k]           context_grad_kernel (C <= 256), else
                                                                     scaled_gemm_kernel on dM
    s v[b, n]       = s * sum_{m in image b} gates[m, L] * dM[m, n]  (per-tile partials, context_grad_kernel)
    d_h_bias[n]     = sum_m dM[m, n]                                 (per-tile partials, context_grad_kernel)
    d_glob[b, k]    = sum_{m in image b} gates[m, L] * d_ctx_all[m, k] = (s v @ h_weight)[b, k]
    d_h_weight[n, k] = s * sum_m dM[m, n] * ctx_local[m, k]          scaled_gemm_kernel (split-M)
                      + (s v^T @ glob)[n, k]

dM is formed once, in context_grad_kernel, and written in the input dtype (what the tensor cores
take: the same rounding as a cast in registers). The column sums s v and d_h_bias ride on the
tensor cores there (rows of a [16, BM] @ dM product per step, no cross-lane reductions). Up to
C = 256 one program holds all output channels of its pixels and also runs the d_ctx_all GEMM;
wider, each output block would re-form dM (two strided loads per element, a multiply), so the
kernel only writes dM and d_ctx_all is a GEMM that reads it. weight_grad's operands (dM^T,
ctx_local) go from memory to the tensor cores untouched; the global level's share of d_glob and
d_h_weight are [B, C] GEMMs. Partials are fp32, one per tile or split, reduced afterwards in a
fixed order: the gradients are bitwise reproducible (no atomics).

Bytes per output element (bf16): context_grad reads dout, q (4) and writes dM, d_ctx_all (4; for
C > 256 the GEMM reads dM again: 6); weight_grad reads dM, ctx_local (4). Instructions per output
element (sm_90 SASS x trip counts, FocalNet-T B = 128, bf16, q as a view of stride 2C + L + 1, so
loaded 16 bits at a time), stages 1 / 2 / 3 / 4: context gradient 0.61 / 0.70 / 0.36 + 0.47 /
0.33 + 0.74 (dM kernel + d_ctx_all GEMM at stages 3-4), weight_grad 0.16 / 0.32 / 0.39 / 0.78.
Before dM was written once (context_grad fused at every width, weight_grad re-forming dout * q
per output block): 0.59 / 0.69 / 1.60 / 2.03 and 0.49 / 0.98 / 1.16 / 2.36.
Occupancy (sm_90 builds, no spills, no stack): context_grad_kernel fused 3 CTAs x 4 warps per SM
at C = 96 (158 registers), 1 x 8 at C = 192 (177); dM-only 4 x 4 (104); scaled_gemm_kernel
2 x 8 (97-100 registers).
"""

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import sm_count
from focalfast.ops.triton.modulation_gemm import block, dot_mode


@triton.jit
def context_grad_kernel(
    dout, q, h_weight, gates, d_ctx_all, d_mod, sums_part,
    HW, dout_stride, q_stride, gates_stride, sums_stride, scale,
    C: tl.constexpr, GATE: tl.constexpr, FUSED: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Grid ``(T, B)`` with T = cdiv(HW, BM): tiles never straddle two images; ``FUSED``: BK >= C,
    all output channels of the tile in one program. Every program writes dM (``d_mod`` [B*HW, C], the input dtype: what the
    tensor cores take) and the tile's sums of s * gates[L] * dM and of dM (``sums_part``
    [2, B, T, C], ``sums_stride`` = B * T * C). Without ``FUSED`` (grid ``(T, B, 1)``) that is
    all it does: d_ctx_all is then ``scaled_gemm`` of dM and h_weight."""
    t = tl.program_id(0)
    b = tl.program_id(1)
    i = t * BM + tl.arange(0, BM)
    k = tl.arange(0, BK)
    i_ok = i < HW
    k_ok = k < C
    m64 = b.to(tl.int64) * HW + i
    g_last = tl.load(gates + m64 * gates_stride + GATE, mask=i_ok, other=0.0).to(tl.float32)
    part = (b * tl.num_programs(0) + t) * C
    # Column sums of dM on the tensor cores: rows 0 and 1 of row_weights @ dM are the tile's
    # sum of s * gates[L] * dM and of dM (cross-lane reductions of every step cost more).
    rows = tl.arange(0, 16)
    row_weights = tl.where(rows[:, None] == 0, scale * g_last[None, :],
                           tl.where(rows[:, None] == 1, i_ok.to(tl.float32)[None, :], 0.0))

    acc = tl.zeros((BM, BK), dtype=tl.float32)
    for n0 in range(0, C, BN):
        n = n0 + tl.arange(0, BN)
        mn_ok = i_ok[:, None] & (n < C)[None, :]
        dm = tl.load(dout + m64[:, None] * dout_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        dm *= tl.load(q + m64[:, None] * q_stride + n[None, :], mask=mn_ok, other=0.0).to(tl.float32)
        if DOT_F32:
            sums = tl.dot(row_weights, dm, input_precision=PRECISION)
        else:
            sums = tl.dot(row_weights.to(d_mod.dtype.element_ty), dm.to(d_mod.dtype.element_ty))
        if FUSED:
            w = tl.load(h_weight + n[:, None] * C + k[None, :], mask=(n < C)[:, None] & k_ok[None, :], other=0.0)
            if DOT_F32:
                acc = tl.dot(dm, w.to(tl.float32), acc, input_precision=PRECISION)
            else:
                acc = tl.dot(dm.to(w.dtype), w, acc)
        tl.store(d_mod + m64[:, None] * C + n[None, :], dm.to(d_mod.dtype.element_ty), mask=mn_ok)
        tl.store(sums_part + rows[:, None] * sums_stride + part + n[None, :], sums,
                 mask=(rows < 2)[:, None] & (n < C)[None, :])

    if FUSED:
        tl.store(d_ctx_all + m64[:, None] * C + k[None, :], (acc * scale).to(d_ctx_all.dtype.element_ty),
                 mask=i_ok[:, None] & k_ok[None, :])


@triton.jit
def scaled_gemm_kernel(
    x, y, out, R, KR, red_per_split, scale,
    X_ROW_STRIDE: tl.constexpr, X_RED_STRIDE: tl.constexpr, N: tl.constexpr,
    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, BR: tl.constexpr, BN: tl.constexpr, BRED: tl.constexpr,
    EVEN: tl.constexpr,
):
    """``out[p, r, j] = scale * sum_i x[r, i] * y[i, j]`` over split p's i in
    [p, p + 1) * red_per_split; grid ``(cdiv(R, BR), cdiv(N, BN), splits)``. x [R, KR] with
    strides (X_ROW_STRIDE, X_RED_STRIDE) (dM^T for weight_grad, dM for d_ctx_all), y [KR, N]
    row-major, out [splits, R, N]. Both operands go from memory to the tensor cores untouched.
    ``EVEN``: the blocks divide R, N and red_per_split, and the splits KR (no masks)."""
    r = tl.program_id(0) * BR + tl.arange(0, BR)
    j = tl.program_id(1) * BN + tl.arange(0, BN)
    split = tl.program_id(2)
    r_ok = (r < R) | EVEN
    j_ok = (j < N) | EVEN
    r64 = r.to(tl.int64)

    acc = tl.zeros((BR, BN), dtype=tl.float32)
    start = split * red_per_split
    for i0 in range(start, tl.minimum(start + red_per_split, KR), BRED):
        i = i0 + tl.arange(0, BRED)
        i_ok = (i < KR) | EVEN
        i64 = i.to(tl.int64)
        xt = tl.load(x + r64[:, None] * X_ROW_STRIDE + i64[None, :] * X_RED_STRIDE, mask=r_ok[:, None] & i_ok[None, :],
                     other=0.0)
        yt = tl.load(y + i64[:, None] * N + j[None, :], mask=i_ok[:, None] & j_ok[None, :], other=0.0)
        if DOT_F32:
            acc = tl.dot(xt.to(tl.float32), yt.to(tl.float32), acc, input_precision=PRECISION)
        else:
            acc = tl.dot(xt, yt, acc)

    tl.store(out + (split * R + r64[:, None]) * N + j[None, :], (acc * scale).to(out.dtype.element_ty),
             mask=r_ok[:, None] & j_ok[None, :])


def scaled_gemm(x, x_row_stride: int, x_red_stride: int, y, out, R: int, KR: int, scale: float, block_rows: int,
                block_cols: int, block_red: int, num_warps: int, splits: int, red_per_split: int, interpret: bool):
    """Launches ``scaled_gemm_kernel`` (``out`` [splits, R, N] with N = out.shape[-1])."""
    N = out.shape[-1]
    dot_f32, precision = dot_mode(x.dtype, interpret)
    scaled_gemm_kernel[(triton.cdiv(R, block_rows), triton.cdiv(N, block_cols), splits)](
        x, y, out, R, KR, red_per_split, scale, x_row_stride, x_red_stride, N,
        dot_f32, precision, block_rows, block_cols, block_red,
        R % block_rows == 0 and N % block_cols == 0 and red_per_split % block_red == 0 and KR % red_per_split == 0,
        num_warps=num_warps, num_stages=1 if interpret else 3,
    )


def context_grad(dout, dout_stride, q, q_stride, h_weight, h_weight_f32, gates, gates_stride, scale: float,
                 interpret: bool):
    """``(d_ctx_all [B,H,W,C], d_mod [B*H*W, C] (both the input dtype), d_glob [B, 1, C], sv [B, C],
    d_h_bias [C])``, the last three fp32: dM = dout * q, sv[b] = s * sum over image b of
    gates[..., L] * dM, d_glob = sv @ h_weight (``h_weight_f32``: h_weight in fp32)."""
    B, H, W, C = q.shape
    HW = H * W
    M = B * HW
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
    # Wider than one program's BK (C > 256 on the GPU), every output block would re-form dM: the
    # kernel then only writes dM and its sums (4 warps, 104 registers: 4 CTAs per SM), and
    # d_ctx_all is a GEMM of untouched operands (128 x 128 tiles, steps of 64 channels, 8 warps:
    # 100 registers, 2 CTAs per SM; 64 x 128 tiles on 4 warps load a third more per output).
    fused = BK >= C
    T = triton.cdiv(HW, BM)
    d_ctx_all = torch.empty((B, H, W, C), device=q.device, dtype=q.dtype)
    d_mod = torch.empty((M, C), device=q.device, dtype=q.dtype)
    sums_part = torch.empty((2, B, T, C), device=q.device, dtype=torch.float32)
    dot_f32, precision = dot_mode(q.dtype, interpret)
    context_grad_kernel[(T, B)](
        dout, q, h_weight, gates, d_ctx_all, d_mod, sums_part,
        HW, dout_stride, q_stride, gates_stride, B * T * C, scale,
        C, gates.shape[-1] - 1, fused, dot_f32, precision, BM, BN, BK,
        num_warps=num_warps if fused else 4, num_stages=1 if interpret else 3,
    )
    if not fused:
        rows, cols, red = (32, block(C, 64), block(C, 64)) if interpret else (128, 128, 64)
        scaled_gemm(d_mod, C, 1, h_weight, d_ctx_all, M, C, scale, rows, cols, red, 8, 1, C, interpret)
    sv = sums_part[0].sum(1)
    return d_ctx_all, d_mod, (sv @ h_weight_f32)[:, None, :], sv, sums_part[1].sum((0, 1))


def weight_grad(d_mod, ctx_local, glob, sv, scale: float, interpret: bool):
    """``d_h_weight`` [C, C] fp32: s * dM^T @ (ctx_local + gates[..., L] * glob), the global level
    as sv^T @ glob (d_mod = dM [M, C] and sv = s * v from ``context_grad``)."""
    M, C = d_mod.shape
    # BN x BK output tile (all of C = 96 in one), BM the reduction step; sm_90 builds: no spills,
    # no stack (2 CTAs of 8 warps per SM).
    BM, BN, BK, num_warps = 64, block(C, 128), block(C, 128), 8
    tiles = triton.cdiv(C, BN) * triton.cdiv(C, BK)
    # Enough splits for one program per multiprocessor (each split adds a [C, C] fp32 partial
    # written and re-read: 2 x 2.4 MB at C = 768); two under the interpreter (the split
    # reduction still runs); one without a GPU plan (sm_count None).
    sms = sm_count(d_mod.device)
    target = 2 if interpret else sms if sms else 1
    splits = max(1, min(triton.cdiv(target, tiles), triton.cdiv(M, BM)))
    rows_per_split = triton.cdiv(triton.cdiv(M, splits), BM) * BM
    splits = triton.cdiv(M, rows_per_split)
    dw_part = torch.empty((splits + 1, C, C), device=d_mod.device, dtype=torch.float32)  # last: the global level's
    scaled_gemm(d_mod, 1, C, ctx_local, dw_part, C, M, scale, BN, BK, BM, num_warps, splits, rows_per_split,
                interpret)
    torch.mm(sv.T, glob, out=dw_part[splits])
    return dw_part.sum(0)
