"""HF transformers ConvNext weights (``ConvNextModel`` / ``ConvNextForImageClassification``) in
focalfast's ``ConvNeXt`` names, and a ``ConvNeXt`` built from an HF config.

    HF transformers (prefix convnext.)                   focalfast
    embeddings.patch_embeddings, embeddings.layernorm    stem.proj, stem.norm
    encoder.stages.{i}.downsampling_layer.{0,1}          stages.{i}.downsample.{norm,proj}
    encoder.stages.{i}.layers.{j}.layernorm              stages.{i}.blocks.{j}.norm
    ...layer_scale_parameter                             ...gamma
    ...dwconv, pwconv1, pwconv2                          same
    layernorm, classifier (no prefix)                    norm, head
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

from torch import Tensor

from focalfast.weights import StateDictOrPath, as_state_dict, load_weights
from focalfast.models.convnext import ConvNeXt

_RENAMES = (
    (r"^embeddings\.patch_embeddings\.", "stem.proj."),
    (r"^embeddings\.layernorm\.", "stem.norm."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.0\.", r"stages.\1.downsample.norm."),
    (r"^encoder\.stages\.(\d+)\.downsampling_layer\.1\.", r"stages.\1.downsample.proj."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.", r"stages.\1.blocks.\2.norm."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$", r"stages.\1.blocks.\2.gamma"),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^layernorm\.", "norm."),
    (r"^classifier\.", "head."),
)


def convert_hf_convnext_state_dict(state_dict: Mapping[str, Tensor]) -> dict:
    """Rename an HF ``ConvNextModel`` / ``ConvNextForImageClassification`` state dict to ours."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("convnext."):] if key.startswith("convnext.") else key
        for pattern, replacement in _RENAMES:
            key, n = re.subn(pattern, replacement, key)
            if n:
                break
        out[key] = value
    return out


def load_convnext_weights(model: ConvNeXt, weights: StateDictOrPath, strict: bool = True) -> Tuple[list, list]:
    """Load HF ConvNext weights (a state dict or a local .pth / .safetensors file) into ``model``.

    A model without a head ignores the checkpoint's classifier; ``strict`` raises ``focalfast.WeightsError``
    listing missing / unexpected keys and shape mismatches.
    """
    converted = convert_hf_convnext_state_dict(as_state_dict(weights))
    if model.num_classes == 0:
        converted = {k: v for k, v in converted.items() if not k.startswith("head.")}
    return load_weights(model, converted, strict=strict, what="HF ConvNext weights")


def convnext_from_hf_config(hf_config, backend: Optional[str] = None) -> ConvNeXt:
    """A ``ConvNeXt`` with the architecture of an HF ``ConvNextConfig`` (random weights)."""
    if getattr(hf_config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"hf_config.hidden_act: only 'gelu' is supported, got {hf_config.hidden_act!r}")
    return ConvNeXt(
        in_channels=hf_config.num_channels,
        depths=list(hf_config.depths),
        dims=list(hf_config.hidden_sizes),
        patch_size=hf_config.patch_size,
        num_classes=hf_config.num_labels or None,
        drop_path_rate=hf_config.drop_path_rate,
        layer_scale_init=hf_config.layer_scale_init_value,
        head_norm_eps=hf_config.layer_norm_eps,
        backend=backend,
    )
