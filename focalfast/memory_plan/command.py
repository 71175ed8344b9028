"""``focalfast plan``: the GPU memory of a training step, planned on a CPU.

    focalfast plan --model focalnet_tiny_srf --memory 40GiB --batch 32      largest square resolution
    focalfast plan --model focalnet_tiny_srf --memory 40GiB --resolution 512 largest batch
    focalfast plan --model convnext_tiny --batch 32 --resolution 384          the step's bytes

Several ``--backend``, ``--checkpoint`` and ``--memory`` values give one row per backend and mode
and one column per memory. Every number is measured (``StepPlanner``), not estimated; what the
planner does not see (the CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation) is what
``--reserve`` keeps free.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

GIB = 1 << 30
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"40GiB"``, ``"80 GB"``, ``"512MiB"``, ``"1e9"`` -> bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"expected a size such as 40GiB, 80GB or 512MiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from focalfast.memory_plan.training_step import DTYPES, GPU_SMS, PLAN_BACKENDS
    from focalfast.models import CHECKPOINTING_MODES

    parser.add_argument("--model", default="focalnet_tiny_srf",
                        help="a FocalNet variant (focalfast.models.list_models()) or convnext_tiny")
    parser.add_argument("--memory", type=_size, nargs="+", default=[],
                        help="GPU memory to fit, e.g. 40GiB 80GiB (one column each)")
    parser.add_argument("--batch", type=int, help="images per step (with --memory: find the largest resolution)")
    parser.add_argument("--resolution", type=int,
                        help="square image size (with --memory: find the largest batch); default 224 to measure")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="autocast to --dtype with float32 parameters (default); --no-amp: parameters in --dtype")
    parser.add_argument("--backend", choices=tuple(PLAN_BACKENDS), nargs="+", default=["reference", "fused"],
                        help="reference: the PyTorch op; fused: the fused kernels' op (saves inputs and [B, C] vectors)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTING_MODES, nargs="+", default=["none"],
                        help="activation checkpointing modes (focalfast.models.set_checkpointing)")
    parser.add_argument("--reserve", type=_size, default=parse_bytes("1GiB"),
                        help="memory kept free for what the planner does not see (default 1GiB)")
    parser.add_argument("--resolution-step", type=int, default=32, help="resolutions searched in these steps")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--gpu-sms", type=int, default=GPU_SMS,
                        help=f"the fused kernels' scratch is sized as their launch code sizes it for a GPU of this "
                             f"many multiprocessors (default {GPU_SMS}: H100 SXM, H200)")


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f}"


def run(args) -> int:
    from focalfast.memory_plan.models import model_factory
    from focalfast.memory_plan.search import largest_fitting
    from focalfast.memory_plan.training_step import StepPlanner

    if args.memory and args.batch is None and args.resolution is None:
        raise SystemExit("focalfast plan: --memory needs --batch (find a resolution) or --resolution (find a batch)")
    for name in ("batch", "resolution", "resolution_step", "num_classes", "gpu_sms"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"focalfast plan: --{name.replace('_', '-')} must be positive, got {value}")
    factory = model_factory(args.model, args.num_classes)
    batch, resolution = args.batch or 32, args.resolution or 224
    search = None if not args.memory else ("resolution" if args.resolution is None else
                                           "batch" if args.batch is None else None)

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    rows = []
    for backend in args.backend:
        none_flops = None
        for mode in args.checkpoint:
            log(f"{args.model} {backend} checkpoint={mode}: building")
            try:
                planner = StepPlanner(factory, backend=backend, checkpointing=mode, dtype=args.dtype, amp=args.amp,
                                      granularity=512, num_classes=args.num_classes, gpu_sms=args.gpu_sms)
            except ValueError as exc:  # a mode the model has nothing for (e.g. "mlp" on ConvNeXt)
                log(f"  skipped: {exc}")
                rows.append([backend, mode] + ["n/a"] * (4 + len(args.memory)))
                continue
            measured = {}

            def measure(b: int, r: int):
                if (b, r) not in measured:
                    measured[b, r] = planner.measure(b, r)
                    log(f"  batch {b} x {r}px: step peak {_gib(measured[b, r].peak_bytes)} GiB")
                return measured[b, r]

            step, half = measure(batch, resolution), measure(max(1, batch // 2), resolution)
            images = max(1, step.batch - half.batch)
            per_image = (step.saved_bytes - half.saved_bytes) // images  # exact: saved bytes are affine in the batch
            peak_slope = (step.peak_bytes - half.peak_bytes) / images
            if none_flops is None:
                base = planner if mode == "none" else StepPlanner(factory, backend=backend, dtype=args.dtype,
                                                                  amp=args.amp, num_classes=args.num_classes,
                                                                  gpu_sms=args.gpu_sms)
                none_flops = step.step_flops if mode == "none" else base.measure(1, resolution).step_flops * batch
            recompute = (step.step_flops - none_flops) / step.forward_flops
            fits = []
            for memory in args.memory:
                budget = memory - args.reserve
                if search == "resolution":
                    k = largest_fitting(lambda k: measure(batch, k * args.resolution_step).peak_bytes, budget,
                                        start=max(1, resolution // args.resolution_step), limit=1024, power=2)
                    fits.append(str(k * args.resolution_step) if k else "none")
                elif search == "batch":
                    k = largest_fitting(lambda k: measure(k, resolution).peak_bytes, budget, start=batch,
                                        limit=1 << 16, power=1)
                    fits.append(str(k) if k else "none")
                else:
                    fits.append("yes" if step.peak_bytes <= budget else "no")
            rows.append([backend, mode, f"{per_image / resolution**2:.0f}", f"{peak_slope / resolution**2:.0f}",
                         _gib(step.peak_bytes), f"{100 * recompute:+.0f}%"] + fits)

    amp = f"{args.dtype} autocast" if args.amp and args.dtype != "fp32" else args.dtype
    header = ["backend", "checkpoint", "saved B/input px", "peak B/input px",
              f"step peak GiB @{batch}x{resolution}px", "recompute"]
    what = {"resolution": f"largest px @batch {batch}", "batch": f"largest batch @{resolution}px"}.get(search, "fits")
    header += [f"{what} in {memory / GIB:g} GiB" for memory in args.memory]
    print(f"{args.model}, {amp}, AdamW; per input pixel of one image at {resolution}px: saved = what autograd "
          f"keeps after the forward, peak = the step's peak growth from batch {max(1, batch // 2)} to {batch}; "
          f"recompute = extra GEMM/conv FLOPs of the step over the forward's (the fused op's own are not "
          f"counted); the fused kernels' scratch as launched on {args.gpu_sms} SMs; "
          f"{args.reserve / GIB:g} GiB reserved")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0
