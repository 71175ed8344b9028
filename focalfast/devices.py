"""The torch device a ``focalfast`` command runs on: the default, and why a requested one cannot be used.

``focalfast.cli`` checks every subcommand's ``--device`` with ``device_unavailable_reason`` before the
subcommand starts, so a missing GPU ends in one line, not a traceback.
"""

from __future__ import annotations

from typing import Optional

import torch

DEVICE_TYPES = ("cpu", "cuda")


def default_device() -> torch.device:
    """``cuda`` where PyTorch sees a GPU, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(spec: Optional[str]) -> torch.device:
    """The device named by ``spec`` (e.g. "cpu", "cuda:1"), or ``default_device()`` where it is None."""
    return torch.device(spec) if spec else default_device()


def device_unavailable_reason(spec: str) -> Optional[str]:
    """Why tensors cannot be put on device ``spec`` here (None if they can); one line."""
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        return f"not a torch device ({exc})"
    if device.type not in DEVICE_TYPES:
        return f"focalfast runs on {' or '.join(DEVICE_TYPES)} devices, got {device.type}"
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            return (f"this PyTorch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch "
                    "to use a GPU")
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to PyTorch (check the driver and CUDA_VISIBLE_DEVICES)"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"there is no CUDA device {device.index}: PyTorch sees {count}"
    return None
