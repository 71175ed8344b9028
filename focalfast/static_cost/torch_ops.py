"""Record the PyTorch operators a backend runs around its kernels, with the bytes each moves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


@dataclass
class TorchOp:
    name: str
    bytes: int  # tensor bytes read (inputs) + written (outputs)


def tensor_bytes(values) -> int:
    return sum(t.numel() * t.element_size() for t in values if isinstance(t, torch.Tensor))


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


class RecordTorchOps(TorchDispatchMode):
    """Keeps every operator that reads a tensor and writes a new one (views and factories move no data)."""

    def __init__(self):
        super().__init__()
        self.ops: List[TorchOp] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs or {}))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        read = {_storage(t) for t in inputs}
        is_view = any(_storage(t) in read for t in outputs)
        if inputs and outputs and not is_view:
            self.ops.append(TorchOp(str(func.overloadpacket.__name__), tensor_bytes(inputs) + tensor_bytes(outputs)))
        return out
