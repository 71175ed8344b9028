"""Row-streaming schedule of the focal level chain: lags, ring sizes and tile sizes.

One program of ``focal_context_fwd`` / ``focal_context_bwd`` owns one (image, channel block, band of
rows) and sweeps its band top to bottom in steps of R rows. Level l (kernel K_l, P_l = K_l // 2) cannot
produce row y before level l - 1 has produced row y + P_l, so each stage runs a fixed number of
rows behind the one it reads, its *lag*. With z_0 = ctx read straight from memory:

    forward level l       rows  s*R - D_l + [0, R),   D_l = P_2 + ... + P_l     (D_1 = 0)
    gradient du_l         rows  s*R - B_l + [0, R),   B_L = D_L,  B_l = B_{l+1} + P_{l+1}
    dctx (= dz_0)         rows  s*R - B_0 + [0, R),   B_0 = B_1 + P_1

A stage keeps the rows that later stages still need in a *ring buffer* of a few rows (a small,
cache-resident scratch owned by the program); the ring sizes below are the exact live spans:

    forward  z_l  (l < L):  R + max(2 P_{l+1}, D_L - D_l)     (level l+1 halo; gated sum at lag D_L)
    backward z_l  (l < L):  R + B_{l+1} + P_{l+1} - D_l        (weight gradient of level l+1)
             GELU'(u_l):    R + B_l - D_l
             du_l:          R + 2 P_l                          (transposed conv of level l)

Rows outside the image are stored as zero rows and every ring row carries P_max zero columns on
both sides, so the kernels read rings without masks: that is the zero padding of every level.

Bands (``focalfast.ops.sweep_geometry``): when B * cdiv(C, BC) programs would leave the GPU's
multiprocessors less than two each, images are cut into bands of ``band_rows`` rows, one program
each, whose sweep starts at ``top = max(0, y0 - lag)`` (lag = D_L forward, B_0 backward).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from focalfast.backends import FUSED_MAX_LEVELS as MAX_LEVELS  # the K1..K4 kernel arguments
from focalfast.ops.sweep_geometry import backward_lags, forward_lags, rows_per_band, sweep_halo


@dataclass(frozen=True)
class ChainSchedule:
    """Launch constants of one level-chain kernel for one problem shape."""

    kernel_sizes: tuple  # (K_1, K_2, K_3, K_4), 1 for the levels past L
    levels: int  # L
    rows_per_step: int  # R
    tile_width: int  # WT columns per tile; the row is swept in ceil(W / WT) tiles
    channel_block: int  # BC channels per program
    ring_z: int  # rows of each z_l ring
    ring_g: int  # rows of each GELU'(u_l) ring (backward)
    ring_d: int  # rows of each du_l ring (backward)
    row_bias: int  # added to a row index before taking it modulo a ring size (keeps it >= 0)
    pad: int  # zero columns on each side of a ring row
    ring_width: int  # columns of a ring row: pad + ceil(W / WT) * WT + pad
    band_rows: int  # image rows per program (H: one band)
    bands: int  # cdiv(H, band_rows)
    num_warps: int
    lags: tuple  # (LAG_1, ..., LAG_4): rows level l trails the ctx rows of a step (P_1 + D_l)
    first_taps: tuple  # (TAP_1, ..., TAP_4): first row of level l in the tap-major weights
    halo: int  # rows a band's sweep starts above its own (D_L forward, B_0 backward)
    ring: int  # rows of every fp32 ring of the forward (a power of two)

    def scratch_elements(self) -> int:
        """fp32 ring elements one forward program owns (rings z_0 .. z_{L-1})."""
        return self.levels * self.ring * self.ring_width * self.channel_block

    def scratch_rows(self, backward: bool) -> int:
        """Ring rows one program owns."""
        L = self.levels
        if backward:
            return (L - 1) * (self.ring_z + self.ring_g) + L * self.ring_d
        return (L - 1) * self.ring_z

    def taps(self) -> int:
        """Depthwise taps of all levels together (``sum K_l^2``)."""
        return sum(k * k for k in self.kernel_sizes[: self.levels])


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> Optional[int]:
    """Multiprocessors of a CUDA device (None for other devices: no bands)."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@triton.jit
def sweep_band(band, band_rows, H, LAG: tl.constexpr, R: tl.constexpr):
    """``(y0, y1, top, n_steps)`` of band ``band`` in a kernel: its own rows [y0, y1), the first
    row ``top`` of its sweep (LAG rows above y0: the halo) and the R-row steps that reach y1."""
    y0 = band * band_rows
    y1 = tl.minimum(y0 + band_rows, H)
    top = tl.maximum(y0 - LAG, 0)
    return y0, y1, top, tl.cdiv(y1 - top + LAG, R)


def chain_schedule(H: int, W: int, C: int, kernel_sizes, backward: bool, interpret: bool,
                   batch: int = 1, sm_count: Optional[int] = None,
                   tile: Optional[Tuple[int, int, int]] = None,
                   band_rows: Optional[int] = None, num_warps: Optional[int] = None) -> ChainSchedule:
    """The schedule of the forward (``backward=False``) or backward chain kernel.

    Under the Triton interpreter the tiles are as large as the image (one step, one program per
    image and channel block), because there every Triton op costs a Python call. On a GPU a
    tile holds about 2K values (R rows x WT columns x BC channels), and images are cut into
    bands when ``batch`` images give too few programs for the GPU's ``sm_count``
    multiprocessors. ``tile = (R, WT, BC)`` (powers of two), ``band_rows`` and ``num_warps``
    override this, e.g. for tests of the multi-step, multi-tile and banded paths, or to tune
    (``focalfast.ops.triton.tune_chain``).
    """
    ks = tuple(int(k) for k in kernel_sizes)
    L = len(ks)
    P = [k // 2 for k in ks]
    fwd, bwd = forward_lags(ks), backward_lags(ks)  # fwd[l - 1] = D_l, bwd[l] = B_l
    lag = sweep_halo(ks, backward)
    np2 = triton.next_power_of_2
    if tile is not None:
        R, WT, BC = tile
    elif interpret:
        BC = min(np2(C), 64)
        WT = min(np2(W), 64)
        R = min(np2(H + 2 * P[0] + lag), max(1, 16384 // (WT * BC)))
    else:
        BC = min(np2(C), 32)
        WT = min(np2(W), 64)
        R = max(1, min(np2(H + 2 * P[0] + lag), 4096 // (WT * BC)))
    # About 8 tile values per thread. ptxas -v of the sm_90a builds (Triton 3.9, bf16, FocalNet-T
    # stages 1 and 3, 2 or 3 levels, banded or not): 128-169 registers forward, 170-176 backward,
    # no spills; so two 8-warp programs per SM at 128 registers, one above, whose load latency
    # only more programs or smaller tiles can hide (what tune_chain measures).
    if num_warps is None:
        num_warps = max(1, min(8, R * WT * BC // 256))

    ring_z = ring_g = 1  # unused when L == 1
    if L > 1:
        if backward:
            ring_z = max(R + bwd[l + 1] + P[l] - fwd[l - 1] for l in range(1, L))
            ring_g = max(R + bwd[l] - fwd[l - 1] for l in range(1, L))
        else:
            ring_z = max(R + max(2 * P[l], fwd[-1] - fwd[l - 1]) for l in range(1, L))
    ring_d = R + 2 * max(P)
    pad = max(P)
    # Forward rings z_0 .. z_{L-1}: z_0 is read by level 1 (its halo), z_l by level l + 1 and by the
    # gated sum at lag D_L; a power of two so that a row's slot is ``row & (ring - 1)``.
    ring = np2(max([R + 2 * P[0]] + [R + max(2 * P[l], fwd[-1] - fwd[l - 1]) for l in range(1, L)]))
    if band_rows is None:
        whole_images = interpret or sm_count is None
        band_rows = H if whole_images else rows_per_band(H, lag, batch * triton.cdiv(C, BC), sm_count, R)
    return ChainSchedule(
        kernel_sizes=ks + (1,) * (MAX_LEVELS - L),
        levels=L,
        rows_per_step=R,
        tile_width=WT,
        channel_block=BC,
        ring_z=ring_z,
        ring_g=ring_g,
        ring_d=ring_d,
        row_bias=bwd[0] + pad + R,
        pad=pad,
        ring_width=2 * pad + triton.cdiv(W, WT) * WT,
        band_rows=band_rows,
        bands=triton.cdiv(H, band_rows),
        num_warps=num_warps,
        lags=tuple(P[0] + d for d in fwd) + (P[0] + fwd[-1],) * (MAX_LEVELS - L),
        first_taps=tuple(sum(k * k for k in ks[:l]) for l in range(MAX_LEVELS)),
        halo=lag,
        ring=ring,
    )
