"""Which backends can run on a device, and why the others cannot."""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch

from focalfast import backends


def backend_status(device: Union[str, torch.device, None] = None) -> Dict[str, Optional[str]]:
    """``{backend: None if it can run on device, else why not}`` for every concrete backend
    (``device=None``: on a CUDA GPU). E.g. on a CPU-only machine, ``backend_status("cuda")["cuda"]``
    is "no CUDA GPU is visible to PyTorch"."""
    return {name: backends.unavailable_reason(name, device) for name in backends.BACKENDS}
