"""``DropPath``: stochastic depth, dropping a whole residual branch per sample."""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn


class DropPath(nn.Module):
    """Zero the branch of each sample with probability ``p`` in training and scale the kept
    ones by ``1 / (1 - p)``; the identity in eval mode or when ``p == 0``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p: expected a probability in [0, 1), got {p!r}")
        self.p = p

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def _sample_scale(self, x: Tensor) -> Optional[Tensor]:
        """``[B, 1, ..., 1]``: 0 for dropped samples, ``1 / (1 - p)`` for kept ones; None when inactive."""
        if self.p == 0.0 or not self.training:
            return None
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return mask.bernoulli_(keep).div_(keep)

    def forward(self, x: Tensor) -> Tensor:
        scale = self._sample_scale(x)
        return x if scale is None else x * scale

    def branch_scale(self, branch: Tensor, gamma: Optional[Tensor] = None) -> Optional[Tensor]:
        """The factor of ``self(gamma * branch)``: the per-sample scale times ``gamma`` (``[B, 1, .., 1]``,
        ``[C]`` or ``[B, 1, .., C]``), or None when it is 1; draws the drop-path mask."""
        scale = self._sample_scale(branch)
        if gamma is not None:
            scale = gamma if scale is None else scale * gamma
        return scale

    def add_to(self, residual: Tensor, branch: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """``residual + self(gamma * branch)`` (``gamma`` None: no scaling) in one op, with no
        branch-sized temporary."""
        scale = self.branch_scale(branch, gamma)
        return residual + branch if scale is None else torch.addcmul(residual, branch, scale)


def drop_path_rates(rate: float, num_blocks: int) -> List[float]:
    """Stochastic depth per block, linear from 0 to ``rate`` over the network (the official rule)."""
    if num_blocks == 1:
        return [0.0]
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]
