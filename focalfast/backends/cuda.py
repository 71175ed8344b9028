"""The ``cuda`` backend: fused CUDA C++ kernels (``csrc/``, built by ``focalfast.ops.cuda.extension``).

Runs CUDA tensors with the built extension. With ``FOCALFAST_CUDA_HOST=1`` it also runs CPU
tensors: the same kernel bodies, serially on the host (the tests' CPU path; slow).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from focalfast.backends.fused_limits import fused_unsupported_reason
from focalfast.backends.registry import Backend, OpConfig

HOST_ENV = "FOCALFAST_CUDA_HOST"


def host_path_on() -> bool:
    """Whether CPU tensors may run the kernels' host path (``FOCALFAST_CUDA_HOST=1``)."""
    return os.environ.get(HOST_ENV, "0").strip() == "1"


def unavailable_reason(device: torch.device) -> Optional[str]:
    if device.type == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    if device.type != "cuda" and not (device.type == "cpu" and host_path_on()):
        return (f"the CUDA C++ kernels need CUDA tensors, got tensors on {device.type} "
                f"({HOST_ENV}=1 runs them serially on the host, for tests)")
    from focalfast.ops.cuda import extension

    return extension.unavailable_reason()


def unsupported_reason(config: OpConfig) -> Optional[str]:
    return fused_unsupported_reason(config.dtype, config.kernel_sizes)


BACKEND = Backend(
    name="cuda",
    summary="fused CUDA C++ kernels from csrc/",
    ops={"focal_modulation": "focalfast.ops.cuda.focal_modulation:focal_modulation_cuda"},
    unavailable_reason=unavailable_reason,
    unsupported_reason=unsupported_reason,
    auto_devices=("cuda",),
    cpu_test_env={HOST_ENV: "1"},
)
