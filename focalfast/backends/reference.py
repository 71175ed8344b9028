"""The ``reference`` backend: pure PyTorch on any device, the oracle of every test and the
baseline of every benchmark; ``"auto"`` falls back to it."""

from focalfast.backends.registry import Backend

BACKEND = Backend(
    name="reference",
    summary="pure PyTorch, written the way the official FocalNet computes",
    ops={
        "focal_modulation": "focalfast.ops.focal_modulation:focal_modulation_ref",
        "dwconv_layernorm": "focalfast.ops.dwconv_layernorm:dwconv_layernorm_ref",
    },
    unavailable_reason=lambda device: None,
    fused=False,
)
