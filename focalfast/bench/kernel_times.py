"""Where an op's GPU time goes: each kernel's device time per call, from torch.profiler (GPU only).

    python -m focalfast.bench.kernel_times --shapes T.s1,T.s3 --dtype bf16 --variants eager,triton,cuda

For each shape and variant: the op forward + backward (``--forward-only``: forward) after warm-up calls,
then ``--steps`` profiled calls; one table per (shape, variant) of kernel, launches per call, microseconds
per call and share of the call's kernel time. ``--no-profiler`` only makes the calls (warm-up and steps),
for an outside profiler such as Nsight Compute, which cannot share the counters with torch.profiler.
Variants run in the order given, each in try/except: a kernel that corrupts the CUDA context (an illegal
address) fails the rows after it too, so list the trusted variants first.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterable, List, Tuple

import torch

from focalfast.bench.cli import parse_list
from focalfast.bench.shapes import DTYPES, op_shapes
from focalfast.bench.workloads import op_workload

KernelEvent = Tuple[str, int, float]  # (kernel name, launches, device microseconds), summed over the profiled calls


def kernel_table(events: Iterable[KernelEvent], steps: int) -> List[Tuple[str, float, float, float]]:
    """``(kernel, launches per call, us per call, share)`` rows, the most expensive first; ``events`` may
    name a kernel more than once (their counts and times add up)."""
    if steps < 1:
        raise ValueError(f"steps: expected at least 1 profiled call, got {steps}")
    launches, micros = defaultdict(int), defaultdict(float)
    for name, count, us in events:
        launches[name] += count
        micros[name] += us
    total = sum(micros.values())
    rows = [(name, launches[name] / steps, micros[name] / steps, micros[name] / total if total > 0 else 0.0)
            for name in micros]
    return sorted(rows, key=lambda row: -row[2])


def format_table(title: str, rows: List[Tuple[str, float, float, float]], width: int = 90) -> str:
    lines = [f"### {title}", "", "| kernel | launches | us per call | share |", "|---|---|---|---|"]
    for name, launches, us, share in rows:
        short = name if len(name) <= width else name[:width - 3] + "..."
        lines.append(f"| `{short}` | {launches:g} | {us:.1f} | {100 * share:.1f}% |")
    lines.append(f"| total | {sum(r[1] for r in rows):g} | {sum(r[2] for r in rows):.1f} | |")
    return "\n".join(lines)


def run_calls(step, input_sets, calls: int) -> None:
    """``calls`` calls of ``step`` over the rotating ``input_sets``, then a device synchronize."""
    for i in range(calls):
        step(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()


def profile_events(step, input_sets, warmup: int, steps: int) -> List[KernelEvent]:
    """Kernel events of ``steps`` calls of ``step`` (CUDA activity of torch.profiler), after ``warmup``."""
    from torch.profiler import ProfilerActivity, profile

    run_calls(step, input_sets, warmup)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_calls(step, input_sets, steps)
    events = []
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None)
        if us is None:
            us = getattr(event, "self_cuda_time_total", 0.0)
        if us > 0 and event.count > 0:
            events.append((event.key, int(event.count), float(us)))
    return events


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focalfast.bench.kernel_times", description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="T.s1,T.s1.lrf,T.s3", help="comma-separated names of op_shapes('full')")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--variants", default="eager,triton,cuda", help="comma-separated: eager, triton, cuda")
    parser.add_argument("--forward-only", action="store_true", help="profile the forward alone")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    parser.add_argument("--no-profiler", action="store_true",
                        help="make the calls without torch.profiler (to run under ncu); no tables")
    args = parser.parse_args(argv)
    shapes = op_shapes("full")
    names = parse_list(args.shapes, tuple(shapes), "shapes", prog="kernel_times")
    variants = parse_list(args.variants, ("eager", "triton", "cuda"), "variants", prog="kernel_times")
    if not torch.cuda.is_available():
        print("kernel_times: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    dtype, device, backward = DTYPES[args.dtype], torch.device("cuda"), not args.forward_only
    sections, failed = [f"# Kernel times per op call ({'fwd' if args.forward_only else 'fwd+bwd'}, {args.dtype}, "
                        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.steps} profiled calls)"], False
    for shape_name in names:
        for variant in variants:
            title = f"{shape_name} {variant}"
            try:
                workload = op_workload(variant, shapes[shape_name], dtype, device, backward, shape_name=shape_name)
                if args.no_profiler:
                    run_calls(workload.step, workload.input_sets, args.warmup + args.steps)
                    print(f"{title}: {args.warmup + args.steps} calls, not profiled", flush=True)
                    continue
                rows = kernel_table(profile_events(workload.step, workload.input_sets, args.warmup, args.steps),
                                    args.steps)
                sections.append(format_table(title, rows))
            except Exception as exc:  # report and go on: the other variants' tables still matter
                failed = True
                sections.append(f"### {title}\n\nfailed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            print(sections[-1] + "\n", flush=True)
            if args.out:  # after every table: a run stopped by a time limit keeps what it measured
                Path(args.out).write_text("\n\n".join(sections) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
