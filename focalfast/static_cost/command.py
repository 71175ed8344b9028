"""``focalfast static-cost`` / ``python -m focalfast.static_cost``: the static cost report.

Compiles every kernel the op's forward and backward launch for sm_90a, at the launch
configuration the real launch code picks, disassembles them and counts dynamic
warp-instructions per output element. No GPU is needed.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path
from typing import List

from focalfast.static_cost.cases import DTYPES, LAYOUTS, LEVELS, STAGES, Case
from focalfast.static_cost.report import current_commit, op_record, table, write

BACKENDS = ("triton", "cuda")
DEFAULT_OUT = Path("benchmarks") / "results" / "static"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--stage", nargs="+", type=int, choices=sorted(STAGES), default=sorted(STAGES),
                        help="FocalNet-T stages (B=128: 56x56 C=96, 28x28 C=192, 14x14 C=384, 7x7 C=768)")
    parser.add_argument("--levels", nargs="+", default=list(LEVELS),
                        help="srf (k 3,5), lrf (k 3,5,7) or explicit kernel sizes such as 3,5,7,9")
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--layout", nargs="+", choices=LAYOUTS, default=list(LAYOUTS),
                        help="views: q, ctx, gates as slices of one [B,H,W,2C+L+1] tensor; contiguous: three tensors")
    parser.add_argument("--size", default=None, metavar="HxWxC",
                        help="one explicit shape instead of the stages (e.g. 12x12x40 for a quick check)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sm-count", type=int, default=132, help="multiprocessors the launch code plans for")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory of the JSON and markdown")
    parser.add_argument("--name", default=None, help="file stem (default: static-<commit>)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")


def _backend_module(name: str):
    if name == "triton":
        from focalfast.static_cost import triton_backend

        return triton_backend
    if name == "cuda":
        from focalfast.static_cost import cuda_backend

        return cuda_backend
    raise ValueError(f"--backend: unknown backend {name!r}")


def collect(backends, cases: List[Case], sm_count: int) -> List[dict]:
    """Op records of every backend and case, with progress lines on stderr."""
    records = []
    jobs = list(itertools.product(backends, cases))
    for n, (backend, case) in enumerate(jobs, 1):
        module = _backend_module(backend)
        start = time.time()
        print(f"[{n}/{len(jobs)}] {backend} {case.describe()}: capturing launches", file=sys.stderr, flush=True)
        captured = module.capture(case, sm_count)
        for direction, (launches, torch_ops) in captured.items():
            kernels = []
            for launch in launches:
                print(f"    {direction} {launch.name}: compiling / counting", file=sys.stderr, flush=True)
                kernels.append(module.launch_record(launch))
            records.append(op_record(backend, direction, case, kernels, torch_ops, sm_count))
        print(f"    done in {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return records


def run(args: argparse.Namespace) -> int:
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else ()
    if size and len(size) != 3:
        raise SystemExit(f"--size must be HxWxC, got {args.size!r}")
    stages = [0] if size else args.stage
    cases = [Case(stage, levels, dtype, layout, batch=args.batch, size=size)
             for stage, levels, dtype, layout in itertools.product(stages, args.levels, args.dtype, args.layout)]
    commit = current_commit()
    records = collect(args.backend, cases, args.sm_count)
    print(table(records, markdown=False))
    if not args.no_write:
        write(records, args.out / (args.name or f"static-{commit}"), commit)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m focalfast.static_cost", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
