"""Depthwise convolution of one tile, zero padding: building blocks for Triton kernels.

A tile is ``[R, WT, BC]``: R image rows x WT columns x BC channels (channels last). The helpers
read a *source* image in one of two layouts:

* plain (``RING == 0``): a channels-last image, element ``(y, x, c)`` at
  ``src + y * row_stride + x * col_stride`` with ``src`` pointing at channel ``c``. Pixels outside
  ``[0, H) x [0, W)`` and channels ``>= C`` read as zero (masked loads): this is the zero padding.
* ring (``RING > 0``): a ring buffer of RING rows where image row ``y`` lives in slot
  ``(y + ROW_BIAS) % RING``; rows carry zero columns left and right (``src`` points past the
  left ones) and rows outside the image are stored as zero rows, so loads need no mask.

With P = K // 2 and w the ``[C, 1, K, K]`` depthwise kernel (PyTorch's cross-correlation):

    conv:        out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y + dy - P, x + dx - P, c]
    transposed:  out[y, x, c] = sum_{dy, dx} w[c, dy, dx] * src[y - dy + P, x - dx + P, c]
    weight grad: dw[c, dy, dx] += sum_{y, x} dout[y, x, c] * src[y + dy - P, x + dx - P, c]

The transposed conv is the input gradient of the conv. All sums are fp32.
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
def zero_fill(ptr, n, BLOCK: tl.constexpr):
    """Store ``n`` zeros at ``ptr[0:n]`` (e.g. to clear a ring buffer before its first use)."""
    zeros = tl.zeros((BLOCK,), dtype=ptr.dtype.element_ty)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        tl.store(ptr + offs, zeros, mask=offs < n)


@triton.jit
def ring_row_offsets(rows, row_stride, RING: tl.constexpr, ROW_BIAS: tl.constexpr):
    """Element offsets of image rows ``rows`` in a ring of RING rows (``rows + ROW_BIAS >= 0``)."""
    return ((rows + ROW_BIAS) % RING) * row_stride


@triton.jit
def ring_conv(src, rows, w, row_stride, K: tl.constexpr, FLIP: tl.constexpr, RING: tl.constexpr,
              R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr):
    """Depthwise conv (``FLIP``: transposed conv) of image rows ``rows`` ``[R, 1, 1]`` from an fp32 ring.

    ``src`` ``[1, WT, BC]``: pointers at (ring row 0, the tile's columns, its channels); ring row
    ``y`` is slot ``y & (RING - 1)`` (RING a power of two), ``row_stride`` elements apart, with
    columns BC elements apart and zero pad columns on both sides. ``w`` ``[1, 1, BC]``: pointers
    at tap 0 of this kernel in ``tap_major_weights`` (tap t at ``w + t * BC``). Per tap: one weight vector and one tile load at a constant offset, one FMA per value.
    """
    P: tl.constexpr = K // 2
    acc = tl.zeros((R, WT, BC), dtype=tl.float32)
    for dy in range(K):  # a loop, not unrolled: K^2 unrolled taps per level make builds slow
        row_ptrs = src + ((rows + ((P - dy) if FLIP else (dy - P))) & (RING - 1)) * row_stride
        for dx in tl.static_range(K):
            acc += tl.load(w + (dy * K + dx) * BC) * tl.load(row_ptrs + ((P - dx) if FLIP else (dx - P)) * BC)
    return acc


@triton.jit
def dwconv_tile(src, rows, cols, chans, C, H, W, row_stride, col_stride, w_ptr,
                K: tl.constexpr, FLIP: tl.constexpr, RING: tl.constexpr, ROW_BIAS: tl.constexpr,
                R: tl.constexpr, WT: tl.constexpr, BC: tl.constexpr):
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
        if RING > 0:
            row_ptrs = src_cols + ((r + ROW_BIAS) % RING) * row_stride
        else:
            row_ptrs = src_cols + r * row_stride
            row_ok = (r >= 0) & (r < H) & cmask
        for dx in tl.static_range(K):
            w = tl.load(w_taps + (dy * K + dx), mask=cmask, other=0.0)
            if RING > 0:
                v = tl.load(row_ptrs + ((P - dx) if FLIP else (dx - P)) * col_stride)
            else:
                x = cols + ((P - dx) if FLIP else (dx - P))
                v = tl.load(row_ptrs + ((P - dx) if FLIP else (dx - P)) * col_stride,
                            mask=row_ok & (x >= 0) & (x < W), other=0.0)
            acc += w.to(tl.float32) * v.to(tl.float32)
    return acc


@triton.jit
def dwconv_weight_grad_tile(dout, src, rows, cols, chans, C, H, W, row_stride, col_stride, wgrad,
                            K: tl.constexpr, RING: tl.constexpr, ROW_BIAS: tl.constexpr,
                            BC: tl.constexpr):
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
        if RING > 0:
            row_ptrs = src_cols + ((r + ROW_BIAS) % RING) * row_stride
        else:
            row_ptrs = src_cols + r * row_stride
            row_ok = (r >= 0) & (r < H) & cmask
        for dx in tl.static_range(K):
            if RING > 0:
                v = tl.load(row_ptrs + (dx - P) * col_stride)
            else:
                x = cols + (dx - P)
                v = tl.load(row_ptrs + (dx - P) * col_stride, mask=row_ok & (x >= 0) & (x < W), other=0.0)
            prod = dout * v.to(tl.float32)
            tap = tl.sum(tl.reshape(prod, (prod.shape[0] * prod.shape[1], prod.shape[2])), axis=0)
            ptr = wgrad + (dy * K + dx) * BC + offs
            tl.store(ptr, tl.load(ptr) + tap)
