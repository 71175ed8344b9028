"""Backend selection for the fused op: names, availability, the process-wide default.

Backends:
    reference  pure PyTorch (``focal_modulation_ref``), any device, the correctness oracle
    triton     fused Triton kernels; a CUDA GPU, or CPU tensors under ``TRITON_INTERPRET=1``
    cuda       fused CUDA C++ kernels from ``csrc/``; a CUDA GPU and the built extension
    auto       the fastest available on the tensors' device; the reference on CPU
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable, Optional, Union

import torch

BACKENDS = ("reference", "triton", "cuda")
CHOICES = ("auto",) + BACKENDS
# "auto" on a GPU tries these in order; the order follows the committed GPU benchmarks.
AUTO_ORDER = ("triton", "cuda")

_IMPLEMENTATIONS = {
    "reference": "focalfast.ops.focal_modulation:focal_modulation_ref",
    "triton": "focalfast.ops.triton.focal_modulation:focal_modulation_triton",
    "cuda": "focalfast.ops.cuda.focal_modulation:focal_modulation_cuda",
}

# What the fused kernels (triton and cuda) handle. Outside it, "auto" runs the reference and an
# explicitly chosen fused backend raises ValueError (``fused_unsupported_reason``).
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FUSED_MAX_LEVELS = 4
FUSED_MAX_KERNEL_SIZE = 13

_default = "auto"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


def set_backend(name: str) -> None:
    """Set the process-wide default backend (used where ``backend=None``)."""
    global _default
    _default = _validate(name)


def get_backend() -> str:
    """The process-wide default backend name."""
    return _default


def _validate(name: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"backend: expected one of {CHOICES}, got {name!r}")
    return name


def requested(name: Optional[str]) -> str:
    """The backend asked for: ``name``, or the process-wide default where it is None."""
    return _validate(_default if name is None else name)


def triton_interpreter_on() -> bool:
    """Whether ``TRITON_INTERPRET`` is on, with the values Triton itself accepts."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on", "y")


def unavailable_reason(name: str, device: Union[str, torch.device, None] = None) -> Optional[str]:
    """Why backend ``name`` cannot run on ``device`` (``None``: on a CUDA GPU); None if it can."""
    _validate(name)
    device = torch.device("cuda" if device is None else device)
    if name in ("reference", "auto"):
        return None
    if name == "triton":
        try:
            import triton  # noqa: F401
        except Exception as exc:  # an install can be broken, not only missing
            return f"Triton is not importable ({exc}); install it with `pip install triton`"
        if device.type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA GPU is visible to PyTorch"
        if device.type == "cpu" and triton_interpreter_on():
            return None
        return (f"the Triton kernels need a CUDA GPU but the tensors are on {device.type} "
                "(set TRITON_INTERPRET=1 before importing focalfast to run them in Triton's CPU interpreter)")
    # name == "cuda"
    if device.type != "cuda":
        return f"the CUDA C++ kernels need CUDA tensors, got tensors on {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    from focalfast.ops.cuda import extension

    return extension.unavailable_reason()


def fused_unsupported_reason(dtype: torch.dtype, kernel_sizes) -> Optional[str]:
    """Why the fused kernels cannot run this configuration (None if they can); names the argument."""
    if dtype not in FUSED_DTYPES:
        return f"q: the fused kernels support {', '.join(map(str, FUSED_DTYPES))}, got {dtype}"
    if not 1 <= len(kernel_sizes) <= FUSED_MAX_LEVELS:
        return f"weights: the fused kernels support 1 to {FUSED_MAX_LEVELS} focal levels, got {len(kernel_sizes)}"
    for i, k in enumerate(kernel_sizes):
        if k > FUSED_MAX_KERNEL_SIZE:
            return f"weights[{i}]: the fused kernels support kernel sizes up to {FUSED_MAX_KERNEL_SIZE}, got {k}"
    return None


def available_backends(device: Union[str, torch.device, None] = None) -> list:
    """The backends that can run on ``device`` (``None``: on a CUDA GPU)."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def resolve(name: Optional[str], device: Union[str, torch.device]) -> str:
    """Turn ``name`` (or the default, or ``"auto"``) into a concrete backend for ``device``."""
    name = requested(name)
    device = torch.device(device)
    if name == "auto":
        if device.type != "cuda":
            return "reference"
        return next((b for b in AUTO_ORDER if unavailable_reason(b, device) is None), "reference")
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} is not available: {reason}")
    return name


_loaded: dict = {}


def implementation(name: str) -> Callable:
    """The op function of a concrete backend (imported on first use, then cached so that
    ``torch.compile`` sees a plain dict lookup). A module already imported is read from
    ``sys.modules``: ``torch.compile`` cannot trace ``importlib``, so a first call inside a compiled
    function in a fresh process still traces for the reference, which ``focalfast`` imports."""
    fn = _loaded.get(name)
    if fn is None:
        module, attr = _IMPLEMENTATIONS[name].split(":")
        fn = _loaded[name] = getattr(sys.modules.get(module) or importlib.import_module(module), attr)
    return fn
