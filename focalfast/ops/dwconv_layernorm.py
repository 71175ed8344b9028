"""ConvNeXt's "depthwise conv then LayerNorm" as one op: reference and dispatch.

    x_nhwc     [B, H, W, C]   channels-last (any strides)
    conv_weight [C, 1, k, k]  depthwise kernel, odd k (ConvNeXt: 7), zero padding k // 2
    conv_bias  [C]
    ln_weight, ln_bias [C]    LayerNorm over C with ``eps``

    y = LayerNorm_C(dwconv(x_nhwc) + conv_bias)       -> [B, H, W, C]

Backends: those whose ``focalfast.backends`` record lists a ``dwconv_layernorm`` op: ``reference``
(PyTorch, any device) and ``triton`` (with autograd; C up to 4096). ``auto`` takes Triton on a GPU
when it is installed, else the reference; there is no CUDA C++ version, so ``cuda`` raises
``BackendUnavailableError``.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from focalfast import backends
from focalfast.ops.checks import check_float_tensors_alike, to_autocast_dtype


def check_dwconv_layernorm_inputs(x_nhwc: Tensor, conv_weight: Tensor, conv_bias: Tensor, ln_weight: Tensor,
                                  ln_bias: Tensor, eps: float) -> None:
    """TypeError for non-tensors or non-float dtypes, ValueError for shapes, devices, dtypes and eps."""
    x = x_nhwc
    named = [("x_nhwc", x), ("conv_weight", conv_weight), ("conv_bias", conv_bias),
             ("ln_weight", ln_weight), ("ln_bias", ln_bias)]
    check_float_tensors_alike(named)
    if x.dim() != 4 or min(x.shape) == 0:
        raise ValueError(f"x_nhwc: expected a non-empty channels-last [B, H, W, C] tensor, got {tuple(x.shape)}")
    C = x.shape[-1]
    k = conv_weight.shape[-1] if conv_weight.dim() == 4 else -1
    if conv_weight.dim() != 4 or tuple(conv_weight.shape) != (C, 1, k, k) or k % 2 == 0:
        raise ValueError(f"conv_weight: expected a depthwise kernel [C, 1, k, k] with C = {C} and odd k, "
                         f"got {tuple(conv_weight.shape)}")
    for name, t in named[2:]:
        if tuple(t.shape) != (C,):
            raise ValueError(f"{name}: expected shape [C] = {(C,)}, got {tuple(t.shape)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps: expected a positive float, got {eps!r}")


def dwconv_layernorm_ref(x_nhwc: Tensor, conv_weight: Tensor, conv_bias: Tensor, ln_weight: Tensor,
                         ln_bias: Tensor, eps: float = 1e-6) -> Tensor:
    """Pure-PyTorch ``LayerNorm(dwconv(x))``, ``[B, H, W, C]`` in and out."""
    C, k = x_nhwc.shape[-1], conv_weight.shape[-1]
    y = F.conv2d(x_nhwc.permute(0, 3, 1, 2), conv_weight, conv_bias, padding=k // 2, groups=C)
    return F.layer_norm(y.permute(0, 2, 3, 1), (C,), ln_weight, ln_bias, eps)


def dwconv_layernorm(x_nhwc: Tensor, conv_weight: Tensor, conv_bias: Tensor, ln_weight: Tensor,
                     ln_bias: Tensor, eps: float = 1e-6, backend: Optional[str] = None) -> Tensor:
    """``LayerNorm(dwconv(x) + bias)`` on channels-last ``[B, H, W, C]`` -> ``[B, H, W, C]``.

    ``backend``: ``"auto"``, ``"reference"``, ``"triton"`` or ``"cuda"``; None follows
    ``focalfast.set_backend``. An unavailable backend raises ``BackendUnavailableError``. Under
    ``torch.autocast`` the float tensors are cast to the autocast dtype first. This dispatcher is the
    one place that casts and validates; backend functions receive checked, cast tensors.
    """
    x_nhwc, conv_weight, conv_bias, ln_weight, ln_bias = to_autocast_dtype(x_nhwc, conv_weight, conv_bias,
                                                                           ln_weight, ln_bias)
    check_dwconv_layernorm_inputs(x_nhwc, conv_weight, conv_bias, ln_weight, ln_bias, eps)
    config = backends.OpConfig("dwconv_layernorm", x_nhwc.dtype, (conv_weight.shape[-1],), x_nhwc.shape[-1])
    implementation = backends.select(backend, config, x_nhwc.device)
    return implementation(x_nhwc, conv_weight, conv_bias, ln_weight, ln_bias, float(eps))
