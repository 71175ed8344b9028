"""The shapes of the report: FocalNet-T stages, focal levels, dtypes and input layouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import torch

STAGES: Dict[int, Tuple[int, int, int]] = {1: (56, 56, 96), 2: (28, 28, 192), 3: (14, 14, 384), 4: (7, 7, 768)}
LEVELS: Dict[str, Tuple[int, ...]] = {"srf": (3, 5), "lrf": (3, 5, 7)}
DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
LAYOUTS = ("views", "contiguous")


@dataclass(frozen=True)
class Case:
    """One op shape: FocalNet-T ``stage`` (or explicit ``size``), ``levels`` name or kernel sizes."""

    stage: int
    levels: str
    dtype: str
    layout: str
    batch: int = 128
    size: Tuple[int, int, int] = ()  # (H, W, C); empty: the stage's

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.size or STAGES[self.stage]

    @property
    def kernel_sizes(self) -> Tuple[int, ...]:
        return LEVELS[self.levels] if self.levels in LEVELS else tuple(int(k) for k in self.levels.split(","))

    @property
    def elements(self) -> int:
        """Output elements B * H * W * C: the unit of every per-element count."""
        H, W, C = self.shape
        return self.batch * H * W * C

    def describe(self) -> str:
        H, W, C = self.shape
        return f"B={self.batch} {H}x{W} C={C} k={self.kernel_sizes} {self.dtype} {self.layout}"


def op_inputs(case: Case, device: str) -> dict:
    """Uninitialised op arguments (``q, ctx, gates, weights, h_weight, h_bias``) for ``case``.

    ``layout="views"``: q, ctx and gates are slices of one ``[B, H, W, 2C + L + 1]`` tensor, as
    the module passes ``f``'s output; ``"contiguous"``: three separate tensors.
    """
    if case.layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {case.layout!r}")
    H, W, C = case.shape
    ks = case.kernel_sizes
    L = len(ks)
    dtype = DTYPES[case.dtype]

    def empty(*shape):
        return torch.empty(*shape, dtype=dtype, device=device)

    if case.layout == "views":
        q, ctx, gates = torch.split(empty(case.batch, H, W, 2 * C + L + 1), (C, C, L + 1), dim=-1)
    else:
        q, ctx, gates = empty(case.batch, H, W, C), empty(case.batch, H, W, C), empty(case.batch, H, W, L + 1)
    return dict(q=q, ctx=ctx, gates=gates, weights=[empty(C, 1, k, k) for k in ks], h_weight=empty(C, C),
                h_bias=empty(C))
