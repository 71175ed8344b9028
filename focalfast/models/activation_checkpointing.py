"""``set_checkpointing(model, mode)``: which activations a model recomputes in its backward pass.

Modes:
    none    keep every activation (the default)
    mlp     the MLPs keep only their input and recompute fc1 (and the LayerNorm and GELU) in
            backward: in a FocalNet block the largest activation (fc1's output, 8C bytes per pixel
            in bf16) for a third of the block's forward GEMM FLOPs; the modulation, whose fused op
            keeps little, is not recomputed
    blocks  recompute each block: keep only the blocks' inputs
    stage   recompute each stage: keep only the stages' inputs (a stage's activations are live
            while its backward runs)

Blocks are the members of ``nn.ModuleList``s named ``blocks``; stages are the modules that hold them;
MLPs are ``focalfast.models.mlp.Mlp`` modules (FocalNet's). The state dict is unchanged by every mode.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint

from focalfast.models.mlp import Mlp

CHECKPOINTING_MODES = ("none", "mlp", "blocks", "stage")


def _blocks_and_stages(model: nn.Module):
    blocks, stages = [], []
    for module in model.modules():
        children = getattr(module, "blocks", None)
        if isinstance(children, nn.ModuleList) and len(children):
            stages.append(module)
            blocks.extend(children)
    return blocks, stages


def _recompute_forward(module: nn.Module, enabled: bool) -> None:
    module.__dict__.pop("forward", None)  # back to the class's forward
    if enabled:
        module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


def set_checkpointing(model: nn.Module, mode: str) -> None:
    """Set ``model``'s activation checkpointing to ``mode`` (see the module docstring); replaces
    any earlier mode. Raises ValueError for an unknown mode or a model without blocks."""
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"mode: expected one of {CHECKPOINTING_MODES}, got {mode!r}")
    blocks, stages = _blocks_and_stages(model)
    mlps = [module for module in model.modules() if isinstance(module, Mlp)]
    if mode != "none" and not (mlps if mode == "mlp" else blocks):
        what = "FocalNet MLPs" if mode == "mlp" else "blocks"
        raise ValueError(f"mode={mode!r}: {type(model).__name__} has no {what} to checkpoint")
    for mlp in mlps:
        mlp.recompute_hidden = mode == "mlp"
    for block in blocks:
        _recompute_forward(block, mode == "blocks")
    for stage in stages:
        _recompute_forward(stage, mode == "stage")
