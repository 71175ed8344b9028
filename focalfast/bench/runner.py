"""Running a case: build, time and measure each variant; rows never raise (errors become rows)."""

from __future__ import annotations

import functools
from typing import Optional

import torch

from focalfast import roofline, timing
from focalfast.bench.cases import Case
from focalfast.bench.memory import max_resolution, measure_memory
from focalfast.bench.shapes import DTYPE_NAMES
from focalfast.bench.variants import model_unavailable_reason, unavailable_reason
from focalfast.bench.workloads import Workload, release_memory


@functools.lru_cache(maxsize=None)
def device_ceilings(device_str: str) -> Optional[roofline.Ceilings]:
    """The device's measured ceilings (once per process); None on CPU."""
    return roofline.measure_ceilings(torch.device(device_str))


def metrics(workload: Workload, median_s: float, ceilings: Optional[roofline.Ceilings]) -> dict:
    """Bandwidth, roofline and throughput numbers of one timed workload."""
    out = {}
    if workload.op_shape is not None:
        shape, dtype = workload.op_shape, workload.dtype
        nbytes = roofline.op_bytes(shape, dtype, workload.pass_)
        flops = roofline.op_flops(shape, workload.pass_)
        out.update(bytes=nbytes, vector_flops=flops.vector, gemm_flops=flops.gemm,
                   achieved_gbps=nbytes / median_s / 1e9)
        if ceilings is not None:
            floor = roofline.floor_seconds(shape, dtype, workload.pass_, ceilings)
            out.update(floor_ms=floor * 1e3, roofline_pct=100 * floor / median_s)
    if workload.images:
        out["images_per_s"] = workload.images / median_s
    return out


def error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_variant(case: Case, variant: str, device, settings: dict, ceilings) -> dict:
    """Build, time and measure one variant of a case; never raises (errors become rows)."""
    row = case.row(variant)
    reason = unavailable_reason(variant, device)
    if reason is None and case.kind == "train" and variant != "timm":
        reason = model_unavailable_reason()
    if reason is not None:
        return dict(row, status="skipped", reason=reason)
    workload = None
    try:
        workload = case.workload(variant, device, settings["model"])
        train = case.kind == "train"
        result = timing.measure(workload.step, workload.input_sets,
                                warmup=settings["warmup_train" if train else "warmup"],
                                rounds=settings["rounds_train" if train else "rounds"], device=device)
        row.update(median_ms=result.median * 1e3, mean_ms=result.mean * 1e3, min_ms=result.min * 1e3,
                   iqr_ms=result.iqr * 1e3, rounds=len(result.times), input_sets=len(workload.input_sets))
        row.update(metrics(workload, result.median, ceilings))
        row.update(measure_memory(workload))
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", reason=error_text(exc))
    except Exception as exc:
        row.update(status="error", reason=error_text(exc))
    finally:
        del workload
        if variant == "compiled":
            torch._dynamo.reset()
        release_memory(device)
    return row


def run_memory_variant(case: Case, variant: str, device, settings: dict) -> dict:
    """The largest-resolution search of one variant; never raises (errors go in the entry)."""
    cap = int(settings["memory_cap_gib"] * 2**30)
    entry = {"variant": variant, "dtype": DTYPE_NAMES[case.dtype], "batch": settings["memory_batch"],
             "cap_bytes": cap}
    reason = ("needs a CUDA GPU (torch.cuda.max_memory_allocated)" if device.type != "cuda"
              else unavailable_reason(variant, device) or model_unavailable_reason())
    if reason is not None:
        return dict(entry, error=f"skipped: {reason}")
    try:
        return max_resolution(variant, cap, settings["memory_batch"], case.dtype, device, settings["model"])
    except Exception as exc:
        release_memory(device)
        return dict(entry, error=error_text(exc))


def add_speedups(rows: list) -> None:
    """Speed-up of each row over the eager, compiled and timm rows of its case."""
    def key(r):
        return (r["kind"], r["pass"], r["shape"], r["dtype"])

    base = {}
    for r in rows:
        if r["status"] == "ok":
            base[key(r) + (r["variant"],)] = r["median_ms"]
    for r in rows:
        if r["status"] != "ok":
            continue
        for name, column in (("eager", "speedup_vs_eager"), ("compiled", "speedup_vs_compiled"),
                             ("timm", "speedup_vs_timm")):
            reference = base.get(key(r) + (name,))
            if reference is not None:
                r[column] = reference / r["median_ms"]
