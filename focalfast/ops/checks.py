"""Argument handling shared by the ops: checks with errors that name the argument, and autocast."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
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


def to_autocast_dtype(*args):
    """``args`` with every float tensor (also inside lists) cast to the autocast dtype when autocast
    is on for the first tensor's device, as autocast does for the convs and linears an op replaces.

    float64 tensors, non-float tensors and non-tensors are returned as they are, so that the op's
    checks still name them.
    """
    first = next((a for a in args if isinstance(a, Tensor)), None)
    if first is None:
        return args
    # autocast has no state for some device types (meta): asking it would raise. Dynamo traces only
    # tensors of real devices, and cannot trace is_autocast_available before torch 2.13 (a graph break).
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(first.device.type):
        return args
    if not torch.is_autocast_enabled(first.device.type):
        return args
    dtype = torch.get_autocast_dtype(first.device.type)

    def cast(a):
        if isinstance(a, (list, tuple)):
            return [cast(x) for x in a]
        if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64:
            return a.to(dtype)
        return a

    return tuple(cast(a) for a in args)
