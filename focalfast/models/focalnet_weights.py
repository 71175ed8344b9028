"""FocalNet state dicts from the official code, timm and HF transformers, in focalfast's names.

focalfast uses the official names. The others map as follows (``{i}`` stage, ``{j}`` block):

    official (= focalfast)          timm (NCHW, 1x1 convs)              HF transformers (prefix focalnet.)
    patch_embed.{proj,norm}         stem.{proj,norm}                    embeddings.patch_embeddings.projection,
                                                                        embeddings.norm
    layers.{i}.blocks.{j}.norm1     ...norm1 | norm1_post (post-norm)   encoder.stages.{i}.layers.{j}.norm1
    ...gamma_1, gamma_2             ...ls1.gamma, ls2.gamma             ...gamma_1, gamma_2
    ...modulation.*                 (see focalfast.convert)             (see focalfast.convert)
    ...mlp.fc1, mlp.fc2             [out, in, 1, 1] convs               same
    layers.{i}.downsample.*         layers.{i+1}.downsample.*           encoder.stages.{i}.downsample.{projection,norm}
    norm, head                      norm, head.fc                       layernorm, classifier (no prefix)
    mask_token, decoder.0 (MIM)     -                                   embeddings.mask_token, decoder.0
"""

from __future__ import annotations

import re
from typing import Mapping, Tuple

from torch import Tensor, nn

from focalfast.convert import modulation_state_dict
from focalfast.weights import StateDictOrPath, WeightsError, as_state_dict, load_weights

SOURCES = ("official", "timm", "hf")


def detect_focalnet_source(state_dict: Mapping[str, Tensor]) -> str:
    """Whether a FocalNet state dict is official (also focalfast's), timm or HF transformers."""
    keys = list(state_dict)
    if any(k.startswith(("focalnet.", "embeddings.", "encoder.stages.")) for k in keys):
        return "hf"
    if any(k.startswith("stem.") for k in keys):
        return "timm"
    if any(k.startswith("patch_embed.") for k in keys):
        return "official"
    raise WeightsError("cannot tell whether these FocalNet weights are official, timm or HF transformers "
                     f"(first keys: {keys[:5]}); pass source= explicitly")


def _modulation(rest: str, value: Tensor, source: str) -> Tuple[str, Tensor]:
    ((key, value),) = modulation_state_dict({rest: value}, source).items()
    return key, value


def _from_hf(key: str, value: Tensor) -> Tuple[str, Tensor]:
    key = key[len("focalnet."):] if key.startswith("focalnet.") else key
    if key == "embeddings.mask_token":
        return "mask_token", value
    key = key.replace("embeddings.patch_embeddings.projection.", "patch_embed.proj.")
    key = key.replace("embeddings.norm.", "patch_embed.norm.")
    key = re.sub(r"^encoder\.stages\.(\d+)\.layers\.", r"layers.\1.blocks.", key)
    key = re.sub(r"^encoder\.stages\.(\d+)\.downsample\.projection\.", r"layers.\1.downsample.proj.", key)
    key = re.sub(r"^encoder\.stages\.(\d+)\.downsample\.", r"layers.\1.downsample.", key)
    key = re.sub(r"^layernorm\.", "norm.", key)
    key = re.sub(r"^classifier\.", "head.", key)
    head, sep, rest = key.partition(".modulation.")
    if sep:
        rest, value = _modulation(rest, value, "hf")
        key = head + sep + rest
    return key, value


def _from_timm(key: str, value: Tensor) -> Tuple[str, Tensor]:
    key = re.sub(r"^stem\.", "patch_embed.", key)
    key = re.sub(r"^layers\.(\d+)\.downsample\.",
                 lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", key)
    key = re.sub(r"\.norm([12])_post\.", r".norm\1.", key)
    key = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", key)
    key = re.sub(r"^head\.fc\.", "head.", key)
    if re.search(r"\.mlp\.fc[12]\.weight$", key) and value.dim() == 4:
        value = value.flatten(1)
    head, sep, rest = key.partition(".modulation.")
    if sep:
        rest, value = _modulation(rest, value, "timm")
        key = head + sep + rest
    return key, value


def convert_focalnet_state_dict(state_dict: Mapping[str, Tensor], source: str = "auto") -> dict:
    """Rename (and reshape) a whole official, timm or HF FocalNet state dict to focalfast's names.

    HF's masked-image-modeling keys become ``mask_token`` and ``decoder.0.*``.
    """
    if source == "auto":
        source = detect_focalnet_source(state_dict)
    if source not in SOURCES:
        raise ValueError(f"source: expected 'auto' or one of {SOURCES}, got {source!r}")
    if source == "official":
        return dict(state_dict)
    rename = _from_hf if source == "hf" else _from_timm
    return dict(rename(k, v) for k, v in state_dict.items())


def focalnet_state_dict_for_timm(model: nn.Module) -> dict:
    """A focalfast ``FocalNet``'s weights in timm's names and shapes, for ``timm.create_model(...)
    .load_state_dict`` (the inverse of the timm conversion above)."""
    post = model.config.use_postln
    out = {}
    for key, value in model.state_dict().items():
        key = re.sub(r"^patch_embed\.", "stem.", key)
        key = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        if post:
            key = re.sub(r"\.norm([12])\.", r".norm\1_post.", key)
        key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
        key = re.sub(r"^head\.", "head.fc.", key)
        key = key.replace(".modulation.ln.", ".modulation.norm.")
        if re.search(r"\.(mlp\.fc[12]|modulation\.f|modulation\.proj)\.weight$", key):
            value = value[:, :, None, None]
        out[key] = value
    return out


def load_focalnet_weights(model: nn.Module, weights: StateDictOrPath, source: str = "auto",
                          strict: bool = True) -> Tuple[list, list]:
    """Load official, timm or HF weights (a state dict or a local .pth / .safetensors file) into a
    ``FocalNet``, ``FocalNetForMaskedImageModeling`` or ``FocalNetBackbone``.

    A model without a classification head ignores the checkpoint's head. ``strict`` raises
    ``focalfast.WeightsError`` listing the missing and unexpected keys (in focalfast's names) and shape
    mismatches; otherwise the matching part loads and ``(missing, unexpected)`` is returned.
    """
    from focalfast.models.focalnet import FocalNet

    state = as_state_dict(weights)
    if source == "auto":
        source = detect_focalnet_source(state)
    converted = convert_focalnet_state_dict(state, source)
    trunk, prefix = (model, "") if isinstance(model, FocalNet) else (getattr(model, "focalnet", None), "focalnet.")
    if not isinstance(trunk, FocalNet):
        raise TypeError(f"model: expected a focalfast FocalNet or a model with a .focalnet FocalNet, "
                        f"got {type(model).__name__}")
    extras = ("mask_token", "decoder.")
    ours = {}
    for key, value in converted.items():
        if key.startswith("head.") and trunk.num_classes == 0:
            continue
        ours[key if key.startswith(extras) else prefix + key] = value
    return load_weights(model, ours, strict=strict, what=f"{source} weights")
