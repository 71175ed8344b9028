"""``FocalNet``: the multi-stage (or isotropic) Focal Modulation Network with a classification head.

Parameter names are the official ones (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``, ``norm``, ``head``), so official checkpoints load as they are;
``focalfast.models.focalnet_weights`` converts timm and HF transformers ones.

Tokens stay channels-last ``[B, H, W, C]`` from the stem to the pooling, the layout of
``focalfast.FocalModulation`` (no reshapes between blocks).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from torch import Tensor, nn

from focalfast import backends
from focalfast.models.block import FocalNetBlock
from focalfast.models.config import FocalNetConfig
from focalfast.models.drop_path import drop_path_rates
from focalfast.models.patch_embed import PatchEmbed


class FocalNetStage(nn.Module):
    """``depths[i]`` blocks at one resolution, then (except in the last stage) the 2x downsampling
    ``PatchEmbed`` into the next stage's channels."""

    def __init__(self, config: FocalNetConfig, index: int, drop_path: Sequence[float],
                 backend: Optional[str] = None):
        super().__init__()
        dim = config.dims[index]
        self.blocks = nn.ModuleList(
            FocalNetBlock(
                dim,
                focal_level=config.focal_levels[index],
                focal_window=config.focal_windows[index],
                mlp_ratio=config.mlp_ratio,
                drop=config.drop_rate,
                drop_path=rate,
                use_layerscale=config.use_layerscale,
                layerscale_value=config.layerscale_value,
                use_postln=config.use_postln,
                use_postln_in_modulation=config.use_postln_in_modulation,
                normalize_modulator=config.normalize_modulator,
                layer_norm_eps=config.layer_norm_eps,
                backend=backend,
            )
            for rate in drop_path
        )
        last = index == len(config.depths) - 1
        self.downsample = None if last else PatchEmbed(
            dim, config.dims[index + 1], stride=2, overlap=config.use_conv_embed,
            layer_norm_eps=config.layer_norm_eps)

    def forward(self, x: Tensor):
        """``[B, H, W, C_i]`` -> (this stage's output ``[B, H, W, C_i]``, the next stage's input
        ``[B, ceil(H/2), ceil(W/2), C_{i+1}]``; the same tensor in the last stage)."""
        for block in self.blocks:
            x = block(x)
        return x, (x if self.downsample is None else self.downsample(x.permute(0, 3, 1, 2)))


def init_weights(module: nn.Module) -> None:
    """The official initialisation: Linear weights truncated normal (std 0.02) with zero bias,
    LayerNorm weight 1 and bias 0; convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class FocalNet(nn.Module):
    """FocalNet image classifier: images ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``
    (``[B, num_features]`` pooled features when ``num_classes`` is 0 or None).

    Any H and W work: each patch embedding zero-pads the bottom and right up to its stride (see
    ``PatchEmbed``), so outputs match the official and timm models whenever H and W are
    multiples of ``config.stride`` (32 for the 4-stage models) and HF transformers' always.

    Args:
        config: the architecture (default: FocalNet-T SRF); keyword ``overrides`` replace fields.
        num_classes: classes of the linear head; 0 or None for no head.
        backend: the focal-modulation backend of every block (``"auto"``, ``"reference"``,
            ``"triton"``, ``"cuda"``; None follows ``focalfast.set_backend``).
    """

    def __init__(self, config: Optional[FocalNetConfig] = None, num_classes: Optional[int] = 1000,
                 backend: Optional[str] = None, **overrides):
        super().__init__()
        config = (config or FocalNetConfig()).replace(**overrides)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
            raise ValueError(f"num_classes: expected a non-negative int or None, got {num_classes!r}")
        backends.check_choice(backend)
        self.config = config
        self.num_classes = num_classes or 0
        self.num_features = config.num_features

        self.patch_embed = PatchEmbed(config.in_channels, config.dims[0], config.patch_size,
                                      overlap=config.use_conv_embed, layer_norm_eps=config.layer_norm_eps)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = drop_path_rates(config.drop_path_rate, sum(config.depths))
        starts = [sum(config.depths[:i]) for i in range(len(config.depths) + 1)]
        self.layers = nn.ModuleList(
            FocalNetStage(config, i, rates[starts[i]:starts[i + 1]], backend)
            for i in range(len(config.depths))
        )
        self.norm = nn.LayerNorm(self.num_features, eps=config.layer_norm_eps)
        self.head = nn.Linear(self.num_features, self.num_classes) if self.num_classes else nn.Identity()
        self.apply(init_weights)

    def embed(self, images: Tensor) -> Tensor:
        """``[B, in_channels, H, W]`` -> stem tokens ``[B, ceil(H/p), ceil(W/p), embed_dim]``."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != self.config.in_channels:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images: expected shape [B, {self.config.in_channels}, H, W], got {got}")
        return self.patch_embed(images)

    def encode(self, tokens: Tensor, all_stages: bool = True) -> List[Tensor]:
        """Stem tokens -> each stage's output ``[B, H_i, W_i, dims[i]]`` (before downsampling);
        the last one is the final feature map (not yet normalised). ``all_stages=False`` returns
        the last one only and frees each earlier one as soon as the next stage has its input."""
        x = self.pos_drop(tokens)
        outputs = []
        for index, stage in enumerate(self.layers):
            out, x = stage(x)
            if all_stages or index == len(self.layers) - 1:
                outputs.append(out)
            del out
        return outputs

    def forward_features(self, images: Tensor) -> Tensor:
        """``[B, in_channels, H, W]`` -> pooled features ``[B, num_features]``."""
        return self.norm(self.encode(self.embed(images), all_stages=False)[-1]).mean((1, 2))

    def forward(self, images: Tensor) -> Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, num_classes]`` (``[B, num_features]`` without a head)."""
        return self.head(self.forward_features(images))
