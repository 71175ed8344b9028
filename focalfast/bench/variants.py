"""What is timed against what: the rows ("variants") of every case and why one cannot run.

    eager     the pure-PyTorch reference (``focal_modulation_ref``), eager mode: the baseline
    compiled  the same reference under ``torch.compile`` (GPU only)
    <fused>   every fused backend of the registry (``focalfast.backends``, ``Backend.fused``):
              ``triton`` and ``cuda`` today (GPU only: their CPU test modes say nothing of speed)
    timm      timm's own model (training step only, where timm imports)
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

from focalfast import backends

FUSED = tuple(b.name for b in backends.registered() if b.fused)
VARIANTS = ("eager", "compiled") + FUSED
TRAIN_VARIANTS = VARIANTS + ("timm",)


def unavailable_reason(variant: str, device) -> Optional[str]:
    """Why ``variant`` is not benchmarked on ``device``; None if it is."""
    device = torch.device(device)
    if variant == "eager":
        return None
    if variant == "compiled":
        if device.type != "cuda":
            return ("torch.compile is benchmarked on GPUs only (on CPU it spends tens of seconds "
                    "compiling each shape, and CPU numbers are not GPU numbers)")
        reason = backends.unavailable_reason("triton", device)
        return None if reason is None else f"torch.compile generates Triton code: {reason}"
    if variant == "timm":
        try:
            import timm  # noqa: F401
        except Exception as exc:  # timm can be installed yet broken (its torchvision)
            return f"timm is not importable ({type(exc).__name__}: {exc})"
        return None
    if variant not in FUSED:
        raise ValueError(f"variant: expected one of {TRAIN_VARIANTS}, got {variant!r}")
    reason = backends.unavailable_reason(variant, device)
    if reason is not None:
        return reason
    if device.type != "cuda":
        test_mode = ", ".join(f"{k}={v}" for k, v in backends.get(variant).cpu_test_env.items())
        return (f"on CPU the {variant} backend runs only in its test mode ({test_mode}: an interpreter or "
                "a host emulation), which checks correctness, not speed: fused backends are benchmarked "
                "on GPUs only")
    try:
        backends.implementation(variant)
    except Exception as exc:
        return f"focalfast's {variant} backend does not import ({type(exc).__name__}: {exc})"
    return None


def model_unavailable_reason() -> Optional[str]:
    """Why focalfast's own FocalNet models cannot be built (None if they can)."""
    try:
        from focalfast.models import create  # noqa: F401
    except Exception as exc:
        return f"focalfast.models.create is not importable ({type(exc).__name__}: {exc})"
    return None


def allow_recompiles() -> None:
    """Each benchmarked shape is its own compiled graph: lift dynamo's per-function recompile limit."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))


@functools.lru_cache(maxsize=None)
def _compiled_reference_op() -> Callable:
    from focalfast.ops.focal_modulation import focal_modulation_ref

    allow_recompiles()
    return torch.compile(focal_modulation_ref, dynamic=False)


def op_function(variant: str) -> Callable:
    """The op of ``variant`` with the backend signature ``(q, ctx, gates, weights, h_w, h_b, norm)``."""
    if variant == "eager":
        from focalfast.ops.focal_modulation import focal_modulation_ref

        return focal_modulation_ref
    if variant == "compiled":
        return _compiled_reference_op()
    if variant in FUSED:
        return backends.implementation(variant)
    raise ValueError(f"variant: expected one of {VARIANTS} for the op, got {variant!r}")


def backend_of(variant: str) -> str:
    """The ``backend=`` of a variant's module or model: the reference for eager and compiled."""
    return backends.FALLBACK if variant in ("eager", "compiled") else variant
