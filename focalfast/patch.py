"""``focalfast.patch(model)``: swap the focal modulations of a timm, HF transformers or official
FocalNet for ``focalfast.FocalModulation``, in place."""

from __future__ import annotations

from typing import Optional

from torch import nn

from focalfast import backends
from focalfast.convert import focal_modulation_from
from focalfast.modules.focal_modulation import FocalModulation


def is_foreign_focal_modulation(module: nn.Module) -> bool:
    """Whether ``module`` is an official / timm (``f``, ``h``, ``focal_layers``) or HF transformers
    (``projection_in``, ``projection_context``, ``focal_layers``) focal modulation not yet ours."""
    if isinstance(module, FocalModulation) or not hasattr(module, "focal_layers"):
        return False
    official_or_timm = hasattr(module, "f") and hasattr(module, "h")
    hf = hasattr(module, "projection_in") and hasattr(module, "projection_context")
    return official_or_timm or hf


def patch(model: nn.Module, backend: Optional[str] = "auto") -> int:
    """Replace, in place, every official / timm / HF focal modulation inside ``model`` by a
    ``focalfast.FocalModulation`` on ``backend`` with the same weights, device, dtype, training
    mode and tensor layout (NCHW for timm's, NHWC otherwise). Returns how many modules were
    replaced; modules that are already focalfast's are left alone, so a second call returns 0.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in backends.CHOICES:
        raise ValueError(f"backend: expected one of {backends.CHOICES} or None, got {backend!r}")
    if is_foreign_focal_modulation(model):
        raise ValueError("model: is itself a focal modulation and cannot be replaced in place; "
                         "use focalfast.focal_modulation_from(module) instead")
    parents = list(model.modules())
    replaced = 0
    for parent in parents:
        for name, child in list(parent.named_children()):
            if is_foreign_focal_modulation(child):
                setattr(parent, name, focal_modulation_from(child, backend=backend))
                replaced += 1
    return replaced
