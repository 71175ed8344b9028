"""Backward of the focal level chain, recomputing the levels on the fly.

Input: ``d_ctx_all`` = dL/d(ctx_local + gates[L] * glob) (from ``context_grad``, the scale s is
already in it) and ``d_glob`` = sum over the image of ``gates[L] * d_ctx_all``. Then, per image
and channel (z_0 = ctx, u_l = dwconv(z_{l-1}, w_l), z_l = GELU(u_l), HW = H * W):

    dz_L   = gates[L-1] * d_ctx_all + d_glob * GELU'(mean z_L) / HW      (the pool feeds every pixel)
    du_l   = dz_l * GELU'(u_l)
    dz_l   = gates[l-1] * d_ctx_all + dwconv_transposed(du_{l+1}, w_{l+1})       l = L-1 .. 1
    dctx   = dwconv_transposed(du_1, w_1)
    dw_l[c, dy, dx] = sum_pixels du_l * z_{l-1}[shifted by (dy - P_l, dx - P_l)]
    dgates[l-1] = sum_c d_ctx_all * z_l,   dgates[L] = sum_c d_ctx_all * glob

One program streams one (image, channel block, band of rows) top to bottom (``chain_schedule``):
the forward levels run ahead, each gradient level trails by its halo; z_l, GELU'(u_l) and du_l pass through
per-program ring buffers of a few rows (transient scratch of this kernel, never a saved tensor).
The program also writes ctx_local (for the dq and d_h_weight GEMMs that follow).

Sums over channels (dgates, when C spans several blocks) and over images (dw) leave fp32
partials per program, reduced afterwards in a fixed order: bitwise reproducible, no atomics.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count, sweep_band
from focalfast.ops.triton.depthwise_conv import (
    dwconv_tile,
    dwconv_weight_grad_tile,
    ring_row_offsets,
    zero_fill,
)
from focalfast.ops.triton.gelu import gelu, gelu_grad


@triton.jit
def _forward_level(
    s, l: tl.constexpr, w_l, ctx_src, zrings, grings, zsize, gsize, ring_row, chans,
    top, H, W, C, ctx_stride,
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
    RING_Z: tl.constexpr, RING_G: tl.constexpr, ROW_BIAS: tl.constexpr,
):
    """Level l < L at lag D_l: z_l into ring z_l, GELU'(u_l) into ring g_l."""
    K: tl.constexpr = K1 if l == 1 else (K2 if l == 2 else (K3 if l == 3 else K4))
    LAG: tl.constexpr = (K2 // 2) * (l >= 2) + (K3 // 2) * (l >= 3) + (K4 // 2) * (l >= 4)
    rows = (top + s * R - LAG + tl.arange(0, R)[:, None, None]).to(tl.int64)  # 64-bit pixel offsets
    for w0 in range(0, W, WT):
        cols = w0 + tl.arange(0, WT)[None, :, None]
        inside = (rows >= 0) & (rows < H) & (cols < W)
        if l == 1:
            u = dwconv_tile(ctx_src, rows, cols, chans, C, H, W, W * ctx_stride, ctx_stride, w_l,
                            K, False, 0, 0, R, WT, BC)
        else:
            u = dwconv_tile(zrings + (l - 2) * zsize, rows, cols, chans, C, H, W, ring_row, BC, w_l,
                            K, False, RING_Z, ROW_BIAS, R, WT, BC)
        z = tl.where(inside, gelu(u), 0.0)
        dz_du = tl.where(inside, gelu_grad(u), 0.0)
        cols_at = cols * BC
        tl.store(zrings + (l - 1) * zsize + ring_row_offsets(rows, ring_row, RING_Z, ROW_BIAS) + cols_at,
                 z.to(zrings.dtype.element_ty))
        tl.store(grings + (l - 1) * gsize + ring_row_offsets(rows, ring_row, RING_G, ROW_BIAS) + cols_at,
                 dz_du.to(grings.dtype.element_ty))


@triton.jit
def _last_level(
    s, w_L, ctx_src, zrings, drings, zsize, dsize, ring_row, chans,
    gate_img, dca_img, cl_img, dg_img, dw_prog, glob_c, d_mean,
    top, y0, y1, H, W, C, ctx_stride, gates_stride,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
    RING_Z: tl.constexpr, RING_D: tl.constexpr, ROW_BIAS: tl.constexpr,
):
    """Level L at lag D_L: z_L, ctx_local, the dgates partials, du_L and its weight gradient
    (the last four for the band's own rows ``[y0, y1)`` only)."""
    K: tl.constexpr = K1 if L == 1 else (K2 if L == 2 else (K3 if L == 3 else K4))
    LAG: tl.constexpr = K2 // 2 + K3 // 2 + K4 // 2
    TAPS_BEFORE: tl.constexpr = K1 * K1 * (L > 1) + K2 * K2 * (L > 2) + K3 * K3 * (L > 3)
    rows = (top + s * R - LAG + tl.arange(0, R)[:, None, None]).to(tl.int64)  # 64-bit pixel offsets
    for w0 in range(0, W, WT):
        cols = w0 + tl.arange(0, WT)[None, :, None]
        inside = (rows >= 0) & (rows < H) & (cols < W)
        own = inside & (rows >= y0) & (rows < y1)
        if L == 1:
            u = dwconv_tile(ctx_src, rows, cols, chans, C, H, W, W * ctx_stride, ctx_stride, w_L,
                            K, False, 0, 0, R, WT, BC)
        else:
            u = dwconv_tile(zrings + (L - 2) * zsize, rows, cols, chans, C, H, W, ring_row, BC, w_L,
                            K, False, RING_Z, ROW_BIAS, R, WT, BC)
        z = tl.where(inside, gelu(u), 0.0)
        pix = rows * W + cols
        gate = gate_img + pix * gates_stride
        dca = tl.load(dca_img + pix * C, mask=inside & (chans < C), other=0.0).to(tl.float32)
        g = tl.load(gate + (L - 1), mask=inside, other=0.0).to(tl.float32)
        dg = dg_img + pix * (L + 1)

        ctx_local = z * g
        tl.store(dg + (L - 1), tl.sum(dca * z, axis=2, keep_dims=True), mask=own)
        z_at = ring_row_offsets(rows, ring_row, RING_Z, ROW_BIAS) + cols * BC
        for j in tl.static_range(1, L):
            z_j = tl.load(zrings + (j - 1) * zsize + z_at).to(tl.float32)
            ctx_local += z_j * tl.load(gate + (j - 1), mask=inside, other=0.0).to(tl.float32)
            tl.store(dg + (j - 1), tl.sum(dca * z_j, axis=2, keep_dims=True), mask=own)
        tl.store(dg + L, tl.sum(dca * glob_c, axis=2, keep_dims=True), mask=own)
        tl.store(cl_img + pix * C, ctx_local.to(cl_img.dtype.element_ty), mask=own & (chans < C))

        du = tl.where(inside, (g * dca + d_mean) * gelu_grad(u), 0.0)
        d_at = ring_row_offsets(rows, ring_row, RING_D, ROW_BIAS) + cols * BC
        tl.store(drings + (L - 1) * dsize + d_at, du.to(drings.dtype.element_ty))
        du = tl.where(own, du, 0.0)
        if L == 1:
            dwconv_weight_grad_tile(du, ctx_src, rows, cols, chans, C, H, W, W * ctx_stride, ctx_stride,
                                    dw_prog + TAPS_BEFORE * BC, K, 0, 0, BC)
        else:
            dwconv_weight_grad_tile(du, zrings + (L - 2) * zsize, rows, cols, chans, C, H, W, ring_row, BC,
                                    dw_prog + TAPS_BEFORE * BC, K, RING_Z, ROW_BIAS, BC)


@triton.jit
def _grad_level(
    s, l: tl.constexpr, w_next, ctx_src, zrings, grings, drings, zsize, gsize, dsize, ring_row, chans,
    gate_img, dca_img, dw_prog,
    top, y0, y1, H, W, C, ctx_stride, gates_stride,
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
    RING_Z: tl.constexpr, RING_G: tl.constexpr, RING_D: tl.constexpr, ROW_BIAS: tl.constexpr,
):
    """du_l (l < L) at lag B_l from du_{l+1} (transposed conv), and the weight gradient of level l
    from the band's own rows."""
    K: tl.constexpr = K1 if l == 1 else (K2 if l == 2 else K3)
    K_NEXT: tl.constexpr = K2 if l == 1 else (K3 if l == 2 else K4)
    # B_l = D_L + P_{l+1} + ... + P_L
    LAG: tl.constexpr = (K2 // 2 + K3 // 2 + K4 // 2) + (K2 // 2) * (l < 2) + (K3 // 2) * (l < 3) + (K4 // 2)
    TAPS_BEFORE: tl.constexpr = K1 * K1 * (l > 1) + K2 * K2 * (l > 2)
    rows = (top + s * R - LAG + tl.arange(0, R)[:, None, None]).to(tl.int64)  # 64-bit pixel offsets
    for w0 in range(0, W, WT):
        cols = w0 + tl.arange(0, WT)[None, :, None]
        inside = (rows >= 0) & (rows < H) & (cols < W)
        pix = rows * W + cols
        dca = tl.load(dca_img + pix * C, mask=inside & (chans < C), other=0.0).to(tl.float32)
        g = tl.load(gate_img + pix * gates_stride + (l - 1), mask=inside, other=0.0).to(tl.float32)
        dz = g * dca + dwconv_tile(drings + l * dsize, rows, cols, chans, C, H, W, ring_row, BC, w_next,
                                   K_NEXT, True, RING_D, ROW_BIAS, R, WT, BC)
        dz_du = tl.load(grings + (l - 1) * gsize + ring_row_offsets(rows, ring_row, RING_G, ROW_BIAS)
                        + cols * BC).to(tl.float32)
        du = tl.where(inside, dz * dz_du, 0.0)
        tl.store(drings + (l - 1) * dsize + ring_row_offsets(rows, ring_row, RING_D, ROW_BIAS) + cols * BC,
                 du.to(drings.dtype.element_ty))
        du = tl.where((rows >= y0) & (rows < y1), du, 0.0)
        if l == 1:
            dwconv_weight_grad_tile(du, ctx_src, rows, cols, chans, C, H, W, W * ctx_stride, ctx_stride,
                                    dw_prog + TAPS_BEFORE * BC, K, 0, 0, BC)
        else:
            dwconv_weight_grad_tile(du, zrings + (l - 2) * zsize, rows, cols, chans, C, H, W, ring_row, BC,
                                    dw_prog + TAPS_BEFORE * BC, K, RING_Z, ROW_BIAS, BC)


@triton.jit
def _ctx_grad(
    s, w1, drings, ring_row, chans, dctx_img, top, y0, y1, H, W, C,
    K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING_D: tl.constexpr, ROW_BIAS: tl.constexpr,
):
    """dctx = dwconv_transposed(du_1, w_1) at lag B_0, for the band's own rows."""
    LAG: tl.constexpr = 2 * (K2 // 2 + K3 // 2 + K4 // 2) + K1 // 2
    rows = (top + s * R - LAG + tl.arange(0, R)[:, None, None]).to(tl.int64)  # 64-bit pixel offsets
    for w0 in range(0, W, WT):
        cols = w0 + tl.arange(0, WT)[None, :, None]
        inside = (rows >= y0) & (rows < y1) & (cols < W)
        dx = dwconv_tile(drings, rows, cols, chans, C, H, W, ring_row, BC, w1, K1, True, RING_D, ROW_BIAS,
                         R, WT, BC)
        tl.store(dctx_img + (rows * W + cols) * C, dx.to(dctx_img.dtype.element_ty),
                 mask=inside & (chans < C))


@triton.jit
def focal_context_bwd_kernel(
    ctx, gates, w1, w2, w3, w4, d_ctx_all, d_glob_part, mean, glob,  # inputs
    dctx, dgates_part, dw_part, ctx_local, scratch,  # outputs and ring scratch
    H, W, C, ctx_stride, gates_stride, band_rows, ring_width, n_glob_tiles,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
    RING_Z: tl.constexpr, RING_G: tl.constexpr, RING_D: tl.constexpr, ROW_BIAS: tl.constexpr,
    PAD: tl.constexpr, TAPS: tl.constexpr,
):
    """One program per (channel block, image, band); grid ``(cdiv(C, BC), B, bands)``.

    dgates_part ``[cdiv(C, BC), B, H, W, L+1]`` and dw_part ``[B * bands, cdiv(C, BC), TAPS, BC]``
    (zeroed) are fp32 partials; dctx and ctx_local are ``[B, H, W, C]``.
    """
    cb = tl.program_id(0)
    b = tl.program_id(1)
    band = tl.program_id(2)
    HW = H * W
    y0, y1, top, n_steps = sweep_band(band, band_rows, H, 2 * (K2 // 2 + K3 // 2 + K4 // 2) + K1 // 2, R)  # B_0
    cc = tl.arange(0, BC)[None, None, :]
    chans = cb * BC + cc
    cmask = chans < C
    img = b.to(tl.int64) * HW
    prog = ((b * tl.num_programs(2) + band) * tl.num_programs(0) + cb).to(tl.int64)
    ctx_src = ctx + img * ctx_stride + chans
    gate_img = gates + img * gates_stride
    dca_img = d_ctx_all + img * C + chans
    cl_img = ctx_local + img * C + chans
    dctx_img = dctx + img * C + chans
    dg_img = dgates_part + (cb * tl.num_programs(1) + b).to(tl.int64) * HW * (L + 1)
    dw_prog = dw_part + prog * (TAPS * BC)

    # The pool's gradient: d_mean = d_glob * GELU'(mean) / HW, the same at every pixel.
    d_glob = tl.zeros((1, 1, BC), dtype=tl.float32)
    for t in range(n_glob_tiles):
        d_glob += tl.load(d_glob_part + (b * n_glob_tiles + t) * C + chans, mask=cmask, other=0.0)
    d_mean = d_glob * gelu_grad(tl.load(mean + b * C + chans, mask=cmask, other=0.0)) / HW
    glob_c = tl.load(glob + b * C + chans, mask=cmask, other=0.0)

    # Rings: z_1..z_{L-1}, GELU'(u_1..u_{L-1}), du_1..du_L; zeroed first.
    ring_row = ring_width * BC
    zsize = RING_Z * ring_row
    gsize = RING_G * ring_row
    dsize = RING_D * ring_row
    per_prog = (L - 1) * (zsize + gsize) + L * dsize
    scratch_prog = scratch + prog * per_prog
    zero_fill(scratch_prog, per_prog, R * WT * BC)
    tl.debug_barrier()
    zrings = scratch_prog + PAD * BC + cc
    grings = zrings + (L - 1) * zsize
    drings = grings + (L - 1) * gsize

    for s in range(n_steps):
        for l in tl.static_range(1, L):
            _forward_level(s, l, w1 if l == 1 else (w2 if l == 2 else w3), ctx_src, zrings, grings,
                           zsize, gsize, ring_row, chans, top, H, W, C, ctx_stride,
                           K1, K2, K3, K4, R, WT, BC, RING_Z, RING_G, ROW_BIAS)
            tl.debug_barrier()
        _last_level(s, w1 if L == 1 else (w2 if L == 2 else (w3 if L == 3 else w4)), ctx_src, zrings, drings,
                    zsize, dsize, ring_row, chans, gate_img, dca_img, cl_img, dg_img, dw_prog, glob_c, d_mean,
                    top, y0, y1, H, W, C, ctx_stride, gates_stride, L, K1, K2, K3, K4, R, WT, BC,
                    RING_Z, RING_D, ROW_BIAS)
        tl.debug_barrier()
        for i in tl.static_range(1, L):
            _grad_level(s, L - i, w2 if L - i == 1 else (w3 if L - i == 2 else w4), ctx_src, zrings, grings,
                        drings, zsize, gsize, dsize, ring_row, chans, gate_img, dca_img, dw_prog,
                        top, y0, y1, H, W, C, ctx_stride, gates_stride, K1, K2, K3, K4, R, WT, BC,
                        RING_Z, RING_G, RING_D, ROW_BIAS)
            tl.debug_barrier()
        _ctx_grad(s, w1, drings, ring_row, chans, dctx_img, top, y0, y1, H, W, C, K1, K2, K3, K4, R, WT, BC,
                  RING_D, ROW_BIAS)
        tl.debug_barrier()


def focal_context_bwd(ctx, ctx_stride, gates, gates_stride, weights, d_ctx_all, d_glob_part, mean, glob,
                      interpret: bool, schedule: Optional[dict] = None):
    """``(dctx [B,H,W,C], dgates [B,H,W,L+1], dweights (L x [C,1,K,K]), ctx_local [B,H,W,C])``.

    ctx/gates as in ``focal_context_fwd``; d_ctx_all ``[B,H,W,C]`` contiguous; d_glob_part
    ``[B, T, C]`` fp32 partial sums of d_glob; mean and glob ``[B, C]`` fp32 from the forward;
    schedule: overrides for ``chain_schedule``.
    """
    B, H, W, C = ctx.shape
    L = len(weights)
    ks = [w.shape[-1] for w in weights]
    sched = chain_schedule(H, W, C, ks, backward=True, interpret=interpret,
                           batch=B, sm_count=sm_count(ctx.device), **(schedule or {}))
    BC = sched.channel_block
    n_cb = triton.cdiv(C, BC)
    bands = sched.bands
    taps = sched.taps()
    dev, dtype = ctx.device, ctx.dtype
    dctx = torch.empty((B, H, W, C), device=dev, dtype=dtype)
    ctx_local = torch.empty((B, H, W, C), device=dev, dtype=dtype)
    dgates_part = torch.empty((n_cb, B, H, W, L + 1), device=dev, dtype=torch.float32)
    dw_part = torch.zeros((B * bands, n_cb, taps, BC), device=dev, dtype=torch.float32)
    scratch = torch.empty(B * bands * n_cb * sched.scratch_rows(True) * sched.ring_width * BC,
                          device=dev, dtype=dtype)
    w = list(weights) + [weights[0]] * (4 - L)
    focal_context_bwd_kernel[(n_cb, B, bands)](
        ctx, gates, *w, d_ctx_all, d_glob_part, mean, glob,
        dctx, dgates_part, dw_part, ctx_local, scratch,
        H, W, C, ctx_stride, gates_stride, sched.band_rows, sched.ring_width, d_glob_part.shape[1],
        L, *sched.kernel_sizes, sched.rows_per_step, sched.tile_width, BC,
        sched.ring_z, sched.ring_g, sched.ring_d, sched.row_bias, sched.pad, taps,
        num_warps=sched.num_warps, num_stages=1,
    )
    dgates = dgates_part.sum(0).to(dtype)
    dw = dw_part.sum(0).permute(1, 0, 2).reshape(taps, n_cb * BC)[:, :C]  # [taps, C]
    # Fresh contiguous tensors: custom-op outputs may not share storage (and the fake impl is contiguous).
    dweights = [t.t().reshape(C, 1, k, k).to(dtype, memory_format=torch.contiguous_format, copy=True)
                for t, k in zip(dw.split([k * k for k in ks]), ks)]
    return dctx, dgates, dweights, ctx_local
