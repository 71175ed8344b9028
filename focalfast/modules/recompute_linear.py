"""Linear layers that keep less for backward by recomputing their cheap input there.

    norm_linear(x, norm, linear)      linear(norm(x)), keeping x (and the LayerNorm's per-token mean
                                      and 1/std) instead of also the normalized x
    mlp(x, norm, fc1, fc2)            fc2(GELU(fc1(norm(x)))), keeping x and fc1's output h, not
                                      norm(x) nor GELU(h); keep_hidden=False: x only (fc1 recomputed)
    residual_mlp(x, o, proj, ...)     x1 = x + scale * proj(o) and mlp(x1, ...), keeping x and o, not
                                      x1: backward recomputes proj (a C x C GEMM) and x1

Autograd on ``linear(norm(x))`` keeps ``x`` for the LayerNorm and ``norm(x)`` (cast to the
autocast dtype) for the linear; ``norm_linear`` recomputes ``norm(x)`` in backward, an elementwise
pass. Likewise ``mlp`` recomputes the GELU. No GEMM is recomputed (but fc1's with
``keep_hidden=False`` and proj's in ``residual_mlp``), and the gradients are
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


def _normalized(x: Tensor, ln_weight, ln_bias, eps: float):
    """``(y, mean, rstd)`` of ``layer_norm(x)`` over the last dimension."""
    return torch.native_layer_norm(x, (x.shape[-1],), ln_weight, ln_bias, eps)


def _norm_backward(ctx, grad_y: Tensor, x: Tensor, ln_weight, ln_bias, mean, rstd):
    """``(grad_x, grad_ln_weight, grad_ln_bias)``; ``x, ln_weight, ln_bias`` are inputs 0 to 2 of ``ctx``."""
    return torch.ops.aten.native_layer_norm_backward(grad_y.to(x.dtype), x, (x.shape[-1],), mean, rstd, ln_weight,
                                                     ln_bias, list(ctx.needs_input_grad[:3]))


class _NormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, weight, bias):
        y, mean, rstd = _normalized(x, ln_weight, ln_bias, eps)
        ctx.save_for_backward(x, ln_weight, ln_bias, mean, rstd, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return F.linear(y.to(weight.dtype), weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, ln_weight, ln_bias, mean, rstd, weight = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):  # backward may run inside autocast
            y = _normalized(x, ln_weight, ln_bias, ctx.eps)[0]
            grad_y, grad_weight, grad_bias = _linear_backward(grad_out.to(weight.dtype), y.to(weight.dtype),
                                                              weight, ctx.has_bias)
            grad_x, grad_ln_weight, grad_ln_bias = _norm_backward(ctx, grad_y, x, ln_weight, ln_bias, mean, rstd)
        return grad_x, grad_ln_weight, grad_ln_bias, None, grad_weight, grad_bias


def _mlp_backward(grad_out: Tensor, y_cast: Tensor, hidden: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
                  w2: Tensor, has_b2: bool, approximate: str):
    """``(grad_y_cast, grad_w1, grad_b1, grad_w2, grad_b2)`` of ``fc2(GELU(fc1(y_cast)))``; fc1's
    output ``hidden`` is recomputed when None."""
    if hidden is None:
        hidden = F.linear(y_cast, w1, b1)
    grad_a, grad_w2, grad_b2 = _linear_backward(grad_out.to(w2.dtype), F.gelu(hidden, approximate=approximate),
                                                w2, has_b2)
    grad_hidden = torch.ops.aten.gelu_backward(grad_a, hidden, approximate=approximate)
    grad_y, grad_w1, grad_b1 = _linear_backward(grad_hidden, y_cast, w1, b1 is not None)
    return grad_y, grad_w1, grad_b1, grad_w2, grad_b2


def _mlp_forward(y_cast: Tensor, w1, b1, w2, b2, approximate: str):
    """``(fc2(GELU(h)), h = fc1(y_cast))``."""
    hidden = F.linear(y_cast, w1, b1)
    return F.linear(F.gelu(hidden, approximate=approximate), w2, b2), hidden


class _Mlp(torch.autograd.Function):
    """``fc2(GELU(fc1(cast(norm(x)))))`` (norm optional); keeps ``x`` (or its cast without a norm) and,
    with ``keep_hidden``, fc1's output; recomputes the rest (fc1's GEMM too without ``keep_hidden``)."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, w1, b1, w2, b2, approximate, keep_hidden):
        normalized = ln_weight is not None
        mean = rstd = None
        if normalized:
            y, mean, rstd = _normalized(x, ln_weight, ln_bias, eps)
        y_cast = (y if normalized else x).to(w1.dtype)
        out, hidden = _mlp_forward(y_cast, w1, b1, w2, b2, approximate)
        ctx.save_for_backward(x if normalized else y_cast, ln_weight, ln_bias, mean, rstd, w1, b1, w2,
                              hidden if keep_hidden else None)
        ctx.options = (normalized, eps, approximate, b2 is not None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, ln_weight, ln_bias, mean, rstd, w1, b1, w2, hidden = ctx.saved_tensors
        normalized, eps, approximate, has_b2 = ctx.options
        with torch.autocast(x.device.type, enabled=False):
            y_cast = (_normalized(x, ln_weight, ln_bias, eps)[0] if normalized else x).to(w1.dtype)
            grad_y, grad_w1, grad_b1, grad_w2, grad_b2 = _mlp_backward(grad_out, y_cast, hidden, w1, b1, w2,
                                                                        has_b2, approximate)
            if normalized:
                grad_x, grad_ln_weight, grad_ln_bias = _norm_backward(ctx, grad_y, x, ln_weight, ln_bias, mean, rstd)
            else:
                grad_x, grad_ln_weight, grad_ln_bias = grad_y, None, None
        return grad_x, grad_ln_weight, grad_ln_bias, None, grad_w1, grad_b1, grad_w2, grad_b2, None, None


def _residual(x: Tensor, branch: Tensor, scale: Optional[Tensor]) -> Tensor:
    return x + branch if scale is None else torch.addcmul(x, branch, scale)


class _ResidualMlp(torch.autograd.Function):
    """``x1 = x + scale * proj(o)`` and ``fc2(GELU(fc1(cast(norm(x1)))))``; keeps ``x``, ``o`` and
    (with ``keep_hidden``) fc1's output, not ``x1``: backward recomputes proj (a GEMM) and x1."""

    @staticmethod
    def forward(ctx, x, ln_weight, ln_bias, eps, w1, b1, w2, b2, approximate, keep_hidden, o, proj_weight,
                proj_bias, scale):
        x1 = _residual(x, F.linear(o, proj_weight, proj_bias), scale)
        y, mean, rstd = _normalized(x1, ln_weight, ln_bias, eps)
        out, hidden = _mlp_forward(y.to(w1.dtype), w1, b1, w2, b2, approximate)
        ctx.save_for_backward(x, ln_weight, ln_bias, mean, rstd, w1, b1, w2, hidden if keep_hidden else None, o,
                              proj_weight, proj_bias, scale)
        ctx.options = (eps, approximate, b2 is not None)
        return x1, out

    @staticmethod
    def backward(ctx, grad_x1, grad_out):
        x, ln_weight, ln_bias, mean, rstd, w1, b1, w2, hidden, o, proj_weight, proj_bias, scale = ctx.saved_tensors
        eps, approximate, has_b2 = ctx.options
        with torch.autocast(x.device.type, enabled=False):
            projected = F.linear(o, proj_weight, proj_bias)
            x1 = _residual(x, projected, scale)
            y_cast = _normalized(x1, ln_weight, ln_bias, eps)[0].to(w1.dtype)
            grad_y, grad_w1, grad_b1, grad_w2, grad_b2 = _mlp_backward(grad_out, y_cast, hidden, w1, b1, w2,
                                                                        has_b2, approximate)
            grad_x, grad_ln_weight, grad_ln_bias = torch.ops.aten.native_layer_norm_backward(
                grad_y.to(x1.dtype), x1, (x1.shape[-1],), mean, rstd, ln_weight, ln_bias,
                [True, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
            if grad_x1 is not None:
                grad_x = grad_x + grad_x1
            grad_projected = grad_x if scale is None else grad_x * scale
            grad_scale = None
            if scale is not None and ctx.needs_input_grad[13]:
                grad_scale = (grad_x * projected).sum_to_size(scale.shape).to(scale.dtype)
            grad_o, grad_proj_weight, grad_proj_bias = _linear_backward(
                grad_projected.to(o.dtype), o, proj_weight, proj_bias is not None)
        return (grad_x, grad_ln_weight, grad_ln_bias, None, grad_w1, grad_b1, grad_w2, grad_b2, None, None,
                grad_o, grad_proj_weight, grad_proj_bias, grad_scale)


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    return torch.get_autocast_dtype(t.device.type) if torch.is_autocast_enabled(t.device.type) else None


def _norm_input(x: Tensor):
    """``(x, dtype of the linear)``: under autocast a LayerNorm runs in float32 (as on a GPU) and the
    linear in the autocast dtype; without autocast both in ``x``'s dtype."""
    dtype = _autocast_dtype(x)
    if dtype is None:
        return x, x.dtype
    return (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x), dtype


def _cast(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return None if t is None else t.to(dtype)


def norm_linear(x: Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> Tensor:
    """``linear(norm(x))`` ``[..., C_in]`` -> ``[..., C_out]`` keeping ``x`` but not ``norm(x)`` for backward."""
    if not torch.is_grad_enabled():
        return linear(norm(x))
    x, dtype = _norm_input(x)
    with torch.autocast(x.device.type, enabled=False):
        return _NormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight.to(dtype),
                                 _cast(linear.bias, dtype))


def mlp(x: Tensor, norm: Optional[nn.LayerNorm], fc1: nn.Linear, fc2: nn.Linear, approximate: str = "none",
        keep_hidden: bool = True) -> Tensor:
    """``fc2(GELU(fc1(norm(x))))`` ``[..., C]`` -> ``[..., C]`` (``norm`` None: no LayerNorm) keeping
    ``x`` and, with ``keep_hidden``, fc1's output; without it backward recomputes fc1 (a GEMM) too."""
    if not torch.is_grad_enabled():
        h = fc1(x if norm is None else norm(x))
        return fc2(F.gelu(h, approximate=approximate))
    if norm is None:
        dtype = _autocast_dtype(x) or x.dtype
    else:
        x, dtype = _norm_input(x)
    with torch.autocast(x.device.type, enabled=False):
        return _Mlp.apply(x, None if norm is None else norm.weight, None if norm is None else norm.bias,
                          None if norm is None else norm.eps, fc1.weight.to(dtype), _cast(fc1.bias, dtype),
                          fc2.weight.to(dtype), _cast(fc2.bias, dtype), approximate, keep_hidden)


def residual_mlp(x: Tensor, o: Tensor, proj: nn.Linear, scale: Optional[Tensor], norm: nn.LayerNorm,
                 fc1: nn.Linear, fc2: nn.Linear, approximate: str = "none", keep_hidden: bool = True):
    """``(x1, fc2(GELU(fc1(norm(x1)))))`` with ``x1 = x + scale * proj(o)`` (``scale`` None: 1), all
    ``[..., C]``: a pre-norm block's residual after its first branch and its MLP branch. Keeps ``x``,
    ``o`` and (with ``keep_hidden``) fc1's output, not ``x1``: backward recomputes proj and x1."""
    if not torch.is_grad_enabled():
        x1 = _residual(x, proj(o), scale)
        return x1, mlp(x1, norm, fc1, fc2, approximate)
    dtype = _autocast_dtype(x) or x.dtype
    with torch.autocast(x.device.type, enabled=False):
        return _ResidualMlp.apply(x, norm.weight, norm.bias, norm.eps, fc1.weight.to(dtype), _cast(fc1.bias, dtype),
                                  fc2.weight.to(dtype), _cast(fc2.bias, dtype), approximate, keep_hidden,
                                  o.to(dtype), proj.weight.to(dtype), _cast(proj.bias, dtype), scale)
