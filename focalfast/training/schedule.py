"""The learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math
from typing import Optional


def learning_rate(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(warmup_steps: Optional[int], total_steps: int) -> int:
    """``warmup_steps``, or 5% of ``total_steps`` (at least 1) when None."""
    return warmup_steps if warmup_steps is not None else max(1, round(0.05 * total_steps))
