"""Forward of the focal level chain: the gated local context and the pooled last level.

For one image and channel (zero padding of every level's input, exact GELU):

    z_0 = ctx,   u_l = dwconv_{K_l}(z_{l-1}, w_l),   z_l = GELU(u_l)          l = 1..L
    ctx_local = sum_l gates[l - 1] * z_l                                      [B, H, W, C]
    mean      = mean_{H, W} z_L,    glob = GELU(mean)                         [B, C] fp32

The global term ``gates[L] * glob`` is left to the ``h`` GEMM (``modulation_gemm``), which needs
``glob`` per image anyway. One program streams one (image, channel block, band of rows) top to
bottom in steps of R rows (``chain_schedule``): each step copies its rows of ctx into the fp32 ring
of z_0 (zero outside the image: the padding), then level l turns rows of ring l - 1 into rows of
ring l, and level L forms ctx_local from z_L and the rows of z_1..z_{L-1} still in their rings.
No level exists as a tensor in memory. The pool is summed per thread over the whole sweep and
reduced once at the end (deterministic, no atomics); bands leave their share of the mean, summed
afterwards in band order.

Bytes per output element (bf16): read ctx and gates (2 + 2 (L + 1) / C), write ctx_local (2);
the rings are per-program fp32 scratch of a few rows (cache-resident).

Instructions per output element (warp-instructions; SASS of the sm_90 build, loop bodies x trip
counts; B = 128, bf16 views, default schedule), k = 3, 5 / k = 3, 5, 7: FocalNet-T stage 1 (56 x 56,
C = 96) 2.65 / 4.93, stage 2 2.74 / 5.11, stage 3 2.89 / 5.30, stage 4 3.09 / 5.73 (3.34 / 6.15 up
to 5.12 / 9.21 with 8-value tiles padded to powers of two). A tile row is ``[WT, BC]`` = 256 values,
one 128-bit fp32 vector of channels per thread (``chain_schedule.forward_tile``), with WT and BC
chosen to cover W and C exactly (8 x 32 at 56 x 96, 1 x 256 at 7 x 768), and a step computes R
rows per level (8 at H = 56, else 7: no padded rows at any stage; R need not be a power of two, the
rows are a tuple): per column shift each of the step's R + K - 1 source rows is loaded once and
feeds up to K rows' FMAs (``ring_conv_rows``), so a tap costs about one FMA per value. On top, per
level: the GELU (11 instructions per value, ``gelu``), the ring store and, at the last level, the
gates and the gated sum. Lags are raised so every level's steps cover whole R-row blocks of the
image (``aligned_lags``); then (one band, exact tiles: ``EXACT``) no load or store is masked.

Occupancy: programs of two warps (64 threads), ptxas's own register choice (152-216 across the
stages; no stack, no spills): 4-6 programs (8-12 warps) fit an SM, but the grid of
B * cdiv(C, BC) = 384 programs at B = 128 puts about 3 on each of 132 SMs (6 warps). The work is
in-thread ILP (R rows x 4 channels of independent FMA chains per thread), so a register cap would
buy residency that the grid cannot fill; smaller programs (one column of 4 channels per thread)
are what makes exact tiles possible at every stage.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count
from focalfast.ops.triton.depthwise_conv import ring_conv_rows, tap_major_weights, tile_into_ring, zero_fill
from focalfast.ops.triton.gelu import gelu


@triton.jit
def _forward_level(
    s, pool, rings, ring_size, ring_row, w_l, gate_cols, out_cols, cols, cmask,
    start, y0, y1, H, W, C, gates_stride,
    L: tl.constexpr, l: tl.constexpr, K: tl.constexpr, LAG: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr, EXACT: tl.constexpr,
):
    """Level ``l`` of step ``s`` at image rows ``first + [0, R)``, ``first = start + s*R - LAG``: z_l
    into ring l, or (l = L) ctx_local and the pool of the band's own rows ``[y0, y1)``. Steps whose
    rows all lie outside the image compute nothing (z_l is zero there: rings get zero rows).
    ``cols`` ``[WT, 1]``: 0..WT-1; ``gate_cols`` / ``out_cols``: the image's gates / ctx_local at
    those columns of row 0. ``EXACT``: every active step's rows are the band's own rows and the
    tiles cover W and C exactly, so nothing is masked."""
    first = start + s * R - LAG
    active = (first < H) & (first + R > 0)
    # Both column loops are always entered, one of them with no iterations (a loop, not an if:
    # the static cost report matches loops by the order they are entered in).
    for w0 in range(0, tl.where(active, W, 0), WT):
        tile_cols = w0 + cols
        col_at = tile_cols * BC
        sums = ring_conv_rows(rings + (l - 1) * ring_size + col_at, first, w_l, ring_row, K, RING, R, WT, BC)
        if l == L:  # gates and ctx_local of row `first`, stepped one row on per row (no 64-bit products per row)
            pix = first.to(tl.int64) * W + w0
            gate = gate_cols + pix * gates_stride
            out = out_cols + pix * C
        for r in tl.static_range(R):
            row = first + r
            z = gelu(sums[r])
            if not EXACT:  # z_l is zero outside the image (the next level's padding); z_L counts in the band only
                inside = ((row >= 0) & (row < H)) if l < L else ((row >= y0) & (row < y1))
                z = tl.where(tile_cols < tl.where(inside, W, 0), z, 0.0)
            slot = rings + (row & (RING - 1)) * ring_row + col_at
            if l < L:
                tl.store(slot + l * ring_size, z)
            else:  # ctx_local = sum_j gates[j - 1] * z_j; z_1..z_{L-1} of this row are still in their rings
                own = None if EXACT else tile_cols < tl.where(inside, W, 0)
                zero = None if EXACT else 0.0
                acc = z * tl.load(gate + (L - 1), mask=own, other=zero).to(tl.float32)
                for j in tl.static_range(1, L):
                    acc += tl.load(slot + j * ring_size) * tl.load(gate + (j - 1), mask=own, other=zero).to(tl.float32)
                tl.store(out, acc.to(out.dtype.element_ty), mask=None if EXACT else own & cmask)
                pool += z
                gate += W * gates_stride
                out += W * C
    if l < L:
        for w0 in range(0, tl.where(active, 0, W), WT):
            col_at = (w0 + cols) * BC
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
    ONE_BAND: tl.constexpr, EXACT: tl.constexpr, ZERO_BLOCK: tl.constexpr,
):
    RP: tl.constexpr = triton.next_power_of_2(R)
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
    cols = tl.arange(0, WT)[:, None]
    gate_cols = gates + img * gates_stride + cols * gates_stride
    out_cols = ctx_local + img * C + cols * C + chans
    # this block's tap 0, as a [WT, BC] tile (equal rows): loaded in the layout of the ring tiles
    w_c = tl.broadcast_to(taps + cb * (TAPS * BC) + cc, (WT, BC))

    # Rings z_0..z_{L-1}: RING rows each of ring_width columns x BC channels, zeroed first.
    ring_row = ring_width * BC
    ring_size = RING * ring_row
    prog = ((b * n_bands + band) * tl.num_programs(0) + cb).to(tl.int64)
    scratch_prog = scratch + prog * (L * ring_size)
    zero_fill(scratch_prog, L * ring_size, ZERO_BLOCK, WHOLE_BLOCKS=True)
    tl.debug_barrier()
    rings = scratch_prog + PAD * BC + cc

    pool = tl.zeros((WT, BC), dtype=tl.float32)
    for s in range(n_steps):
        # ring 0: z_0 = ctx at rows row0 + [0, R) (lag 0) and the next RP - R rows (the ring holds
        # them: chain_schedule), [RP, WT, BC] per column tile; none once level 1 reads no new row.
        # Masks only where a row lies outside the image (two column loops, one of them empty).
        row0 = start + s * R
        rows = (row0 + tl.arange(0, RP)[:, None, None]).to(tl.int64)
        slot = rings[None, :, :] + (rows & (RING - 1)) * ring_row
        whole = EXACT & (row0 >= 0) & (row0 + RP <= H)
        for w0 in range(0, tl.where(whole, W, 0), WT):
            tile_into_ring(ctx_img[None, :, :], slot, rows, w0 + cols[None, :, :], H, W, ctx_stride,
                           cmask[None, :, :], BC, False)
        for w0 in range(0, tl.where(whole | (row0 >= H + K1 // 2), 0, W), WT):
            tile_into_ring(ctx_img[None, :, :], slot, rows, w0 + cols[None, :, :], H, W, ctx_stride,
                           cmask[None, :, :], BC, True)
        tl.debug_barrier()
        for l in tl.static_range(1, L + 1):
            pool = _forward_level(
                s, pool, rings, ring_size, ring_row,
                w_c + (TAP1 if l == 1 else (TAP2 if l == 2 else (TAP3 if l == 3 else TAP4))) * BC,
                gate_cols, out_cols, cols, cmask, start, y0, y1, H, W, C, gates_stride, L, l,
                K1 if l == 1 else (K2 if l == 2 else (K3 if l == 3 else K4)),
                LAG1 if l == 1 else (LAG2 if l == 2 else (LAG3 if l == 3 else LAG4)), R, WT, BC, RING, EXACT,
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
    scratch_elements = sched.scratch_elements(backward=False)  # per program
    scratch = torch.empty(B * n_cb * bands * scratch_elements, device=ctx.device, dtype=torch.float32)
    focal_context_fwd_kernel[(n_cb, B, bands)](
        ctx, gates, taps, ctx_local, mean, glob, scratch,
        H, W, C, ctx_stride, gates_stride, sched.band_rows, sched.ring_width,
        L, *sched.kernel_sizes, *sched.lags, *sched.first_taps, sched.taps(), sched.halo,
        sched.rows_per_step, sched.tile_width, sched.channel_block, sched.ring, sched.pad, bands == 1,
        sched.whole_steps and W % sched.tile_width == 0 and C % sched.channel_block == 0,
        min(8192, scratch_elements & -scratch_elements),  # a power of two dividing the scratch
        num_warps=sched.num_warps, num_stages=1,
    )
    if bands == 1:
        return ctx_local, mean.view(B, C), glob
    mean = mean.sum(1)  # the bands' shares, in band order
    return ctx_local, mean, torch.nn.functional.gelu(mean)
