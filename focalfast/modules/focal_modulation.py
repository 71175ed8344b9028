"""``FocalModulation``: a drop-in for the official / timm / HF transformers modulation layer."""

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from focalfast import backends
from focalfast.modules.modulate import check_tokens, modulate
from focalfast.modules.recompute_linear import norm_linear
from focalfast.ops.focal_modulation import focal_context_ref

LAYOUTS = ("nhwc", "nchw")

torch.fx.wrap("check_tokens")
torch.fx.wrap("modulate")


class FocalModulation(nn.Module):
    """Focal modulation with the official parameter names (``f``, ``focal_layers.{l}.0``, ``h``,
    ``proj``, ``ln``), so the official checkpoints load as they are (see ``focalfast.convert``
    for timm and HF transformers ones).

    ``f``, the optional LayerNorm ``ln`` and ``proj`` are ordinary layers; the depthwise chain,
    GELUs, gated sum, global context, ``h`` and ``q *`` run as one op on ``backend``. The forward
    scripts (``torch.jit.script`` runs the reference op), FX-traces, exports with dynamic batch and
    image sizes, compiles with ``fullgraph=True`` and runs on meta tensors
    (``focalfast.modules.modulate``). ``focalfast.patch`` gives official modules this forward.

    Args:
        dim: channels C.
        focal_window, focal_level, focal_factor: level l has kernel ``focal_factor*l + focal_window``.
        bias: bias of ``f`` and ``h``.
        layout: ``"nhwc"`` (official and HF, ``[B, H, W, C]``) or ``"nchw"`` (timm, ``[B, C, H, W]``).
        backend: ``"auto" | "reference" | "triton" | "cuda"``; None follows ``focalfast.set_backend``.
        capture: keep the last forward's ``gates`` ``[B, L+1, H, W]`` and ``modulator``
            ``[B, C, H, W]`` (detached) for visualisation; off by default and free when off.
    """

    gates: Optional[Tensor]
    modulator: Optional[Tensor]

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
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not _is_int(focal_factor) or focal_factor < 0 or focal_factor % 2:
            raise ValueError(f"focal_factor: expected a non-negative even int (kernels stay odd), got {focal_factor!r}")
        if focal_window % 2 == 0:
            raise ValueError(f"focal_window: expected an odd kernel size, got {focal_window}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
        backends.check_choice(backend)
        self.dim = dim
        self.focal_window = focal_window
        self.focal_level = focal_level
        self.focal_factor = focal_factor
        self.use_postln_in_modulation = use_postln_in_modulation
        self.normalize_modulator = normalize_modulator
        self.layout = layout
        self.backend = backend
        self.capture = capture
        self.gates = None
        self.modulator = None

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

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]`` (``[B, C, H, W]`` both ways when layout="nchw")."""
        nchw = self.layout == "nchw"
        if not torch.jit.is_scripting():
            check_tokens(x, self.dim, 1 if nchw else 3)
        if nchw:
            x = x.permute(0, 2, 3, 1)
        out = self.proj_drop(self.proj(self._modulate(self.f(x))))
        return out.permute(0, 3, 1, 2) if nchw else out

    @torch.jit.unused
    def forward_normed(self, x: Tensor, norm: nn.LayerNorm, project: bool = True) -> Tensor:
        """``forward(norm(x))`` for ``[B, H, W, C]`` tokens, with ``norm`` fused into ``f`` so that its
        output is not kept for backward (``focalfast.modules.recompute_linear.norm_linear``).
        ``project=False`` stops before ``proj`` and its dropout (for a caller that fuses them with
        what follows). Used by focalfast's own FocalNet blocks."""
        check_tokens(x, self.dim, 3)
        out = self._modulate(norm_linear(x, norm, self.f))
        return self.proj_drop(self.proj(out)) if project else out

    def _modulate(self, projected: Tensor) -> Tensor:
        """``f``'s output ``[B, H, W, 2C + L + 1]`` -> the modulated tokens before ``proj``."""
        C, L = self.dim, self.focal_level
        q, ctx, gates = torch.split(projected, [C, C, L + 1], dim=-1)
        weights: List[Tensor] = []
        for layer in self.focal_layers:
            weights.append(layer[0].weight)
        out = modulate(q, ctx, gates, weights, self.h.weight, self.h.bias, self.normalize_modulator, self.backend)
        if not torch.jit.is_scripting():
            if self.capture:
                self._capture(ctx, gates, weights)
        if hasattr(self, "ln"):  # resolved when scripting: official modules have ln only with the flag
            if self.use_postln_in_modulation:
                out = self.ln(out)
        return out

    @torch.jit.unused
    @torch.no_grad()
    def _capture(self, ctx: Tensor, gates: Tensor, weights: List[Tensor]) -> None:
        ctx_all = focal_context_ref(ctx, gates, weights, self.normalize_modulator)
        modulator = F.linear(ctx_all, self.h.weight.flatten(1), self.h.bias)
        self.gates = gates.detach().permute(0, 3, 1, 2)
        self.modulator = modulator.permute(0, 3, 1, 2)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
