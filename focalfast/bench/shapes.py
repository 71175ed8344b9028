"""The benchmarked shapes: FocalNet stage shapes of the op, training-step sizes, dtypes and device."""

from __future__ import annotations

import os

import torch

from focalfast.roofline import OpShape


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


STAGES = {
    "T": ((96, 56), (192, 28), (384, 14), (768, 7)),
    "B": ((128, 56), (256, 28), (512, 14), (1024, 7)),
}
SRF = (3, 5)  # focal_level 2 (the *_srf models)
LRF = (3, 5, 7)  # focal_level 3 (the *_lrf models)
HIGH_RESOLUTIONS = (384, 512, 768, 1024)
STAGE_BATCH = 128  # at 224: fills an H100
HIGH_RES_BATCH = 16
TINY_SHAPE = OpShape(2, 16, 16, 32, SRF)


def stage_shape(model: str, stage: int, resolution: int = 224, batch: int = STAGE_BATCH,
                kernel_sizes=SRF) -> OpShape:
    """The op's shape in stage ``stage`` (1-4) of FocalNet-``model`` at ``resolution``."""
    channels, side = STAGES[model][stage - 1]
    side = side * resolution // 224
    return OpShape(batch, side, side, channels, tuple(kernel_sizes))


def op_shapes(scope: str) -> dict:
    """Named op shapes: ``tiny`` (CPU), ``quick`` (two stage shapes) or ``full``.

    Keys: ``T.s1`` is FocalNet-T/S stage 1 at 224 (batch 128), ``T.s1@512`` the same stage at
    512x512 input (batch 16), ``T.s1.lrf`` with three levels (kernels 3, 5, 7).
    """
    if scope == "tiny":
        return {"tiny": TINY_SHAPE}
    shapes = {"T.s1": stage_shape("T", 1), "T.s3": stage_shape("T", 3)}
    if scope == "quick":
        return shapes
    if scope != "full":
        raise ValueError(f"scope: expected 'tiny', 'quick' or 'full', got {scope!r}")
    for model in STAGES:
        for stage in (1, 2, 3, 4):
            shapes[f"{model}.s{stage}"] = stage_shape(model, stage)
    for resolution in HIGH_RESOLUTIONS:
        shapes[f"T.s1@{resolution}"] = stage_shape("T", 1, resolution, HIGH_RES_BATCH)
    shapes["T.s1.lrf"] = stage_shape("T", 1, kernel_sizes=LRF)
    return shapes


def train_shapes(scope: str) -> list:
    """``(resolution, batch)`` pairs of the training-step benchmark."""
    if scope == "tiny":
        return [(64, 2)]
    if scope == "quick":
        return [(224, STAGE_BATCH)]
    return [(224, STAGE_BATCH)] + [(r, HIGH_RES_BATCH) for r in (224,) + HIGH_RESOLUTIONS]


def pytest_scope(device: torch.device) -> str:
    """Scope of the pytest benchmarks: ``tiny`` on CPU; on a GPU ``FOCALFAST_BENCH_SCOPE``, ``quick``
    (about 10 minutes, most of it torch.compile) by default or ``full`` (over an hour)."""
    if device.type != "cuda":
        return "tiny"
    return os.environ.get("FOCALFAST_BENCH_SCOPE", "quick")
