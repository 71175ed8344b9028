"""Helpers shared by the tests, benchmarks and the demo: random op inputs and the error metric."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor


def rel_err(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; any NaN or inf in ``out`` gives inf, so it never passes."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def random_focal_inputs(
    batch: int,
    height: int,
    width: int,
    channels: int,
    kernel_sizes: Sequence[int] = (3, 5),
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    bias: bool = True,
    requires_grad: bool = False,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Fresh random arguments of the fused op, as keyword arguments of ``focal_modulation``.

    q, ctx and gates are views of one ``[B, H, W, 2C + L + 1]`` tensor, as ``f``'s output is in
    the module (take gradients with ``torch.autograd.grad``). Scales keep every level O(1).
    """
    C, L = channels, len(kernel_sizes)

    def randn(*shape, scale=1.0):
        t = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    y = randn(batch, height, width, 2 * C + L + 1)
    q, ctx, gates = torch.split(y, (C, C, L + 1), dim=-1)
    weights = [randn(C, 1, k, k, scale=1.0 / k) for k in kernel_sizes]
    h_weight = randn(C, C, scale=C ** -0.5)
    h_bias = randn(C, scale=0.1) if bias else None
    return dict(q=q, ctx=ctx, gates=gates, weights=weights, h_weight=h_weight, h_bias=h_bias)
