"""Depthwise convolution of one tile, zero padding: building blocks for Triton kernels.

A tile is ``[R, WT, BC]``: R image rows x WT columns x BC channels (channels last). With P = K // 2
and w the ``[C, 1, K, K]`` depthwise kernel (PyTorch's cross-correlation):

    conv:        out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y + dy - P, x + dx - P, c]
    transposed:  out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y - dy + P, x - dx + P, c]
    weight grad: dw[c, dy, dx] += sum_{y, x} dout[y, x, c] * src[y + dy - P, x + dx - P, c]

The transposed conv is the input gradient of the conv. All sums are fp32. Sources come in two forms:

* rings (``ring_conv``, ``ring_conv_rows``, ``ring_conv_transposed_and_weight_grad``; the focal level chain): an fp32 ring buffer of RING
  rows (a power of two), image row ``y`` in slot ``y & (RING - 1)``, rows carrying zero columns
  left and right and rows outside the image stored as zero rows (``rows_into_ring``), so loads
  need no mask and no conversion; weights in ``tap_major_weights`` order.
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
def ring_conv(src, rows, w, row_stride, K: tl.constexpr, RING: tl.constexpr,
              R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr):
    """Depthwise conv of image rows ``rows`` ``[R, 1, 1]`` from an fp32 ring.

    ``src`` ``[1, WT, BC]``: pointers at (ring row 0, the tile's columns, its channels); ring row
    ``y`` is slot ``y & (RING - 1)`` (RING a power of two), ``row_stride`` elements apart, with
    columns BC elements apart and zero pad columns on both sides. ``w`` ``[1, 1, BC]``: pointers
    at tap 0 of this kernel in ``tap_major_weights`` (tap t at ``w + t * BC``). Per tap: one weight vector and one tile load at a constant offset, one FMA per value.
    """
    P: tl.constexpr = K // 2
    acc = tl.zeros((R, WT, BC), dtype=tl.float32)
    for dy in range(K):  # a loop, not unrolled: K^2 unrolled taps per level make builds slow
        row_ptrs = src + ((rows + (dy - P)) & (RING - 1)) * row_stride
        for dx in tl.static_range(K):
            acc += tl.load(w + (dy * K + dx) * BC) * tl.load(row_ptrs + (dx - P) * BC)
    return acc


@triton.jit
def _add_at(items, i: tl.constexpr, value):
    """The tuple ``items`` with ``value`` added to element ``i``."""
    return items[:i] + (items[i] + value,) + items[i + 1:]


@triton.jit
def ring_conv_rows(src, first, w, row_stride, K: tl.constexpr, RING: tl.constexpr, R: tl.constexpr,
                   WT: tl.constexpr, BC: tl.constexpr):
    """Depthwise conv of the R image rows ``first + [0, R)`` (``first`` a scalar) from an fp32 ring:
    a tuple of R ``[WT, BC]`` fp32 sums, one per row.

    ``src`` ``[WT, BC]``: pointers at (ring row 0, the tile's columns, its channels), ring rows
    ``row_stride`` elements apart, slot ``y & (RING - 1)``, columns BC elements apart with zero pad
    columns; ``w`` ``[1, BC]``: tap 0 of this kernel in ``tap_major_weights``. Per column shift
    dx, the K weight vectors of that column are loaded once and each of the R + K - 1 source rows
    once, feeding up to K rows' sums: K^2 FMAs per value for (R + K - 1) K / R loads.
    """
    P: tl.constexpr = K // 2
    sums = ()
    for r in tl.static_range(R):
        sums = sums + (tl.zeros((WT, BC), dtype=tl.float32),)
    for dx in tl.static_range(K):
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
def ring_conv_transposed_and_weight_grad(dout, src, rows, w, slots, row_stride, y0, y1,
                                         K: tl.constexpr, RING: tl.constexpr, BANDED: tl.constexpr,
                                         R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr):
    """Transposed conv of image rows ``rows`` from the fp32 ring ``dout`` (as ``ring_conv`` with
    the kernel flipped), and this tile's share of the kernel gradient added to the caller's fp32
    ``[K * K, WT, BC]`` slots (``slots`` ``[1, WT, BC]`` pointers at tap 0).

    ``src`` ``[R, WT, BC]``: the conv's input at the tile's own pixels (zero outside the image).
    Both sums read dout at the same shifted pixel, y + P - dy: the transposed conv weighs it with
    ``w[dy, dx]``, the gradient with ``src[y]`` (``dw[dy, dx] = sum_y dout[y + P - dy] * src[y]``),
    so each loaded value feeds two FMAs. Only dout rows in ``[y0, y1)`` count towards the gradient
    (``BANDED``; otherwise every row does). The tile's R rows are summed in the thread before the
    read-modify-write of the slots: no cross-thread reduction, no barrier.
    """
    P: tl.constexpr = K // 2
    acc = tl.zeros((R, WT, BC), dtype=tl.float32)
    for dy in range(K):
        r = rows + (P - dy)
        row_ptrs = dout + (r & (RING - 1)) * row_stride
        s = tl.where((r >= y0) & (r < y1), src, 0.0) if BANDED else src
        for dx in tl.static_range(K):
            d = tl.load(row_ptrs + (P - dx) * BC)
            acc += tl.load(w + (dy * K + dx) * BC) * d
            slot = slots + (dy * K + dx) * (WT * BC)
            tl.store(slot, tl.load(slot) + tl.sum(s * d, axis=0, keep_dims=True))
    return acc


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
