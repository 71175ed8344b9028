"""The forwards ``focalfast.patch`` gives HF transformers, timm and official focal modulations.

Each reads the host module's own submodules and parameters under the host's names and calls them
as the host does (``projection_in`` / ``f``, the post-norm, ``projection_out`` / ``proj`` and
dropout stay module calls, so hooks and adapters on them apply); only the depthwise chain, GELUs,
gated sum, global context, ``h`` and ``q *`` become one fused op (``modulate``). Official
modules get ``FocalModulation.forward``, which already uses the official names.

    host              input           f           h, focal_layers    post-norm                 proj
    HF transformers   [B, H, W, C]    projection_in  projection_context  layernorm (if the flag)   projection_out
    timm              [B, C, H, W]    f (1x1 conv)   h                   norm (Identity if off)    proj (1x1 conv)
"""

from typing import List

import torch
from torch import Tensor

from focalfast.modules.focal_modulation import FocalModulation
from focalfast.modules.modulate import check_tokens, modulate

torch.fx.wrap("check_tokens")
torch.fx.wrap("modulate")


class HFModulationForward:
    """Forward of a patched ``transformers`` ``FocalNetModulation``: ``[B, H, W, C]`` in and out."""

    def forward(self, hidden_state: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_tokens(hidden_state, self.dim, 3)
        C, L = self.dim, self.focal_level
        q, ctx, gates = torch.split(self.projection_in(hidden_state), [C, C, L + 1], dim=-1)
        weights: List[Tensor] = []
        for layer in self.focal_layers:
            weights.append(layer[0].weight)
        out = modulate(q, ctx, gates, weights, self.projection_context.weight, self.projection_context.bias,
                       self.normalize_modulator, self.backend)
        if hasattr(self, "layernorm"):  # resolved when scripting: HF has it only with the flag
            if self.use_post_layernorm_in_modulation:
                out = self.layernorm(out)
        return self.projection_dropout(self.projection_out(out))


class OfficialModulationForward:
    """Forward of a patched official ``FocalModulation``: focalfast's, which has the official names
    (``patch`` adds the ``layout``, ``capture`` and ``backend`` attributes it reads)."""

    forward = FocalModulation.forward
    _modulate = FocalModulation._modulate
    _capture = FocalModulation._capture


class TimmModulationForward:
    """Forward of a patched ``timm`` ``FocalModulation``: ``[B, C, H, W]`` in and out.

    ``f``'s output is read through a channels-last view (in place where the input is
    channels-last, else the fused backends copy it once); the result goes back as an NCHW view.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            check_tokens(x, self.dim, 1)
        C, L = self.dim, self.focal_level
        q, ctx, gates = torch.split(self.f(x).permute(0, 2, 3, 1), [C, C, L + 1], dim=-1)
        weights: List[Tensor] = []
        for layer in self.focal_layers:
            weights.append(layer[0].weight)
        out = modulate(q, ctx, gates, weights, self.h.weight, self.h.bias, self.normalize_modulator, self.backend)
        return self.proj_drop(self.proj(self.norm(out.permute(0, 3, 1, 2))))
