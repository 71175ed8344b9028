"""focalfast: fused GPU kernels for Focal Modulation Networks (FocalNet)."""

from focalfast.backends import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
)
from focalfast.convert import focal_modulation_from, load_modulation_state_dict
from focalfast.modules.focal_modulation import FocalModulation
from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FocalModulation",
    "available_backends",
    "focal_modulation",
    "focal_modulation_from",
    "focal_modulation_ref",
    "get_backend",
    "load_modulation_state_dict",
    "set_backend",
]
