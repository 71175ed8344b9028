"""Activation checkpointing of a training run: which activations are recomputed in backward.

Modes: ``none``; ``blocks`` (every block); ``mlp`` (each block's MLP only, keeping the fused
modulation's saved tensors); ``stage`` (whole stages). ``blocks`` works on every model here; the
finer modes come from ``focalfast.models.set_checkpointing(model, mode)`` where the models provide it.
"""

from __future__ import annotations

import functools

from focalfast.training.config import TrainConfigError


def set_grad_checkpointing(model, enabled: bool = True) -> None:
    """Recompute each block's activations in backward: the model's own ``set_grad_checkpointing``
    if it has one, else every module in an ``nn.ModuleList`` named ``blocks`` is wrapped."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(enabled)
        return
    blocks = [block for name, module in model.named_modules()
              if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList) for block in module]
    if enabled and not blocks:
        raise TrainConfigError(f"checkpointing: {type(model).__name__} has no blocks to checkpoint")
    for block in blocks:
        block.__dict__.pop("forward", None)  # back to the class's forward
        if enabled:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def apply_checkpointing(model, mode: str) -> None:
    """Set ``model``'s activation checkpointing to ``mode`` (one of ``CHECKPOINTING_CHOICES``)."""
    from focalfast import models

    set_checkpointing = getattr(models, "set_checkpointing", None)
    if set_checkpointing is not None:
        set_checkpointing(model, mode)
    elif mode in ("none", "blocks"):
        set_grad_checkpointing(model, mode == "blocks")
    else:
        raise TrainConfigError(f"checkpointing: mode {mode!r} needs focalfast.models.set_checkpointing, "
                               "which this version does not have; use 'blocks' or 'none'")
