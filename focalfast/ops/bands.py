"""Bands of rows: how the fused row sweeps (Triton and CUDA) keep a GPU busy at small batch.

Both backends sweep each (image, channel block) top to bottom in one program, which gives
B * cdiv(C, block) programs: too few for a GPU at small batch and high resolution (FocalNet-T
stage 1 at 1024 px with B = 8 gives 24 Triton programs). Each image is then cut into bands of
rows, one program each. A band [y0, y1) starts its sweep ``halo`` rows before y0, the largest
lag between the sweep's first stage and its last: a stage whose inputs before that start are
missing (read as zero rows) is wrong only in its first rows, and by induction over the stages
everything the band writes (its own rows, its share of the pool and of the weight gradients)
is exact. The halo is recomputed, so bands are at least MIN_HALOS halos high.
"""

MIN_HALOS = 4  # recompute at most 1 / MIN_HALOS of a band


def rows_per_band(H: int, halo: int, programs: int, target_programs: int, min_rows: int = 1) -> int:
    """Rows per band: H (whole images) unless ``programs`` whole-image sweeps are fewer than
    ``target_programs``; then as many bands as reach the target, each at least MIN_HALOS halos
    and ``min_rows`` high."""
    wanted = -(-target_programs // programs)
    if wanted <= 1:
        return H
    return min(H, max(MIN_HALOS * halo, min_rows, -(-H // wanted)))
