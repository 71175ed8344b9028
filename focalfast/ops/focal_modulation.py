"""The fused focal-modulation op: input checks, the pure-PyTorch reference and the dispatcher.

The op (``docs/design.md``, "The op boundary") maps

    q, ctx      [B, H, W, C]      channels-last tokens (views of ``f``'s output are fine)
    gates       [B, H, W, L + 1]  raw gate logits, one scalar per pixel and level
    weights     L tensors [C, 1, k_l, k_l]  depthwise kernels, odd k_l
    h_weight    [C, C]            (``[C, C, 1, 1]`` accepted)
    h_bias      [C] or None

to ``q * h(ctx_all)`` with

    z_0 = ctx,  z_{l+1} = GELU(dwconv_{k_l}(z_l))          (zero padding k_l // 2)
    ctx_all = sum_l gates[l] * z_{l+1} + gates[L] * GELU(mean_{H,W} z_L)
    ctx_all /= L + 1                                       (if normalize_modulator)
    h(ctx_all) = ctx_all @ h_weight.T + h_bias

``focal_modulation_ref`` is the oracle of every test and the baseline of every benchmark.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from focalfast import backends
from focalfast.ops.checks import check_float_tensors_alike, to_autocast_dtype


def check_focal_modulation_inputs(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: Sequence[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor],
) -> Tensor:
    """Validate the op's arguments; return ``h_weight`` as ``[C, C]``.

    Raises TypeError for non-tensors and non-float dtypes, ValueError for shapes, empty
    dimensions and mixed devices or dtypes. Each message names the argument and what was expected.
    """
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise TypeError("weights: expected a non-empty list of depthwise kernels [C, 1, k, k], "
                        f"got {type(weights).__name__}")
    named = [("q", q), ("ctx", ctx), ("gates", gates), ("h_weight", h_weight)]
    named += [(f"weights[{i}]", w) for i, w in enumerate(weights)]
    if h_bias is not None:
        named.append(("h_bias", h_bias))
    check_float_tensors_alike(named)

    if q.dim() != 4:
        raise ValueError(f"q: expected shape [B, H, W, C] (4 dims), got {tuple(q.shape)}")
    B, H, W, C = q.shape
    # one dimension at a time: min(B, H, W, C) would compare (and so tie) symbolic sizes under torch.export
    if B == 0 or H == 0 or W == 0 or C == 0:
        raise ValueError(f"q: every dimension of [B, H, W, C] must be non-zero, got {tuple(q.shape)}")
    L = len(weights)
    if tuple(ctx.shape) != (B, H, W, C):
        raise ValueError(f"ctx: expected shape [B, H, W, C] = {(B, H, W, C)} like q, got {tuple(ctx.shape)}")
    if tuple(gates.shape) != (B, H, W, L + 1):
        raise ValueError(f"gates: expected shape [B, H, W, L + 1] = {(B, H, W, L + 1)} for "
                         f"L = {L} focal levels, got {tuple(gates.shape)}")
    for i, w in enumerate(weights):
        k = w.shape[-1] if w.dim() == 4 else -1
        if w.dim() != 4 or tuple(w.shape) != (C, 1, k, k):
            raise ValueError(f"weights[{i}]: expected a depthwise kernel [C, 1, k, k] with C = {C}, "
                             f"got {tuple(w.shape)}")
        if k % 2 == 0:
            raise ValueError(f"weights[{i}]: kernel size must be odd (zero padding k // 2 keeps "
                             f"H and W), got k = {k}")
    if h_weight.dim() == 4 and tuple(h_weight.shape[2:]) == (1, 1):
        h_weight = h_weight.flatten(1)
    if tuple(h_weight.shape) != (C, C):
        raise ValueError(f"h_weight: expected shape [C, C] = {(C, C)} (or [C, C, 1, 1]), "
                         f"got {tuple(h_weight.shape)}")
    if h_bias is not None and tuple(h_bias.shape) != (C,):
        raise ValueError(f"h_bias: expected shape [C] = {(C,)}, got {tuple(h_bias.shape)}")
    return h_weight


def focal_context_ref(
    ctx: Tensor, gates: Tensor, weights: List[Tensor], normalize_modulator: bool = False
) -> Tensor:
    """``ctx_all`` ``[B, H, W, C]``: the gated sum of the focal levels and the global level.

    TorchScript-compatible (any sequence of weights works eagerly)."""
    C = ctx.shape[-1]
    L = len(weights)
    z = ctx.permute(0, 3, 1, 2)
    g = gates.permute(0, 3, 1, 2)
    ctx_all: Optional[Tensor] = None
    for level, w in enumerate(weights):
        z = F.gelu(F.conv2d(z, w, padding=w.shape[-1] // 2, groups=C))
        gated = z * g[:, level : level + 1]
        ctx_all = gated if ctx_all is None else ctx_all + gated
    assert ctx_all is not None, "weights: expected at least one focal level"
    z_global = F.gelu(z.mean((2, 3), keepdim=True))
    ctx_all = ctx_all + z_global * g[:, L:]
    if normalize_modulator:
        ctx_all = ctx_all / (L + 1)
    return ctx_all.permute(0, 2, 3, 1)


def focal_modulation_ref(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: List[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor] = None,
    normalize_modulator: bool = False,
) -> Tensor:
    """Pure-PyTorch focal modulation, ``[B, H, W, C]`` in and out; any device and float dtype.

    Written the way the official FocalNet computes it (NCHW depthwise convs, exact GELU),
    so that it is the same function as the public implementations; TorchScript-compatible.
    """
    C = ctx.shape[-1]
    ctx_all = focal_context_ref(ctx, gates, weights, normalize_modulator)
    return q * F.linear(ctx_all, h_weight.reshape(C, C), h_bias)


def focal_modulation(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: Sequence[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor] = None,
    normalize_modulator: bool = False,
    backend: Optional[str] = None,
) -> Tensor:
    """``q * h(ctx_all)`` of FocalNet's modulation, ``[B, H, W, C]``, on the chosen backend.

    The dispatcher: the one place that casts for autocast, validates the arguments and picks the
    backend (``focalfast.backends.select``); backend functions receive ``h_weight`` as ``[C, C]``
    and a contiguous ``h_bias``.

    ``backend`` is ``"auto"``, ``"reference"``, ``"triton"`` or ``"cuda"``; ``None`` takes the
    process-wide default (``focalfast.set_backend``). An unavailable backend raises
    ``focalfast.BackendUnavailableError`` saying why; a configuration the fused kernels do not
    handle (float64, more than 4 levels, kernels over 13) runs the reference under ``"auto"`` and
    raises ValueError for an explicit fused backend. Under ``torch.autocast`` every float tensor
    (float64 aside) is cast to the autocast dtype first.
    """
    q, ctx, gates, weights, h_weight, h_bias = to_autocast_dtype(q, ctx, gates, weights, h_weight, h_bias)
    h_weight = check_focal_modulation_inputs(q, ctx, gates, weights, h_weight, h_bias)
    config = backends.OpConfig("focal_modulation", q.dtype, tuple(w.shape[-1] for w in weights), q.shape[-1])
    implementation = backends.select(backend, config, q.device)
    if h_bias is not None:
        h_bias = h_bias.contiguous()
    return implementation(q, ctx, gates, list(weights), h_weight, h_bias, bool(normalize_modulator))
