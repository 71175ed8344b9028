"""What the fused focal-modulation kernels (``triton`` and ``cuda``) handle.

Outside it, ``"auto"`` runs the reference and an explicitly chosen fused backend raises ValueError.
``csrc/focal_modulation.h`` repeats the limits for the C++ binding's own checks.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FUSED_MAX_LEVELS = 4
FUSED_MAX_KERNEL_SIZE = 13


def fused_unsupported_reason(dtype: torch.dtype, kernel_sizes: Sequence[int]) -> Optional[str]:
    """Why the fused kernels cannot run this configuration (None if they can); names the argument."""
    if dtype not in FUSED_DTYPES:
        return f"q: the fused kernels support {', '.join(map(str, FUSED_DTYPES))}, got {dtype}"
    if not 1 <= len(kernel_sizes) <= FUSED_MAX_LEVELS:
        return f"weights: the fused kernels support 1 to {FUSED_MAX_LEVELS} focal levels, got {len(kernel_sizes)}"
    for i, k in enumerate(kernel_sizes):
        if k > FUSED_MAX_KERNEL_SIZE:
            return f"weights[{i}]: the fused kernels support kernel sizes up to {FUSED_MAX_KERNEL_SIZE}, got {k}"
    return None
