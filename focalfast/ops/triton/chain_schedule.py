"""Row-streaming schedule of the focal level chain: lags, ring sizes and tile sizes.

One program of ``focal_context_fwd`` / ``focal_context_bwd`` owns one (image, channel block, band of
rows) and sweeps it top to bottom in steps of R rows. Each step first copies R rows of ctx into the
fp32 ring of z_0 (rows ``start + s*R + [0, R)``, where ``start`` is P_1 rows above the band's first
row ``top``); every later stage trails that by its *lag* (``focalfast.ops.sweep_geometry``: D_l
forward, B_l backward, counted from ``top``):

    forward level l       lag  P_1 + D_l            (z_l from ring z_{l-1}; on a GPU raised to
                                                     align the level's rows to steps, aligned_lags)
    gradient du_l         lag  P_1 + B_l            (du_L at the lag of level L)
    dctx (= dz_0)         lag  P_1 + B_0

A stage keeps the rows later stages still need in a *ring buffer* (per-program fp32 scratch of a
few rows, cache-resident). The live spans, in rows:

    forward   z_0: R + LAG_1 + P_1;   z_l (0 < l < L): R + max(LAG_{l+1} - LAG_l + P_{l+1}, LAG_L - LAG_l)
              (with LAG_l = P_1 + D_l: R + 2 P_1 and R + max(2 P_{l+1}, D_L - D_l))
    backward  z_l (l < L): R + B_{l+1} + P_{l+1} - D_l     (weight gradient of level l+1; D_0 = -P_1)
              GELU'(u_l):  R + B_l - D_l
              du_l:        R + 2 P_l                        (transposed conv of level l)

All rings of a kernel get the largest span rounded up to a power of two, so row y lives in slot
``y & (ring - 1)``. Rows outside the image are stored as zero rows and every ring row carries P_max
zero columns on both sides: the kernels read rings without masks, and that is the zero padding of
every level.

Bands (``focalfast.ops.sweep_geometry``): when B * cdiv(C, BC) programs would leave the GPU's
multiprocessors less than two each, images are cut into bands of ``band_rows`` rows, one program
each, whose sweep starts at ``top = max(0, y0 - halo)`` (halo = D_L forward, B_0 backward).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton

from focalfast.backends import FUSED_MAX_LEVELS as MAX_LEVELS  # the K1..K4 kernel arguments
from focalfast.ops.sweep_geometry import backward_lags, forward_lags, rows_per_band, sweep_halo


@dataclass(frozen=True)
class ChainSchedule:
    """Launch constants of one level-chain kernel for one problem shape."""

    kernel_sizes: tuple  # (K_1, K_2, K_3, K_4), 1 for the levels past L
    levels: int  # L
    lags: tuple  # (LAG_1, ..., LAG_4): rows forward level l trails the ctx rows of a step (P_1 + D_l)
    grad_lags: tuple  # (GLAG_0, ..., GLAG_3): the same for du_l (P_1 + B_l; GLAG_0: dctx)
    first_taps: tuple  # (TAP_1, ..., TAP_4): first row of level l in the tap-major weights
    halo: int  # rows a band's sweep starts above its own (D_L forward, B_0 backward)
    rows_per_step: int  # R
    tile_width: int  # WT columns per tile; the row is swept in ceil(W / WT) tiles
    channel_block: int  # BC channels per program
    ring: int  # rows of every ring (a power of two)
    pad: int  # zero columns on each side of a ring row
    ring_width: int  # columns of a ring row: pad + ceil(W / WT) * WT + pad
    band_rows: int  # image rows per program (H: one band)
    bands: int  # cdiv(H, band_rows)
    num_warps: int
    whole_steps: bool = False  # forward: every step of every level covers R rows of the image (one band,
    # R divides H, aligned lags), so no level computes rows outside it

    def taps(self) -> int:
        """Depthwise taps of all levels together (``sum K_l^2``)."""
        return sum(k * k for k in self.kernel_sizes[: self.levels])

    def scratch_elements(self, backward: bool) -> int:
        """fp32 scratch one program owns: L rings forward; 3L - 1 rings, the [taps, WT, BC]
        weight-gradient slots and two [BC] vectors (the pool's gradient and glob) backward."""
        ring = self.ring * self.ring_width * self.channel_block
        if backward:
            return ((3 * self.levels - 1) * ring + self.taps() * self.tile_width * self.channel_block
                    + 2 * self.channel_block)
        return self.levels * ring


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> Optional[int]:
    """Multiprocessors of a CUDA device (None for other devices: no bands)."""
    if device.type != "cuda":
        return None
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def aligned_lags(lags, P, R: int) -> list:
    """Forward lags no smaller than ``lags`` (LAG_l = P_1 + D_l) with LAG_l + P_1 a multiple of R: a
    one-band sweep then steps every level through rows ``[kR, kR + R)``, none of them straddling
    the image's edge, so when R divides H no level computes rows outside the image (steps wholly
    outside compute nothing). Level l + 1 still trails level l by at least P_{l+1} rows."""
    out = []
    for l, lag in enumerate(lags):
        if out:
            lag = max(lag, out[-1] + P[l])
        out.append(-(-(lag + P[0]) // R) * R - P[0])
    return out


ROW_VECTOR = 4  # fp32 channels per thread and row of a tile: one 128-bit ring load
ROW_VALUES = 2 * 32 * ROW_VECTOR  # [WT, BC] of one tile row: two warps


def row_shape(W: int, C: int) -> Tuple[int, int]:
    """``(WT, BC)``: the powers of two with ``WT x BC = ROW_VALUES`` (each thread of two
    warps one 128-bit vector of channels of one column) that pad ``W x C`` least, the larger BC on a
    tie (FocalNet's 7 * 2^k maps: none, e.g. 8 x 32 at 56 x 56 x 96, 1 x 256 at 7 x 7 x 768)."""
    np2 = triton.next_power_of_2
    best = None
    BC = ROW_VECTOR
    while BC <= min(ROW_VALUES, max(np2(C), ROW_VECTOR)):
        WT = ROW_VALUES // BC
        padded = triton.cdiv(W, WT) * WT * triton.cdiv(C, BC) * BC
        if best is None or padded <= best[0]:
            best = (padded, WT, BC)
        BC *= 2
    return best[1], best[2]


def forward_tile(H: int, W: int, C: int) -> Tuple[int, int, int]:
    """``(R, WT, BC)`` of the forward on a GPU: rows of ``row_shape`` and R in 4..8 (need not be a
    power of two: the rows are a tuple) padding H least, the larger on a tie (FocalNet: 8 at 56,
    else 7)."""
    R = min(range(min(4, H), min(8, H) + 1), key=lambda r: (triton.cdiv(H, r) * r, -r))
    return (R,) + row_shape(W, C)


def backward_tile(H: int, W: int, C: int, levels: int) -> Tuple[int, int, int]:
    """``(R, WT, BC)`` of the backward on a GPU: rows of ``row_shape`` (no padded columns or
    channels on FocalNet's maps: a program sweeps the row in W / WT tiles) and R = 4 rows (the
    weight gradient's slots take R rows per FMA chain) where there are at most 2 levels and the
    map has more than 8 rows, else 2 (3 levels: 4 rows of 3 levels spill, ptxas, Triton 3.9).
    ``chain_schedule`` gives each thread 16 values: 2 warps at R = 4, 1 warp at R = 2."""
    R = 4 if levels <= 2 and H > 8 else 2
    return (R,) + row_shape(W, C)


def chain_schedule(H: int, W: int, C: int, kernel_sizes, backward: bool, interpret: bool,
                   batch: int = 1, sm_count: Optional[int] = None,
                   tile: Optional[Tuple[int, int, int]] = None,
                   band_rows: Optional[int] = None, num_warps: Optional[int] = None) -> ChainSchedule:
    """The schedule of the forward (``backward=False``) or backward chain kernel.

    Under the Triton interpreter the tiles are as large as the image (one step, one program per
    image and channel block), because there every Triton op costs a Python call. On a GPU a
    forward tile is R rows of 256 values (``forward_tile``), a backward tile 2 or 4 such rows
    (``backward_tile``; 16 values per thread), and images
    are cut into bands when ``batch`` images give too few programs for the GPU's ``sm_count``
    multiprocessors. ``tile = (R, WT, BC)`` (powers of two; the forward takes any R), ``band_rows`` and ``num_warps``
    override this, e.g. for tests of the multi-step, multi-tile and banded paths, or to tune
    (``focalfast.ops.triton.tune_chain``).
    """
    ks = tuple(int(k) for k in kernel_sizes)
    L = len(ks)
    P = [k // 2 for k in ks]
    D, Bk = forward_lags(ks), backward_lags(ks)  # D[l - 1] = D_l, Bk[l] = B_l
    halo = sweep_halo(ks, backward)
    sweep = H + 2 * P[0] + halo  # rows from the first ctx row to the last stage's last row
    np2 = triton.next_power_of_2
    if tile is not None:
        R, WT, BC = tile
    elif interpret:
        BC = min(np2(C), 64)
        WT = min(np2(W), 64)
        R = min(np2(sweep), max(1, 16384 // (WT * BC)))
    elif backward:
        R, WT, BC = backward_tile(H, W, C, L)
    else:
        R, WT, BC = forward_tile(H, W, C)
    if num_warps is None:
        num_warps = max(1, min(8, (R * WT * BC // 512) if backward else (WT * BC // (32 * ROW_VECTOR))))

    D0 = [-P[0]] + list(D)  # D0[l] = D_l with D_0 = -P_1 (z_0 enters P_1 rows ahead of level 1)
    lags = [P[0] + d for d in D]
    aligned = not backward and (tile is not None or not interpret)  # forward lags raised to whole steps
    if backward:
        spans = [R + Bk[l + 1] + P[l] - D0[l] for l in range(L)]
        spans += [R + Bk[l] - D0[l] for l in range(1, L)]
        spans += [R + 2 * p for p in P]
    else:
        if aligned:
            lags = aligned_lags(lags, P, R)
        spans = [np2(R) + lags[0] + P[0]]  # z_0 is copied np2(R) rows at a time
        spans += [R + max(lags[l] - lags[l - 1] + P[l], lags[-1] - lags[l - 1]) for l in range(1, L)]
    pad = max(P)
    if band_rows is None:
        whole_images = interpret or sm_count is None
        band_rows = H if whole_images else rows_per_band(H, halo, batch * triton.cdiv(C, BC), sm_count, R)
    return ChainSchedule(
        kernel_sizes=ks + (1,) * (MAX_LEVELS - L),
        levels=L,
        lags=tuple(lags) + (lags[-1],) * (MAX_LEVELS - L),
        grad_lags=tuple(P[0] + b for b in Bk[:L]) + (P[0] + Bk[L],) * (MAX_LEVELS - L),
        first_taps=tuple(sum(k * k for k in ks[:l]) for l in range(MAX_LEVELS)),
        halo=halo,
        rows_per_step=R,
        tile_width=WT,
        channel_block=BC,
        ring=np2(max(spans)),
        pad=pad,
        ring_width=2 * pad + triton.cdiv(W, WT) * WT,
        band_rows=band_rows,
        bands=triton.cdiv(H, band_rows),
        num_warps=num_warps,
        whole_steps=aligned and band_rows >= H and H % R == 0,
    )
