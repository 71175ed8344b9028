"""``focalfast bench`` / ``python -m focalfast.bench``: arguments, settings and the run loop."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from focalfast.bench.cases import EXPECTED_SECONDS, suite_cases
from focalfast.bench.environment import environment
from focalfast.bench.report import (
    CPU_NOTE,
    JSON_FORMAT,
    fmt,
    format_max_resolution,
    format_table,
    not_run_lines,
    write_outputs,
)
from focalfast.bench.runner import add_speedups, device_ceilings, run_memory_variant, run_variant
from focalfast.bench.shapes import DTYPE_NAMES, DTYPES, HIGH_RES_BATCH
from focalfast.devices import default_device
from focalfast.bench.variants import TRAIN_VARIANTS, unavailable_reason
from focalfast.bench.workloads import DEFAULT_MODEL


DESCRIPTION = "time the op, the module and a training step on every backend"
KINDS = ("op", "module", "train", "memory")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=("tiny", "default", "full"), default=None,
                        help="what to run (default: 'default' on a GPU, 'tiny' on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--variants", default=",".join(TRAIN_VARIANTS),
                        help=f"comma-separated subset of {','.join(TRAIN_VARIANTS)}")
    parser.add_argument("--dtypes", default=None, help="comma-separated fp32,bf16 (default both; fp32 on CPU)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated subset of op,module,train,memory (default: op,module,train, "
                             "and memory in the full suite; memory: the largest training resolution under "
                             "--memory-cap-gib, GPU only)")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per row (default 20 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 GPU, 1 CPU)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model of the training step")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0,
                        help="memory cap of the largest-resolution search (GiB)")
    parser.add_argument("--memory-batch", type=int, default=HIGH_RES_BATCH, help="batch of that search")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; a row starts only while the time it may take is left "
                             "(EXPECTED_SECONDS), the others are listed as skipped")
    parser.add_argument("--out-dir", default="runs/bench", help="where bench.json, bench.md and bench.png go")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_list(text: str, allowed, what: str, prog: str = "focalfast bench") -> list:
    """The items of the comma-separated ``text`` of option ``--what``; SystemExit naming the option when one
    is not in ``allowed`` or there is none."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"{prog}: --{what}: expected a comma-separated subset of "
                         f"{','.join(allowed)}, got {text!r}")
    return items


def _settings(args: argparse.Namespace, on_gpu: bool) -> dict:
    suite = args.suite or ("default" if on_gpu else "tiny")
    kinds = (parse_list(args.kinds, KINDS, "kinds") if args.kinds
             else ["op", "module", "train"] + (["memory"] if suite == "full" else []))
    warmup_given = args.warmup is not None
    return {
        "suite": suite, "model": args.model, "kinds": kinds,
        "variants": parse_list(args.variants, TRAIN_VARIANTS, "variants"),
        "dtypes": parse_list(args.dtypes or ("fp32,bf16" if on_gpu else "fp32"), tuple(DTYPES), "dtypes"),
        "rounds": args.rounds or (20 if on_gpu else 5),
        "warmup": args.warmup if warmup_given else (3 if on_gpu else 1),
        "rounds_train": args.rounds or (10 if on_gpu else 3),
        "warmup_train": args.warmup if warmup_given else (2 if on_gpu else 1),
        "time_budget_s": args.time_budget, "memory_cap_gib": args.memory_cap_gib, "memory_batch": args.memory_batch,
    }


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    device = torch.device(args.device) if args.device else default_device()  # focalfast.cli checked it
    on_gpu = device.type == "cuda"
    settings = _settings(args, on_gpu)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # the eager baseline gets cuDNN's best algorithms
    else:
        print(f"NOTE: {CPU_NOTE}\n", file=sys.stderr)

    started = time.monotonic()
    out_dir = Path(args.out_dir)
    dtypes = [DTYPES[d] for d in settings["dtypes"]]
    cases = [c for c in suite_cases(settings["suite"], dtypes, settings["variants"]) if c.kind in settings["kinds"]]
    ceilings = device_ceilings(str(device))
    report = {"format": JSON_FORMAT, "environment": environment(device), "settings": settings,
              "ceilings": ceilings.as_dict() if ceilings else None,
              "note": None if on_gpu else CPU_NOTE, "results": [], "max_resolution": []}

    def budget_refusal(kind: str, variant: str) -> Optional[str]:
        """Why the time budget does not allow this row now (None if it does)."""
        if args.time_budget is None or unavailable_reason(variant, device) is not None:
            return None  # unavailable rows say why instead
        left = args.time_budget - (time.monotonic() - started)
        needs = EXPECTED_SECONDS.get((kind, variant), EXPECTED_SECONDS.get((kind, None), 5))
        return None if left >= needs else f"time budget of {args.time_budget:.0f} s: less than {needs} s left"

    progress = tqdm(total=sum(len(c.variants) for c in cases), desc="focalfast bench", unit="row",
                    disable=args.no_progress or None)
    for index, case in enumerate(cases):
        done = []
        for variant in case.variants:
            progress.set_postfix_str(f"{case.label} {case.shape_name} {DTYPE_NAMES[case.dtype]} {variant}")
            over_budget = budget_refusal(case.kind, variant)
            if case.kind == "memory":
                entry = (dict(variant=variant, error=f"skipped: {over_budget}") if over_budget
                         else run_memory_variant(case, variant, device, settings))
                report["max_resolution"].append(entry)
                done.append(f"{variant} {entry.get('resolution', entry.get('error'))}")
            else:
                row = (dict(case.row(variant), status="skipped", reason=over_budget) if over_budget
                       else run_variant(case, variant, device, settings, ceilings))
                report["results"].append(row)
                done.append(f"{variant} {fmt(row['median_ms'], 3)} ms" if row["status"] == "ok"
                            else f"{variant} {row['status']}")
            progress.update()
        add_speedups(report["results"])
        if progress.disable and not args.no_progress:  # a log, not a terminal: one line per case
            print(f"[{index + 1}/{len(cases)}] {case.label} {case.shape_name} {DTYPE_NAMES[case.dtype]}: "
                  + ", ".join(done), file=sys.stderr, flush=True)
        write_outputs(report, out_dir, with_plot=False)  # a killed run still leaves its rows
    progress.close()

    report["elapsed_s"] = time.monotonic() - started
    paths = write_outputs(report, out_dir, with_plot=not args.no_plot)
    env = report["environment"]
    print(f"focalfast bench: {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, Triton {env['triton']}, "
          f"commit {env['commit']}, {env['date']}")
    print(format_table(report["results"]))
    notes = not_run_lines(report["results"])
    if notes:
        print("\nNot run or failed:\n  " + "\n  ".join(notes))
    if report["max_resolution"]:
        print("\n" + format_max_resolution(report["max_resolution"]))
    if not on_gpu:
        print(f"\nNOTE: {CPU_NOTE}")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv=None) -> int:
    """``python -m focalfast.bench``: the subcommand without the other subcommands' imports."""
    parser = argparse.ArgumentParser(prog="focalfast bench", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
