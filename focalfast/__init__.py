"""focalfast: fused GPU kernels for Focal Modulation Networks (FocalNet)."""

from focalfast.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
)
from focalfast.availability import backend_status
from focalfast.convert import focal_modulation_from, load_modulation_state_dict
from focalfast.modules.focal_modulation import FocalModulation
from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref
from focalfast import models
from focalfast.models.convnext import build_convnext, convnext_output_size
from focalfast.models.isotropic import build, output_size
from focalfast.patch import patch, unpatch
from focalfast.weights import WeightsError

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FocalModulation",
    "WeightsError",
    "available_backends",
    "backend_status",
    "build",
    "build_convnext",
    "convnext_output_size",
    "focal_modulation",
    "focal_modulation_from",
    "focal_modulation_ref",
    "get_backend",
    "load_modulation_state_dict",
    "models",
    "output_size",
    "patch",
    "set_backend",
    "unpatch",
]
