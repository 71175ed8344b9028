"""What a run records about where it ran: device, library versions, commit and date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

from focalfast import timing


def git_commit() -> str:
    """``FOCALFAST_COMMIT`` if set (the GPU machine gets no .git), else ``git`` (+ ``-dirty``)."""
    if os.environ.get("FOCALFAST_COMMIT"):
        return os.environ["FOCALFAST_COMMIT"]
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment(device) -> dict:
    """Device, library versions, commit and date of a run."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    env = {
        "device_type": device.type,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(memory_bytes=props.total_memory, sm_count=props.multi_processor_count,
                   l2_bytes=timing.l2_cache_bytes(device), cudnn_benchmark=torch.backends.cudnn.benchmark)
        matmul = torch.backends.cuda.matmul  # fp32_precision since torch 2.9; reading both APIs can raise
        env["matmul_fp32_precision"] = (matmul.fp32_precision if hasattr(matmul, "fp32_precision")
                                        else ("tf32" if matmul.allow_tf32 else "ieee"))
    return env
