"""The count build of the CUDA extension: the production sources with loop counters in host code.

``count_extension()`` builds (once, cached under ``cache_dir()``) the extension from ``csrc/`` with
``csrc/loop_counter.h`` of this package force-included into every kernel source: the host path
then counts every loop's entries, iterations and trip counts (``ff_loop_counts_json``). Only the host
path of this build runs: it is compiled with less optimisation (``COUNT_BUILD_OPTIMISATION``), which the
counts do not depend on: they are the counters' own arithmetic. Returns the module and a ctypes handle to the counters.
"""

from __future__ import annotations

import ctypes
import hashlib
from pathlib import Path
from typing import Tuple

from focalfast.ops.cuda import extension
from focalfast.static_cost.toolchain import cache_dir

COUNTER_HEADER = Path(__file__).resolve().parent / "csrc" / "loop_counter.h"
ARCHS = ("90",)
# Only the count build's host path runs, so it is built for speed of building: host code at -O1 (gcc at -O3
# was most of each step: the host path instantiates every kernel body), device code unoptimised PTX (no
# ptxas). Together about a third of the CPU time of the production flags.
COUNT_BUILD_OPTIMISATION = ("-O1", "-Xcicc", "-O0")


def _count_argv(argv: list, source: str) -> list:
    """A production build step's nvcc command with the counters force-included (kernel sources, binding)."""
    if source not in extension.CUDA_SOURCES + (extension.BINDING_SOURCE,):
        return argv  # the link
    argv = [flag for flag in argv if flag != "-O3"]
    if source == extension.BINDING_SOURCE:
        return [argv[0], "-include", str(COUNTER_HEADER), "-DFF_LOOP_COUNT_EXPORT", "-O1", *argv[1:]]
    gencode = argv.index("-gencode")
    argv[gencode:gencode + 2] = ["-gencode", f"arch=compute_{ARCHS[0]},code=compute_{ARCHS[0]}"]
    return [argv[0], "-include", str(COUNTER_HEADER), *COUNT_BUILD_OPTIMISATION, *argv[1:]]


def _build(output: Path, build_dir: Path, nvcc: str) -> None:
    steps = extension.build_steps(output, build_dir, extension.SOURCE_DIR, ARCHS, nvcc)
    steps = [step._replace(argv=_count_argv(list(step.argv), step.inputs[0].name if step.inputs else ""))
             for step in steps]
    extension.run_steps(steps, build_dir)  # parallel where ninja is


def count_extension() -> Tuple[object, ctypes.CDLL]:
    """The count build of the extension and its counters (``ff_loop_counts_json``, ``..._reset``)."""
    nvcc = extension.find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found: the CUDA static cost needs it (CUDA_HOME or PATH)")
    # The counters name source files by path, which the loop map matches against the cubins' line info:
    # a build from another checkout (same sources, other path) must not be reused.
    key = (extension.source_hash(extension.SOURCE_DIR, ARCHS) + COUNTER_HEADER.read_text() + " ".join(COUNT_BUILD_OPTIMISATION)
           + str(Path(extension.SOURCE_DIR).resolve()))
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
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
