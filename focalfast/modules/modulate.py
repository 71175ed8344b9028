"""The fused op as module forwards call it: TorchScript, torch.fx, torch.export and meta safe.

``modulate`` is what every focal-modulation forward in focalfast calls (``FocalModulation`` and
the forwards ``focalfast.patch`` gives HF transformers, timm and official modules):

    eager, torch.compile, torch.export   ``focalfast.focal_modulation`` on the chosen backend
    meta tensors                         the reference (no data: only shapes and dtypes matter)
    torch.jit.script                     the reference, compiled with the model (TorchScript
                                         cannot call the Python dispatcher)
    torch.fx.symbolic_trace              one ``call_function`` node: each calling module
                                         registers both names with ``torch.fx.wrap``

``check_tokens`` is the modules' input check; forwards call it only when not scripting, and it
too is one FX node, so a traced graph still checks its input when it runs.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref


def modulate(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: List[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor],
    normalize_modulator: bool,
    backend: Optional[str],
) -> Tensor:
    """``q * h(ctx_all)`` ``[B, H, W, C]`` from views of ``f``'s output and the module's own
    parameters (no copies): the arguments of ``focalfast.focal_modulation``."""
    if torch.jit.is_scripting():
        return focal_modulation_ref(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator)
    if q.device.type == "meta":
        backend = "reference"
    return focal_modulation(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator, backend=backend)


def check_tokens(x: Tensor, dim: int, channel_dim: int) -> None:
    """``x`` must be a 4-D floating-point tensor with ``dim`` channels at ``channel_dim`` (3 for
    ``[B, H, W, C]``, 1 for ``[B, C, H, W]``) and no empty dimension; ValueError / TypeError
    naming ``x`` otherwise. Each dimension is checked on its own, so torch.export keeps the
    batch and image sizes symbolic and independent."""
    shape = "[B, C, H, W]" if channel_dim == 1 else "[B, H, W, C]"
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[channel_dim] != dim:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape {shape} with C = {dim}, got {got}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    for size in x.shape:
        if size == 0:
            raise ValueError(f"x: every dimension must be non-zero, got {tuple(x.shape)} for {shape}")

