"""Edifice-style builder of an isotropic FocalNet: ``build(...)`` and ``output_size(...)``.

An isotropic FocalNet is one stage: a ``patch_size`` patch embedding, ``num_layers`` FocalNet
blocks of width ``hidden_size`` (the real focal modulation, on ``backend``), a final LayerNorm
and mean pooling, plus an optional linear head.
"""

from __future__ import annotations

from typing import Optional

from focalfast import backends
from focalfast.models.config import FocalNetConfig


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _config(image_size, patch_size, in_channels, hidden_size, num_layers, focal_levels, focal_kernel,
            num_classes, mlp_ratio, dropout, drop_path_rate, backend) -> FocalNetConfig:
    for name, value in (("image_size", image_size), ("patch_size", patch_size), ("in_channels", in_channels),
                        ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("focal_levels", focal_levels), ("focal_kernel", focal_kernel)):
        _check_positive_int(name, value)
    if image_size % patch_size:
        raise ValueError(f"patch_size: must divide image_size, got patch_size={patch_size} and "
                         f"image_size={image_size}")
    if focal_kernel % 2 == 0:
        raise ValueError(f"focal_kernel: expected an odd kernel size, got {focal_kernel}")
    if num_classes is not None:
        _check_positive_int("num_classes", num_classes)
    for name, value in (("dropout", dropout), ("drop_path_rate", drop_path_rate)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: expected a probability in [0, 1), got {value!r}")
    if not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
        raise ValueError(f"mlp_ratio: expected a positive number, got {mlp_ratio!r}")
    backends.check_choice(backend)
    return FocalNetConfig(embed_dim=hidden_size, depths=(num_layers,), focal_levels=focal_levels,
                          focal_windows=focal_kernel, patch_size=patch_size, in_channels=in_channels,
                          mlp_ratio=float(mlp_ratio), drop_rate=float(dropout),
                          drop_path_rate=float(drop_path_rate))


def build(image_size: int = 224, patch_size: int = 16, in_channels: int = 3, hidden_size: int = 256,
          num_layers: int = 4, focal_levels: int = 3, focal_kernel: int = 3, num_classes: Optional[int] = None,
          mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path_rate: float = 0.0,
          backend: Optional[str] = None):
    """An isotropic FocalNet: ``[B, in_channels, image_size, image_size]`` -> ``[B, hidden_size]``
    (``[B, num_classes]`` with ``num_classes``).

    ``focal_kernel`` is the first level's kernel (level l uses ``focal_kernel + 2*l``);
    ``dropout`` the dropout after the patch embedding and in the projections; bad options raise
    ValueError naming the option. Other image sizes also run (see ``FocalNet``).
    """
    from focalfast.models.focalnet import FocalNet

    config = _config(image_size, patch_size, in_channels, hidden_size, num_layers, focal_levels,
                     focal_kernel, num_classes, mlp_ratio, dropout, drop_path_rate, backend)
    return FocalNet(config, num_classes=num_classes, backend=backend)


def output_size(image_size: int = 224, patch_size: int = 16, in_channels: int = 3, hidden_size: int = 256,
                num_layers: int = 4, focal_levels: int = 3, focal_kernel: int = 3,
                num_classes: Optional[int] = None, mlp_ratio: float = 4.0, dropout: float = 0.0,
                drop_path_rate: float = 0.0, backend: Optional[str] = None) -> int:
    """The last dimension of ``build(**same_options)``'s output: ``num_classes`` if set, else
    ``hidden_size``. Validates the options like ``build`` does."""
    _config(image_size, patch_size, in_channels, hidden_size, num_layers, focal_levels, focal_kernel,
            num_classes, mlp_ratio, dropout, drop_path_rate, backend)
    return hidden_size if num_classes is None else num_classes
