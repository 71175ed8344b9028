"""The count build of the CUDA extension: the production sources with loop counters in host code.

``count_extension()`` builds (once, cached under ``cache_dir()``) the extension from ``csrc/`` with
``csrc/loop_counter.h`` of this package force-included into every kernel source: the host path
then counts every loop's entries, iterations and trip counts (``ff_loop_counts_json``), while the
device code is untouched. Returns the module and a ctypes handle to the counters.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
from pathlib import Path
from typing import Tuple

from focalfast.ops.cuda import extension
from focalfast.static_cost.toolchain import cache_dir

COUNTER_HEADER = Path(__file__).resolve().parent / "csrc" / "loop_counter.h"
ARCHS = ("90",)


def _build(output: Path, build_dir: Path, nvcc: str) -> None:
    steps = extension.build_steps(output, build_dir, extension.SOURCE_DIR, ARCHS, nvcc)
    for step in steps:
        argv = list(step.argv)
        source = step.inputs[0].name if step.inputs else ""
        if source in extension.CUDA_SOURCES:
            argv[1:1] = ["-include", str(COUNTER_HEADER)]
        elif source == extension.BINDING_SOURCE:
            argv[1:1] = ["-include", str(COUNTER_HEADER), "-DFF_LOOP_COUNT_EXPORT"]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"count build step for {step.output.name} failed:\n{done.stderr[-4000:]}")


def count_extension() -> Tuple[object, ctypes.CDLL]:
    """The count build of the extension and its counters (``ff_loop_counts_json``, ``..._reset``)."""
    nvcc = extension.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: the CUDA static cost needs it (CUDA_HOME or PATH)")
    # The counters name source files by path, which the loop map matches against the cubins' line info:
    # a build from another checkout (same sources, other path) must not be reused.
    digest = hashlib.sha256((extension.source_hash(extension.SOURCE_DIR, ARCHS) + COUNTER_HEADER.read_text()
                             + str(Path(extension.SOURCE_DIR).resolve())).encode()).hexdigest()[:24]
    folder = cache_dir() / f"cuda-count-{digest}"
    path = folder / extension.extension_filename()
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        staged = folder / "build" / path.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        _build(staged, folder / "build", nvcc)
        staged.replace(path)
    module = extension._import(path)
    lib = ctypes.CDLL(str(path))
    lib.ff_loop_counts_json.restype = ctypes.c_char_p
    return module, lib
