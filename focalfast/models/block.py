"""``FocalNetBlock``: focal modulation and an MLP, each in a (pre- or post-norm) residual branch."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from focalfast.models.drop_path import DropPath
from focalfast.models.mlp import Mlp
from focalfast.modules import recompute_linear
from focalfast.modules.focal_modulation import FocalModulation


class FocalNetBlock(nn.Module):
    """One FocalNet block on channels-last tokens ``[B, H, W, C]``.

    Pre-norm (default):  ``x += gamma_1 * modulation(norm1(x))``, ``x += gamma_2 * mlp(norm2(x))``.
    Post-norm (``use_postln``): ``x += gamma_1 * norm1(modulation(x))``, ``x += gamma_2 * norm2(mlp(x))``.
    ``gamma_*`` exist only with ``use_layerscale``; each branch goes through drop path.

    Kept for backward (pre-norm, bf16 autocast, fused op; bytes per pixel): the float32 input x
    (4C) and both LayerNorms' statistics (16), f's output (4C + 2L + 2), proj's input (2C) and fc1's
    output (8C): 18C + 2L + 18, against 34C + 2L + 18 for autograd on the same layers. Backward
    recomputes the LayerNorm outputs, the GELU and, from x and proj's input, the float32 residual
    ``x1`` between the branches (proj's C x C GEMM: about 8% of the block's forward GEMM FLOPs)
    (``recompute_linear``); drop path scales a branch inside the residual addition. The plain
    path (dropout in training, or a float16/bfloat16 residual stream) keeps ``x1`` too: 22C + 2L + 18.
    """

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        use_layerscale: bool = False,
        layerscale_value: float = 1e-4,
        use_postln: bool = False,
        use_postln_in_modulation: bool = False,
        normalize_modulator: bool = False,
        layer_norm_eps: float = 1e-5,
        backend: Optional[str] = None,
    ):
        super().__init__()
        self.use_postln = use_postln
        self.norm1 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.modulation = FocalModulation(
            dim,
            focal_window=focal_window,
            focal_level=focal_level,
            proj_drop=drop,
            use_postln_in_modulation=use_postln_in_modulation,
            normalize_modulator=normalize_modulator,
            layer_norm_eps=layer_norm_eps,
            layout="nhwc",
            backend=backend,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if use_layerscale:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layerscale_value)))
        else:
            self.register_parameter("gamma_1", None)
            self.register_parameter("gamma_2", None)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        if self.use_postln:
            x = self.drop_path.add_to(x, self.norm1(self.modulation(x)), self.gamma_1)
            return self.drop_path.add_to(x, self.norm2(self.mlp.forward_with_norm(x)), self.gamma_2)
        dropout = self.training and (self.modulation.proj_drop.p > 0 or self.mlp.drop.p > 0)
        if dropout or x.dtype in (torch.float16, torch.bfloat16):  # the plain residual path
            x = self.drop_path.add_to(x, self.modulation.forward_normed(x, self.norm1), self.gamma_1)
            return self.drop_path.add_to(x, self.mlp.forward_with_norm(x, self.norm2), self.gamma_2)
        modulated = self.modulation.forward_normed(x, self.norm1, project=False)
        x1, branch = recompute_linear.residual_mlp(
            x, modulated, self.modulation.proj, self.drop_path.branch_scale(modulated, self.gamma_1), self.norm2,
            self.mlp.fc1, self.mlp.fc2, self.mlp.act.approximate, keep_hidden=not self.mlp.recompute_hidden)
        return self.drop_path.add_to(x1, branch, self.gamma_2)
