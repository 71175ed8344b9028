"""Build and load the CUDA extension (``focalfast.ops.cuda._C``, sources in ``csrc/``).

The extension is plain CUDA + pybind11 with the CUDA runtime linked statically: nvcc alone builds it
(no CUDA torch, no torch headers), and it imports on machines without a GPU driver.

``load()`` takes, first that works:
1. the module ``setup.py`` built into this package (``pip install .`` / ``pip install -e .``), if it
   was built from the current sources (or there are no sources to compare with). Its source hash is read
   from the file (``built_hash``), not by importing it: a stale module, once imported, would shadow the
   rebuilt one for the rest of the process;
2. a JIT build with nvcc (through ninja where available) into ``~/.cache/focalfast/cuda/``.

The sources are the checkout's ``csrc/``, or in an installed wheel or sdist install the copy that
setup.py packs into ``focalfast/ops/cuda/csrc/`` (``SOURCE_DIR``). Each build step prints a
progress line to stderr (``pip install -v`` shows them during an install).

Environment:
    FOCALFAST_CUDA_ARCHS       target archs, e.g. "8.0;9.0" (the default) or "9.0a"
    FOCALFAST_SKIP_CUDA_BUILD  "1": setup.py does not build the extension
    CUDA_HOME / CUDA_PATH      where nvcc is (else PATH, else /usr/local/cuda)
    FOCALFAST_CACHE_DIR        the JIT cache (default ~/.cache/focalfast)

Only the standard library is imported at module level: setup.py loads this file by path, in a build
environment without torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Iterator, List, NamedTuple, Optional, Sequence

ARCHS_ENV = "FOCALFAST_CUDA_ARCHS"
SKIP_ENV = "FOCALFAST_SKIP_CUDA_BUILD"
DEFAULT_ARCHS = "8.0;9.0"

PACKAGE_DIR = Path(__file__).resolve().parent
CUDA_SOURCES = ("focal_modulation_fwd.cu", "focal_modulation_bwd.cu")
BINDING_SOURCE = "focal_modulation.cpp"
HEADERS = ("focal_modulation.h", "focal_modulation_common.cuh", "focal_modulation_sweep.cuh")
SOURCE_FILES = CUDA_SOURCES + (BINDING_SOURCE,) + HEADERS
# Where setup.py packs a copy of csrc/ into the package (wheels, non-editable installs).
PACKAGED_SOURCE_DIR = "csrc"


def has_sources(directory: Path) -> bool:
    """Whether ``directory`` holds every file the build needs."""
    return all((Path(directory) / name).is_file() for name in SOURCE_FILES)


def find_source_dir(package_dir: Path = PACKAGE_DIR) -> Path:
    """The CUDA sources: the copy packed into an installed package, else the checkout's ``csrc/``.

    Returns the checkout's path (which may not exist) when neither holds every source file.
    """
    checkout = package_dir.parents[2] / "csrc"
    return next((d for d in (package_dir / PACKAGED_SOURCE_DIR, checkout) if has_sources(d)), checkout)


SOURCE_DIR = find_source_dir()

# Host and device code: -O3, C++17, position-independent, warnings on (the CI test wants none).
COMMON_FLAGS = ("-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden,-Wall,-Wextra")
# -lineinfo: compute-sanitizer and ncu report source lines.
CUDA_FLAGS = ("-lineinfo",)
# cudart is nvcc's default static runtime; keep its symbols out of the module's exports.
LINK_FLAGS = ("-shared", "--cudart=static", "-Xlinker", "--exclude-libs,ALL")


class ExtensionUnavailableError(RuntimeError):
    """The CUDA extension can neither be imported nor built here; the message says why."""


class BuildError(RuntimeError):
    """A compile or link step failed; the message holds the end of the log."""


def extension_filename() -> str:
    """``_C`` plus this interpreter's extension suffix, e.g. ``_C.cpython-311-x86_64-linux-gnu.so``."""
    return "_C" + sysconfig.get_config_var("EXT_SUFFIX")


def cuda_archs(spec: Optional[str] = None) -> List[str]:
    """Target archs from ``spec`` (default: ``$FOCALFAST_CUDA_ARCHS`` or "8.0;9.0") as ``["80", "90"]``.

    Accepts "8.0;9.0", "80 90", "8.0,9.0a"; raises ValueError for anything else.
    """
    if spec is None:
        spec = os.environ.get(ARCHS_ENV, "").strip() or DEFAULT_ARCHS
    archs = []
    for item in re.split(r"[;,\s]+", spec.strip()):
        match = re.fullmatch(r"(\d+)\.?(\d)(a?)", item)
        if not match:
            raise ValueError(f"{ARCHS_ENV}: expected archs like '8.0;9.0' or '90a', got {spec!r}")
        archs.append(match.group(1) + match.group(2) + match.group(3))
    return archs


def gencode_flags(archs: Sequence[str]) -> List[str]:
    """nvcc ``-gencode`` flags: machine code for each arch, plus PTX of the last (newer GPUs JIT it)."""
    flags = []
    for i, arch in enumerate(archs):
        code = f"[sm_{arch},compute_{arch}]" if i == len(archs) - 1 else f"sm_{arch}"
        flags += ["-gencode", f"arch=compute_{arch},code={code}"]
    return flags


def find_nvcc() -> Optional[str]:
    """Path of nvcc: ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin``, PATH, then /usr/local/cuda/bin; or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def skip_build_reason() -> Optional[str]:
    """Why setup.py should not build the extension (skip requested, no nvcc); None to build."""
    if os.environ.get(SKIP_ENV, "0") not in ("", "0"):
        return f"{SKIP_ENV}={os.environ[SKIP_ENV]}"
    if find_nvcc() is None:
        return "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
    return None


def source_hash(source_dir: Path = SOURCE_DIR, archs: Optional[Sequence[str]] = None) -> str:
    """sha256 over the sources, the build flags and the archs: what a built module must match."""
    archs = cuda_archs() if archs is None else list(archs)
    digest = hashlib.sha256()
    for name in sorted(SOURCE_FILES):
        digest.update(name.encode() + b"\0" + (Path(source_dir) / name).read_bytes() + b"\0")
    flags = COMMON_FLAGS + CUDA_FLAGS + LINK_FLAGS + tuple(gencode_flags(archs))
    digest.update(" ".join(flags).encode())
    return digest.hexdigest()


class Step(NamedTuple):
    """One build step: ``argv`` makes ``output`` from ``inputs``; ``deps`` only trigger rebuilds."""

    output: Path
    inputs: List[Path]
    deps: List[Path]
    argv: List[str]


def build_steps(output: Path, build_dir: Path, source_dir: Path, archs: Sequence[str], nvcc: str,
                python_include: Optional[str] = None) -> List[Step]:
    """The compile steps (one per source) and the link step, in dependency order. ``python_include``: the
    Python.h directory of the interpreter the module is for (default: this one's)."""
    import pybind11  # a build-time dependency (pyproject's build-system requires)

    headers = [source_dir / h for h in HEADERS]
    python_include = python_include or sysconfig.get_paths()["include"]
    binding_flags = [f"-I{pybind11.get_include()}", f"-I{python_include}",
                     f'-DFOCALFAST_SOURCE_HASH="{source_hash(source_dir, archs)}"']
    steps = []
    for name in CUDA_SOURCES + (BINDING_SOURCE,):
        source, obj = source_dir / name, build_dir / (name + ".o")
        flags = binding_flags if name == BINDING_SOURCE else [*CUDA_FLAGS, *gencode_flags(archs)]
        argv = [nvcc, *COMMON_FLAGS, f"-I{source_dir}", *flags, "-c", str(source), "-o", str(obj)]
        steps.append(Step(obj, [source], headers, argv))
    objects = [step.output for step in steps]
    steps.append(Step(output, objects, [], [nvcc, *LINK_FLAGS, *map(str, objects), "-o", str(output)]))
    return steps


def _ninja_path(path: Path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def _write_ninja_file(build_dir: Path, steps: Sequence[Step]) -> None:
    lines = ["ninja_required_version = 1.3", "rule run", "  command = $cmd", "  description = $desc", ""]
    for step in steps:
        line = f"build {_ninja_path(step.output)}: run " + " ".join(map(_ninja_path, step.inputs))
        if step.deps:
            line += " | " + " ".join(map(_ninja_path, step.deps))
        lines += [line, "  cmd = " + shlex.join(step.argv).replace("$", "$$"), f"  desc = {step.output.name}", ""]
    (build_dir / "build.ninja").write_text("\n".join(lines))


def _print_progress(done: int, total: int, command: str) -> None:
    """One line per build step on stderr, e.g. ``[2/4] focal_modulation_bwd.cu.o`` (commands end ``-o OUT``)."""
    output = Path(command.rsplit(" -o ", 1)[-1].strip().strip("'")).name
    print(f"focalfast: CUDA extension [{done}/{total}] {output}", file=sys.stderr, flush=True)


def _run_logged(argv: Sequence[str], log: List[str]) -> int:
    """Run ``argv``, appending its output to ``log``; ninja's ``[i/n] command`` lines become progress."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            log.append(line)
            status = re.match(r"\[(\d+)/(\d+)\] (.*)", line)
            if status:
                _print_progress(int(status.group(1)), int(status.group(2)), status.group(3))
    return process.returncode


def build(
    output: Path,
    build_dir: Path,
    source_dir: Path = SOURCE_DIR,
    archs: Optional[Sequence[str]] = None,
    nvcc: Optional[str] = None,
    python_include: Optional[str] = None,
) -> str:
    """Compile ``csrc/`` and link the module to ``output``; returns the build log (``run_steps``).
    ``python_include`` builds it for another interpreter (``build_steps``). Raises BuildError if a step
    fails, ExtensionUnavailableError without nvcc."""
    archs = cuda_archs() if archs is None else list(archs)
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise ExtensionUnavailableError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    output, build_dir = Path(output).resolve(), Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    staged = build_dir / output.name  # linked here, then moved: a reader never sees half a file
    steps = build_steps(staged, build_dir, Path(source_dir).resolve(), archs, nvcc, python_include)
    print(f"focalfast: building the CUDA extension for sm_{', sm_'.join(archs)} in {len(steps)} steps "
          f"(nvcc, a few minutes)", file=sys.stderr, flush=True)
    text = run_steps(steps, build_dir)
    os.replace(staged, output)
    return text


def run_steps(steps: Sequence[Step], build_dir: Path) -> str:
    """Run ``steps`` (from ``build_steps``, possibly with changed flags) and return the log, also kept in
    ``build_dir/build.log``. Runs ninja (parallel, incremental) when it is on PATH, else the steps one by
    one; raises BuildError with the end of the log if a step fails."""
    ninja = shutil.which("ninja")
    if ninja:
        _write_ninja_file(build_dir, steps)
        runs = [[ninja, "-C", str(build_dir), "-v"]]
    else:
        runs = [step.argv for step in steps]
    log = []
    for index, argv in enumerate(runs):
        if not ninja:
            _print_progress(index + 1, len(steps), shlex.join(argv))
        returncode = _run_logged(argv, log)
        if returncode != 0:
            text = "".join(log)
            (build_dir / "build.log").write_text(text)
            raise BuildError(f"building the CUDA extension failed (log: {build_dir / 'build.log'}):\n"
                             + "\n".join(text.splitlines()[-40:]))
    text = "".join(log)
    (build_dir / "build.log").write_text(text)
    return text


def cache_dir() -> Path:
    """Where JIT builds go: ``$FOCALFAST_CACHE_DIR`` or ``~/.cache/focalfast``, then ``cuda/``."""
    root = os.environ.get("FOCALFAST_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "focalfast"
    return Path(root) / "cuda"


def built_hash(path: Path) -> Optional[str]:
    """The source hash an extension file was built from, read through its C symbol without importing it (once a
    module named focalfast.ops.cuda._C is imported, importing another file of that name gives the first one back, so
    a stale build must never be imported); None if the file cannot be loaded or predates the symbol."""
    try:
        getter = ctypes.CDLL(str(path)).focalfast_source_hash
    except (OSError, AttributeError):
        return None
    getter.restype = ctypes.c_char_p
    return getter().decode()


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("focalfast.ops.cuda._C", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jit_build(wanted_hash: str, archs: Sequence[str]) -> Path:
    import fcntl

    tag = wanted_hash[:16] + "-" + sysconfig.get_config_var("EXT_SUFFIX").strip(".").replace(".", "-")
    directory = cache_dir() / tag
    path = directory / extension_filename()
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "lock", "w") as lock:  # one builder at a time (e.g. pytest-xdist workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            build(path, directory / "build", archs=archs)
    return path


def _find_or_build() -> ModuleType:
    try:
        archs = cuda_archs()
    except ValueError as exc:
        raise ExtensionUnavailableError(str(exc)) from None
    have_sources = has_sources(SOURCE_DIR)
    wanted = source_hash(SOURCE_DIR, archs) if have_sources else None
    prebuilt = PACKAGE_DIR / extension_filename()
    if prebuilt.is_file() and (wanted is None or built_hash(prebuilt) == wanted):
        try:
            return _import(prebuilt)
        except (ImportError, OSError):  # e.g. built for another interpreter: build a fresh one
            pass
    if not have_sources:
        raise ExtensionUnavailableError(
            "focalfast was installed without its CUDA extension and the csrc/ sources are not here to build "
            "it; reinstall from a source checkout with nvcc on PATH (pip install .)")
    if find_nvcc() is None:
        raise ExtensionUnavailableError(
            "the CUDA extension is not built and nvcc was not found to build it (install the CUDA toolkit, "
            "set CUDA_HOME or put nvcc on PATH, then reinstall or retry)")
    try:
        import pybind11  # noqa: F401
    except ImportError:
        raise ExtensionUnavailableError(
            "building the CUDA extension needs pybind11 (pip install pybind11)") from None
    try:
        return _import(_jit_build(wanted, archs))
    except BuildError as exc:
        raise ExtensionUnavailableError(str(exc)) from None


_module: Optional[ModuleType] = None
_error: Optional[str] = None


def load() -> ModuleType:
    """The extension module, imported or built on first call; ExtensionUnavailableError says why not."""
    global _module, _error
    if _module is None and _error is None:
        try:
            _module = _find_or_build()
        except (ExtensionUnavailableError, ImportError, OSError) as exc:
            _error = str(exc)
    if _module is None:
        raise ExtensionUnavailableError(_error)
    return _module


def unavailable_reason() -> Optional[str]:
    """Why the CUDA extension cannot be used here (None if it can); builds it on first call if needed."""
    try:
        load()
    except ExtensionUnavailableError as exc:
        return str(exc)
    return None


@contextlib.contextmanager
def recorded_launches(module: ModuleType) -> Iterator[List[dict]]:
    """Within the block, the extension ``module``'s launchers record their launches and run none of them;
    yields the list that holds the records (``name``, ``op``: the kernel body's C++ type, ``blocks``,
    ``threads``, ``smem_bytes``) once the block ends."""
    records: List[dict] = []
    module.set_record_launches(True)
    try:
        yield records
    finally:
        module.set_record_launches(False)
        records.extend(module.take_recorded_launches())
