"""Linear layers that keep less for backward by recomputing their cheap input there.

    norm_linear(x, norm, linear)      linear(norm(x)), keeping x (and the LayerNorm's per-token mean
                                      and 1/std) instead of also the normalized x
    gelu_linear(h, linear)            linear(GELU(h)), keeping h instead of also GELU(h)

Autograd on ``linear(norm(x))`` keeps ``x`` for the LayerNorm and ``norm(x)`` (cast to the
autocast dtype) for the linear; ``norm_linear`` recomputes ``norm(x)`` in backward, an elementwise
pass. Likewise ``gelu_linear`` recomputes the GELU. No GEMM is recomputed, and the gradients are
those of autograd on the same ops: the same kernels in the same precisions. Under autocast the
linear runs in the autocast dtype and the LayerNorm in float32, as autocast runs them on a GPU.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _linear_backward(grad_out: Tensor, inputs: Tensor, weight: Tensor, has_bias: bool):
    """``(grad_inputs, grad_weight, grad_bias or None)`` of ``F.linear(inputs, weight, bias)``."""
    g = _flat(grad_out)
    grad_weight = g.t().mm(_flat(inputs))
    return grad_out.matmul(weight), grad_weight, (g.sum(0) if has_bias else None)


class _NormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, weight, bias):
        y, mean, rstd = torch.native_layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)
        ctx.save_for_backward(x, ln_weight, ln_bias, mean, rstd, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return F.linear(y.to(weight.dtype), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, ln_weight, ln_bias, mean, rstd, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):  # backward may run inside autocast
            y = torch.native_layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, ctx.eps)[0]
            grad_y, grad_weight, grad_bias = _linear_backward(grad_out.to(weight.dtype), y.to(weight.dtype),
                                                              weight, ctx.has_bias)
            grad_x, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
                grad_y.to(x.dtype), x, (x.shape[-1],), mean, rstd, ln_weight, ln_bias, list(ctx.needs_input_grad[:3]))
        return grad_x, grad_ln_weight, grad_ln_bias, None, grad_weight, grad_bias


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, approximate):
        ctx.save_for_backward(h, weight)
        ctx.approximate, ctx.has_bias = approximate, bias is not None
        return F.linear(F.gelu(h, approximate=approximate), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        h, weight = ctx.saved_tensors
        with torch.autocast(h.device.type, enabled=False):
            grad_a, grad_weight, grad_bias = _linear_backward(grad_out.to(weight.dtype),
                                                              F.gelu(h, approximate=ctx.approximate), weight,
                                                              ctx.has_bias)
            grad_h = torch.ops.aten.gelu_backward(grad_a, h, approximate=ctx.approximate)
        return grad_h, grad_weight, grad_bias, None


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(t.device.type) if torch.is_autocast_enabled(t.device.type) else None


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` ``[..., C_in]`` -> ``[..., C_out]`` keeping ``x`` but not ``norm(x)`` for backward."""
    if not torch.is_grad_enabled():
        return linear(norm(x))
    dtype = _autocast_dtype(x)
    if dtype is not None and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # autocast runs layer_norm in float32 on a GPU
    dtype = dtype or x.dtype
    with torch.autocast(x.device.type, enabled=False):
        return _NormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight.to(dtype),
                                 _cast(linear.bias, dtype))


def gelu_linear(h: Tensor, linear: nn.Linear, approximate: str = "none") -> Tensor:
    """``linear(GELU(h))`` ``[..., C_in]`` -> ``[..., C_out]`` keeping ``h`` but not ``GELU(h)`` for backward."""
    if not torch.is_grad_enabled():
        return linear(F.gelu(h, approximate=approximate))
    dtype = _autocast_dtype(h) or h.dtype
    with torch.autocast(h.device.type, enabled=False):
        return _GeluLinear.apply(h.to(dtype), linear.weight.to(dtype), _cast(linear.bias, dtype), approximate)
