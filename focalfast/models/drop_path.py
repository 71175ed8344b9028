"""``DropPath``: stochastic depth, dropping a whole residual branch per sample."""

from __future__ import annotations

from typing import List

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

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        return x * mask.bernoulli_(keep) / keep


def drop_path_rates(rate: float, num_blocks: int) -> List[float]:
    """Stochastic depth per block, linear from 0 to ``rate`` over the network (the official rule)."""
    if num_blocks == 1:
        return [0.0]
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]
