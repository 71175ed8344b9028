"""One forward and backward of the CUDA backend at a few small shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck  python -m focalfast.ops.cuda.sanitize
    compute-sanitizer --tool racecheck python -m focalfast.ops.cuda.sanitize

The shapes cover the scalar path (odd pixel stride, C not a multiple of 8, a 1x1 image) and the
16-byte vector path (contiguous inputs, C % 8 == 0), fp32 and bf16; the fused sweep with 8-, 16- and
32-channel chunks and widths that end in a partial 8-pixel strip (racecheck: its shared-memory rings,
read with 16-byte loads), a tall image in too few blocks (the sweep in bands of rows), and the
level-at-a-time fallback of an image too wide for the sweep. Exits non-zero on a non-finite result.
"""

import sys

import torch

from focalfast.ops.cuda import focal_modulation as cuda_op
from focalfast.ops.cuda.focal_modulation import focal_modulation_cuda
from focalfast.testing import random_focal_inputs

# (B, H, W, C, kernel sizes, dtype, normalize_modulator, contiguous q/ctx, sweep chunks)
SHAPES = (
    (2, 7, 9, 20, (3, 5), torch.float32, True, False, (8,)),
    (1, 1, 1, 5, (3,), torch.bfloat16, False, False, (8,)),
    (2, 12, 10, 64, (3, 5, 7), torch.bfloat16, False, True, (8,)),
    (2, 12, 10, 40, (3, 5, 7), torch.float32, True, False, (32,)),
    (2, 9, 21, 48, (3, 5), torch.bfloat16, True, False, (16,)),  # 16-channel chunks, a partial 8-pixel strip
    (1, 40, 10, 16, (3, 5), torch.float32, True, False, (8,)),  # 2 blocks: bands of 12 and 24 rows
    (1, 3, 1500, 8, (3, 5, 7), torch.float32, False, False, (8,)),  # too wide: the fallback
)


def run_once(B, H, W, C, kernel_sizes, dtype, normalize_modulator, contiguous, chunks) -> bool:
    cuda_op.SWEEP_CHUNKS = chunks
    generator = torch.Generator().manual_seed(0)
    inputs = random_focal_inputs(B, H, W, C, kernel_sizes, dtype=dtype, device="cuda", generator=generator)
    if contiguous:
        inputs["q"], inputs["ctx"] = inputs["q"].contiguous(), inputs["ctx"].contiguous()
    leaves = [inputs["q"], inputs["ctx"], inputs["gates"], *inputs["weights"], inputs["h_weight"], inputs["h_bias"]]
    for t in leaves:
        t.requires_grad_(True)
    out = focal_modulation_cuda(**inputs, normalize_modulator=normalize_modulator)
    grads = torch.autograd.grad(out, leaves, torch.randn_like(out))
    torch.cuda.synchronize()
    return all(bool(torch.isfinite(t).all()) for t in (out, *grads))


def main() -> int:
    ok, chunks = True, cuda_op.SWEEP_CHUNKS
    try:
        for shape in SHAPES:
            finite = run_once(*shape)
            print(f"{'ok' if finite else 'NON-FINITE'}: {shape}", flush=True)
            ok &= finite
    finally:
        cuda_op.SWEEP_CHUNKS = chunks
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
