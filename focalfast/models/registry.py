"""Every published FocalNet variant by name, and ``create(name, ...)``.

Architectures follow the official configs (microsoft/FocalNet ``configs/*.yaml`` and
``classification/focalnet.py``); ``drop_path_rate`` is each variant's published training value.
Note: the official ``focalnet_large_fl4`` config sets ``normalize_modulator``; timm's
``focalnet_large_fl4`` does not (pass ``normalize_modulator=False`` to match timm's).
"""

from __future__ import annotations

import difflib
from typing import Dict, List, Optional

from focalfast.weights import StateDictOrPath
from focalfast.models.config import FocalNetConfig

_FOUR_STAGES = (2, 2, 18, 2)
_LARGE = dict(depths=_FOUR_STAGES, use_conv_embed=True, use_layerscale=True, use_postln=True, drop_path_rate=0.5)

VARIANTS: Dict[str, FocalNetConfig] = {
    "focalnet_tiny_srf": FocalNetConfig(embed_dim=96, depths=(2, 2, 6, 2), focal_levels=2, focal_windows=3,
                                        drop_path_rate=0.2),
    "focalnet_tiny_lrf": FocalNetConfig(embed_dim=96, depths=(2, 2, 6, 2), focal_levels=3, focal_windows=3,
                                        drop_path_rate=0.2),
    "focalnet_small_srf": FocalNetConfig(embed_dim=96, depths=_FOUR_STAGES, focal_levels=2, focal_windows=3,
                                         drop_path_rate=0.3),
    "focalnet_small_lrf": FocalNetConfig(embed_dim=96, depths=_FOUR_STAGES, focal_levels=3, focal_windows=3,
                                         drop_path_rate=0.3),
    "focalnet_base_srf": FocalNetConfig(embed_dim=128, depths=_FOUR_STAGES, focal_levels=2, focal_windows=3,
                                        drop_path_rate=0.5),
    "focalnet_base_lrf": FocalNetConfig(embed_dim=128, depths=_FOUR_STAGES, focal_levels=3, focal_windows=3,
                                        drop_path_rate=0.5),
    "focalnet_large_fl3": FocalNetConfig(embed_dim=192, focal_levels=3, focal_windows=5, **_LARGE),
    "focalnet_large_fl4": FocalNetConfig(embed_dim=192, focal_levels=4, focal_windows=3,
                                         normalize_modulator=True, **_LARGE),
    "focalnet_xlarge_fl3": FocalNetConfig(embed_dim=256, focal_levels=3, focal_windows=5, **_LARGE),
    "focalnet_xlarge_fl4": FocalNetConfig(embed_dim=256, focal_levels=4, focal_windows=3, **_LARGE),
    "focalnet_huge_fl3": FocalNetConfig(embed_dim=352, focal_levels=3, focal_windows=3,
                                        use_postln_in_modulation=True, **_LARGE),
    "focalnet_huge_fl4": FocalNetConfig(embed_dim=352, focal_levels=4, focal_windows=3,
                                        use_postln_in_modulation=True, **_LARGE),
    "focalnet_tiny_iso": FocalNetConfig(embed_dim=192, depths=(12,), focal_levels=3, focal_windows=3,
                                        patch_size=16, drop_path_rate=0.2),
    "focalnet_small_iso": FocalNetConfig(embed_dim=384, depths=(12,), focal_levels=3, focal_windows=3,
                                         patch_size=16, drop_path_rate=0.2),
    "focalnet_base_iso": FocalNetConfig(embed_dim=768, depths=(12,), focal_levels=3, focal_windows=3,
                                        patch_size=16, use_layerscale=True, use_postln=True, drop_path_rate=0.2),
}


def list_models() -> List[str]:
    """The registered variant names."""
    return sorted(VARIANTS)


def get_config(name: str, **overrides) -> FocalNetConfig:
    """The config of variant ``name``, with some fields replaced.

    An unknown name raises ValueError naming the closest registered ones.
    """
    if name not in VARIANTS:
        close = difflib.get_close_matches(str(name), VARIANTS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {list_models()}"
        raise ValueError(f"name: unknown FocalNet variant {name!r}; {hint}")
    return VARIANTS[name].replace(**overrides)


def create(name: str, num_classes: Optional[int] = 1000, pretrained: Optional[StateDictOrPath] = None,
           backend: Optional[str] = None, source: str = "auto", **overrides):
    """A ``FocalNet`` of a registered variant, e.g. ``create("focalnet_tiny_srf", num_classes=1000, backend="auto")``.

    Args:
        name: a name from ``list_models()``.
        num_classes: classes of the head; 0 or None for pooled features.
        pretrained: a local ``.pth`` / ``.safetensors`` file or a state dict (official, timm or HF
            transformers names, see ``source``); nothing is downloaded.
        backend: the focal-modulation backend of every block.
        overrides: ``FocalNetConfig`` fields to change (e.g. ``drop_path_rate=0.1``).
    """
    from focalfast.models.focalnet import FocalNet
    from focalfast.models.focalnet_weights import load_focalnet_weights

    model = FocalNet(get_config(name, **overrides), num_classes=num_classes, backend=backend)
    if pretrained is not None:
        load_focalnet_weights(model, pretrained, source=source)
    return model
