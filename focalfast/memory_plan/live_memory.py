"""``LiveMemory``: the bytes of every live tensor storage, and their peak, as ops run.

A ``TorchDispatchMode`` that sees the output of every op (forward, backward, optimizer): each storage
not seen before is counted from the op that makes it until Python frees it (a weak reference on the
storage). It runs on real tensors and, inside ``FakeTensorMode``, on fake ones (no memory used), so a
full-size training step is measured on a CPU. A custom op is one dispatch, so only its outputs are
seen, unless ``bodies`` gives its body (``focalfast.memory_plan.op_bodies``), which then runs with
the mode entered again, so that it sees every storage the body makes (the fused kernels' scratch).
"""

from __future__ import annotations

import weakref
from typing import Callable, Mapping, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def allocation_bytes(nbytes: int, granularity: int) -> int:
    """``nbytes`` rounded up to a multiple of ``granularity`` (the CUDA caching allocator rounds each
    block to 512 bytes)."""
    return -(-nbytes // granularity) * granularity


class LiveMemory(TorchDispatchMode):
    """Tracks live storage bytes: ``now``, ``peak`` (since the last ``reset_peak``).

    Tensors that exist before the mode is entered (parameters, optimizer state, the batch) are
    counted through ``track``. ``granularity`` rounds every storage up (1: exact bytes).
    ``bodies``: ``{op overload: body}``, run instead of those ops as ``body(counting, *args)``, where
    ``counting`` (this mode) is to be entered around what the body's storages are made by.
    """

    def __init__(self, granularity: int = 1, bodies: Optional[Mapping[object, Callable]] = None):
        super().__init__()
        if not isinstance(granularity, int) or granularity < 1:
            raise ValueError(f"granularity: expected a positive int, got {granularity!r}")
        self.granularity = granularity
        self.bodies = dict(bodies or {})
        self.now = 0
        self.peak = 0
        self._live = {}

    def track(self, *tensors) -> None:
        """Count the storages of ``tensors`` (nested lists, dicts and None are fine) while they live."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage())

    def track_stand_ins(self, *tensors) -> None:
        """Storages that stand in for ones counted already (e.g. meta copies of an op's arguments):
        seen, so that their views add nothing, but not counted again."""
        for t in tree_flatten(tensors)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t.untyped_storage(), counted=False)

    def reset_peak(self) -> None:
        self.peak = self.now

    def _add(self, storage, counted: bool = True) -> None:
        key = id(storage)
        if key in self._live:
            return
        nbytes = allocation_bytes(storage.nbytes(), self.granularity) if counted else 0
        self._live[key] = weakref.ref(storage, lambda _, key=key, nbytes=nbytes: self._free(key, nbytes))
        self.now += nbytes
        self.peak = max(self.peak, self.now)

    def _free(self, key: int, nbytes: int) -> None:
        del self._live[key]
        self.now -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        body = self.bodies.get(func)
        if body is None:
            out = func(*args, **(kwargs or {}))
        else:
            out = body(self, *args, **(kwargs or {}))
        self.track(out)
        return out
