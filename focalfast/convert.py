"""State-dict converters: official, timm and HF transformers focal-modulation weights to ours.

focalfast uses the official names. The other two differ only in names and 1x1 shapes:

    official     timm (NCHW, 1x1 convs)        HF transformers
    f            f      [O, C, 1, 1]           projection_in
    focal_layers focal_layers                  focal_layers
    h            h                             projection_context
    proj         proj   [C, C, 1, 1]           projection_out
    ln           norm                          layernorm
"""

from __future__ import annotations

from typing import Mapping, Optional

from torch import Tensor, nn

from focalfast.weights import load_weights

SOURCES = ("official", "timm", "hf")

_HF_NAMES = {"projection_in": "f", "projection_context": "h", "projection_out": "proj", "layernorm": "ln"}
_TIMM_NAMES = {"norm": "ln"}
_TIMM_1X1_LINEARS = ("f", "proj")


def detect_modulation_source(state_dict: Mapping[str, Tensor]) -> str:
    """Guess whether a modulation state dict is official, timm or HF transformers."""
    keys = list(state_dict)
    if any(k.split(".")[0] in _HF_NAMES for k in keys):
        return "hf"
    if state_dict.get("f.weight") is not None and state_dict["f.weight"].dim() == 4 or any(
        k.startswith("norm.") for k in keys
    ):
        return "timm"
    return "official"


def modulation_state_dict(state_dict: Mapping[str, Tensor], source: str = "auto") -> dict:
    """Rename and reshape one modulation's state dict (keys relative to the module) to ours."""
    if source == "auto":
        source = detect_modulation_source(state_dict)
    if source not in SOURCES:
        raise ValueError(f"source: expected 'auto' or one of {SOURCES}, got {source!r}")
    renames = {"hf": _HF_NAMES, "timm": _TIMM_NAMES, "official": {}}[source]
    out = {}
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        head = renames.get(head, head)
        if source == "timm" and head in _TIMM_1X1_LINEARS and rest == "weight" and value.dim() == 4:
            value = value.flatten(1)
        out[f"{head}.{rest}" if rest else head] = value
    return out


def load_modulation_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str = "auto") -> None:
    """Load official / timm / HF weights into a ``focalfast.FocalModulation``.

    Raises ``focalfast.WeightsError`` listing the missing and unexpected keys (after renaming)
    and the shape mismatches, instead of loading part of the weights.
    """
    if source == "auto":
        source = detect_modulation_source(state_dict)
    load_weights(module, modulation_state_dict(state_dict, source), what=f"{source} modulation weights")


def modulation_config(module: nn.Module) -> dict:
    """The ``FocalModulation`` constructor arguments that reproduce an official, timm or HF
    modulation module (``source`` says which it is)."""
    hf = hasattr(module, "projection_in")
    f = module.projection_in if hf else module.f
    convs = [layer[0] for layer in module.focal_layers]
    sizes = [conv.kernel_size[0] for conv in convs]
    if hf:
        source, postln = "hf", module.use_post_layernorm_in_modulation
        norm, drop = getattr(module, "layernorm", None), module.projection_dropout.p
    elif isinstance(f, nn.Conv2d):
        source, postln = "timm", bool(getattr(module, "use_post_norm", False))
        norm, drop = module.norm if postln else None, module.proj_drop.p
    else:
        source, postln = "official", bool(getattr(module, "use_postln_in_modulation", False))
        norm, drop = getattr(module, "ln", None), module.proj_drop.p
    return dict(
        source=source,
        dim=convs[0].in_channels,
        focal_window=sizes[0],
        focal_level=len(sizes),
        focal_factor=sizes[1] - sizes[0] if len(sizes) > 1 else 2,
        bias=f.bias is not None,
        proj_drop=drop,
        use_postln_in_modulation=postln,
        normalize_modulator=bool(module.normalize_modulator),
        layer_norm_eps=norm.eps if norm is not None else 1e-5,
        layout="nchw" if source == "timm" else "nhwc",
    )


def focal_modulation_from(module: nn.Module, backend: Optional[str] = None):
    """A ``focalfast.FocalModulation`` with the configuration, weights, device and dtype of an
    official, timm or HF transformers modulation module."""
    from focalfast.modules.focal_modulation import FocalModulation

    config = modulation_config(module)
    source = config.pop("source")
    ours = FocalModulation(**config, backend=backend)
    param = next(module.parameters())
    ours.to(device=param.device, dtype=param.dtype)
    load_modulation_state_dict(ours, module.state_dict(), source)
    ours.train(module.training)
    return ours
