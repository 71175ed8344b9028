"""FocalNet and ConvNeXt models built on focalfast's ops.

    create(name, num_classes=1000, pretrained=None, backend=None)   a registered FocalNet variant
    list_models(), get_config(name, **overrides)                     the registry
    FocalNet, FocalNetForMaskedImageModeling, FocalNetBackbone       classification / SimMIM / per-stage maps
    build(...), output_size(...)                                     Edifice-style isotropic FocalNet
    ConvNeXt, build_convnext(...), convnext_output_size(...)
    load_focalnet_weights, load_convnext_weights                     official / timm / HF checkpoints
    focalnet_state_dict_for_timm(model)                              our weights in timm's names
    set_checkpointing(model, mode)                                   recompute activations in backward
"""

from focalfast.models.activation_checkpointing import CHECKPOINTING_MODES, set_checkpointing
from focalfast.models.backbone import FocalNetBackbone
from focalfast.weights import read_state_dict
from focalfast.models.config import FocalNetConfig
from focalfast.models.convnext import ConvNeXt, build_convnext, convnext_output_size
from focalfast.models.convnext_weights import (
    convert_hf_convnext_state_dict,
    convnext_from_hf_config,
    load_convnext_weights,
)
from focalfast.models.focalnet import FocalNet
from focalfast.models.focalnet_weights import (
    convert_focalnet_state_dict,
    detect_focalnet_source,
    focalnet_state_dict_for_timm,
    load_focalnet_weights,
)
from focalfast.models.isotropic import build, output_size
from focalfast.models.masked_image_modeling import FocalNetForMaskedImageModeling, MaskedImageModelingOutput
from focalfast.models.registry import VARIANTS, create, get_config, list_models

__all__ = [
    "CHECKPOINTING_MODES",
    "ConvNeXt",
    "FocalNet",
    "FocalNetBackbone",
    "FocalNetConfig",
    "FocalNetForMaskedImageModeling",
    "MaskedImageModelingOutput",
    "VARIANTS",
    "build",
    "build_convnext",
    "convert_focalnet_state_dict",
    "convert_hf_convnext_state_dict",
    "convnext_from_hf_config",
    "convnext_output_size",
    "create",
    "detect_focalnet_source",
    "focalnet_state_dict_for_timm",
    "get_config",
    "list_models",
    "load_convnext_weights",
    "load_focalnet_weights",
    "output_size",
    "read_state_dict",
    "set_checkpointing",
]
