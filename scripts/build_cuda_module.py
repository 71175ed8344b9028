"""Build the CUDA extension module here for another machine's Python, to carry it there prebuilt.

    python scripts/build_cuda_module.py --python ~/.pyenv/versions/3.12.1/bin/python3.12 --archs 9.0

writes ``focalfast/ops/cuda/_C<that Python's extension suffix>`` (ignored by git) from ``csrc/``, compiled
with this machine's nvcc against that Python's headers; the module needs no torch, so the target's torch
version does not matter. The loader imports a module there only when its source hash matches, that is with
the same sources and the same ``FOCALFAST_CUDA_ARCHS`` (``scripts/gpu_all.sh`` sets "9.0" on an H200).
Why: the lent GPU machine's nvcc build of csrc/ ran past 200 s of a 15-minute lease (2026-12-04), while
here it takes about 2.5 minutes of no one's lease. Runs with the standard library and pybind11 only.
"""

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_extension_helper():
    """``focalfast/ops/cuda/extension.py`` by path: importing the package would need torch."""
    spec = importlib.util.spec_from_file_location("_focalfast_cuda_build", REPO / "focalfast/ops/cuda/extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_paths(python: str):
    """``(include directory, extension suffix)`` of the interpreter ``python``."""
    code = "import json, sysconfig; print(json.dumps([sysconfig.get_paths()['include'], " \
           "sysconfig.get_config_var('EXT_SUFFIX')]))"
    try:
        out = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--python: cannot run {python!r} to ask for its headers: {exc}") from None
    include, suffix = json.loads(out)
    if not (Path(include) / "Python.h").is_file():
        raise SystemExit(f"--python: {python} has no Python.h in {include} (install its development headers)")
    return include, suffix


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", required=True, help="the target machine's Python version, as an interpreter here")
    parser.add_argument("--archs", default="9.0", help="FOCALFAST_CUDA_ARCHS of the target (default 9.0: H100/H200)")
    args = parser.parse_args(argv)
    ext = load_extension_helper()
    try:
        archs = ext.cuda_archs(args.archs)
    except ValueError as exc:
        raise SystemExit(f"--archs: {exc}") from None
    include, suffix = python_paths(args.python)
    output = ext.PACKAGE_DIR / ("_C" + suffix)
    build_dir = ext.cache_dir() / ("prebuilt" + suffix.replace(".", "-")) / "build"
    start = time.time()
    ext.build(output, build_dir, archs=archs, python_include=include)
    wanted = ext.source_hash(ext.SOURCE_DIR, archs)
    print(f"built {output.relative_to(REPO)} for sm_{', sm_'.join(archs)} and {suffix} in {time.time() - start:.0f} s; "
          f"source hash {wanted[:16]} (the loader there imports it with FOCALFAST_CUDA_ARCHS={args.archs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
