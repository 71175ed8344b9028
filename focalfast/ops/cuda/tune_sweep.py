"""Time the CUDA sweep over schedules: channels per block, rows per band, pixels per backward item (a GPU tool).

    python -m focalfast.ops.cuda.tune_sweep --shapes T.s1,T.s1.lrf,T.s3 --dtype bf16 --out tune_sweep.json

For each op shape (names of ``focalfast.bench.op_shapes("full")``) and each candidate schedule, times the
CUDA backend's forward (context_fwd and its epilogue) and backward (context_bwd, its epilogues and
reductions) and prints them fastest first beside the default schedule, which ``focal_modulation.py``
chooses for the most blocks per SM its shared memory allows. The candidates: every chunk of
``SWEEP_CHUNKS`` whose blocks fit, bands of H/2 and H/4 rows, and for the backward 4- and 8-pixel items
(``SWEEP_BWD_STRIP``: twice the threads on the same rings, or half). The static cost report counts
instructions, not the latency that a block's few warps leave exposed; this measures what they cost.
Every candidate's outputs are compared with the default's (``schedule_search``): one that computes
something else is marked ``MISMATCH``, never ranked.

Without a GPU the host path runs the ``tiny`` shape, to test the tool itself.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import List, Optional

import torch

from focalfast.bench import schedule_search
from focalfast.ops.cuda import focal_modulation as cuda_op
from focalfast.testing import random_focal_inputs

OVERRIDES = ("SWEEP_CHUNKS", "SWEEP_BAND_ROWS", "SWEEP_BWD_STRIP", "SWEEP_BWD_STACK")


@contextlib.contextmanager
def schedule_overrides(option: dict):
    """``focal_modulation``'s schedule constants set to ``option``'s values, restored after."""
    unknown = set(option) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"option: unknown schedule settings {sorted(unknown)}; expected some of {OVERRIDES}")
    saved = {name: getattr(cuda_op, name) for name in option}
    try:
        for name, value in option.items():
            setattr(cuda_op, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(cuda_op, name, value)


def resolved(shape, backward: bool, device, option: dict) -> Optional[tuple]:
    """``(chunk, band_rows, strip, stack)`` the op runs under ``option`` (strip and stack: context_bwd's pixels per
    item and images per band, 0 in the forward), or None where no chunk's block fits (the level-at-a-time kernels
    would run instead)."""
    B, H, W, C, ks = shape.batch, shape.height, shape.width, shape.channels, list(shape.kernel_sizes)
    with schedule_overrides(option):
        kernels = cuda_op._Kernels(device)
        chunk = cuda_op._sweep_chunk(kernels, ks, B, H, W, C, backward, device)
        if chunk is None:
            return None
        band_rows = cuda_op._sweep_band_rows(ks, B, H, C, chunk, backward, device)
        strip = cuda_op.SWEEP_BWD_STRIP or kernels.ext.context_bwd_strip(W, chunk) if backward else 0
        stack = cuda_op._sweep_stack(ks, B, H, C, chunk, band_rows, device) if backward else 0
        return chunk, band_rows, strip, stack


def candidates(shape, backward: bool, device, limit: Optional[int] = None) -> List[dict]:
    """Schedule overrides to try, the default (``{}``) first, each a distinct schedule that fits."""
    found, seen = [{}], {resolved(shape, backward, device, {})}
    options = [dict(SWEEP_CHUNKS=(chunk,)) for chunk in cuda_op.SWEEP_CHUNKS]
    options += [dict(SWEEP_BAND_ROWS=-(-shape.height // parts)) for parts in (2, 4)]
    if backward:
        options += [dict(SWEEP_BWD_STRIP=strip) for strip in (4, 8)]
        options += [dict(SWEEP_BWD_STACK=stack) for stack in (1, 2, 4, 8)]
    for option in options:
        schedule = resolved(shape, backward, device, option)
        if schedule is not None and schedule not in seen:
            seen.add(schedule)
            found.append(option)
    return found[:limit] if limit else found


def describe(schedule: tuple, default: bool) -> str:
    chunk, band_rows, strip, stack = schedule
    text = f"chunk {chunk} band {band_rows} rows" + (f" strip {strip}" if strip else "")
    text += f" stack {stack}" if stack > 1 else ""
    return text + (" (default)" if default else "")


def tune_shape(name: str, shape, dtype, device, backward: bool, warmup: int, rounds: int, deadline: float,
               limit: Optional[int] = None, progress=None) -> List[dict]:
    """Rows of ``schedule_search.time_candidates`` for one shape and pass."""
    inputs = random_focal_inputs(shape.batch, shape.height, shape.width, shape.channels, shape.kernel_sizes,
                                 dtype=dtype, device=device, generator=torch.Generator().manual_seed(0))
    inputs.pop("normalize_modulator", None)
    out, pooled_mean = cuda_op._forward(**inputs, normalize_modulator=True)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)

    def runner(option):
        def run():
            with schedule_overrides(option):
                if backward:
                    return cuda_op._backward(grad_out, **inputs, pooled_mean=pooled_mean, normalize_modulator=True)
                return list(cuda_op._forward(**inputs, normalize_modulator=True))
        return run

    found = [(describe(resolved(shape, backward, device, option), not option), option, runner(option))
             for option in candidates(shape, backward, device, limit)]
    shape_args = [shape.batch, shape.height, shape.width, shape.channels, list(shape.kernel_sizes)]
    return schedule_search.time_candidates(name, shape_args, dtype, backward, found, device, warmup, rounds,
                                           deadline, progress)


def main(argv=None) -> int:
    from focalfast.bench import op_shapes
    from focalfast.ops.cuda import extension

    parser = argparse.ArgumentParser(prog="python -m focalfast.ops.cuda.tune_sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    schedule_search.add_search_arguments(parser, "T.s1,T.s1.lrf,T.s3", 240.0)
    args = parser.parse_args(argv)
    reason = extension.unavailable_reason()
    if reason:
        parser.error(f"the CUDA extension is unavailable: {reason}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    return schedule_search.run_search(parser, args, tune_shape, device, op_shapes("full" if on_gpu else "tiny"),
                                      args.shapes if on_gpu else "tiny", {})


if __name__ == "__main__":
    sys.exit(main())
