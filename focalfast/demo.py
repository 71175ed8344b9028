"""``focalfast demo``: run FocalNet's modulation on every backend available here, check each
against the reference and time it; then run a FocalNet-T forward and backward with ``auto``.

On a machine without a GPU this runs the reference (small shapes); on a GPU it runs the fused
kernels at FocalNet-T stage-1 size.
"""

from __future__ import annotations

import argparse
import time

import torch

from focalfast import backends
from focalfast.availability import backend_status
from focalfast.devices import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on GPU, 2 on CPU")
    parser.add_argument("--size", type=int, default=None, help="feature map side; default 56 on GPU, 14 on CPU")
    parser.add_argument("--channels", type=int, default=96,
                        help="channels C of the modulation (default 96, FocalNet-T stage 1)")
    parser.add_argument("--focal-level", type=int, default=3,
                        help="focal levels L, kernel sizes 3, 5, 7, ... (default 3)")
    parser.add_argument("--skip-model", action="store_true", help="only the op, not the FocalNet-T step")


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn`` in ms (synchronised on GPU)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def _op_table(args, device: torch.device, dtype: torch.dtype) -> list:
    from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref
    from focalfast.testing import random_focal_inputs, rel_err

    kernel_sizes = [2 * level + 3 for level in range(args.focal_level)]
    gen = torch.Generator().manual_seed(0)
    inputs = random_focal_inputs(args.batch, args.size, args.size, args.channels, kernel_sizes,
                                 dtype=dtype, device=str(device), requires_grad=True, generator=gen)
    tensors = [inputs["q"], inputs["ctx"], inputs["gates"], *inputs["weights"], inputs["h_weight"], inputs["h_bias"]]
    upstream = torch.randn(args.batch, args.size, args.size, args.channels, generator=gen).to(device, dtype)

    def run(backend):
        out = focal_modulation(**inputs, backend=backend)
        return out, torch.autograd.grad(out, tensors, upstream)

    double = {k: ([w.detach().double() for w in v] if isinstance(v, list) else v.detach().double())
              for k, v in inputs.items()}
    for v in [double["q"], double["ctx"], double["gates"], *double["weights"], double["h_weight"], double["h_bias"]]:
        v.requires_grad_()
    ref_out = focal_modulation_ref(**double)
    ref_grads = torch.autograd.grad(ref_out, [double["q"], double["ctx"], double["gates"], *double["weights"],
                                              double["h_weight"], double["h_bias"]], upstream.double())
    rows = []
    for name, reason in backend_status(device).items():
        if reason is not None:
            rows.append((name, None, None, None, None, reason))
            continue
        out, grads = run(name)
        err_out = rel_err(out, ref_out)
        err_grad = max(rel_err(g, r) for g, r in zip(grads, ref_grads))
        ms = peak = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            ms = _time_ms(lambda: run(name), device, repeats=10)
            peak = torch.cuda.max_memory_allocated() / 2**20
        elif name == "reference":  # on CPU only the baseline: interpreters and the host path are not kernels
            ms = _time_ms(lambda: run(name), device, repeats=3)
        rows.append((name, err_out, err_grad, ms, peak, ""))
    return rows


def _print_op_table(rows, args, dtype) -> None:
    print(f"focal modulation op, B={args.batch} {args.size}x{args.size} C={args.channels} "
          f"L={args.focal_level} {str(dtype).replace('torch.', '')}, forward+backward:")
    print(f"  {'backend':<10} {'rel err out':>12} {'rel err grads':>14} {'ms':>9} {'peak MiB':>9}")
    for name, err_out, err_grad, ms, peak, reason in rows:
        if err_out is None:
            print(f"  {name:<10} not available: {reason}")
            continue
        ms_text = f"{ms:9.2f}" if ms is not None else f"{'-':>9}"
        peak_text = f"{peak:9.0f}" if peak is not None else f"{'-':>9}"
        print(f"  {name:<10} {err_out:12.2e} {err_grad:14.2e} {ms_text} {peak_text}")


def _model_step(device: torch.device, dtype: torch.dtype, batch: int, image: int) -> None:
    from focalfast import models

    model = models.create("focalnet_tiny_srf", num_classes=1000, backend="auto").to(device)
    images = torch.randn(batch, 3, image, image, device=device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(images).float().logsumexp(-1).mean()
    loss.backward()
    backend = backends.resolve("auto", device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(images).float().logsumexp(-1).mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"FocalNet-T ({sum(p.numel() for p in model.parameters()):,} parameters), backend auto -> {backend}: "
          f"forward+backward of {batch}x3x{image}x{image} in {seconds * 1e3:.0f} ms, loss {loss.item():.4f}")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    args.batch = args.batch or (32 if on_gpu else 2)
    args.size = args.size or (56 if on_gpu else 14)
    print(f"device: {torch.cuda.get_device_name(device) if on_gpu else 'cpu'}; "
          f"backends available: {backends.available_backends(device)}")
    if not on_gpu:
        print("no GPU here: the fused kernels are not timed on CPU (CPU timings say nothing about GPU speed)")
    rows = _op_table(args, device, dtype)
    _print_op_table(rows, args, dtype)
    failures = [name for name, err_out, err_grad, *_ in rows if err_out is not None
                and max(err_out, err_grad) > (1e-4 if dtype == torch.float32 else 2e-2)]
    if not args.skip_model:
        _model_step(device, dtype, batch=args.batch if on_gpu else 1, image=224 if on_gpu else 64)
    if failures:
        print(f"MISMATCH against the reference: {failures}")
        return 1
    return 0
