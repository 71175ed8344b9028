"""Per-op records of the static cost report, and its table, markdown and JSON."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable, List

from focalfast.static_cost import model
from focalfast.static_cost.cases import Case
from focalfast.static_cost.kernel_record import KernelRecord
from focalfast.static_cost.toolchain import versions
from focalfast.static_cost.torch_ops import TorchOp

TOP_CLASSES = ("fma", "fp_other", "integer", "global_load", "shared_load", "sync", "tensor")


def op_record(backend: str, direction: str, case: Case, kernels: List[KernelRecord], torch_ops: List[TorchOp],
              sm_count: int) -> dict:
    """One op call (forward or backward) of one backend on one case."""
    n = case.elements
    kernel_dicts = [k.as_dict(n, sm_count) for k in kernels]
    total = sum(k.cost.warp_instructions for k in kernels)
    torch_bytes = sum(op.bytes for op in torch_ops)
    by_class = {}
    for k in kernel_dicts:
        for cls, v in k["by_class"].items():
            by_class[cls] = by_class.get(cls, 0.0) + v
    _check_fma_floor(backend, direction, case, by_class)
    hbm = model.hbm_floor_bytes(case, direction)
    H, W, C = case.shape
    return {
        "backend": backend, "direction": direction, "stage": case.stage, "levels": case.levels,
        "kernel_sizes": list(case.kernel_sizes), "dtype": case.dtype, "layout": case.layout,
        "batch": case.batch, "height": H, "width": W, "channels": C, "elements": n, "sm_count": sm_count,
        "warp_instr_per_elem": total / n,
        "warp_instr_per_elem_min": sum(k.cost.warp_instructions_min for k in kernels) / n,
        "fma_floor_per_elem": model.fma_floor_per_elem(case, direction),
        "by_class": by_class,
        "hbm_floor_bytes": hbm, "hbm_floor_bytes_per_elem": hbm / n, "hbm_floor_us": model.hbm_seconds(hbm) * 1e6,
        "torch_ops": [{"op": op.name, "bytes": op.bytes} for op in torch_ops],
        "torch_ops_bytes": torch_bytes,
        "model_time_us": (model.issue_seconds(total, sm_count) + model.hbm_seconds(torch_bytes)) * 1e6,
        "kernels": kernel_dicts,
    }


def _check_fma_floor(backend: str, direction: str, case: Case, by_class: dict) -> None:
    """Every tap of every level is at least one multiply-add per element (an FMA lane, or part of a
    tensor-core instruction): a count far below the FMA floor means loops went uncounted (for
    example line info that names other source files than the loop counters), not a fast kernel."""
    floor = model.fma_floor_per_elem(case, direction)
    counted = by_class.get("fma", 0.0) + by_class.get("tensor", 0.0)
    if counted < 0.5 * floor:
        raise RuntimeError(f"{backend} {direction} {case.describe()}: {counted:.2f} FMA and tensor-core "
                           f"warp-instructions per element, under half the FMA floor {floor:.2f}: the count "
                           "missed the kernels' loops")


def current_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "csrc", "focalfast/ops"],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def header(commit: str) -> dict:
    """Commit, date and tool versions of a report."""
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "target": "sm_90a", "model": model.describe()}


def _name(rec: dict) -> str:
    return f"{rec['backend']} {rec['direction']} s{rec['stage']} {rec['levels']} {rec['dtype']} {rec['layout']}"


def table(records: Iterable[dict], markdown: bool) -> str:
    """Ops (and their kernels) as a fixed-width or markdown table; counts per output element."""
    cols = ["op", "warp-instr/elem", "min", "FMA floor", "x floor", "HBM floor B/elem", "HBM floor us", "torch B/elem",
            "model us",
            "kernel", "regs", "spill B", "smem B", "CTAs/SM", "warps/SM"] + list(TOP_CLASSES)
    rows = []
    for rec in records:
        rows.append([_name(rec), f"{rec['warp_instr_per_elem']:.2f}", f"{rec['warp_instr_per_elem_min']:.2f}",
                     f"{rec['fma_floor_per_elem']:.2f}",
                     f"{rec['warp_instr_per_elem'] / rec['fma_floor_per_elem']:.1f}",
                     f"{rec['hbm_floor_bytes_per_elem']:.1f}", f"{rec['hbm_floor_us']:.0f}",
                     f"{rec['torch_ops_bytes'] / rec['elements']:.2f}", f"{rec['model_time_us']:.0f}", "(all)",
                     "", "", "", "", ""]
                    + [f"{rec['by_class'].get(c, 0):.2f}" for c in TOP_CLASSES])
        for k in rec["kernels"]:
            rows.append(["", f"{k['warp_instr_per_elem']:.2f}", f"{k['warp_instr_per_elem_min']:.2f}", "", "", "", "",
                         "", "", k["kernel"], str(k["regs"]),
                         str(k["spill_bytes"]), str(k["smem_bytes"]), str(k["ctas_per_sm"]), str(k["warps_per_sm"])]
                        + [f"{k['by_class'].get(c, 0):.2f}" for c in TOP_CLASSES])
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    fmt = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(cols)] + [fmt(r) for r in rows])


def write(records: List[dict], stem: Path, commit: str) -> None:
    """``stem.json`` (header + records) and ``stem.md`` (header + table); ``commit``: of the code
    that made the records (taken when the run started)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    head = header(commit)
    stem.with_suffix(".json").write_text(json.dumps({**head, "records": records}, indent=1) + "\n")
    md = [f"# Static cost report ({head['commit']}, {head['date']})", "",
          f"Triton {head['versions'].get('triton')}, nvcc {head['versions'].get('nvcc')}, "
          f"nvdisasm {head['versions'].get('nvdisasm')}, target {head['target']}. Counts are dynamic "
          "warp-instructions per output element (B x H x W x C) from the sm_90a SASS; times are a ",
          f"{head['model']}. \"min\": a lower bound that counts, inside loops, only the blocks every iteration "
          "runs (the main count takes every branch in a loop body); CUDA branches whose counts the host path "
          "gives (a counted `if`, the set-up of an inner loop) count in both as often as they ran. \"torch B/elem\": bytes read and written by the PyTorch operators the backend runs "
          "around its kernels (listed per op in the JSON; their instructions are not counted).", "",
          table(records, markdown=True), ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", file=sys.stderr)
