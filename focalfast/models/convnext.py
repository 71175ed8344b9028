"""ConvNeXt (Liu et al., 2022) on channels-last tokens, with ``build_convnext`` / ``convnext_output_size``.

Block: 7x7 depthwise conv (+bias) and LayerNorm as one ``dwconv_layernorm`` call, pointwise 4x
expansion, GELU, pointwise projection, layer scale, drop path, residual. Stem: a
``patch_size`` strided conv and LayerNorm; each later stage starts with LayerNorm and a 2x2
stride-2 conv. Head: global mean, LayerNorm, dropout, linear.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from focalfast import backends
from focalfast.models.drop_path import DropPath, drop_path_rates
from focalfast.ops.dwconv_layernorm import dwconv_layernorm


class ConvNeXtBlock(nn.Module):
    """``[B, H, W, C]`` -> ``[B, H, W, C]``:
    ``x + drop_path(gamma * pwconv2(GELU(pwconv1(LayerNorm(dwconv7x7(x))))))``."""

    def __init__(self, dim: int, layer_scale_init: float = 1e-6, drop_path: float = 0.0,
                 backend: Optional[str] = None):
        super().__init__()
        self.backend = backend
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)  # weights only; see forward
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))
        else:
            self.register_parameter("gamma", None)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        y = dwconv_layernorm(x, self.dwconv.weight, self.dwconv.bias, self.norm.weight, self.norm.bias,
                             self.norm.eps, self.backend)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y)


class Stem(nn.Module):
    """``[B, C_in, H, W]`` -> ``[B, H/p, W/p, C]``: non-overlapping ``p x p`` conv, then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class Downsample(nn.Module):
    """``[B, H, W, C_in]`` -> ``[B, H/2, W/2, C_out]``: LayerNorm, then a 2x2 stride-2 conv (floors odd sizes)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvNeXtStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth_rates: Sequence[float], layer_scale_init: float,
                 backend: Optional[str], downsample: bool):
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else None
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, layer_scale_init, rate, backend) for rate in depth_rates)

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


def _init_weights(module: nn.Module) -> None:
    """The official ConvNeXt initialisation: conv and linear weights truncated normal (std 0.02), zero bias."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)


class ConvNeXt(nn.Module):
    """ConvNeXt classifier: ``[B, in_channels, H, W]`` -> ``[B, num_classes]`` (``[B, dims[-1]]``
    pooled, normalised features when ``num_classes`` is None or 0).

    ``dropout`` is applied to the pooled features before the head; ``head_norm_eps`` is the
    final LayerNorm's eps (1e-6 in the paper, ``layer_norm_eps`` = 1e-12 in HF transformers);
    ``backend`` runs the fused depthwise conv + LayerNorm.
    """

    def __init__(self, in_channels: int = 3, depths: Sequence[int] = (3, 3, 9, 3),
                 dims: Sequence[int] = (96, 192, 384, 768), patch_size: int = 4,
                 num_classes: Optional[int] = None, dropout: float = 0.0, drop_path_rate: float = 0.0,
                 layer_scale_init: float = 1e-6, head_norm_eps: float = 1e-6, backend: Optional[str] = None):
        super().__init__()
        _check_options(in_channels=in_channels, depths=depths, dims=dims, patch_size=patch_size,
                       num_classes=num_classes, dropout=dropout, drop_path_rate=drop_path_rate,
                       layer_scale_init=layer_scale_init, backend=backend)
        if not head_norm_eps > 0:
            raise ValueError(f"head_norm_eps: expected a positive float, got {head_norm_eps!r}")
        self.dims = tuple(dims)
        self.num_classes = num_classes or 0
        self.stem = Stem(in_channels, dims[0], patch_size)
        rates = drop_path_rates(drop_path_rate, sum(depths))
        starts = [sum(depths[:i]) for i in range(len(depths) + 1)]
        self.stages = nn.ModuleList(
            ConvNeXtStage(dims[max(i - 1, 0)], dims[i], rates[starts[i]:starts[i + 1]], layer_scale_init,
                          backend, downsample=i > 0)
            for i in range(len(depths))
        )
        self.norm = nn.LayerNorm(dims[-1], eps=head_norm_eps)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dims[-1], self.num_classes) if self.num_classes else nn.Identity()
        self.apply(_init_weights)

    def forward_stages(self, images: Tensor) -> List[Tensor]:
        """``[B, in_channels, H, W]`` -> each stage's output ``[B, H_i, W_i, dims[i]]``."""
        x = self.stem(images)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, images: Tensor) -> Tensor:
        """``[B, in_channels, H, W]`` -> pooled, normalised features ``[B, dims[-1]]``."""
        return self.norm(self.forward_stages(images)[-1].mean((1, 2)))

    def forward(self, images: Tensor) -> Tensor:
        features = self.forward_features(images)
        return self.head(self.head_drop(features)) if self.num_classes else features


def _check_options(image_size: Optional[int] = None, **options) -> None:
    def positive_int(name, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")

    for name in ("in_channels", "patch_size"):
        positive_int(name, options[name])
    depths, dims = options["depths"], options["dims"]
    for name, values in (("depths", depths), ("dims", dims)):
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"{name}: expected a non-empty list of positive ints, got {values!r}")
        for i, v in enumerate(values):
            positive_int(f"{name}[{i}]", v)
    if len(depths) != len(dims):
        raise ValueError(f"dims: expected one width per stage ({len(depths)} stages in depths), got {len(dims)}")
    if options["num_classes"] is not None:
        positive_int("num_classes", options["num_classes"])
    for name in ("dropout", "drop_path_rate"):
        value = options[name]
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    if not isinstance(options["layer_scale_init"], (int, float)) or options["layer_scale_init"] < 0:
        raise ValueError(f"layer_scale_init: expected a non-negative number (0 disables layer scale), "
                         f"got {options['layer_scale_init']!r}")
    backend = options["backend"]
    backends.check_choice(backend)
    if image_size is not None:
        positive_int("image_size", image_size)
        patch_size = options["patch_size"]
        if image_size % patch_size:
            raise ValueError(f"patch_size: must divide image_size, got patch_size={patch_size} and "
                             f"image_size={image_size}")
        reduction = 2 ** (len(depths) - 1)
        if image_size // patch_size < reduction:
            raise ValueError(f"image_size: {image_size} gives a {image_size // patch_size}-pixel stem map, "
                             f"too small for {len(depths) - 1} 2x downsamplings (needs at least "
                             f"{patch_size * reduction})")


def build_convnext(image_size: int = 224, patch_size: int = 4, in_channels: int = 3,
                   depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                   dropout: float = 0.0, layer_scale_init: float = 1e-6, num_classes: Optional[int] = None,
                   drop_path_rate: float = 0.0, backend: Optional[str] = None) -> ConvNeXt:
    """A ConvNeXt: ``[B, in_channels, image_size, image_size]`` -> ``[B, dims[-1]]`` (``[B, num_classes]``
    with ``num_classes``). Bad options raise ValueError naming the option."""
    options = dict(patch_size=patch_size, in_channels=in_channels, depths=depths, dims=dims, dropout=dropout,
                   layer_scale_init=layer_scale_init, num_classes=num_classes, drop_path_rate=drop_path_rate,
                   backend=backend)
    _check_options(image_size, **options)
    return ConvNeXt(**options)


def convnext_output_size(image_size: int = 224, patch_size: int = 4, in_channels: int = 3,
                         depths: Sequence[int] = (3, 3, 9, 3), dims: Sequence[int] = (96, 192, 384, 768),
                         dropout: float = 0.0, layer_scale_init: float = 1e-6, num_classes: Optional[int] = None,
                         drop_path_rate: float = 0.0, backend: Optional[str] = None) -> int:
    """The last dimension of ``build_convnext(**same_options)``'s output: ``num_classes`` if set,
    else ``dims[-1]``. Validates the options like ``build_convnext``."""
    _check_options(image_size, patch_size=patch_size, in_channels=in_channels, depths=depths, dims=dims,
                   dropout=dropout, layer_scale_init=layer_scale_init, num_classes=num_classes,
                   drop_path_rate=drop_path_rate, backend=backend)
    return dims[-1] if num_classes is None else num_classes
