"""Floors and the issue-bound time model of the report (a model of an H100, not a measurement).

Per output element (pixel x channel), in warp-instructions (32 lanes):

    FMA floor   forward  sum_l k_l^2 / 32       (one FMA per tap per element)
                backward 3 sum_l k_l^2 / 32     (recompute, transposed conv, weight gradient)

HBM floor: the bytes of ``focalfast.roofline.op_bytes`` (each boundary tensor moved once) at
H100 SXM's 3.35 TB/s. Issue model: an H100 SXM issues at most 4 warp-instructions per clock per
SM (one per scheduler); ``time = warp-instructions / (SMs x 4 x 1.755 GHz)`` for the kernels,
plus the bytes of the PyTorch operators around them at 3.35 TB/s. Occupancy, latency and memory
stalls are not modelled: for issue-bound kernels this is a lower bound.
"""

from __future__ import annotations

from focalfast.roofline import OpShape, op_bytes
from focalfast.static_cost.cases import DTYPES, Case

CLOCK_HZ = 1.755e9
ISSUE_PER_CLOCK_PER_SM = 4
HBM_BYTES_PER_S = 3.35e12
FMA_FLOOR_FACTOR = {"fwd": 1, "bwd": 3}


def fma_floor_per_elem(case: Case, direction: str) -> float:
    return FMA_FLOOR_FACTOR[direction] * sum(k * k for k in case.kernel_sizes) / 32


def hbm_floor_bytes(case: Case, direction: str) -> int:
    H, W, C = case.shape
    shape = OpShape(case.batch, H, W, C, tuple(case.kernel_sizes))
    return op_bytes(shape, DTYPES[case.dtype], {"fwd": "forward", "bwd": "backward"}[direction])


def issue_seconds(warp_instructions: float, sm_count: int) -> float:
    return warp_instructions / (sm_count * ISSUE_PER_CLOCK_PER_SM * CLOCK_HZ)


def hbm_seconds(n_bytes: float) -> float:
    return n_bytes / HBM_BYTES_PER_S


def describe() -> str:
    return (f"model, not a measurement: kernels at {ISSUE_PER_CLOCK_PER_SM} warp-instructions/clock/SM x SMs at "
            f"{CLOCK_HZ / 1e9:.3f} GHz (issue-bound, occupancy and stalls not modelled) + PyTorch ops' bytes at "
            f"{HBM_BYTES_PER_S / 1e12:.2f} TB/s; FMA floor = sum k^2/32 fwd, 3 sum k^2/32 bwd; HBM floor = "
            f"roofline.op_bytes at {HBM_BYTES_PER_S / 1e12:.2f} TB/s")
