"""A FocalNet-T (``focalnet_tiny_srf``) training step, and training memory.

``test_train_step``: forward, cross-entropy, backward and AdamW on every backend and on timm's
model; bf16 is mixed precision (autocast). On a GPU, ``extra_info`` holds images/s and the
step's peak allocated memory (``peak_memory_bytes``) per backend and resolution. The target:
fused >= 1.4x timm's eager images/s with <= 0.6x its peak memory.

``test_max_resolution`` (GPU): the largest resolution whose training step stays under
``FOCALFAST_MEMORY_CAP_GIB`` (default 16), eager reference against the fused backends, then a
timed step at that resolution.
"""

import os

import pytest
import torch

from focalfast import bench

DEVICE = bench.default_device()
SCOPE = bench.pytest_scope(DEVICE)
DTYPES = ("fp32", "bf16") if DEVICE.type == "cuda" else ("fp32",)
SIZES = {f"{r}px-B{b}": (r, b) for r, b in bench.train_shapes(SCOPE)}
# torch.compile of a whole training step takes minutes: only at the first (main) size.
CASES = [(size, dtype, variant)
         for i, size in enumerate(SIZES) for dtype in DTYPES for variant in bench.TRAIN_VARIANTS
         if variant != "compiled" or i == 0]
MEMORY_CAP = int(float(os.environ.get("FOCALFAST_MEMORY_CAP_GIB", "16")) * 2**30)


@pytest.mark.slow
@pytest.mark.parametrize("size,dtype,variant", CASES, ids=["-".join(c) for c in CASES])
def test_train_step(run_workload, skip_unless_available, size, dtype, variant):
    skip_unless_available(variant, needs_model=True)
    resolution, batch = SIZES[size]
    run_workload(bench.train_workload(variant, resolution, batch, bench.DTYPES[dtype], DEVICE))


@pytest.mark.parametrize("variant", ("eager",) + bench.FUSED)
def test_max_resolution(run_workload, skip_unless_available, benchmark, variant):
    if DEVICE.type != "cuda":
        pytest.skip("needs a CUDA GPU: training memory is read from torch.cuda.max_memory_allocated")
    skip_unless_available(variant, needs_model=True)
    found = bench.max_resolution(variant, MEMORY_CAP, bench.HIGH_RES_BATCH, torch.bfloat16, DEVICE)
    benchmark.extra_info.update(max_resolution=found["resolution"], memory_cap_bytes=MEMORY_CAP,
                                probes=found["probes"])
    if found["resolution"] is None:
        pytest.skip(f"no training step fits under {MEMORY_CAP / 2**30:.1f} GiB, not even at 224 px")
    run_workload(bench.train_workload(variant, found["resolution"], bench.HIGH_RES_BATCH, torch.bfloat16, DEVICE))
