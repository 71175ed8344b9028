"""Build script: the pure-Python package, plus the CUDA extension when nvcc is present.

The extension ``focalfast.ops.cuda._C`` is plain CUDA + pybind11 (``csrc/``, no torch headers), so it
builds with nvcc alone, without a GPU or a CUDA torch. Environment:

    FOCALFAST_CUDA_ARCHS="8.0;9.0"   target archs (the default)
    FOCALFAST_SKIP_CUDA_BUILD=1      do not build the extension

A missing nvcc or a failed build never fails the install: it warns, and the CUDA backend later builds
itself on first use (JIT, see ``focalfast/ops/cuda/extension.py``) or reports why it is unavailable.
For that, every built package (wheel, non-editable install) carries a copy of ``csrc/`` in
``focalfast/ops/cuda/csrc/``. Each nvcc step prints a progress line (``pip install -v`` shows them).
"""

import importlib.util
import os
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _cuda_build_helper():
    """``focalfast/ops/cuda/extension.py`` loaded by path: importing the package would need torch."""
    spec = importlib.util.spec_from_file_location("_focalfast_cuda_build", HERE / "focalfast/ops/cuda/extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildCudaExtension(build_ext):
    """Builds the CUDA extension with nvcc; warns and carries on where it cannot."""

    def build_extension(self, ext):
        helper = _cuda_build_helper()
        output = Path(self.get_ext_fullpath(ext.name))
        output.unlink(missing_ok=True)  # a module left in build/ by an earlier build must not ship now
        reason = helper.skip_build_reason()
        if reason:
            print(f"focalfast: not building the CUDA extension: {reason}", flush=True)
            return
        try:
            helper.build(output, Path(self.build_temp) / "focalfast_cuda", source_dir=HERE / "csrc")
            print(f"focalfast: built the CUDA extension {output}", flush=True)
        except Exception as exc:  # never fail the install: the backend reports it when asked for
            self.warn(f"focalfast: building the CUDA extension failed; the CUDA backend will retry on first "
                      f"use. {exc}")

    def get_outputs(self):
        # Only what was built: a skipped or failed extension is no output to install.
        return [path for path in super().get_outputs() if os.path.exists(path)]


class BuildPyWithCudaSources(build_py):
    """Packs a fresh copy of ``csrc/`` into ``focalfast/ops/cuda/csrc/`` so that an installed package
    whose extension is missing or does not load can JIT-build it. Editable installs use ``csrc/``."""

    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib, "focalfast", "ops", "cuda", _cuda_build_helper().PACKAGED_SOURCE_DIR)
        shutil.rmtree(target, ignore_errors=True)  # no file deleted from csrc/ survives in build/
        shutil.copytree(HERE / "csrc", target)


setup(
    # optional: editable installs copy it into the source tree only if it was built.
    ext_modules=[Extension("focalfast.ops.cuda._C", sources=[], optional=True)],
    cmdclass={"build_ext": BuildCudaExtension, "build_py": BuildPyWithCudaSources},
)
