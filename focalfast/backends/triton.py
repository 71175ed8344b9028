"""The ``triton`` backend: fused Triton kernels (``focalfast/ops/triton/``), forward and backward.

Runs CUDA tensors, and CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1`` was set
before Triton was imported (the tests' CPU path; small shapes only). Also has ConvNeXt's fused
depthwise conv + LayerNorm.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from focalfast.backends.fused_limits import fused_unsupported_reason
from focalfast.backends.registry import Backend, OpConfig


def interpreter_on() -> bool:
    """Whether ``TRITON_INTERPRET`` is on, with the values Triton itself accepts."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def unavailable_reason(device: torch.device) -> Optional[str]:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # an install can be broken, not only missing
        return f"Triton is not importable ({exc}); install it with `pip install triton`"
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA GPU is visible to PyTorch"
    if device.type == "cpu" and interpreter_on():
        return None
    return (f"the Triton kernels need a CUDA GPU but the tensors are on {device.type} "
            "(set TRITON_INTERPRET=1 before importing focalfast to run them in Triton's CPU interpreter)")


def unsupported_reason(config: OpConfig) -> Optional[str]:
    if config.op == "dwconv_layernorm":
        from focalfast.ops.triton.dwconv_layernorm import MAX_CHANNELS

        if config.channels > MAX_CHANNELS:
            return (f"x_nhwc: the Triton dwconv_layernorm kernel supports at most {MAX_CHANNELS} channels, "
                    f"got {config.channels}; use backend='reference'")
        return None
    return fused_unsupported_reason(config.dtype, config.kernel_sizes)


BACKEND = Backend(
    name="triton",
    summary="fused Triton kernels, forward and backward",
    ops={
        "focal_modulation": "focalfast.ops.triton.focal_modulation:focal_modulation_triton",
        "dwconv_layernorm": "focalfast.ops.triton.dwconv_layernorm:dwconv_layernorm_triton",
    },
    unavailable_reason=unavailable_reason,
    unsupported_reason=unsupported_reason,
    auto_devices=("cuda",),
    cpu_test_env={"TRITON_INTERPRET": "1"},
)
