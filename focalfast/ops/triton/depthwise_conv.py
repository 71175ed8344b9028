"""Depthwise convolution of one tile, zero padding: building blocks for Triton kernels.

A tile is ``[R, WT, BC]``: R image rows x WT columns x BC channels (channels last). With P = K // 2
and w the ``[C, 1, K, K]`` depthwise kernel (PyTorch's cross-correlation):

    conv:        out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y + dy - P, x + dx - P, c]
    transposed:  out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y - dy + P, x - dx + P, c]
    weight grad: dw[c, dy, dx] += sum_{y, x} dout[y, x, c] * src[y + dy - P, x + dx - P, c]

The transposed conv is the input gradient of the conv. All sums are fp32. Sources come in two forms:

* rings (``ring_conv_rows``, ``ring_conv_rows_by_tap``, ``ring_conv_transposed_rows_and_weight_grad``;
  the focal level chain): an fp32 ring buffer of RING rows (a power of two), image row ``y`` in
  slot ``y & (RING - 1)``, rows carrying zero columns left and right and rows outside the image
  stored as zero rows (``rows_into_ring``), so loads need no mask and no conversion; weights in
  ``tap_major_weights`` order.
* plain (``dwconv_tile``, ``dwconv_weight_grad_tile``; ConvNeXt's ``dwconv_layernorm``): a
  channels-last image, element ``(y, x, c)`` at ``src + y * row_stride + x * col_stride``;
  pixels outside ``[0, H) x [0, W)`` and channels ``>= C`` read as zero (masked loads).
"""

import torch
import triton
import triton.language as tl


def tap_major_weights(weights, block: int) -> torch.Tensor:
    """fp32 ``[cdiv(C, block), sum K_l^2, block]``: per channel block, tap ``dy * K + dx`` of every
    level's ``[C, 1, K, K]`` kernel as a row of ``block`` channels, levels one after another, zero
    past C. A kernel loads one vector per tap, at a constant offset from its block's first tap."""
    C = weights[0].shape[0]
    taps = torch.cat([w.detach().reshape(C, -1) for w in weights], 1).float()  # [C, T]
    n_cb = -(-C // block)
    out = taps.new_zeros((n_cb * block, taps.shape[1]))
    out[:C] = taps
    return out.view(n_cb, block, -1).transpose(1, 2).contiguous()


@triton.jit
def zero_fill(ptr, n, BLOCK: tl.constexpr, WHOLE_BLOCKS: tl.constexpr = False):
    """Store ``n`` zeros at ``ptr[0:n]`` (e.g. to clear a ring buffer before its first use).
    ``WHOLE_BLOCKS``: the caller knows BLOCK divides n (no mask)."""
    zeros = tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(ptr + offs, zeros, mask=None if WHOLE_BLOCKS else offs < n)


@triton.jit
def _add_at(items, i: tl.constexpr, value):
    """The tuple ``items`` with ``value`` added to element ``i``."""
    return items[:i] + (items[i] + value,) + items[i + 1:]


UNROLLED_MAX_K: tl.constexpr = tl.constexpr(7)  # wider kernels loop over their columns (build time)


@triton.jit
def _ring_conv_column(sums, src, first, w, row_stride, dx, K: tl.constexpr, RING: tl.constexpr,
                      R: tl.constexpr, BC: tl.constexpr):
    """``sums`` plus column shift ``dx`` of ``ring_conv_rows``: its K taps loaded once, each of the
    R + K - 1 source rows loaded once and fed to up to K rows' sums."""
    P: tl.constexpr = K // 2
    taps = ()
    for dy in tl.static_range(K):
        taps = taps + (tl.load(w + (dy * K + dx) * BC),)
    for i in tl.static_range(R + K - 1):
        v = tl.load(src + ((first + (i - P)) & (RING - 1)) * row_stride + (dx - P) * BC)
        for r in tl.static_range(R):
            if r <= i and i - r < K:
                sums = _add_at(sums, r, taps[i - r] * v)
    return sums


@triton.jit
def ring_conv_rows(src, first, w, row_stride, K: tl.constexpr, RING: tl.constexpr, R: tl.constexpr,
                   WT: tl.constexpr, BC: tl.constexpr):
    """Depthwise conv of the R image rows ``first + [0, R)`` (``first`` a scalar) from an fp32 ring:
    a tuple of R ``[WT, BC]`` fp32 sums, one per row.

    ``src`` ``[WT, BC]``: pointers at (ring row 0, the tile's columns, its channels), ring rows
    ``row_stride`` elements apart, slot ``y & (RING - 1)``, columns BC elements apart with zero pad
    columns; ``w`` ``[1, BC]``: tap 0 of this kernel in ``tap_major_weights``. Per column shift
    dx, the K weight vectors of that column are loaded once and each of the R + K - 1 source rows
    once, feeding up to K rows' sums: K^2 FMAs per value for (R + K - 1) K / R loads. The K column
    shifts are unrolled up to K = ``UNROLLED_MAX_K`` and a loop beyond (the same loads and FMAs plus
    a loop's few instructions per shift): fully unrolled, one 9 x 9 level took ptxas minutes, paid
    at a user's first call (FocalNet's focal level 4 has k = 9).
    """
    sums = ()
    for r in tl.static_range(R):
        sums = sums + (tl.zeros((WT, BC), dtype=tl.float32),)
    if K <= UNROLLED_MAX_K:
        for dx in tl.static_range(K):
            sums = _ring_conv_column(sums, src, first, w, row_stride, dx, K, RING, R, BC)
    else:
        for dx in range(K):
            sums = _ring_conv_column(sums, src, first, w, row_stride, dx, K, RING, R, BC)
    return sums


@triton.jit
def ring_conv_rows_by_tap(src, first, w, row_stride, K: tl.constexpr, RING: tl.constexpr, R: tl.constexpr,
                          WT: tl.constexpr, BC: tl.constexpr):
    """As ``ring_conv_rows``, tap by tap in a loop over dy: R loads per tap (no source row shared
    between taps) for far fewer registers live, where the unrolled K^2 taps would spill (K = 7 in
    a kernel that keeps many rings' pointers)."""
    P: tl.constexpr = K // 2
    sums = ()
    for r in tl.static_range(R):
        sums = sums + (tl.zeros((WT, BC), dtype=tl.float32),)
    for dy in range(K):  # a loop, not unrolled
        for dx in tl.static_range(K):
            tap = tl.load(w + (dy * K + dx) * BC)
            for r in tl.static_range(R):
                v = tl.load(src + ((first + (r - P) + dy) & (RING - 1)) * row_stride + (dx - P) * BC)
                sums = _add_at(sums, r, tap * v)
    return sums


@triton.jit
def ring_conv_transposed_rows_and_weight_grad(dout, first, src, w, slots, row_stride, K: tl.constexpr,
                                              RING: tl.constexpr, R: tl.constexpr, WT: tl.constexpr,
                                              BC: tl.constexpr):
    """Transposed conv of the R image rows ``first + [0, R)`` from the fp32 ring ``dout`` (a tuple
    of R ``[WT, BC]`` fp32 sums), and these rows' share of the kernel gradient added to the
    caller's fp32 ``[K * K, WT, BC]`` slots.

    ``dout`` ``[WT, BC]``: pointers at (ring row 0, the tile's columns, its channels), as in
    ``ring_conv_rows``; ``src``: a tuple of R ``[WT, BC]`` rows of the conv's input at the same
    pixels (zero where they must not count); ``slots`` ``[WT, BC]`` pointers at tap 0. Both sums
    read dout at the same shifted pixel, row ``y + P - dy``: the transposed conv weighs it with
    ``w[dy, dx]``, the gradient with ``src[y]`` (``dw[dy, dx] = sum_y dout[y + P - dy] * src[y]``),
    so each loaded value feeds two FMAs, and a tap's slot takes its R rows as one FMA chain: one
    load and store of the slot per tap and step, no cross-thread reduction, no barrier.
    Tap by tap (no dout row shared between taps): few registers live.
    """
    P: tl.constexpr = K // 2
    sums = ()
    for r in tl.static_range(R):
        sums = sums + (tl.zeros((WT, BC), dtype=tl.float32),)
    for dy in range(K):  # a loop, not unrolled: K^2 unrolled taps per level make builds slow
        row_at = ()
        for r in tl.static_range(R):
            row_at = row_at + (((first + (r + P) - dy) & (RING - 1)) * row_stride,)
        for dx in tl.static_range(K):
            tap = tl.load(w + (dy * K + dx) * BC)
            slot = slots + (dy * K + dx) * (WT * BC)
            grad = tl.load(slot)
            for r in tl.static_range(R):
                d = tl.load(dout + row_at[r] + (P - dx) * BC)
                sums = _add_at(sums, r, tap * d)
                grad += src[r] * d
            tl.store(slot, grad)
    return sums


@triton.jit
def rows_into_ring(src, ring, rows, H, W, col_stride, cmask, RING: tl.constexpr, row_stride,
                   WT: tl.constexpr, BC: tl.constexpr):
    """Image rows ``rows`` ``[R, 1, 1]`` (int64) of a channels-last source into an fp32 ring (slot
    ``row & (RING - 1)``), zero outside the image and past C. ``src`` ``[1, 1, BC]``: the image's
    channel pointers, pixel ``p`` at ``src + p * col_stride``; ``ring`` ``[1, 1, BC]``: column 0 of
    ring row 0."""
    slot = ring + (rows & (RING - 1)) * row_stride
    for w0 in range(0, W, WT):
        tile_into_ring(src, slot, rows, w0 + tl.arange(0, WT)[None, :, None], H, W, col_stride, cmask, BC, True)


@triton.jit
def tile_into_ring(src, slot, rows, cols, H, W, col_stride, cmask, BC: tl.constexpr, MASKED: tl.constexpr):
    """The ``[R, WT, BC]`` tile at image rows ``rows`` ``[R, 1, 1]`` (int64) and columns ``cols``
    ``[1, WT, 1]`` of a channels-last source (``src`` as in ``rows_into_ring``) into the fp32 ring
    rows ``slot`` ``[R, 1, BC]`` (pointers at their column 0), zero outside the image and past C.
    ``MASKED=False``: the caller knows the tile lies in the image and in C (no masks)."""
    inside = ((rows >= 0) & (rows < H) & (cols < W) & cmask) if MASKED else None
    v = tl.load(src + (rows * W + cols) * col_stride, mask=inside, other=0.0 if MASKED else None)
    tl.store(slot + cols * BC, v.to(tl.float32))


@triton.jit
def dwconv_tile(src, rows, cols, chans, C, H, W, row_stride, col_stride, w_ptr,
                K: tl.constexpr, FLIP: tl.constexpr, R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr):
    """Depthwise conv (``FLIP``: transposed conv) of the ``[R, WT, BC]`` tile at ``rows x cols``.

    rows ``[R, 1, 1]`` and cols ``[1, WT, 1]`` are image coordinates, chans ``[1, 1, BC]`` channel
    indices, ``src`` a ``[1, 1, BC]`` pointer block at (row 0, column 0) of the source.
    ``w_ptr``: the contiguous ``[C, 1, K, K]`` kernel; each tap is read once per call as a
    ``[1, 1, BC]`` vector. Returns the fp32 sums (GELU and masking are the caller's).
    """
    P: tl.constexpr = K // 2
    cmask = chans < C
    src_cols = src + cols * col_stride
    w_taps = w_ptr + chans * (K * K)
    acc = tl.zeros((R, WT, BC), dtype=tl.float32)
    for dy in range(K):  # a loop, not unrolled: K^2 unrolled taps per level make builds slow
        r = rows + ((P - dy) if FLIP else (dy - P))
        row_ptrs = src_cols + r * row_stride
        row_ok = (r >= 0) & (r < H) & cmask
        for dx in tl.static_range(K):
            w = tl.load(w_taps + (dy * K + dx), mask=cmask, other=0.0)
            x = cols + ((P - dx) if FLIP else (dx - P))
            v = tl.load(row_ptrs + ((P - dx) if FLIP else (dx - P)) * col_stride,
                        mask=row_ok & (x >= 0) & (x < W), other=0.0)
            acc += w.to(tl.float32) * v.to(tl.float32)
    return acc


@triton.jit
def dwconv_weight_grad_tile(dout, src, rows, cols, chans, C, H, W, row_stride, col_stride, wgrad,
                            K: tl.constexpr, BC: tl.constexpr):
    """Add this tile's share of the kernel gradient to ``wgrad`` (fp32 ``[K * K, BC]``, tap-major).

    Arguments as in ``dwconv_tile``; ``dout`` ``[R, WT, BC]`` fp32 must be zero outside the
    image. Each tap is one reduction over the tile's pixels, so the source is re-read K * K
    times from cache, never in a per-tap pass over memory. ``wgrad`` belongs to the calling
    program alone: no atomics.
    """
    P: tl.constexpr = K // 2
    cmask = chans < C
    src_cols = src + cols * col_stride
    offs = tl.arange(0, BC)
    for dy in range(K):
        r = rows + (dy - P)
        row_ptrs = src_cols + r * row_stride
        row_ok = (r >= 0) & (r < H) & cmask
        for dx in tl.static_range(K):
            x = cols + (dx - P)
            v = tl.load(row_ptrs + (dx - P) * col_stride, mask=row_ok & (x >= 0) & (x < W), other=0.0)
            prod = dout * v.to(tl.float32)
            tap = tl.sum(tl.reshape(prod, (prod.shape[0] * prod.shape[1], prod.shape[2])), axis=0)
            ptr = wgrad + (dy * K + dx) * BC + offs
            tl.store(ptr, tl.load(ptr) + tap)
