"""Argument checks shared by the ops: clear errors that name the argument."""

from __future__ import annotations

from typing import Sequence, Tuple

from torch import Tensor


def check_float_tensors_alike(named: Sequence[Tuple[str, Tensor]]) -> None:
    """Each ``(name, tensor)`` must be a floating-point tensor with the first one's device and dtype.

    Raises TypeError for a non-tensor or a non-float dtype, ValueError for a device or dtype that
    differs from the first tensor's.
    """
    for name, t in named:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: is on {t.device} but {first_name} is on {first.device}; "
                             "all tensors of the op must be on one device")
        if t.dtype != first.dtype:
            raise ValueError(f"{name}: has dtype {t.dtype} but {first_name} has {first.dtype}; "
                             "all tensors of the op must share one dtype")
