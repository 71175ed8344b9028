"""``SavedTensors``: what autograd keeps for the backward pass, counted by unique storage."""

from __future__ import annotations

import weakref

import torch


class SavedTensors(torch.autograd.graph.saved_tensors_hooks):
    """While active, every tensor autograd saves is recorded; ``nbytes`` is the size of their
    distinct storages (a view and its base, or a tensor saved twice, count once).

    Parameters are excluded (``exclude``): they are state, not activations. Works on real and fake
    tensors. Tensors saved inside an inner ``saved_tensors_hooks`` (e.g. a checkpointed region) are
    what that inner hook decides, and not seen here.
    """

    def __init__(self, exclude=()):
        self._exclude = {id(t.untyped_storage()) for t in exclude}
        self._storages = {}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if id(storage) not in self._exclude:  # weak: counting must not keep anything alive
            self._storages[id(storage)] = (weakref.ref(storage), storage.nbytes())
        return t

    @property
    def nbytes(self) -> int:
        """Bytes of the distinct saved storages that are still alive (backward releases them)."""
        return sum(nbytes for ref, nbytes in self._storages.values() if ref() is not None)
