"""``FocalModulation``: a drop-in for the official / timm / HF transformers modulation layer."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalfast.modules.recompute_linear import norm_linear
from focalfast.ops.focal_modulation import focal_context_ref, focal_modulation

LAYOUTS = ("nhwc", "nchw")


class FocalModulation(nn.Module):
    """Focal modulation with the official parameter names (``f``, ``focal_layers.{l}.0``, ``h``,
    ``proj``, ``ln``), so the official checkpoints load as they are (see ``focalfast.convert``
    for timm and HF transformers ones).

    ``f``, the optional LayerNorm ``ln`` and ``proj`` are ordinary layers; the depthwise chain,
    GELUs, gated sum, global context, ``h`` and ``q *`` run as one op on ``backend``.

    Args:
        dim: channels C.
        focal_window, focal_level, focal_factor: level l has kernel ``focal_factor*l + focal_window``.
        bias: bias of ``f`` and ``h``.
        layout: ``"nhwc"`` (official and HF, ``[B, H, W, C]``) or ``"nchw"`` (timm, ``[B, C, H, W]``).
        backend: ``"auto" | "reference" | "triton" | "cuda"``; None follows ``focalfast.set_backend``.
        capture: keep the last forward's ``gates`` ``[B, L+1, H, W]`` and ``modulator``
            ``[B, C, H, W]`` (detached) for visualisation; off by default and free when off.
    """

    def __init__(
        self,
        dim: int,
        focal_window: int = 3,
        focal_level: int = 2,
        focal_factor: int = 2,
        bias: bool = True,
        proj_drop: float = 0.0,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
        layer_norm_eps: float = 1e-5,
        layout: str = "nhwc",
        backend: Optional[str] = None,
        capture: bool = False,
    ):
        super().__init__()
        for name, value in (("dim", dim), ("focal_window", focal_window), ("focal_level", focal_level)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not isinstance(focal_factor, int) or focal_factor < 0 or focal_factor % 2:
            raise ValueError(f"focal_factor: expected a non-negative even int (kernels stay odd), got {focal_factor!r}")
        if focal_window % 2 == 0:
            raise ValueError(f"focal_window: expected an odd kernel size, got {focal_window}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        self.dim = dim
        self.focal_window = focal_window
        self.focal_level = focal_level
        self.focal_factor = focal_factor
        self.use_postln_in_modulation = use_postln_in_modulation
        self.normalize_modulator = normalize_modulator
        self.layout = layout
        self.backend = backend
        self.capture = capture
        self.gates: Optional[Tensor] = None
        self.modulator: Optional[Tensor] = None

        self.f = nn.Linear(dim, 2 * dim + focal_level + 1, bias=bias)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.kernel_sizes = [focal_factor * level + focal_window for level in range(focal_level)]
        self.focal_layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dim, dim, kernel_size=k, padding=k // 2, groups=dim, bias=False),
                nn.GELU(),
            )
            for k in self.kernel_sizes
        )
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim, eps=layer_norm_eps)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, kernel_sizes={self.kernel_sizes}, normalize_modulator="
                f"{self.normalize_modulator}, layout={self.layout!r}, backend={self.backend!r}")

    def forward(self, x: Tensor, norm: Optional[nn.LayerNorm] = None, project: bool = True) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]`` (``[B, C, H, W]`` both ways when layout="nchw").

        ``norm``: a LayerNorm over C applied to ``x`` first, fused with ``f`` so that its output is
        not kept for backward (``focalfast.modules.recompute_linear.norm_linear``). ``project=False``
        stops before ``proj`` and its dropout (for a caller that fuses them with what follows)."""
        channel_dim = 1 if self.layout == "nchw" else 3
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[channel_dim] != self.dim:
            shape = "[B, C, H, W]" if self.layout == "nchw" else "[B, H, W, C]"
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x: expected shape {shape} with C = {self.dim} (layout={self.layout!r}), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
        if x.numel() == 0:
            raise ValueError(f"x: every dimension must be non-zero, got {tuple(x.shape)}")
        if self.layout == "nchw":
            x = x.permute(0, 2, 3, 1)
        C, L = self.dim, self.focal_level
        projected = self.f(x) if norm is None else norm_linear(x, norm, self.f)
        q, ctx, gates = torch.split(projected, (C, C, L + 1), dim=-1)
        weights = [layer[0].weight for layer in self.focal_layers]
        out = focal_modulation(q, ctx, gates, weights, self.h.weight, self.h.bias,
                               self.normalize_modulator, backend=self.backend)
        if self.capture:
            self._capture(ctx, gates, weights)
        if self.use_postln_in_modulation:
            out = self.ln(out)
        if project:
            out = self.proj_drop(self.proj(out))
        return out.permute(0, 3, 1, 2) if self.layout == "nchw" else out

    @torch.no_grad()
    def _capture(self, ctx: Tensor, gates: Tensor, weights) -> None:
        ctx_all = focal_context_ref(ctx, gates, weights, self.normalize_modulator)
        modulator = F.linear(ctx_all, self.h.weight.flatten(1), self.h.bias)
        self.gates = gates.detach().permute(0, 3, 1, 2)
        self.modulator = modulator.permute(0, 3, 1, 2)
