"""Timing a kernel's candidate schedules against its default, shared by the backends' tuners
(``focalfast.ops.triton.tune_chain``, ``focalfast.ops.cuda.tune_sweep``).

A tuner lists its candidates for a shape and pass as ``(description, option, run)``, the default first
(``option == {}``); ``run()`` computes the pass under that schedule and returns its output tensors. Each
candidate's outputs are compared with the default's: one that computes something else is marked as a
mismatch and never ranked. Times are CUDA-event medians after warm-up (``focalfast.timing``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, Iterable, List, Tuple

import torch

from focalfast import timing
from focalfast.testing import rel_err

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Largest relative difference from the default schedule's outputs that still counts as the same result
# (schedules change summation orders: pooled means, weight-gradient partials).
AGREEMENT = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}

Candidate = Tuple[str, dict, Callable[[], list]]


def time_candidates(name: str, shape_args: list, dtype, backward: bool, candidates: Iterable[Candidate],
                    device, warmup: int, rounds: int, deadline: float, progress=None) -> List[dict]:
    """Rows ``{shape, pass_, schedule, option, ms, speedup, agrees, max_rel_diff}``, one per candidate timed before
    ``deadline`` (``time.monotonic()``); speedup is the default's time over the candidate's."""
    rows, reference = [], None
    for description, option, run in candidates:
        if time.monotonic() > deadline:
            break
        outputs = run()
        if reference is None:
            reference, agrees, worst = outputs, True, 0.0
        else:
            worst = max(rel_err(a, b) for a, b in zip(outputs, reference))
            agrees = worst < AGREEMENT[dtype]
        median = timing.measure(run, [()], warmup, rounds, device).median
        rows.append(dict(shape=name, shape_args=shape_args, dtype=str(dtype),
                         pass_="backward" if backward else "forward", schedule=description,
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


def add_search_arguments(parser, default_shapes: str, budget: float) -> None:
    """The options every tuner takes."""
    parser.add_argument("--shapes", default=default_shapes, help="comma-separated op shape names (GPU)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--passes", default="forward,backward")
    parser.add_argument("--budget", type=float, default=budget, help="seconds for the whole search")
    parser.add_argument("--max-configs", type=int, default=None, help="candidates per shape and pass")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs)")


def run_search(parser, args, tune_shape, device, all_shapes: dict, shapes: str, versions: dict) -> int:
    """Every (shape, pass) of ``args`` through ``tune_shape(name, shape, dtype, device, backward, warmup, rounds,
    deadline, limit, progress)`` within ``--budget``; prints the table, writes ``--out``; 1 if any candidate
    computed something else, else 0."""
    from tqdm import tqdm

    names = [n for n in shapes.split(",") if n]
    unknown = [n for n in names if n not in all_shapes]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; choose from {sorted(all_shapes)}")
    passes = [p for p in args.passes.split(",") if p]
    if not passes or not set(passes) <= {"forward", "backward"}:
        parser.error(f"--passes: expected forward and/or backward, got {passes}")
    dtype = DTYPES[args.dtype]
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
                           torch=torch.__version__, **versions, rows=rows), f, indent=1)
    return 0 if all(r["agrees"] for r in rows) else 1
