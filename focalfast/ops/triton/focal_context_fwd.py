"""Forward of the focal level chain: the gated local context and the pooled last level.

For one image and channel (zero padding of every level's input, exact GELU):

    z_0 = ctx,   u_l = dwconv_{K_l}(z_{l-1}, w_l),   z_l = GELU(u_l)          l = 1..L
    ctx_local = sum_l gates[l - 1] * z_l                                      [B, H, W, C]
    mean      = mean_{H, W} z_L,    glob = GELU(mean)                         [B, C] fp32

The global term ``gates[L] * glob`` is left to the ``h`` GEMM (``modulation_gemm``), which needs
``glob`` per image anyway. One program streams one (image, channel block, band of rows) top to
bottom in steps of R rows (``chain_schedule``): each step copies R rows of ctx into the fp32 ring
of z_0 (zero outside the image: the padding), then level l turns rows of ring l - 1 into rows of
ring l, and level L forms ctx_local from z_L and the rows of z_1..z_{L-1} still in their rings.
No level exists as a tensor in memory. The pool is summed per thread over the whole sweep and
reduced once at the end (deterministic, no atomics); bands leave their share of the mean, summed
afterwards in band order.

Bytes per output element (bf16): read ctx and gates (2 + 2 (L + 1) / C), write ctx_local (2);
the rings are per-program fp32 scratch of a few rows (cache-resident).

Instructions per output element (warp-instructions; SASS of the sm_90 build, loop bodies x trip
counts; B = 128, bf16 views, default schedule): FocalNet-T stage 1 (56 x 56, C = 96) 3.34 for
k = 3, 5 (4.4 with a tile reload per tap, 12.4 before fp32 rings, tap-major weights and the
polynomial GELU) and 6.15 for k = 3, 5, 7; stages 2 / 3 / 4: 3.6 / 4.3 / 5.1 (k = 3, 5) and
6.6 / 7.8 / 9.2 (k = 3, 5, 7). ptxas's own register choice (143 / 152 at stage 1) needs no stack:
three 4-warp programs per SM; a cap only moved pointers to the stack. A step computes R = 4 rows per level (``ring_conv_rows``): per column
shift each of its R + K - 1 source rows is loaded once (128-bit) and feeds up to K rows' FMAs, so
a tap costs about one FMA per value; per level about 0.45 for the GELU (13 instructions per value,
``gelu``), the ring store and, at the last level, the gates and the gated sum. Lags are raised so
every level's steps cover whole R-row blocks of the image (``aligned_lags``); columns are swept
in tiles of min(32, W rounded up to a power of two), which pads W = 56 to 64.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count
from focalfast.ops.triton.depthwise_conv import ring_conv_rows, rows_into_ring, tap_major_weights, zero_fill
from focalfast.ops.triton.gelu import gelu


@triton.jit
def _forward_level(
    s, pool, rings, ring_size, ring_row, w_l, gate_img, out_img, cmask,
    start, y0, y1, H, W, C, gates_stride,
    L: tl.constexpr, l: tl.constexpr, K: tl.constexpr, LAG: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr,
):
    """Level ``l`` of step ``s`` at image rows ``first + [0, R)``, ``first = start + s*R - LAG``: z_l
    into ring l, or (l = L) ctx_local and the pool of the band's own rows ``[y0, y1)``. Steps whose
    rows all lie outside the image compute nothing (z_l is zero there: rings get zero rows)."""
    first = start + s * R - LAG
    active = (first < H) & (first + R > 0)
    # Both column loops are always entered, one of them with no iterations (a loop, not an if:
    # the static cost report matches loops by the order they are entered in).
    for w0 in range(0, tl.where(active, W, 0), WT):
        cols = w0 + tl.arange(0, WT)[:, None]
        col_at = cols * BC
        sums = ring_conv_rows(rings + (l - 1) * ring_size + col_at, first, w_l, ring_row, K, RING, R, WT, BC)
        for r in tl.static_range(R):
            row = first + r
            width = tl.where((row >= 0) & (row < H), W, 0)  # columns of this row inside the image
            z = tl.where(cols < width, gelu(sums[r]), 0.0)
            slot = rings + (row & (RING - 1)) * ring_row + col_at
            if l < L:
                tl.store(slot + l * ring_size, z)
            else:
                # ctx_local = sum_j gates[j - 1] * z_j; z_1..z_{L-1} of this row are still in their rings.
                own_row = (row >= y0) & (row < y1)
                pix = row.to(tl.int64) * W + cols
                gate = gate_img + pix * gates_stride
                own = cols < tl.where(own_row, W, 0)
                acc = z * tl.load(gate + (L - 1), mask=own, other=0.0).to(tl.float32)
                for j in tl.static_range(1, L):
                    z_j = tl.load(slot + j * ring_size)
                    acc += z_j * tl.load(gate + (j - 1), mask=own, other=0.0).to(tl.float32)
                tl.store(out_img + pix * C, acc.to(out_img.dtype.element_ty), mask=own & cmask)
                pool += z * tl.where(own_row, 1.0, 0.0)
    if l < L:
        for w0 in range(0, tl.where(active, 0, W), WT):
            col_at = (w0 + tl.arange(0, WT)[:, None]) * BC
            for r in tl.static_range(R):
                tl.store(rings + l * ring_size + ((first + r) & (RING - 1)) * ring_row + col_at,
                         tl.zeros((WT, BC), dtype=tl.float32))
    return pool


@triton.jit
def focal_context_fwd_kernel(
    ctx, gates, taps,  # inputs: ctx [B,H,W,C], gates [B,H,W,L+1] (pixel strides below), tap-major weights
    ctx_local, mean, glob, scratch,  # outputs [B,H,W,C], [B,bands,C], [B,C]; fp32 ring scratch
    H, W, C, ctx_stride, gates_stride, band_rows, ring_width,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    LAG1: tl.constexpr, LAG2: tl.constexpr, LAG3: tl.constexpr, LAG4: tl.constexpr,
    TAP1: tl.constexpr, TAP2: tl.constexpr, TAP3: tl.constexpr, TAP4: tl.constexpr, TAPS: tl.constexpr,
    HALO: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr, PAD: tl.constexpr,
    ONE_BAND: tl.constexpr,
):
    """One program per (channel block, image, band); grid ``(cdiv(C, BC), B, bands)``.

    LAGl: rows level l trails the ctx rows of a step; TAPl: its first of the TAPS taps in ``taps``
    (``tap_major_weights``); HALO: the band halo. ``mean[b, band]`` gets the band's share of the mean of z_L; with one band
    (``ONE_BAND``) that is the mean, and ``glob`` = GELU(mean) is written too.
    """
    cb = tl.program_id(0)
    b = tl.program_id(1)
    band = tl.program_id(2)
    n_bands = tl.num_programs(2)
    y0 = band * band_rows
    y1 = tl.minimum(y0 + band_rows, H)
    start = tl.maximum(y0 - HALO, 0) - K1 // 2  # the first ctx row of the sweep
    LAST: tl.constexpr = LAG1 if L == 1 else (LAG2 if L == 2 else (LAG3 if L == 3 else LAG4))
    n_steps = tl.cdiv(y1 - start + LAST, R)
    cc = tl.arange(0, BC)[None, :]
    chans = cb * BC + cc
    cmask = chans < C
    img = b.to(tl.int64) * H * W  # first pixel of this image
    ctx_img = ctx + img * ctx_stride + chans
    gate_img = gates + img * gates_stride
    out_img = ctx_local + img * C + chans
    w_c = taps + cb * (TAPS * BC) + cc  # this block's tap 0

    # Rings z_0..z_{L-1}: RING rows each of ring_width columns x BC channels, zeroed first.
    ring_row = ring_width * BC
    ring_size = RING * ring_row
    prog = ((b * n_bands + band) * tl.num_programs(0) + cb).to(tl.int64)
    scratch_prog = scratch + prog * (L * ring_size)
    zero_fill(scratch_prog, L * ring_size, R * WT * BC)
    tl.debug_barrier()
    rings = scratch_prog + PAD * BC + cc

    pool = tl.zeros((WT, BC), dtype=tl.float32)
    for s in range(n_steps):
        rows_into_ring(ctx_img[None, :, :], rings[None, :, :], (start + s * R + tl.arange(0, R)[:, None, None]).to(tl.int64),
                       H, W, ctx_stride, cmask[None, :, :], RING, ring_row, WT, BC)  # ring 0: z_0 = ctx, lag 0
        tl.debug_barrier()
        for l in tl.static_range(1, L + 1):
            pool = _forward_level(
                s, pool, rings, ring_size, ring_row,
                w_c + (TAP1 if l == 1 else (TAP2 if l == 2 else (TAP3 if l == 3 else TAP4))) * BC,
                gate_img, out_img, cmask, start, y0, y1, H, W, C, gates_stride, L, l,
                K1 if l == 1 else (K2 if l == 2 else (K3 if l == 3 else K4)),
                LAG1 if l == 1 else (LAG2 if l == 2 else (LAG3 if l == 3 else LAG4)), R, WT, BC, RING,
            )
            tl.debug_barrier()  # level l's rows are visible to level l + 1 (and to the next step)

    m = tl.sum(pool, axis=0) / (H * W)
    ch = cb * BC + tl.arange(0, BC)
    tl.store(mean + (b * n_bands + band) * C + ch, m, mask=ch < C)
    if ONE_BAND:
        tl.store(glob + b * C + ch, gelu(m), mask=ch < C)


def focal_context_fwd(ctx, ctx_stride, gates, gates_stride, weights, interpret: bool,
                      schedule: Optional[dict] = None):
    """``ctx_local`` [B,H,W,C] (ctx's dtype), ``mean`` and ``glob`` [B,C] fp32.

    ctx/gates: tensors whose element ``(b, y, x, c)`` sits at ``((b*H + y)*W + x) * stride + c``.
    weights: L ``[C, 1, K, K]`` kernels. schedule: overrides for ``chain_schedule``.
    """
    B, H, W, C = ctx.shape
    L = len(weights)
    sched = chain_schedule(H, W, C, [w.shape[-1] for w in weights], backward=False, interpret=interpret,
                           batch=B, sm_count=sm_count(ctx.device), **(schedule or {}))
    n_cb = triton.cdiv(C, sched.channel_block)
    bands = sched.bands
    taps = tap_major_weights(weights, sched.channel_block)
    ctx_local = torch.empty((B, H, W, C), device=ctx.device, dtype=ctx.dtype)
    mean = torch.empty((B, bands, C), device=ctx.device, dtype=torch.float32)
    glob = torch.empty((B, C), device=ctx.device, dtype=torch.float32)
    scratch = torch.empty(B * n_cb * bands * sched.scratch_elements(backward=False), device=ctx.device, dtype=torch.float32)
    focal_context_fwd_kernel[(n_cb, B, bands)](
        ctx, gates, taps, ctx_local, mean, glob, scratch,
        H, W, C, ctx_stride, gates_stride, sched.band_rows, sched.ring_width,
        L, *sched.kernel_sizes, *sched.lags, *sched.first_taps, sched.taps(), sched.halo,
        sched.rows_per_step, sched.tile_width, sched.channel_block, sched.ring, sched.pad, bands == 1,
        num_warps=sched.num_warps, num_stages=1,
    )
    if bands == 1:
        return ctx_local, mean.view(B, C), glob
    mean = mean.sum(1)  # the bands' shares, in band order
    return ctx_local, mean, torch.nn.functional.gelu(mean)
