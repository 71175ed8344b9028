"""Run PyTorch code for its shapes only: operators produce uninitialised tensors, and are recorded.

``ShapeOnly`` is a dispatch mode for CPU code whose values do not matter (the launch code of a
backend whose kernels are not run): every operator that computes (not a view, not a factory) is
recorded with its bytes (``TorchOp``) and returns ``torch.empty_strided`` of the shapes and strides
its meta-tensor version gives, without computing; in-place operators return their argument.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

from focalfast.static_cost.torch_ops import TorchOp, tensor_bytes


def _meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
    return x


def _empty_like_meta(x):
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype)
    return x


class ShapeOnly(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        returns = func._schema.returns
        view = any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        if not inputs or view or func is torch.ops.aten._unsafe_view.default:
            return func(*args, **kwargs)  # factories and views: cheap, and views must alias
        out_meta = func(*tree_map(_meta, args), **tree_map(_meta, kwargs))
        written = [a for a in func._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        if written:  # in place / out=: the written argument is the result
            out = kwargs.get(written[0].name, args[0] if args else None)
        else:
            out = tree_map(_empty_like_meta, out_meta)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.ops.append(TorchOp(str(func.overloadpacket.__name__), tensor_bytes(inputs) + tensor_bytes(outputs)))
        return out
