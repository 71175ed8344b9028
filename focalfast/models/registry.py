"""Every published FocalNet variant by name, and ``create(name, ...)``.

Architectures follow the official configs (microsoft/FocalNet ``configs/*.yaml`` and
``classification/focalnet.py``); ``drop_path_rate`` is each variant's published training value.
Where timm's variant of the same name differs (``WEIGHT_SOURCE_SETTINGS``: timm's
``focalnet_large_fl4`` leaves ``normalize_modulator`` off), ``create(..., pretrained=...)`` takes
the setting of the library the weights come from, and refuses weights that do not say.
"""

from __future__ import annotations

import difflib
from typing import Dict, List, Optional

from focalfast.models.config import FocalNetConfig
from focalfast.weights import StateDictOrPath, WeightsError, as_state_dict

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

# Settings of a variant that depend on the library its weights come from (by weight layout, see
# ``detect_focalnet_source``). HF transformers files keep them in their config.json, not in the
# weights, so for those ``create`` wants them passed explicitly.
WEIGHT_SOURCE_SETTINGS: Dict[str, Dict[str, dict]] = {
    "focalnet_large_fl4": {"official": {"normalize_modulator": True}, "timm": {"normalize_modulator": False}},
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


def settings_for_weights(name: str, state_dict: dict, source: str, overrides: dict) -> dict:
    """The ``WEIGHT_SOURCE_SETTINGS`` of variant ``name`` for weights from ``source`` (``"auto"``:
    told by the key layout), less what ``overrides`` sets; ``WeightsError`` when the weights'
    library is not in the table and ``overrides`` does not set every such field."""
    from focalfast.models.focalnet_weights import detect_focalnet_source

    by_source = WEIGHT_SOURCE_SETTINGS.get(name)
    if not by_source:
        return {}
    if source == "auto":
        source = detect_focalnet_source(state_dict)
    fields = sorted({field for settings in by_source.values() for field in settings} - set(overrides))
    if source not in by_source and fields:
        choices = "; ".join(f"{lib}: {settings}" for lib, settings in by_source.items())
        raise WeightsError(f"pretrained: {name} differs between libraries in {', '.join(fields)} ({choices}) and "
                           f"{source} weights do not say which they were trained with; pass it to create() "
                           f"(e.g. {fields[0]}=..., from the weights' config)")
    return {field: value for field, value in by_source.get(source, {}).items() if field in fields}


def create(name: str, num_classes: Optional[int] = 1000, pretrained: Optional[StateDictOrPath] = None,
           backend: Optional[str] = None, source: str = "auto", **overrides):
    """A ``FocalNet`` of a registered variant, e.g. ``create("focalnet_tiny_srf", num_classes=1000, backend="auto")``.

    Args:
        name: a name from ``list_models()``.
        num_classes: classes of the head; 0 or None for pooled features.
        pretrained: a local ``.pth`` / ``.safetensors`` file or a state dict (official, timm or HF
            transformers names, see ``source``); nothing is downloaded. Settings that differ
            between libraries for this variant follow the weights' library
            (``WEIGHT_SOURCE_SETTINGS``).
        backend: the focal-modulation backend of every block.
        overrides: ``FocalNetConfig`` fields to change (e.g. ``drop_path_rate=0.1``).
    """
    from focalfast.models.focalnet import FocalNet
    from focalfast.models.focalnet_weights import load_focalnet_weights

    state = None
    if pretrained is not None:
        state = as_state_dict(pretrained)
        overrides = {**settings_for_weights(name, state, source, overrides), **overrides}
    model = FocalNet(get_config(name, **overrides), num_classes=num_classes, backend=backend)
    if state is not None:
        load_focalnet_weights(model, state, source=source)
    return model
