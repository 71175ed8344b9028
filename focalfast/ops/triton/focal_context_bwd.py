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

One program streams one (image, channel block, band of rows) top to bottom in steps of R rows
(``chain_schedule``): ctx rows enter the fp32 ring of z_0, the forward levels run ahead (z_l and
GELU'(u_l) into rings), each gradient level trails by its halo (du_l into a ring), dctx last.
The program also writes ctx_local (for the dq and d_h_weight GEMMs that follow). A step holds its
R rows as a tuple of ``[WT, BC]`` tiles (``ring_conv_rows``): the recompute shares each loaded ring
row between up to K rows' FMAs. The weight gradient of level l rides on the transposed conv of du_l
(``ring_conv_transposed_rows_and_weight_grad``): dw_l[dy, dx] = sum_y du_l[y + P_l - dy] * z_{l-1}[y]
reads du_l at the very pixels the transposed conv reads, so each loaded value feeds two FMAs, and
a tap's [WT, BC] slot takes the step's R rows as one FMA chain (one slot load and store per tap and
step, no cross-thread sums); the slots are reduced over the tile's columns once, at the end.

Sums over channels (dgates, when C spans several blocks) and over images (dw) leave fp32
partials per program, reduced afterwards in a fixed order: bitwise reproducible, no atomics.

Bytes per output element (bf16): read ctx, gates, d_ctx_all (2 + 2 + 2 (L + 1) / C), write dctx,
ctx_local (4) and the fp32 dgates partials (4 (L + 1) / BC); rings and weight-gradient slots are
per-program fp32 scratch.

Instructions per output element (warp-instructions, measured as in ``focal_context_fwd``),
FocalNet-T stages 1 / 2 / 3 / 4: k = 3, 5: 8.17 / 8.68 / 9.83 / 9.94; k = 3, 5, 7: 16.13 / 16.74 /
17.56 / 23.24 (9.42 / 10.26 / 11.70 / 13.77 and 20.56 / 21.79 / 24.47 / 29.15 with 64-, 32-, 16-
and 8-column tiles, which padded every map's W = 7 * 2^k columns by 1/8). Tiles (``backward_tile``):
rows of ``[WT, BC] = 256`` values that pad neither W nor C, e.g. [8, 32] at 56 x 56 x 96, each
thread one 4-channel vector per row and 16 values per step: R = 4 rows and 2 warps for k = 3, 5
(but 2 rows, 1 warp on 7 x 7 maps), R = 2 and 1 warp for k = 3, 5, 7 (4 rows of 3 levels spill).
Occupancy: ptxas's own register choice (144-192), no spills, no stack; registers allow 5 CTAs of 2
warps (10-14 CTAs of 1 warp) per SM, but FocalNet-T at B = 128 launches 384 programs (3 per SM):
about 6 warps per SM for k = 3, 5 and 3 for k = 3, 5, 7, against 8 (1 CTA of 8 warps, 3 waves)
with the wide tiles; each thread keeps 4-16 independent FMA chains. A program sweeps its rows in
W / WT tiles, so fewer, longer programs: per-step costs (stage set-up, barriers) spread over the
whole row. Per tap and
value: an FMA plus a load per 4 values and (R + K - 1) / (R K) rows for the recompute; for the
transposed conv with the weight gradient, two FMAs, a quarter load and the slot's load and store
per 4 values and R rows. At k = 7 the last level recomputes tap by tap
(``ring_conv_rows_by_tap``): unrolled, its 49 taps spill. The image's
channel offsets are declared 4-contiguous so that bf16 loads take the fp32 rings' layout
(4 channels per thread): no layout conversions through shared memory, no barriers per tap.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count
from focalfast.ops.triton.depthwise_conv import (
    ring_conv_rows,
    ring_conv_rows_by_tap,
    ring_conv_transposed_rows_and_weight_grad,
    rows_into_ring,
    tap_major_weights,
    zero_fill,
)
from focalfast.ops.triton.gelu import gelu_and_grad, gelu_grad


@triton.jit
def _stage_columns(s, start, H, W, LAG: tl.constexpr, R: tl.constexpr):
    """``(first, work, rest)``: a stage's rows are ``first + [0, R)``, ``first = start + s*R - LAG``;
    when any of them lies in the image it sweeps ``work = W`` columns of them and ``rest = 0``,
    else it writes ``rest = W`` columns of zero rows (steps outside the image, from the sweep's lags
    and the tiles' rounding). Loops, not an ``if``: each of the two is entered with no iterations
    when the other runs (the static cost report counts loops by their trips)."""
    first = start + s * R - LAG
    active = (first < H) & (first + R > 0)
    return first, tl.where(active, W, 0), tl.where(active, 0, W)


@triton.jit
def _zero_rows(ring, first, n_cols, ring_row, R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr,
               RING: tl.constexpr):
    """Zeros into the ring rows of image rows ``first + [0, R)``, ``n_cols`` columns (0 or W);
    ``ring`` ``[1, BC]``: column 0 of ring row 0."""
    for w0 in range(0, n_cols, WT):
        col_at = (w0 + tl.arange(0, WT)[:, None]) * BC
        for r in tl.static_range(R):
            tl.store(ring + ((first + r) & (RING - 1)) * ring_row + col_at, tl.zeros((WT, BC), dtype=tl.float32))


@triton.jit
def _forward_level(
    s, zr, gr, ring_size, ring_row, w_l, start, H, W,
    l: tl.constexpr, K: tl.constexpr, LAG: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr,
):
    """Level l < L at its R rows: z_l into ring z_l, GELU'(u_l) into ring g_l."""
    first, work, rest = _stage_columns(s, start, H, W, LAG, R)
    for w0 in range(0, work, WT):
        cols = w0 + tl.arange(0, WT)[:, None]
        col_at = cols * BC
        sums = ring_conv_rows(zr + (l - 1) * ring_size + col_at, first, w_l, ring_row, K, RING, R, WT, BC)
        for r in tl.static_range(R):
            row = first + r
            inside = cols < tl.where((row >= 0) & (row < H), W, 0)
            z, dz_du = gelu_and_grad(sums[r])
            slot = (row & (RING - 1)) * ring_row + col_at
            tl.store(zr + l * ring_size + slot, tl.where(inside, z, 0.0))
            tl.store(gr + (l - 1) * ring_size + slot, tl.where(inside, dz_du, 0.0))
    _zero_rows(zr + l * ring_size, first, rest, ring_row, R, WT, BC, RING)
    _zero_rows(gr + (l - 1) * ring_size, first, rest, ring_row, R, WT, BC, RING)


@triton.jit
def _last_level(
    s, zr, dr, ring_size, ring_row, w_L, cmask,
    gate_img, dca_img, cl_img, dg_img, pool_grad,
    start, y0, y1, H, W, C, gates_stride,
    L: tl.constexpr, K: tl.constexpr, LAG: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr,
):
    """Level L at its R rows: z_L, ctx_local and the dgates partials (for the band's own rows
    ``[y0, y1)`` only), and du_L into its ring. ``pool_grad`` ``[1, BC]``: d_mean, then glob BC
    elements on (read per step: kept in registers across the sweep they cost spills)."""
    first, work, rest = _stage_columns(s, start, H, W, LAG, R)
    d_mean = tl.load(pool_grad)
    glob_c = tl.load(pool_grad + BC)
    for w0 in range(0, work, WT):
        cols = w0 + tl.arange(0, WT)[:, None]
        col_at = cols * BC
        src = zr + (L - 1) * ring_size + col_at
        if K >= 7:  # the unrolled 7 x 7 taps with everything else this stage holds would spill
            sums = ring_conv_rows_by_tap(src, first, w_L, ring_row, K, RING, R, WT, BC)
        else:
            sums = ring_conv_rows(src, first, w_L, ring_row, K, RING, R, WT, BC)
        for r in tl.static_range(R):
            row = first + r
            inside = cols < tl.where((row >= 0) & (row < H), W, 0)
            own = cols < tl.where((row >= y0) & (row < y1), W, 0)
            z, dz_du = gelu_and_grad(sums[r])
            slot = (row & (RING - 1)) * ring_row + col_at
            pix = row.to(tl.int64) * W + cols
            gate = gate_img + pix * gates_stride
            dca = tl.load(dca_img + pix * C, mask=inside & cmask, other=0.0).to(tl.float32)
            g = tl.load(gate + (L - 1), mask=inside, other=0.0).to(tl.float32)
            dg = dg_img + pix * (L + 1)

            ctx_local = z * g
            tl.store(dg + (L - 1), tl.sum(dca * z, axis=1, keep_dims=True), mask=own)
            for j in tl.static_range(1, L):
                z_j = tl.load(zr + j * ring_size + slot)
                ctx_local += z_j * tl.load(gate + (j - 1), mask=inside, other=0.0).to(tl.float32)
                tl.store(dg + (j - 1), tl.sum(dca * z_j, axis=1, keep_dims=True), mask=own)
            tl.store(dg + L, tl.sum(dca * glob_c, axis=1, keep_dims=True), mask=own)
            tl.store(cl_img + pix * C, ctx_local.to(cl_img.dtype.element_ty), mask=own & cmask)

            du = tl.where(inside, (g * dca + d_mean) * dz_du, 0.0)
            tl.store(dr + (L - 1) * ring_size + slot, du)
    _zero_rows(dr + (L - 1) * ring_size, first, rest, ring_row, R, WT, BC, RING)


@triton.jit
def _own_rows(ring, first, col_at, ring_row, y0, y1, BANDED: tl.constexpr, R: tl.constexpr, RING: tl.constexpr):
    """The R ring rows of image rows ``first + [0, R)`` at ``col_at``, as a tuple; with ``BANDED``
    zero for rows outside the band's own ``[y0, y1)`` (the weight gradient counts only those)."""
    rows = ()
    for r in tl.static_range(R):
        row = first + r
        ptr = ring + (row & (RING - 1)) * ring_row + col_at
        if BANDED:
            rows = rows + (tl.where((row >= y0) & (row < y1), tl.load(ptr), 0.0),)
        else:
            rows = rows + (tl.load(ptr),)
    return rows


@triton.jit
def _grad_level(
    s, zr, gr, dr, ring_size, ring_row, w_next, dw_next, cmask, gate_img, dca_img,
    start, y0, y1, H, W, C, gates_stride,
    l: tl.constexpr, K_NEXT: tl.constexpr, LAG: tl.constexpr, BANDED: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr,
):
    """du_l (0 < l < L) at its R rows from du_{l+1} (transposed conv) into ring d_l, and the weight
    gradient of level l + 1 from the same loads of du_{l+1} and z_l (its own rows)."""
    first, work, rest = _stage_columns(s, start, H, W, LAG, R)
    for w0 in range(0, work, WT):
        cols = w0 + tl.arange(0, WT)[:, None]
        col_at = cols * BC
        z_l = _own_rows(zr + l * ring_size, first, col_at, ring_row, y0, y1, BANDED, R, RING)
        sums = ring_conv_transposed_rows_and_weight_grad(dr + l * ring_size + col_at, first, z_l, w_next,
                                                         dw_next, ring_row, K_NEXT, RING, R, WT, BC)
        for r in tl.static_range(R):
            row = first + r
            inside = cols < tl.where((row >= 0) & (row < H), W, 0)
            pix = row.to(tl.int64) * W + cols
            slot = (row & (RING - 1)) * ring_row + col_at
            dca = tl.load(dca_img + pix * C, mask=inside & cmask, other=0.0).to(tl.float32)
            g = tl.load(gate_img + pix * gates_stride + (l - 1), mask=inside, other=0.0).to(tl.float32)
            du = tl.where(inside, (g * dca + sums[r]) * tl.load(gr + (l - 1) * ring_size + slot), 0.0)
            tl.store(dr + (l - 1) * ring_size + slot, du)
    _zero_rows(dr + (l - 1) * ring_size, first, rest, ring_row, R, WT, BC, RING)


@triton.jit
def _ctx_grad(
    s, zr, dr, ring_row, w1, dw1, dctx_img, cmask, start, y0, y1, H, W, C,
    K1: tl.constexpr, LAG: tl.constexpr, BANDED: tl.constexpr, R: tl.constexpr, WT: tl.constexpr,
    BC: tl.constexpr, RING: tl.constexpr,
):
    """dctx = dwconv_transposed(du_1, w_1) at its R rows, for the band's own rows, and the weight
    gradient of level 1 from the same loads of du_1 and z_0 = ctx."""
    first, work, rest = _stage_columns(s, start, H, W, LAG, R)
    for w0 in range(0, work, WT):
        cols = w0 + tl.arange(0, WT)[:, None]
        col_at = cols * BC
        z_0 = _own_rows(zr, first, col_at, ring_row, y0, y1, BANDED, R, RING)
        sums = ring_conv_transposed_rows_and_weight_grad(dr + col_at, first, z_0, w1, dw1, ring_row, K1, RING,
                                                         R, WT, BC)
        for r in tl.static_range(R):
            row = first + r
            own = cols < tl.where((row >= y0) & (row < y1), W, 0)
            tl.store(dctx_img + (row.to(tl.int64) * W + cols) * C, sums[r].to(dctx_img.dtype.element_ty),
                     mask=own & cmask)


@triton.jit
def focal_context_bwd_kernel(
    ctx, gates, taps, d_ctx_all, d_glob_part, mean, glob,  # inputs
    dctx, dgates_part, dw_part, ctx_local, scratch,  # outputs and fp32 scratch
    H, W, C, ctx_stride, gates_stride, band_rows, ring_width, n_glob_tiles, n_taps,
    L: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr, K4: tl.constexpr,
    LAG1: tl.constexpr, LAG2: tl.constexpr, LAG3: tl.constexpr, LAG4: tl.constexpr,
    GLAG0: tl.constexpr, GLAG1: tl.constexpr, GLAG2: tl.constexpr, GLAG3: tl.constexpr,
    TAP1: tl.constexpr, TAP2: tl.constexpr, TAP3: tl.constexpr, TAP4: tl.constexpr, TAPS: tl.constexpr,
    HALO: tl.constexpr, TAIL: tl.constexpr, BANDED: tl.constexpr, COLUMNS_IN_THREAD: tl.constexpr,
    R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr, RING: tl.constexpr, PAD: tl.constexpr,
):
    """One program per (channel block, image, band); grid ``(cdiv(C, BC), B, bands)``.

    LAGl: rows forward level l trails the ctx rows of a step; GLAGl: the same for du_l (GLAG0:
    dctx); TAPl: its first of the TAPS taps in ``taps`` (``tap_major_weights``). The weight gradient
    of level l runs with du_{l-1} and needs z_{l-1} P_l rows past a band's last row: a band above
    the image's last (``BANDED``) sweeps until its TAIL = max_l (GLAG_{l-1} + P_l) stage has
    passed its last row, the last band (and a whole image) until dctx has. dgates_part
    ``[cdiv(C, BC), B, H, W, L+1]`` and dw_part ``[B * bands, cdiv(C, BC), TAPS, BC]`` are fp32
    partials; dctx and ctx_local are ``[B, H, W, C]``.
    """
    cb = tl.program_id(0)
    b = tl.program_id(1)
    band = tl.program_id(2)
    HW = H * W
    y0 = band * band_rows
    y1 = tl.minimum(y0 + band_rows, H)
    start = tl.maximum(y0 - HALO, 0) - K1 // 2  # the first ctx row of the sweep
    n_steps = tl.cdiv(y1 - start + tl.where(y1 < H, TAIL, GLAG0), R)
    # 4 channels per thread in every tile (bf16 loads and weight vectors too, as the fp32 rings): no
    # layout conversions.
    cc = tl.max_contiguous(tl.arange(0, BC)[None, :], [1, 4])
    chans = cb * BC + cc
    cmask = chans < C
    img = b.to(tl.int64) * HW
    prog = ((b * tl.num_programs(2) + band) * tl.num_programs(0) + cb).to(tl.int64)
    ctx_img = ctx + img * ctx_stride + chans
    gate_img = gates + img * gates_stride
    dca_img = d_ctx_all + img * C + chans
    cl_img = ctx_local + img * C + chans
    dctx_img = dctx + img * C + chans
    dg_img = dgates_part + (cb * tl.num_programs(1) + b).to(tl.int64) * HW * (L + 1)
    w_c = taps + cb * (TAPS * BC) + cc  # this block's tap 0
    if COLUMNS_IN_THREAD:  # a [1, BC] load would take 1 channel per thread: load the weights in the tiles' layout
        w_c = tl.broadcast_to(w_c, (WT, BC))

    # The pool's gradient: d_mean = d_glob * GELU'(mean) / HW, the same at every pixel.
    d_glob = tl.zeros((1, BC), dtype=tl.float32)
    for t in range(n_glob_tiles):
        d_glob += tl.load(d_glob_part + (b * n_glob_tiles + t) * C + chans, mask=cmask, other=0.0)
    d_mean = d_glob * gelu_grad(tl.load(mean + b * C + chans, mask=cmask, other=0.0)) / HW

    # fp32 scratch, zeroed first: rings z_0..z_{L-1}, GELU'(u_1..u_{L-1}), du_1..du_L, then the
    # [TAPS, WT, BC] weight-gradient slots, then d_mean and glob (each thread its own channels).
    ring_row = ring_width * BC
    ring_size = RING * ring_row
    rings_size = (3 * L - 1) * ring_size
    slots_size = TAPS * WT * BC
    scratch_prog = scratch + prog * (rings_size + slots_size + 2 * BC)
    zero_fill(scratch_prog, rings_size + slots_size, R * WT * BC)
    pool_grad = scratch_prog + rings_size + slots_size + cc
    tl.store(pool_grad, d_mean)
    tl.store(pool_grad + BC, tl.load(glob + b * C + chans, mask=cmask, other=0.0))
    tl.debug_barrier()
    zr = scratch_prog + PAD * BC + cc
    gr = zr + L * ring_size
    dr = gr + (L - 1) * ring_size
    dw_slots = scratch_prog + rings_size + tl.arange(0, WT)[:, None] * BC + cc

    TAP_L: tl.constexpr = TAP1 if L == 1 else (TAP2 if L == 2 else (TAP3 if L == 3 else TAP4))
    for s in range(n_steps):
        rows_into_ring(ctx_img[None, :, :], zr[None, :, :],
                       (start + s * R + tl.arange(0, R)[:, None, None]).to(tl.int64), H, W,
                       ctx_stride, cmask[None, :, :], RING, ring_row, WT, BC)  # ring z_0: ctx, lag 0
        tl.debug_barrier()
        for l in tl.static_range(1, L):
            _forward_level(s, zr, gr, ring_size, ring_row,
                           w_c + (TAP1 if l == 1 else (TAP2 if l == 2 else TAP3)) * BC, start, H, W, l,
                           K1 if l == 1 else (K2 if l == 2 else K3),
                           LAG1 if l == 1 else (LAG2 if l == 2 else LAG3), R, WT, BC, RING)
            tl.debug_barrier()
        _last_level(s, zr, dr, ring_size, ring_row, w_c + TAP_L * BC, cmask,
                    gate_img, dca_img, cl_img, dg_img, pool_grad, start, y0, y1, H, W, C, gates_stride, L,
                    K1 if L == 1 else (K2 if L == 2 else (K3 if L == 3 else K4)),
                    LAG1 if L == 1 else (LAG2 if L == 2 else (LAG3 if L == 3 else LAG4)), R, WT, BC, RING)
        tl.debug_barrier()
        for l in tl.static_range(L - 1, 0, -1):
            tap_next = TAP2 if l == 1 else (TAP3 if l == 2 else TAP4)
            _grad_level(s, zr, gr, dr, ring_size, ring_row, w_c + tap_next * BC, dw_slots + tap_next * (WT * BC),
                        cmask, gate_img, dca_img, start, y0, y1, H, W, C, gates_stride, l,
                        K2 if l == 1 else (K3 if l == 2 else K4), GLAG1 if l == 1 else (GLAG2 if l == 2 else GLAG3),
                        BANDED, R, WT, BC, RING)
            tl.debug_barrier()
        _ctx_grad(s, zr, dr, ring_row, w_c + TAP1 * BC, dw_slots + TAP1 * (WT * BC), dctx_img, cmask, start, y0, y1,
                  H, W, C, K1, GLAG0, BANDED, R, WT, BC, RING)
        tl.debug_barrier()

    # The weight gradients: this program's slots summed over the tile's columns, once; in the thread
    # (COLUMNS_IN_THREAD) where a row of BC channels spans every thread (narrow maps). n_taps = TAPS
    # as a run-time value: ptxas unrolls this loop with a remainder loop, as the static count reads it.
    dw_prog = dw_part + prog * (TAPS * BC) + tl.arange(0, BC)
    for t in range(n_taps):
        if COLUMNS_IN_THREAD:
            slot_row = scratch_prog + rings_size + t * (WT * BC) + tl.arange(0, BC)
            dw_t = tl.zeros((BC,), dtype=tl.float32)
            for x in tl.static_range(WT):
                dw_t += tl.load(slot_row + x * BC)
            tl.store(dw_prog + t * BC, dw_t)
        else:
            tl.store(dw_prog + t * BC, tl.sum(tl.load(dw_slots + t * (WT * BC)), axis=0))


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
    dw_part = torch.empty((B * bands, n_cb, taps, BC), device=dev, dtype=torch.float32)
    scratch = torch.empty(B * bands * n_cb * sched.scratch_elements(backward=True), device=dev,
                          dtype=torch.float32)
    focal_context_bwd_kernel[(n_cb, B, bands)](
        ctx, gates, tap_major_weights(weights, BC), d_ctx_all, d_glob_part, mean, glob,
        dctx, dgates_part, dw_part, ctx_local, scratch,
        H, W, C, ctx_stride, gates_stride, sched.band_rows, sched.ring_width, d_glob_part.shape[1], taps,
        L, *sched.kernel_sizes, *sched.lags, *sched.grad_lags, *sched.first_taps, taps, sched.halo,
        max(g + k // 2 for g, k in zip(sched.grad_lags[:L], ks)), bands > 1, BC >= 32 * sched.num_warps,
        sched.rows_per_step, sched.tile_width, BC, sched.ring, sched.pad,
        num_warps=sched.num_warps, num_stages=1,
    )
    dgates = dgates_part.sum(0).to(dtype)
    dw = dw_part.sum(0).permute(1, 0, 2).reshape(taps, n_cb * BC)[:, :C]  # [taps, C]
    # Fresh contiguous tensors: custom-op outputs may not share storage (and the fake impl is contiguous).
    dweights = [t.t().reshape(C, 1, k, k).to(dtype, memory_format=torch.contiguous_format, copy=True)
                for t, k in zip(dw.split([k * k for k in ks]), ks)]
    return dctx, dgates, dweights, ctx_local
