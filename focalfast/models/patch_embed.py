"""``PatchEmbed``: the strided conv + LayerNorm that starts every FocalNet stage."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PatchEmbed(nn.Module):
    """``[B, C_in, H, W]`` -> ``[B, ceil(H/s), ceil(W/s), C_out]`` (channels-last tokens).

    A ``stride x stride`` conv with stride ``stride``, or with ``overlap`` the official
    overlapping convs (7x7 stride 4 padding 2 for the stem, 3x3 stride 2 padding 1 after it).
    H and W that are not multiples of ``stride`` are zero-padded on the bottom and right first
    (as HF transformers does), so no input pixel is dropped; the official code and timm floor
    instead, which gives the same result whenever H and W are multiples of the model's stride.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, overlap: bool = False,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.stride = stride
        if overlap:
            if stride not in (2, 4):
                raise ValueError(f"stride: overlapping patch embedding needs stride 2 or 4, got {stride}")
            kernel, padding = (7, 2) if stride == 4 else (3, 1)
        else:
            kernel, padding = stride, 0
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_channels, eps=layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = -x.shape[-2] % self.stride, -x.shape[-1] % self.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))
