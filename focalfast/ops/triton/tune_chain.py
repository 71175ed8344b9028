"""Time the Triton level-chain kernels over schedules: tiles, warps and bands (a GPU tool).

    python -m focalfast.ops.triton.tune_chain --shapes T.s1,T.s3 --dtype bf16 --out tune.json

For each op shape (names of ``focalfast.bench.op_shapes("full")``) and each candidate schedule
of ``chain_schedule`` (R x WT x BC tile, warps, rows per band), times ``focal_context_fwd`` and
``focal_context_bwd`` alone (``focalfast.timing``: CUDA events, median after warm-up) and prints
them fastest first beside the default schedule. Every candidate's outputs are compared with the
default schedule's: a schedule that computes something else is marked ``MISMATCH``, never ranked.
Each candidate is a fresh compile (seconds each); ``--budget`` stops the search in time.

On CPU (``TRITON_INTERPRET=1``) only the ``tiny`` shape runs, to test the tool itself.
"""

import argparse
import sys
from typing import List, Optional

import torch
import triton

from focalfast.bench import schedule_search
from focalfast.ops.sweep_geometry import sweep_halo
from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count
from focalfast.ops.triton.focal_context_bwd import focal_context_bwd
from focalfast.ops.triton.focal_context_fwd import focal_context_fwd
from focalfast.testing import random_focal_inputs


def candidates(H: int, W: int, C: int, kernel_sizes, backward: bool, batch: int, sms: Optional[int],
               limit: Optional[int] = None) -> List[dict]:
    """Schedule overrides to try, the default (``{}``) first, each a distinct schedule."""
    default = chain_schedule(H, W, C, kernel_sizes, backward, interpret=False, batch=batch, sm_count=sms)
    lag = sweep_halo(kernel_sizes, backward)
    np2 = triton.next_power_of_2
    found, seen = [{}], {default}
    tiles = []
    for bc in (16, 32, 64):
        for values in (1024, 2048, 4096):
            wt = min(np2(W), 64)
            rows = max(1, min(np2(H + lag), values // (wt * bc)))
            tiles.append((rows, wt, bc))
    options = [dict(tile=t) for t in tiles]
    options += [dict(num_warps=w) for w in (4, 8, 16)]
    options += [dict(band_rows=max(1, rows)) for rows in (triton.cdiv(H, 2), triton.cdiv(H, 4), triton.cdiv(H, 8))]
    for option in options:
        sched = chain_schedule(H, W, C, kernel_sizes, backward, interpret=False, batch=batch, sm_count=sms,
                               **option)
        if sched not in seen:
            seen.add(sched)
            found.append(option)
    return found[:limit] if limit else found


def _inputs(shape, dtype, device, seed: int = 0) -> dict:
    """Kernel arguments at ``shape`` (a ``bench.OpShape``): ctx and gates as views of f's output."""
    gen = torch.Generator().manual_seed(seed)
    inp = random_focal_inputs(shape.batch, shape.height, shape.width, shape.channels, shape.kernel_sizes,
                              dtype=dtype, device=device, generator=gen)
    ctx, gates = inp["ctx"], inp["gates"]
    B, H, W, C = ctx.shape
    stride = ctx.stride(2)
    d_ctx_all = (torch.randn(B, H, W, C, generator=gen) * 0.1).to(device=device, dtype=dtype)
    mean = torch.randn(B, C, generator=gen).to(device) * 0.1
    return dict(ctx=ctx, ctx_stride=stride, gates=gates, gates_stride=stride,
                weights=[w.contiguous() for w in inp["weights"]], d_ctx_all=d_ctx_all,
                d_glob_part=torch.randn(B, 1, C, generator=gen).to(device), mean=mean,
                glob=torch.nn.functional.gelu(mean))


def _runner(args: dict, backward: bool, interpret: bool, schedule: dict):
    common = (args["ctx"], args["ctx_stride"], args["gates"], args["gates_stride"], args["weights"])
    if backward:
        def run():
            dctx, dgates, dweights, ctx_local = focal_context_bwd(
                *common, args["d_ctx_all"], args["d_glob_part"], args["mean"], args["glob"], interpret,
                schedule=schedule)
            return [dctx, dgates, *dweights, ctx_local]
    else:
        def run():
            return list(focal_context_fwd(*common, interpret, schedule=schedule))
    return run


def _describe(option: dict, sched) -> str:
    text = f"R{sched.rows_per_step} WT{sched.tile_width} BC{sched.channel_block} w{sched.num_warps}"
    if sched.bands > 1:
        text += f" bands {sched.bands}x{sched.band_rows}"
    return text + ("" if option else " (default)")


def tune_shape(name: str, shape, dtype, device, backward: bool, warmup: int, rounds: int,
               deadline: float, limit: Optional[int] = None, progress=None) -> List[dict]:
    """Rows of ``schedule_search.time_candidates`` for one shape and direction."""
    interpret = device.type != "cuda"
    sms = sm_count(device)
    args = _inputs(shape, dtype, device)
    H, W, C, ks = shape.height, shape.width, shape.channels, shape.kernel_sizes
    found = []
    for option in candidates(H, W, C, ks, backward, shape.batch, sms, limit):
        sched = chain_schedule(H, W, C, ks, backward, interpret=interpret, batch=shape.batch, sm_count=sms,
                               **option)
        found.append((_describe(option, sched), option, _runner(args, backward, interpret, option)))
    return schedule_search.time_candidates(name, [shape.batch, H, W, C, list(ks)], dtype, backward, found, device,
                                           warmup, rounds, deadline, progress)


def main(argv=None) -> int:
    from focalfast import backends
    from focalfast.bench import op_shapes

    parser = argparse.ArgumentParser(prog="python -m focalfast.ops.triton.tune_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    schedule_search.add_search_arguments(parser, "T.s1,T.s3", 240.0)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not backends.triton_interpreter_on():
        parser.error("needs a CUDA GPU (or TRITON_INTERPRET=1 for the tiny CPU check)")
    on_gpu = device.type == "cuda"
    return schedule_search.run_search(parser, args, tune_shape, device, op_shapes("full" if on_gpu else "tiny"),
                                      args.shapes if on_gpu else "tiny", dict(triton=triton.__version__))


if __name__ == "__main__":
    sys.exit(main())
