"""Packaging: the wheel carries the CUDA sources (so an install can JIT-build its extension), the sdist
carries the tests and benchmarks, a stale ``build/`` never ships an old extension, and each nvcc step
of a build prints a progress line.

The builds run on a copy of the checkout (nothing is written into it), offline (no build isolation:
setuptools and pybind11 are installed with the package) and with ``FOCALFAST_SKIP_CUDA_BUILD=1``.
"""

import importlib.util
import os
import re
import runpy
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from focalfast.ops.cuda import extension

REPO = Path(__file__).resolve().parents[1]
PACKAGED_SOURCES = "focalfast/ops/cuda/" + extension.PACKAGED_SOURCE_DIR
# Build outputs and caches that a copy of the checkout leaves behind (as .gitignore does).
NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "runs",
                                     ".pytest_cache", ".benchmarks", ".whl", ".device-out")


def run(cmd, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, **{extension.SKIP_ENV: "1"})
    result = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout
    return result


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the checkout's sources, with a stale extension in build/ as an earlier build leaves it."""
    root = tmp_path_factory.mktemp("checkout") / "focalfast"
    shutil.copytree(REPO, root, ignore=NOT_SOURCES)
    build_lib = root / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
    stale = build_lib / "focalfast" / "ops" / "cuda" / extension.extension_filename()
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an extension from an earlier build")
    return root


def test_wheel_ships_cuda_sources_and_no_stale_extension(checkout, tmp_path):
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist")], cwd=checkout)
    (wheel,) = (tmp_path / "dist").glob("focalfast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(".so")], "a skipped CUDA build shipped an old extension"
    assert {f"{PACKAGED_SOURCES}/{n}" for n in extension.SOURCE_FILES} <= set(names)
    assert "focalfast/ops/cuda/extension.py" in names and "focalfast/cli.py" in names

    # Installed (a wheel unpacks as it is), the extension's JIT build finds the packed sources.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    spec = importlib.util.spec_from_file_location("installed_extension", site / "focalfast/ops/cuda/extension.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.SOURCE_DIR == site / PACKAGED_SOURCES
    assert installed.source_hash(installed.SOURCE_DIR, ["80"]) == extension.source_hash(REPO / "csrc", ["80"])


def test_sdist_ships_sources_tests_and_benchmarks(checkout, tmp_path):
    run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=checkout)
    (sdist,) = tmp_path.glob("focalfast-*.tar.gz")
    names = {name.split("/", 1)[1] for name in tarfile.open(sdist).getnames() if "/" in name}
    expected = {"setup.py", "pyproject.toml", "README.md", "tests/conftest.py", "benchmarks/conftest.py",
                "focalfast/ops/cuda/extension.py", *(f"csrc/{n}" for n in extension.SOURCE_FILES)}
    expected |= {str(p.relative_to(REPO)) for p in [*REPO.glob("tests/*.py"), *REPO.glob("benchmarks/*.py")]}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if n.endswith((".so", ".pyc"))]


def test_source_dir_is_the_checkouts_csrc_in_a_checkout():
    assert extension.find_source_dir(REPO / "focalfast" / "ops" / "cuda") == REPO / "csrc"


@pytest.mark.parametrize("ninja", [True, False], ids=["ninja", "steps"])
def test_build_prints_a_progress_line_per_step(tmp_path, capfd, monkeypatch, ninja):
    """With a stand-in nvcc that only writes its ``-o`` output, each compile and the link say so."""
    pytest.importorskip("pybind11")
    if ninja and shutil.which("ninja") is None:
        pytest.skip("ninja is not on PATH")
    if not ninja:
        monkeypatch.setattr(extension.shutil, "which", lambda name: None)
    nvcc = tmp_path / "nvcc"
    nvcc.write_text('#!/bin/sh\nfor last do :; done\ntouch "$last"\n')
    nvcc.chmod(0o755)
    output = tmp_path / "out" / extension.extension_filename()
    extension.build(output, tmp_path / "build", source_dir=REPO / "csrc", archs=["80"], nvcc=str(nvcc))
    assert output.is_file()
    progress = re.findall(r"^focalfast: CUDA extension \[(\d+)/(\d+)\] (\S+)$", capfd.readouterr().err, re.M)
    steps = len(extension.CUDA_SOURCES) + 2  # each CUDA source, the binding, the link
    assert sorted(int(done) for done, _, _ in progress) == list(range(1, steps + 1))
    assert {int(total) for _, total, _ in progress} == {steps}
    assert {name for _, _, name in progress} == {
        *(f"{n}.o" for n in extension.CUDA_SOURCES + (extension.BINDING_SOURCE,)), output.name}


def test_a_module_for_another_python_compiles_its_binding_against_that_pythons_headers(tmp_path):
    """scripts/build_cuda_module.py (a module built here, carried to the GPU machine): the binding step reads the
    target's Python.h, the CUDA steps do not depend on it, and the script names a bad --python or --archs."""
    pytest.importorskip("pybind11")
    target = tmp_path / "include" / "python3.99"
    steps = extension.build_steps(tmp_path / "_C.so", tmp_path, REPO / "csrc", ["90"], "nvcc", str(target))
    binding = next(step for step in steps if step.inputs and step.inputs[0].name == extension.BINDING_SOURCE)
    assert f"-I{target}" in binding.argv
    assert f"-I{sysconfig.get_paths()['include']}" not in binding.argv
    assert all(f"-I{target}" not in step.argv for step in steps if step is not binding)
    script = SimpleNamespace(**runpy.run_path(str(REPO / "scripts/build_cuda_module.py")))
    include, suffix = script.python_paths(sys.executable)
    assert (Path(include) / "Python.h").is_file() and suffix == sysconfig.get_config_var("EXT_SUFFIX")
    with pytest.raises(SystemExit, match="--python: cannot run"):
        script.main(["--python", str(tmp_path / "no-such-python")])
    with pytest.raises(SystemExit, match="--archs"):
        script.main(["--python", sys.executable, "--archs", "ninety"])
