"""Sweep geometry of the fused level chain, for every backend: lags, halos and bands of rows.

A fused kernel sweeps one (image, channel block) top to bottom. Level l (kernel K_l, P_l = K_l // 2)
cannot produce row y before level l - 1 has produced row y + P_l, so each stage of the sweep runs a
fixed number of rows behind the first one, its *lag*. With z_0 = ctx read from memory:

    forward level l     D_l = P_2 + ... + P_l          (D_1 = 0; the gated sum runs at D_L)
    gradient du_l       B_L = D_L,  B_l = B_{l+1} + P_{l+1}
    dctx (= dz_0)       B_0 = B_1 + P_1

Bands: one program per (image, channel block) gives B * cdiv(C, block) programs, too few for a GPU
at small batch and high resolution (FocalNet-T stage 1 at 1024 px with B = 8). Each image is then cut
into bands of rows, one program each. A band [y0, y1) starts its sweep ``halo`` rows above y0 (the
sweep's lag: D_L forward, B_0 backward); a stage whose inputs above that start are missing (read as
zero rows) is wrong only in its first rows, and by induction over the stages everything the band
writes (its own rows, its share of the pool and of the weight gradients) is exact. The halo is
recomputed, so bands are at least MIN_HALOS halos high.

Stacks (the CUDA backward): the other way round, when images are small beside the halo (H at most
MIN_HALOS halos: 14x14 and 7x7 maps), a band takes several whole images, swept as one tall image with
zero rows between them (at least the largest conv radius, so that no conv reaches across), and pays
the halo's steps once a band instead of once an image; as many images as keep STACK_PROGRAMS_PER_SM
programs per multiprocessor, at most MAX_STACK. Every pixel's arithmetic is that of a sweep of its
image alone; only the per-band partial sums (weight gradients) add the same terms in another order.
"""

from typing import Optional, Sequence, Tuple

MIN_HALOS = 4  # recompute at most 1 / MIN_HALOS of a band
PROGRAMS_PER_SM = 2  # bands are cut until the sweep has this many programs per multiprocessor
STACK_PROGRAMS_PER_SM = 8  # stacks stop where fewer programs than this per multiprocessor would be left
MAX_STACK = 8  # images per stack: the halo's share of a band's steps is then at most 1 / MAX_STACK of one image's
HOST_SM_COUNT = 132  # an H100 SXM / H200: what CPU runs of the GPU code plan for (tests, static cost)


def forward_lags(kernel_sizes: Sequence[int]) -> Tuple[int, ...]:
    """``(D_1, ..., D_L)``: rows each forward level trails z_1."""
    P = [int(k) // 2 for k in kernel_sizes]
    return tuple(sum(P[1:l]) for l in range(1, len(P) + 1))


def backward_lags(kernel_sizes: Sequence[int]) -> Tuple[int, ...]:
    """``(B_0, ..., B_L)``: rows each gradient stage trails z_1 (B_0: dctx)."""
    P = [int(k) // 2 for k in kernel_sizes]
    D_L = forward_lags(kernel_sizes)[-1]
    return tuple(D_L + sum(P[l:]) for l in range(len(P) + 1))


def sweep_halo(kernel_sizes: Sequence[int], backward: bool) -> int:
    """Rows the last stage of a sweep trails the first: D_L forward, B_0 backward (a band's halo)."""
    return backward_lags(kernel_sizes)[0] if backward else forward_lags(kernel_sizes)[-1]


def rows_per_band(H: int, halo: int, programs: int, sm_count: Optional[int], min_rows: int = 1) -> int:
    """Rows per band: H (whole images) unless ``programs`` whole-image sweeps are fewer than
    PROGRAMS_PER_SM per multiprocessor; then as many bands as reach that, each at least MIN_HALOS
    halos and ``min_rows`` high. ``sm_count`` None (no GPU plan) keeps whole images."""
    if sm_count is None:
        return H
    wanted = -(-PROGRAMS_PER_SM * sm_count // programs)
    if wanted <= 1:
        return H
    return min(H, max(MIN_HALOS * halo, min_rows, -(-H // wanted)))


def band_count(H: int, band_rows: int) -> int:
    """Bands of ``band_rows`` rows that cover H rows."""
    return -(-H // band_rows)


def images_per_band(B: int, H: int, band_rows: int, halo: int, programs_per_image: int,
                    sm_count: Optional[int]) -> int:
    """Whole images per band of a stacking sweep: 1 unless whole-image bands (``band_rows`` H) of small
    images (H <= MIN_HALOS halos); then the most, up to MAX_STACK, that leave STACK_PROGRAMS_PER_SM
    programs (``programs_per_image`` each) per multiprocessor. ``sm_count`` None keeps one image."""
    if sm_count is None or band_rows < H or H > MIN_HALOS * halo:
        return 1
    wanted = STACK_PROGRAMS_PER_SM * sm_count
    stack = 1
    while stack < min(MAX_STACK, B) and -(-B // (stack + 1)) * programs_per_image >= wanted:
        stack += 1
    return stack
