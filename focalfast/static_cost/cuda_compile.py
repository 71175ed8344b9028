"""sm_90a cubins of the CUDA extension's kernel sources, and the kernel symbol of a recorded launch.

Each ``csrc/*.cu`` is compiled with ``nvcc -cubin -arch=sm_90a`` and the flags the extension's build
uses (``focalfast.ops.cuda.extension``: -O3, C++17, -lineinfo), cached by a hash of the sources,
the flags and nvcc's version. A launch names its kernel body by its C++ type (``Op``); the kernel
is the ``grid_kernel<Op>`` / ``sweep_kernel<Op>`` instantiation whose demangled symbol holds it.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

from focalfast.ops.cuda import extension
from focalfast.static_cost.cubin_cache import cached_cubin
from focalfast.static_cost.toolchain import run_tool, versions

ARCH = "sm_90a"


def cuda_cubins() -> List[Path]:
    """One cubin per kernel source of ``csrc/``."""
    nvcc = extension.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: the CUDA static cost needs it (CUDA_HOME or PATH)")
    sources = extension.SOURCE_DIR
    digest = extension.source_hash(sources, ["90"])
    flags = [*extension.COMMON_FLAGS, *extension.CUDA_FLAGS, f"-I{sources}", "-cubin", f"-arch={ARCH}"]
    nvcc_version = str(versions().get("nvcc"))

    def cubin_of(name: str) -> Path:
        def build(cubin: Path) -> dict:
            done = subprocess.run([nvcc, *flags, str(sources / name), "-o", str(cubin)], capture_output=True,
                                  text=True)
            if done.returncode != 0:
                raise RuntimeError(f"nvcc -cubin {name} failed:\n{done.stderr[-4000:]}")
            return {"source": name}

        folder, _ = cached_cubin("cuda", name, " ".join([digest, name, *flags, nvcc_version]), build)
        return folder / "kernel.cubin"

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one nvcc per source, side by side
        return list(pool.map(cubin_of, extension.CUDA_SOURCES))


@functools.lru_cache(maxsize=None)
def _symbols(cubin: Path) -> Dict[str, str]:
    """Demangled name (spaces removed) -> symbol of every kernel in ``cubin``."""
    text = run_tool("cuobjdump", "--dump-resource-usage", str(cubin))
    mangled = re.findall(r"Function ([^:\s]+):", text)
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout
    return {d.replace(" ", ""): m for m, d in zip(mangled, demangled.splitlines())}


def kernel_symbol(op: str) -> tuple:
    """``(cubin, symbol)`` of the kernel that runs body ``op`` (a demangled C++ type)."""
    wanted = "<" + op.replace(" ", "") + ">"
    for cubin in cuda_cubins():
        for name, symbol in _symbols(cubin).items():
            if wanted in name:
                return cubin, symbol
    raise LookupError(f"no kernel for {op!r} in the cubins of {extension.SOURCE_DIR}")
