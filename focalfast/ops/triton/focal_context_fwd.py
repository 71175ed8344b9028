"""Forward of the focal level chain: the gated local context and the pooled last level.

For one image and channel (zero padding of every level's input, exact GELU):

    z_0 = ctx,   u_l = dwconv_{K_l}(z_{l-1}, w_l),   z_l = GELU(u_l)          l = 1..L
    ctx_local = sum_l gates[l - 1] * z_l                                      [B, H, W, C]
    mean      = mean_{H, W} z_L,    glob = GELU(mean)                         [B, C] fp32

The global term ``gates[L] * glob`` is left to the ``h`` GEMM (``modulation_gemm``), which needs
``glob`` per image anyway. One program streams one (image, channel block) top to bottom
(``chain_schedule``): z_1 is computed from ctx read in place, z_1..z_{L-1} pass through
per-program ring buffers of a few rows each (cache-resident scratch), z_L is consumed in
registers: no level exists as a tensor in memory. The pool is a sequential sum inside one
program (deterministic, no atomics). When the image is cut into bands (``chain_schedule``) each
band leaves its share of the mean, summed afterwards in band order.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count, sweep_band
from focalfast.ops.triton.depthwise_conv import dwconv_tile, ring_row_offsets, zero_fill
from focalfast.ops.triton.gelu import gelu


@triton.jit
def _forward_level(
    s, l: tl.constexpr, pool, ctx_src, rings, ring_size, ring_row, gate_img, out_img, w_l, chans,
    top, y0, y1, H, W, C, ctx_stride, gates_stride,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING_Z: tl.constexpr, ROW_BIAS: tl.constexpr,
):
    """Step ``s`` of level ``l``: z_l of its R rows into ring l, or (l = L) ctx_local and the pool
    of the band's own rows ``[y0, y1)``; the sweep starts at row ``top``."""
    K: tl.constexpr = K1 if l == 1 else (K2 if l == 2 else (K3 if l == 3 else K4))
    LAG: tl.constexpr = (K2 // 2) * (l >= 2) + (K3 // 2) * (l >= 3) + (K4 // 2) * (l >= 4)  # D_l
    rows = top + s * R - LAG + tl.arange(0, R)[:, None, None]
    for w0 in range(0, W, WT):
        cols = w0 + tl.arange(0, WT)[None, :, None]
        inside = (rows >= 0) & (rows < H) & (cols < W)
        if l == 1:
            u = dwconv_tile(ctx_src, rows, cols, chans, C, H, W, W * ctx_stride, ctx_stride, w_l,
                            K, False, 0, 0, R, WT, BC)
        else:
            u = dwconv_tile(rings + (l - 2) * ring_size, rows, cols, chans, C, H, W, ring_row, BC, w_l,
                            K, False, RING_Z, ROW_BIAS, R, WT, BC)
        z = tl.where(inside, gelu(u), 0.0)
        ring_at = ring_row_offsets(rows, ring_row, RING_Z, ROW_BIAS) + cols * BC
        if l < L:
            tl.store(rings + (l - 1) * ring_size + ring_at, z.to(rings.dtype.element_ty))
        else:
            # ctx_local = sum_j gates[j - 1] * z_j; z_1..z_{L-1} of these rows are still in their rings.
            pix = rows * W + cols
            gate = gate_img + pix * gates_stride
            own = inside & (rows >= y0) & (rows < y1)
            acc = z * tl.load(gate + (L - 1), mask=own, other=0.0).to(tl.float32)
            for j in tl.static_range(1, L):
                z_j = tl.load(rings + (j - 1) * ring_size + ring_at).to(tl.float32)
                acc += z_j * tl.load(gate + (j - 1), mask=own, other=0.0).to(tl.float32)
            tl.store(out_img + pix * C, acc.to(out_img.dtype.element_ty), mask=own & (chans < C))
            z_own = tl.where(own, z, 0.0)
            pool += tl.sum(tl.sum(z_own, axis=1, keep_dims=True), axis=0, keep_dims=True)
    return pool


@triton.jit
def focal_context_fwd_kernel(
    ctx, gates, w1, w2, w3, w4,  # inputs: ctx [B,H,W,C] and gates [B,H,W,L+1] (pixel strides below)
    ctx_local, mean, glob, scratch,  # outputs [B,H,W,C], [B,bands,C], [B,C]; ring scratch
    H, W, C, ctx_stride, gates_stride, band_rows, ring_width,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
    RING_Z: tl.constexpr, ROW_BIAS: tl.constexpr, PAD: tl.constexpr, ONE_BAND: tl.constexpr,
):
    """One program per (channel block, image, band); grid ``(cdiv(C, BC), B, bands)``.

    ``mean[b, band]`` gets the band's share of the mean of z_L; with one band (``ONE_BAND``)
    that is the mean, and ``glob`` = GELU(mean) is written too.
    """
    cb = tl.program_id(0)
    b = tl.program_id(1)
    band = tl.program_id(2)
    n_bands = tl.num_programs(2)
    HW = H * W
    y0, y1, top, n_steps = sweep_band(band, band_rows, H, K2 // 2 + K3 // 2 + K4 // 2, R)  # halo D_L
    cc = tl.arange(0, BC)[None, None, :]
    chans = cb * BC + cc
    img = b.to(tl.int64) * HW  # first pixel of this image
    ctx_src = ctx + img * ctx_stride + chans
    gate_img = gates + img * gates_stride
    out_img = ctx_local + img * C + chans

    # Rings z_1..z_{L-1}: RING_Z rows each of ring_width columns x BC channels, zeroed first.
    ring_row = ring_width * BC
    ring_size = RING_Z * ring_row
    prog = ((b * n_bands + band) * tl.num_programs(0) + cb).to(tl.int64)
    scratch_prog = scratch + prog * ((L - 1) * ring_size)
    zero_fill(scratch_prog, (L - 1) * ring_size, R * WT * BC)
    tl.debug_barrier()
    rings = scratch_prog + PAD * BC + cc

    pool = tl.zeros((1, 1, BC), dtype=tl.float32)
    for s in range(n_steps):
        for l in tl.static_range(1, L + 1):
            pool = _forward_level(
                s, l, pool, ctx_src, rings, ring_size, ring_row, gate_img, out_img,
                w1 if l == 1 else (w2 if l == 2 else (w3 if l == 3 else w4)), chans,
                top, y0, y1, H, W, C, ctx_stride, gates_stride, L, K1, K2, K3, K4, R, WT, BC, RING_Z, ROW_BIAS,
            )
            tl.debug_barrier()  # level l's rows are visible to level l + 1 (and to the next step)

    m = pool / HW
    tl.store(mean + (b * n_bands + band) * C + chans, m, mask=chans < C)
    if ONE_BAND:
        tl.store(glob + b * C + chans, gelu(m), mask=chans < C)


def focal_context_fwd(ctx, ctx_stride, gates, gates_stride, weights, interpret: bool,
                      schedule: Optional[dict] = None):
    """``ctx_local`` [B,H,W,C] (ctx's dtype), ``mean`` and ``glob`` [B,C] fp32.

    ctx/gates: tensors whose element ``(b, y, x, c)`` sits at ``((b*H + y)*W + x) * stride + c``.
    weights: L contiguous ``[C, 1, K, K]`` kernels. schedule: overrides for ``chain_schedule``.
    """
    B, H, W, C = ctx.shape
    L = len(weights)
    sched = chain_schedule(H, W, C, [w.shape[-1] for w in weights], backward=False, interpret=interpret,
                           batch=B, sm_count=sm_count(ctx.device), **(schedule or {}))
    n_cb = triton.cdiv(C, sched.channel_block)
    bands = sched.bands
    ctx_local = torch.empty((B, H, W, C), device=ctx.device, dtype=ctx.dtype)
    mean = torch.empty((B, bands, C), device=ctx.device, dtype=torch.float32)
    glob = torch.empty((B, C), device=ctx.device, dtype=torch.float32)
    scratch = torch.empty(
        max(1, B * n_cb * bands * sched.scratch_rows(False) * sched.ring_width * sched.channel_block),
        device=ctx.device, dtype=ctx.dtype,
    )
    w = list(weights) + [weights[0]] * (4 - L)
    focal_context_fwd_kernel[(n_cb, B, bands)](
        ctx, gates, *w, ctx_local, mean, glob, scratch,
        H, W, C, ctx_stride, gates_stride, sched.band_rows, sched.ring_width,
        L, *sched.kernel_sizes, sched.rows_per_step, sched.tile_width, sched.channel_block,
        sched.ring_z, sched.row_bias, sched.pad, bands == 1,
        num_warps=sched.num_warps, num_stages=1,
    )
    if bands == 1:
        return ctx_local, mean.view(B, C), glob
    mean = mean.sum(1)  # the bands' shares, in band order
    return ctx_local, mean, torch.nn.functional.gelu(mean)
