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
import json
import sys
import time
from typing import List, Optional

import torch
import triton

from focalfast import timing
from focalfast.ops.sweep_geometry import sweep_halo
from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count
from focalfast.ops.triton.focal_context_bwd import focal_context_bwd
from focalfast.ops.triton.focal_context_fwd import focal_context_fwd
from focalfast.testing import random_focal_inputs, rel_err

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest relative difference from the default schedule's outputs that still counts as the same result
# (schedules change summation orders: pooled means, weight-gradient partials).
AGREEMENT = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}


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
    """Rows ``{shape, pass, schedule, option, ms, speedup, agrees}`` for one shape and direction."""
    interpret = device.type != "cuda"
    sms = sm_count(device)
    args = _inputs(shape, dtype, device)
    H, W, C, ks = shape.height, shape.width, shape.channels, shape.kernel_sizes
    rows, reference = [], None
    for option in candidates(H, W, C, ks, backward, shape.batch, sms, limit):
        if time.monotonic() > deadline:
            break
        sched = chain_schedule(H, W, C, ks, backward, interpret=interpret, batch=shape.batch, sm_count=sms,
                               **option)
        run = _runner(args, backward, interpret, option)
        outputs = run()
        if reference is None:
            reference, agrees, worst = outputs, True, 0.0
        else:
            worst = max(rel_err(a, b) for a, b in zip(outputs, reference))
            agrees = worst < AGREEMENT[dtype]
        median = timing.measure(run, [()], warmup, rounds, device).median
        rows.append(dict(shape=name, shape_args=[shape.batch, H, W, C, list(ks)], dtype=str(dtype),
                         pass_="backward" if backward else "forward", schedule=_describe(option, sched),
                         option={k: list(v) if isinstance(v, tuple) else v for k, v in option.items()},
                         ms=median * 1e3, agrees=agrees, max_rel_diff=worst))
        if progress is not None:
            progress.update(1)
    base = rows[0]["ms"] if rows else None
    for row in rows:
        row["speedup"] = base / row["ms"] if row["ms"] > 0 else float("nan")
    return rows


def format_rows(rows: List[dict]) -> str:
    """One block per (shape, pass): schedules that agree, fastest first; mismatches last."""
    lines = []
    groups = {}
    for row in rows:
        groups.setdefault((row["shape"], row["pass_"]), []).append(row)
    for (shape, pass_), group in groups.items():
        lines.append(f"\n{shape} {pass_} ({group[0]['dtype']})")
        lines.append(f"  {'schedule':<40} {'ms':>9} {'vs default':>10}")
        for row in sorted(group, key=lambda r: (not r["agrees"], r["ms"])):
            flag = "" if row["agrees"] else f"  MISMATCH ({row['max_rel_diff']:.1e})"
            lines.append(f"  {row['schedule']:<40} {row['ms']:>9.3f} {row['speedup']:>9.2f}x{flag}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from focalfast.bench import op_shapes

    parser = argparse.ArgumentParser(prog="python -m focalfast.ops.triton.tune_chain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="T.s1,T.s3", help="comma-separated op shape names (GPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--passes", default="forward,backward")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the whole search")
    parser.add_argument("--max-configs", type=int, default=None, help="candidates per shape and pass")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from focalfast import backends

    if device.type != "cuda" and not backends.triton_interpreter_on():
        parser.error("needs a CUDA GPU (or TRITON_INTERPRET=1 for the tiny CPU check)")
    all_shapes = op_shapes("full") if device.type == "cuda" else op_shapes("tiny")
    names = [n for n in args.shapes.split(",") if n] if device.type == "cuda" else ["tiny"]
    unknown = [n for n in names if n not in all_shapes]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {sorted(all_shapes)}")
    passes = [p for p in args.passes.split(",") if p]
    if not set(passes) <= {"forward", "backward"}:
        parser.error(f"--passes: expected forward and/or backward, got {passes}")
    dtype = DTYPES[args.dtype]

    from tqdm import tqdm

    deadline = time.monotonic() + args.budget
    rows = []
    with tqdm(desc="schedules", unit="cfg", file=sys.stderr, disable=args.no_progress) as progress:
        for name in names:
            for pass_ in passes:
                rows += tune_shape(name, all_shapes[name], dtype, device, pass_ == "backward", args.warmup,
                                   args.rounds, deadline, args.max_configs, progress)
    print(format_rows(rows))
    if time.monotonic() > deadline:
        print(f"\n(stopped by --budget {args.budget:g} s: later candidates were not timed)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                           torch=torch.__version__, triton=triton.__version__, rows=rows), f, indent=1)
    return 0 if all(r["agrees"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
