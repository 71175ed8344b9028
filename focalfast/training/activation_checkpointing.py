"""Activation checkpointing of a training run: which activations are recomputed in backward.

Modes (``focalfast.models.CHECKPOINTING_MODES``): ``none``; ``mlp`` (each block's MLP only, keeping
the fused modulation's saved tensors); ``blocks`` (every block); ``stage`` (whole stages). focalfast's
models take them from ``focalfast.models.set_checkpointing``; a model with its own
``set_grad_checkpointing`` (timm's) takes ``none`` and ``blocks`` from it.
"""

from __future__ import annotations

from focalfast.training.config import TrainConfigError


def apply_checkpointing(model, mode: str) -> None:
    """Set ``model``'s activation checkpointing to ``mode``; TrainConfigError where it has no such mode."""
    from focalfast.models import set_checkpointing

    if mode in ("none", "blocks") and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(mode == "blocks")
        return
    try:
        set_checkpointing(model, mode)
    except ValueError as exc:
        raise TrainConfigError(f"checkpointing: {exc}") from None
