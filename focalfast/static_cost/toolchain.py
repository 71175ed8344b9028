"""The tools of the static cost report: the cache directory, nvdisasm / cuobjdump and versions."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional


def cache_dir() -> Path:
    """``$FOCALFAST_STATIC_COST_CACHE`` or ``~/.cache/focalfast/static_cost``: compiled cubins by hash."""
    path = os.environ.get("FOCALFAST_STATIC_COST_CACHE") or Path.home() / ".cache" / "focalfast" / "static_cost"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _triton_bin() -> Optional[Path]:
    try:
        import triton
    except ImportError:
        return None
    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@functools.lru_cache(maxsize=None)
def tool(name: str) -> str:
    """Path of ``nvdisasm``, ``cuobjdump`` or ``nvcc``: Triton's NVIDIA backend first, then PATH."""
    bin_dir = _triton_bin()
    if bin_dir is not None and (bin_dir / name).exists():
        return str(bin_dir / name)
    found = shutil.which(name) or (shutil.which(name, path="/usr/local/cuda/bin"))
    if found is None:
        raise FileNotFoundError(f"{name} not found in Triton's NVIDIA backend or on PATH")
    return found


def run_tool(name: str, *args: str) -> str:
    """stdout of ``name args``; a failure raises with the tool's stderr."""
    done = subprocess.run([tool(name), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


@functools.lru_cache(maxsize=None)
def versions() -> dict:
    """Triton, nvcc and nvdisasm versions (None where missing)."""
    out = {}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    for name in ("nvcc", "nvdisasm"):
        try:
            text = run_tool(name, "--version")
            match = re.search(r"release ([\d.]+), V([\d.]+)", text)
            out[name] = match.group(2) if match else text.strip().splitlines()[-1]
        except (FileNotFoundError, RuntimeError):
            out[name] = None
    return out
