"""``cuda_autocast_policy()``: CPU autocast that casts like CUDA autocast for the ops that differ.

The planner runs on a CPU but plans for a GPU. CPU and CUDA autocast agree on what these models
run in low precision (convolutions, linear layers, matmuls) and on what they leave alone (GELU,
means, additions), with one exception that changes the dtype of the residual stream: CUDA runs
``layer_norm`` in float32 (a bf16 input gives a float32 output), CPU keeps the input's dtype.
Inside this context the CPU autocast kernel of ``aten::layer_norm`` does what the CUDA one does.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _to_float32(t):
    return t.float() if isinstance(t, torch.Tensor) and t.dtype in _LOW_PRECISION else t


def _layer_norm_in_float32(input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
        return torch.ops.aten.layer_norm(_to_float32(input), normalized_shape, _to_float32(weight),
                                         _to_float32(bias), eps, cudnn_enable)


@contextlib.contextmanager
def cuda_autocast_policy():
    """While active, ``torch.autocast("cpu", ...)`` runs ``layer_norm`` in float32, as CUDA autocast does."""
    library = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():  # "overriding a previously registered kernel": intended
            warnings.simplefilter("ignore")
            library.impl("layer_norm", _layer_norm_in_float32, "AutocastCPU")
        yield
    finally:
        library._destroy()
