"""``FocalNetForMaskedImageModeling``: SimMIM pre-training head (mask tokens, 1x1 conv + pixel
shuffle decoder, L1 loss on the masked pixels), as HF transformers' ``FocalNetForMaskedImageModeling``."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from focalfast.models.config import FocalNetConfig
from focalfast.models.focalnet import FocalNet


class MaskedImageModelingOutput(NamedTuple):
    loss: Optional[Tensor]  # scalar, None without a mask
    reconstruction: Tensor  # [B, in_channels, H, W]


def masked_l1_loss(images: Tensor, reconstruction: Tensor, pixel_mask: Tensor) -> Tensor:
    """Mean absolute error over the masked pixels and channels.

    images, reconstruction ``[B, C, H, W]``; pixel_mask ``[B, 1, H, W]`` (1 = masked).
    """
    error = (images - reconstruction).abs() * pixel_mask
    return error.sum() / (pixel_mask.sum() + 1e-5) / images.shape[1]


class FocalNetForMaskedImageModeling(nn.Module):
    """SimMIM on a FocalNet: masked stem tokens are replaced by a learned ``mask_token``, the
    normalised last feature map is decoded to pixels by a 1x1 conv to ``stride**2 * in_channels``
    channels and a pixel shuffle, and the loss is the L1 error on masked pixels.

    ``forward(images [B, C, H, W], bool_masked_pos)`` -> ``(loss, reconstruction [B, C, H, W])``;
    ``bool_masked_pos`` is ``[B, h*w]`` or ``[B, h, w]`` over the stem's patch grid
    (``h = ceil(H / patch_size)``), True where masked; without it the loss is None.
    ``encoder_stride`` (HF's config field) may be given to check it equals ``config.stride``.
    """

    def __init__(self, config: Optional[FocalNetConfig] = None, encoder_stride: Optional[int] = None,
                 backend: Optional[str] = None, **overrides):
        super().__init__()
        self.focalnet = FocalNet(config, num_classes=0, backend=backend, **overrides)
        config = self.focalnet.config
        self.config = config
        self.encoder_stride = encoder_stride or config.stride
        if self.encoder_stride != config.stride:
            raise ValueError(f"encoder_stride: the decoder must upsample the last feature map back to the "
                             f"image, i.e. by {config.stride} for this config, got {encoder_stride}")
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.dims[0]))
        self.decoder = nn.Sequential(
            nn.Conv2d(config.num_features, self.encoder_stride ** 2 * config.in_channels, kernel_size=1),
            nn.PixelShuffle(self.encoder_stride),
        )

    def forward(self, images: Tensor, bool_masked_pos: Optional[Tensor] = None) -> MaskedImageModelingOutput:
        tokens = self.focalnet.embed(images)
        B, h, w, _ = tokens.shape
        mask = None
        if bool_masked_pos is not None:
            if bool_masked_pos.shape not in ((B, h * w), (B, h, w)):
                raise ValueError(f"bool_masked_pos: expected shape [B, h*w] or [B, h, w] = "
                                 f"{(B, h * w)} or {(B, h, w)} for the {h}x{w} patch grid, "
                                 f"got {tuple(bool_masked_pos.shape)}")
            mask = bool_masked_pos.reshape(B, h, w, 1).to(tokens.dtype)
            tokens = tokens * (1.0 - mask) + self.mask_token * mask
        features = self.focalnet.norm(self.focalnet.encode(tokens)[-1])
        H, W = images.shape[-2:]
        reconstruction = self.decoder(features.permute(0, 3, 1, 2))[..., :H, :W]
        if mask is None:
            return MaskedImageModelingOutput(None, reconstruction)
        p = self.config.patch_size
        pixel_mask = mask.permute(0, 3, 1, 2).repeat_interleave(p, 2).repeat_interleave(p, 3)[..., :H, :W]
        return MaskedImageModelingOutput(masked_l1_loss(images, reconstruction, pixel_mask), reconstruction)
