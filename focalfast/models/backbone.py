"""``FocalNetBackbone``: a FocalNet returning every stage's feature map (for detection / segmentation)."""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor, nn

from focalfast.models.config import FocalNetConfig
from focalfast.models.focalnet import FocalNet


class FocalNetBackbone(nn.Module):
    """``images [B, C, H, W]`` -> a list of channels-first maps ``[B, dims[i], H_i, W_i]``, one per
    index in ``out_indices`` (default: every stage), each taken at the end of its stage before
    downsampling (stride ``patch_size * 2**i``), as the official detection backbone and timm's
    ``features_only`` do. ``out_channels`` and ``strides`` describe them."""

    def __init__(self, config: Optional[FocalNetConfig] = None, out_indices: Optional[Sequence[int]] = None,
                 backend: Optional[str] = None, **overrides):
        super().__init__()
        self.focalnet = FocalNet(config, num_classes=0, backend=backend, **overrides)
        config = self.focalnet.config
        num_stages = len(config.depths)
        out_indices = tuple(range(num_stages)) if out_indices is None else tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not 0 <= i < num_stages for i in out_indices):
            raise ValueError(f"out_indices: expected stage indices in [0, {num_stages}), got {out_indices!r}")
        self.out_indices = out_indices
        self.out_channels = [config.dims[i] for i in out_indices]
        self.strides = [config.patch_size * 2 ** i for i in out_indices]

    def forward(self, images: Tensor) -> List[Tensor]:
        stages = self.focalnet.encode(self.focalnet.embed(images))
        return [stages[i].permute(0, 3, 1, 2) for i in self.out_indices]
