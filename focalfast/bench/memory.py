"""Memory: the peak of one call, and the largest training resolution under a memory cap."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from focalfast import timing
from focalfast.bench.shapes import DTYPE_NAMES
from focalfast.bench.workloads import DEFAULT_MODEL, TrainStep, Workload, build_model, release_memory


def measure_memory(workload: Workload) -> dict:
    """Peak memory of one call (GPU only).

    Training step: ``peak_memory_bytes`` is the whole process's peak (model, optimizer state,
    batch, activations): what must fit on the card. Op and module: the peak above what was
    allocated before the call (outputs, saved tensors, workspaces).
    """
    measured = timing.peak_memory(workload.step, workload.input_sets[0], workload.device)
    if measured is None:
        return {}
    peak, before = measured
    if workload.kind == "train":
        return {"peak_memory_bytes": peak, "peak_memory_kind": "process"}
    return {"peak_memory_bytes": peak - before, "peak_memory_kind": "call"}


def largest_fitting(fits: Callable[[int], bool], start: int, multiple: int, limit: int) -> Optional[int]:
    """The largest multiple of ``multiple`` in ``[start, limit]`` that ``fits``, assuming ``fits`` is
    monotone (true up to some size, false beyond); None if ``start`` does not fit.

    Doubles from ``start`` until a size does not fit, then bisects: about 2 log2(limit / start) probes.
    """
    if start % multiple:
        raise ValueError(f"start: expected a multiple of {multiple}, got {start}")
    if not fits(start):
        return None
    lo, hi = start, start * 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit // multiple * multiple + multiple)
    while hi - lo > multiple:  # invariant: lo fits; hi does not, or is past the limit
        mid = (lo + hi) // 2 // multiple * multiple
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_resolution(variant: str, cap_bytes: int, batch: int, dtype, device, model_name: str = DEFAULT_MODEL,
                   start: int = 224, multiple: int = 32, limit: int = 4096) -> dict:
    """The largest resolution (a multiple of ``multiple``) whose training step fits in ``cap_bytes``.

    The caching allocator is capped (``torch.cuda.set_per_process_memory_fraction``) as on a card
    of that size, so a step fits if it does not run out of memory; ``largest_fitting`` searches.
    A step at ``start`` first creates the optimizer state. ``probes`` maps each resolution tried
    to its peak allocated bytes (None: out of memory).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("max_resolution needs a CUDA device (torch.cuda.max_memory_allocated)")
    release_memory(device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    try:
        return _search_resolution(variant, cap_bytes, batch, dtype, device, model_name, start, multiple, limit)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        release_memory(device)


def _search_resolution(variant, cap_bytes, batch, dtype, device, model_name, start, multiple, limit) -> dict:
    torch.manual_seed(0)
    step = TrainStep(build_model(variant, model_name), dtype, device, compile_model=False)
    probes = {}

    def peak_at(resolution: int) -> Optional[int]:
        if resolution not in probes:
            images, labels = step.batch(batch, resolution)
            try:
                probes[resolution] = timing.peak_memory(step, (images, labels), device)[0]
            except torch.cuda.OutOfMemoryError:
                probes[resolution] = None
            del images, labels
            step.optimizer.zero_grad(set_to_none=True)
            release_memory(device)
        return probes[resolution]

    def fits(resolution: int) -> bool:
        peak = peak_at(resolution)
        return peak is not None and peak <= cap_bytes

    peak_at(start)
    probes.clear()
    best = largest_fitting(fits, start, multiple, limit)
    del step
    return {"variant": variant, "dtype": DTYPE_NAMES[dtype], "batch": batch, "model": model_name,
            "cap_bytes": cap_bytes, "resolution": best,
            "peak_memory_bytes": probes.get(best) if best else None,
            "probes": {str(r): p for r, p in sorted(probes.items())}}
