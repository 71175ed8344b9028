"""The CUDA C++ backend's own paths (csrc/, focalfast/ops/cuda/).

The checks every backend passes (parity, layouts, determinism, saved tensors, opcheck, compile,
unsupported configurations) are in ``test_backend_contract.py``, which runs this backend's host
path without a GPU. Here: nvcc builds the extension through setup.py for sm_80 and sm_90 and the
module imports; the install skips or survives a failed build; the kernel bodies, which the
extension can run serially on the host for CPU tensors (the same code as the GPU threads run; the
fused sweep kernels run their blocks one after the other, each phase's items in order between
barriers, with shared memory as a host array), against the float64 reference on every path (fused
sweep with several chunk sizes and bands, level-at-a-time fallback); the chunk and band choices; the
binding's argument checks. With a GPU: the correctness matrix at FocalNet-T's stage shapes, the
current stream, and the sanitizer entry point.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalfast.ops.cuda import extension
from focalfast.ops.cuda import focal_modulation as cuda_op
from focalfast.ops.cuda.focal_modulation import _Kernels, focal_modulation_cuda
from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref
from focalfast.testing import (GRAD_NAMES, check_against_reference, differentiable, focal_case, random_focal_inputs,
                               rel_err, saved_for_backward)

CPU = torch.device("cpu")

REPO = Path(__file__).resolve().parents[1]
KERNEL_NAMES = {"context_fwd", "context_bwd", "conv_level_fwd", "output_fwd", "reduce_sum", "output_bwd",
                "conv_level_bwd", "weight_grad", "conv_adjoint"}

needs_nvcc = pytest.mark.skipif(extension.find_nvcc() is None, reason="nvcc not found (no CUDA toolkit)")


# --------------------------------------------------------------------------------------------------
# Build: nvcc through setup.py, the skip switch, a failing compiler, the arch list
# --------------------------------------------------------------------------------------------------


def run_setup_build_ext(tmp_path: Path, **env_overrides) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (extension.SKIP_ENV, extension.ARCHS_ENV)}
    env.update(env_overrides)
    cmd = [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
           "--build-temp", str(tmp_path / "temp")]
    return subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)


# Imports the module at argv[1] and prints [its file, kernel names, version, source hash] as JSON.
PROBE_MODULE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("focalfast.ops.cuda._C", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps([module.__file__, module.kernel_names(), module.version(), module.source_hash()]))
"""


def built_module_path(tmp_path: Path) -> Path:
    return tmp_path / "lib" / "focalfast" / "ops" / "cuda" / extension.extension_filename()


@pytest.mark.slow
@needs_nvcc
def test_setup_py_builds_sm80_sm90_module_that_imports(tmp_path):
    """A fresh build of every source for sm_80 and sm_90, warning-free; the module imports (no driver here)."""
    pytest.importorskip("pybind11")
    result = run_setup_build_ext(tmp_path, FOCALFAST_CUDA_ARCHS="8.0;9.0")
    assert result.returncode == 0, result.stdout
    path = built_module_path(tmp_path)
    assert path.is_file(), f"no module built; setup.py said:\n{result.stdout}"
    log = (tmp_path / "temp" / "focalfast_cuda" / "build.log").read_text()
    for source in extension.CUDA_SOURCES:
        compile_line = next(line for line in log.splitlines() if f"-c {REPO / 'csrc' / source}" in line)
        assert "code=sm_80" in compile_line and "sm_90" in compile_line, compile_line
    assert "warning" not in log.lower(), log

    # The new module in a fresh interpreter: in this one, importing it would hand back the module of that name the
    # other tests loaded (CPython keeps an extension module per name), built for other archs where CI asks for them.
    probe = subprocess.run([sys.executable, "-c", PROBE_MODULE, str(path)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=300)
    assert probe.returncode == 0, probe.stdout
    module_file, kernel_names, version, built_hash = json.loads(probe.stdout.splitlines()[-1])
    assert Path(module_file) == path
    assert set(kernel_names) == KERNEL_NAMES
    assert version == "0.1.0"
    assert built_hash == extension.source_hash(archs=["80", "90"])


def test_setup_py_skips_cuda_build_when_asked(tmp_path):
    result = run_setup_build_ext(tmp_path, FOCALFAST_SKIP_CUDA_BUILD="1")
    assert result.returncode == 0, result.stdout
    assert "not building the CUDA extension: FOCALFAST_SKIP_CUDA_BUILD=1" in result.stdout
    assert not built_module_path(tmp_path).exists()


def test_setup_py_survives_a_failing_compiler(tmp_path):
    """A broken toolkit (nvcc that always fails) warns and installs the pure-Python package anyway."""
    pytest.importorskip("pybind11")
    fake_cuda = tmp_path / "fake-cuda"
    (fake_cuda / "bin").mkdir(parents=True)
    nvcc = fake_cuda / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'fake nvcc: failing on purpose' >&2\nexit 1\n")
    nvcc.chmod(0o755)
    result = run_setup_build_ext(tmp_path, CUDA_HOME=str(fake_cuda))
    assert result.returncode == 0, result.stdout
    assert "building the CUDA extension failed" in result.stdout
    assert "fake nvcc: failing on purpose" in result.stdout
    assert not built_module_path(tmp_path).exists()


def test_cuda_archs_parsing_and_gencode():
    assert extension.cuda_archs("8.0;9.0") == ["80", "90"]
    assert extension.cuda_archs("80, 90a") == ["80", "90a"]
    assert extension.cuda_archs("9.0a") == ["90a"]
    for bad in ("sm_80", "8", "eight", "8.0;;x"):
        with pytest.raises(ValueError, match="FOCALFAST_CUDA_ARCHS"):
            extension.cuda_archs(bad)
    assert extension.gencode_flags(["80", "90"]) == [
        "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=[sm_90,compute_90]"]


def test_unavailable_reason_explains_missing_sources_and_nvcc(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(extension, "_module", None)
    monkeypatch.setattr(extension, "_error", None)
    monkeypatch.setattr(extension, "PACKAGE_DIR", empty)  # no prebuilt module
    monkeypatch.setattr(extension, "SOURCE_DIR", empty)  # no sources
    assert "csrc/ sources are not here" in extension.unavailable_reason()

    monkeypatch.setattr(extension, "_error", None)
    monkeypatch.setattr(extension, "SOURCE_DIR", REPO / "csrc")
    monkeypatch.setattr(extension, "find_nvcc", lambda: None)
    assert "nvcc was not found" in extension.unavailable_reason()


def test_a_stale_prebuilt_module_is_never_imported(tmp_path, monkeypatch):
    """A prebuilt extension from other sources is rebuilt, not imported: once a module of that name is loaded in
    the process, importing the rebuilt file gives the old module back, and the old kernels would run silently."""
    pytest.importorskip("pybind11")
    package = tmp_path / "package"
    package.mkdir()
    prebuilt = package / extension.extension_filename()
    prebuilt.write_bytes(b"")  # stands for a build of older sources
    rebuilt = tmp_path / "rebuilt" / extension.extension_filename()
    imported = []
    monkeypatch.setattr(extension, "PACKAGE_DIR", package)
    monkeypatch.setattr(extension, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    monkeypatch.setattr(extension, "_jit_build", lambda wanted, archs: rebuilt)
    monkeypatch.setattr(extension, "_import", lambda path: imported.append(path) or path)

    monkeypatch.setattr(extension, "built_hash", lambda path: "hash of older sources")
    assert extension._find_or_build() == rebuilt and imported == [rebuilt]

    imported.clear()
    current = extension.source_hash(extension.SOURCE_DIR, extension.cuda_archs())
    monkeypatch.setattr(extension, "built_hash", lambda path: current if path == prebuilt else None)
    assert extension._find_or_build() == prebuilt and imported == [prebuilt]


def test_built_hash_reads_the_module_file_without_importing_it(ext):
    assert extension.built_hash(Path(ext.__file__)) == ext.source_hash()
    assert extension.built_hash(Path(__file__)) is None  # not a shared library


def test_build_reports_a_failing_step(tmp_path):
    pytest.importorskip("pybind11")
    with pytest.raises(extension.BuildError, match="building the CUDA extension failed"):
        extension.build(tmp_path / "_C.so", tmp_path / "build", nvcc="/bin/false")


# --------------------------------------------------------------------------------------------------
# The kernels on the host (CPU tensors) against the float64 reference
# --------------------------------------------------------------------------------------------------

# B, H, W, C, kernel sizes, dtype, normalize_modulator, bias, q/ctx layout
HOST_CASES = [
    (2, 5, 7, 16, (3, 5), torch.float32, False, True, "views"),  # pixel stride 2C+3: scalar loads
    (1, 6, 6, 24, (3, 5, 7), torch.float32, True, False, "views"),  # pixel stride 52: 16-byte vectors
    (2, 4, 6, 16, (3, 5), torch.bfloat16, False, True, "contiguous"),  # bf16 vectors
    (1, 1, 1, 5, (3, 13), torch.float16, True, True, "views"),  # one pixel, C < 8, kernel > image
    (2, 3, 13, 8, (13,), torch.bfloat16, False, False, "views"),
    (1, 9, 4, 20, (3, 5, 7, 9), torch.float32, True, True, "views"),  # L = 4, channel tail of 4
    (2, 4, 3, 3, (1,), torch.float32, False, True, "views"),  # k = 1
    (2, 17, 6, 12, (3, 5, 7), torch.float32, False, True, "views"),  # rings wrap; a 4-channel chunk tail
    (2, 5, 9, 16, (3,), torch.bfloat16, True, False, "views"),  # the one-level fixed chain
    (1, 3, 72, 40, (3,), torch.bfloat16, False, True, "views"),  # 32-channel chunks: 288 items > 256 threads
    (5, 4, 6, 12, (3, 5, 7), torch.float32, True, True, "views"),  # stacks of 2 and 3 images: ragged last stacks
    (1, 6, 19, 16, (3, 5), torch.bfloat16, False, True, "views"),  # rows of 3 strips, the last past W (3 pixels)
]

# How the host test runs the context part: the fused sweep with 8-, 16- or 32-channel chunks (32 > C: one
# partial chunk), whole images, bands of 2 or 3 rows (halos longer than a band, ragged last bands) or stacks of 2 or
# 3 whole images in the backward's bands (ragged last stacks), the backward's own strip or one forced (4 or 8 pixels
# an item: the tuner's schedules), or the level-at-a-time fallback with 1- or 4-pixel pooling strips.
PATHS = {
    "sweep8": dict(SWEEP_CHUNKS=(8,)),
    "sweep32": dict(SWEEP_CHUNKS=(32,)),
    "sweep16-strip4": dict(SWEEP_CHUNKS=(16,), SWEEP_BWD_STRIP=4),
    "sweep8-bands2": dict(SWEEP_CHUNKS=(8,), SWEEP_BAND_ROWS=2),
    "sweep32-bands3-strip8": dict(SWEEP_CHUNKS=(32,), SWEEP_BAND_ROWS=3, SWEEP_BWD_STRIP=8),
    "sweep8-stack2": dict(SWEEP_CHUNKS=(8,), SWEEP_BWD_STACK=2),
    "sweep16-stack3-strip4": dict(SWEEP_CHUNKS=(16,), SWEEP_BWD_STACK=3, SWEEP_BWD_STRIP=4),
    "levels1": dict(SWEEP_SMEM_BYTES=0, PIXELS_PER_STRIP=1),
    "levels4": dict(SWEEP_SMEM_BYTES=0, PIXELS_PER_STRIP=4),
}


def launched_kernels(monkeypatch):
    """Records the name of every kernel launch."""
    names = []
    launch = _Kernels.launch

    def spy(self, name, **kwargs):
        names.append(name)
        return launch(self, name, **kwargs)

    monkeypatch.setattr(_Kernels, "launch", spy)
    return names


@pytest.mark.parametrize("B,H,W,C,kernel_sizes,dtype,normalize,bias,layout", HOST_CASES)
@pytest.mark.parametrize("path", list(PATHS))
def test_host_kernels_match_reference(ext, monkeypatch, B, H, W, C, kernel_sizes, dtype, normalize, bias, layout,
                                      path):
    monkeypatch.setattr(cuda_op, "MIN_THREADS", 1)
    for name, value in PATHS[path].items():
        monkeypatch.setattr(cuda_op, name, value)
    names = launched_kernels(monkeypatch)
    tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
    check_against_reference(focal_modulation_cuda, B, H, W, C, kernel_sizes, normalize, bias, dtype, *tol, layout)
    levelwise_bwd = {"conv_level_bwd", "weight_grad", "conv_adjoint"}
    if path.startswith("sweep"):  # the backward sweep may not fit (L = 4 at 32 channels; 288 items): levelwise
        chunk = PATHS[path]["SWEEP_CHUNKS"][0]
        strip = PATHS[path].get("SWEEP_BWD_STRIP", 0)
        bwd_fits = ext.sweep_smem_bytes(list(kernel_sizes), W, chunk, True, strip) <= cuda_op.HOST_SMEM_BYTES
        used = {"context_fwd"} | ({"context_bwd"} if bwd_fits else levelwise_bwd)
        unused = {"conv_level_fwd"} | levelwise_bwd if bwd_fits else {"context_bwd"}
    else:
        used, unused = {"conv_level_fwd"} | levelwise_bwd, {"context_fwd", "context_bwd"}
    assert used <= set(names) and not unused & set(names), names


def test_context_bwd_runs_a_thread_an_item(ext):
    """A context_bwd block has at most 256 threads, one conv item (strip x channel) each: a schedule of more items
    needs more shared memory than any device has, and the backward goes level at a time."""
    assert ext.sweep_smem_bytes([3], 64, 32, True) < 2**20  # 8 strips x 32 channels: 256 items
    assert ext.sweep_smem_bytes([3], 72, 32, True) == 2**63 - 1  # 9 x 32
    assert ext.sweep_smem_bytes([3], 72, 16, True, 4) == 2**63 - 1  # 18 x 16
    assert ext.sweep_smem_bytes([3], 72, 32, False) < 2**20  # the forward has no such limit


def test_host_sweep_forward_with_level_backward(ext, monkeypatch):
    """An image whose forward sweep fits but whose backward sweep does not: mixed paths, same gradients."""
    B, H, W, C, kernel_sizes = 2, 6, 9, 16, (3, 5, 7)
    monkeypatch.setattr(cuda_op, "SWEEP_CHUNKS", (8,))
    monkeypatch.setattr(cuda_op, "SWEEP_SMEM_BYTES", ext.sweep_smem_bytes(list(kernel_sizes), W, 8, False))
    names = launched_kernels(monkeypatch)
    check_against_reference(focal_modulation_cuda, B, H, W, C, kernel_sizes, True, True, torch.float32, 1e-5, 1e-4)
    assert "context_fwd" in names and "conv_level_bwd" in names and "context_bwd" not in names, names


@pytest.mark.parametrize("path,context", [("sweep8-bands2", ["context_bwd"]),
                                          ("levels1", ["conv_level_fwd"] * 2 + ["conv_level_bwd"] * 2)])
def test_host_backward_runs_no_forward_sweep(ext, monkeypatch, path, context):
    """The backward starts from grad_modulator = grad_out * q (no modulator needed): the sweep path recomputes
    the levels once, in context_bwd, which also gives ctx_local for grad_q and grad_h_weight (no context_fwd);
    the fallback recomputes the level inputs it keeps with conv_level_fwd."""
    for name, value in PATHS[path].items():
        monkeypatch.setattr(cuda_op, name, value)
    _, inputs, _ = focal_case(2, 5, 6, 16, (3, 5))
    args = {k: inputs[k] for k in ("q", "ctx", "gates", "weights", "h_weight", "h_bias")}
    out, pooled_mean = cuda_op._forward(**args, normalize_modulator=True)
    names = launched_kernels(monkeypatch)
    cuda_op._backward(torch.ones_like(out), **args, pooled_mean=pooled_mean, normalize_modulator=True)
    assert names[:3] == ["output_bwd", "reduce_sum", "reduce_sum"] and names[-1] == "output_fwd", names
    assert [n for n in names if n.startswith(("context", "conv_level"))] == context, names


def test_host_runs_under_autocast(ext):
    """Under autocast the op's own products keep the kernels' dtypes (autocast is off inside)."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        check_against_reference(focal_modulation_cuda, 1, 5, 6, 16, (3, 5), True, True, torch.bfloat16, 1e-2, 1e-2)


def test_host_sweep_is_deterministic_across_chunks(ext, monkeypatch):
    """Every chunk size gives bitwise the same ctx_local and grad_ctx (per-channel math does not depend on
    the chunk); the gate gradients only differ by their summation order, and so do the weight gradients where the
    chunk changes context_bwd's strip (7 columns: 4-pixel strips at 8 and 16 channels, 8-pixel ones at 32)."""
    _, inputs, _ = focal_case(2, 9, 7, 24, (3, 5, 7))
    labels, leaves = differentiable(inputs)
    results = []
    for chunks in [(8,), (16,), (32,), (8,)]:
        monkeypatch.setattr(cuda_op, "SWEEP_CHUNKS", chunks)
        out = focal_modulation_cuda(**inputs)
        results.append([out, *torch.autograd.grad(out, leaves, torch.ones_like(out))])
    labels = ["out"] + labels
    for label, a, b in zip(labels, results[0], results[3]):
        assert torch.equal(a, b), f"{label}: two identical runs differ"
    for other, same_strip in ((1, True), (2, False)):
        for label, a, b in zip(labels, results[0], results[other]):
            if label in ("out", "q", "ctx", "h_weight", "h_bias") or (same_strip and label.startswith("weights")):
                assert torch.equal(a, b), f"{label} depends on the chunk size"
            else:
                assert rel_err(a, b) < 1e-6, label


@pytest.mark.parametrize("path", ["sweep8", "levels1"])
def test_host_kernels_index_images_past_2_to_31_elements(ext, monkeypatch, tmp_path, path):
    """q, ctx and gates are views with a pixel stride of 2^29 elements over a sparse memory-mapped file, so
    one image spans 3 * 2^30 elements: every kernel's offsets must be 64-bit (int32 ones would wrap and
    read or write the wrong pixels). Only the few pages that hold the pixels are touched."""
    B, H, W, C, kernel_sizes = 1, 2, 3, 8, (3, 5)
    L, stride = len(kernel_sizes), 1 << 29
    for name, value in PATHS[path].items():
        monkeypatch.setattr(cuda_op, name, value)
    numel = B * H * W * stride
    path_file = tmp_path / "f_out.bin"
    with open(path_file, "wb") as f:
        f.truncate(numel * 4)  # sparse: no disk and no memory until a page is written
    storage = torch.from_file(str(path_file), shared=True, size=numel, dtype=torch.float32)
    f_out = storage.as_strided((B, H, W, 2 * C + L + 1), (H * W * stride, W * stride, stride, 1))
    small = random_focal_inputs(B, H, W, C, kernel_sizes, generator=torch.Generator().manual_seed(0))
    f_out.copy_(torch.cat([small["q"], small["ctx"], small["gates"]], dim=-1))
    q, ctx, gates = torch.split(f_out, (C, C, L + 1), dim=-1)
    weights, h_weight, h_bias = small["weights"], small["h_weight"], small["h_bias"]
    out, pooled_mean = cuda_op._forward(q, ctx, gates, weights, h_weight, h_bias, True)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = cuda_op._backward(grad_out, q, ctx, gates, weights, h_weight, h_bias, pooled_mean, True)

    def leaf64(t):
        return t.detach().double().requires_grad_(True)

    inputs64 = dict(q=leaf64(q), ctx=leaf64(ctx), gates=leaf64(gates), weights=[leaf64(w) for w in weights],
                    h_weight=leaf64(h_weight), h_bias=leaf64(h_bias))
    ref = focal_modulation_ref(**inputs64, normalize_modulator=True)
    leaves = [inputs64[n] for n in GRAD_NAMES] + inputs64["weights"]
    grads64 = torch.autograd.grad(ref, leaves, grad_out.double())
    assert rel_err(out, ref) < 1e-5
    for label, g, g64 in zip(list(GRAD_NAMES) + ["weights[0]", "weights[1]"], grads, grads64):
        assert rel_err(g, g64) < 1e-4, label


def test_sweep_chunk_choice(ext, monkeypatch):
    """Largest chunk with enough blocks that fits; smaller ones for wide images; None (fallback) when none fits."""
    kernels = _Kernels(torch.device("cpu"))
    cpu = torch.device("cpu")
    ks = [3, 5, 7]
    fwd8, bwd8 = ext.sweep_smem_bytes(ks, 56, 8, False), ext.sweep_smem_bytes(ks, 56, 8, True)
    assert fwd8 < ext.sweep_smem_bytes(ks, 56, 16, False) < 2 * fwd8 and bwd8 > fwd8  # the gate ring is per block
    assert ext.sweep_smem_bytes(ks, 112, 8, True) > bwd8
    # A forced 4-pixel strip doubles the items (and threads) on the same rings: FocalNet chains keep their
    # weight-gradient sums in registers (same bytes), other chains a column per thread in shared memory (more).
    assert ext.sweep_smem_bytes(ks, 56, 8, True, 4) == bwd8 and ext.context_bwd_strip(56, 8) == 8
    assert ext.sweep_smem_bytes([5, 3], 28, 8, True, 4) - ext.sweep_smem_bytes([5, 3], 28, 8, True) == 34 * 32 * 4
    assert ext.context_bwd_strip(14, 8) == 4 and ext.context_bwd_strip(7, 16) == 4 and ext.context_bwd_strip(7, 32) == 8
    with pytest.raises(ValueError, match="strip: expected 0 .automatic., 4 or 8 pixels, got 6"):
        ext.sweep_smem_bytes(ks, 56, 8, True, 6)
    monkeypatch.setattr(cuda_op, "SWEEP_SMEM_BYTES", 227 * 1024)
    assert cuda_op._sweep_chunk(kernels, ks, 128, 56, 56, 96, False, cpu) == 16  # 32 channels: one block per SM
    assert cuda_op._sweep_chunk(kernels, ks, 128, 14, 14, 384, False, cpu) == 32
    assert cuda_op._sweep_chunk(kernels, ks, 128, 56, 56, 96, True, cpu) == 8  # 16 channels: 220 KB, one block per SM
    assert cuda_op._sweep_chunk(kernels, ks, 2, 56, 56, 96, False, cpu) == 8  # few images: the most blocks
    assert cuda_op._sweep_chunk(kernels, ks, 128, 56, 56, 4, False, cpu) == 8  # no chunk wider than C needs
    assert cuda_op._sweep_chunk(kernels, ks, 128, 4000, 4000, 96, False, cpu) is None
    assert cuda_op._sweep_chunk(kernels, ks, 1, 1 << 24, 8, 8, False, cpu) is None  # too tall for the ring slots


def test_sweep_band_choice():
    """Whole images when they give enough blocks; else bands of at least four halos (R forward, 2R backward)."""
    ks = [3, 5, 7]  # R = 6
    assert cuda_op._sweep_band_rows(ks, 128, 56, 96, 16, False, CPU) == 56  # 768 blocks
    assert cuda_op._sweep_band_rows(ks, 2, 56, 96, 8, False, CPU) == 24  # 24 blocks want 11 bands; 24 rows at least
    assert cuda_op._sweep_band_rows(ks, 2, 56, 96, 8, True, CPU) == 48
    assert cuda_op._sweep_band_rows(ks, 8, 256, 96, 8, False, CPU) == 86  # 1024 px, B = 8: 96 blocks want 3 bands
    assert cuda_op._sweep_band_rows(ks, 1, 7, 768, 8, True, CPU) == 7


def test_sweep_stack_choice():
    """context_bwd stacks whole small images (H <= 4 halos) while enough blocks are left, at most MAX_STACK."""
    lrf, srf = [3, 5, 7], [3, 5]  # backward halos 12 and 6 rows
    assert cuda_op._sweep_stack(lrf, 128, 7, 768, 16, 7, CPU) == 6  # 22 stacks x 48 chunks: 8 blocks per SM
    assert cuda_op._sweep_stack(lrf, 128, 14, 384, 8, 14, CPU) == 6
    assert cuda_op._sweep_stack(srf, 128, 14, 384, 16, 14, CPU) == 2  # 24 chunks an image: 64 x 24 blocks
    assert cuda_op._sweep_stack(srf, 128, 28, 192, 16, 28, CPU) == 1  # 28 rows > 4 halos of 6
    assert cuda_op._sweep_stack(lrf, 1024, 7, 768, 16, 7, CPU) == 8  # MAX_STACK
    assert cuda_op._sweep_stack(lrf, 2, 7, 768, 16, 4, CPU) == 1  # bands of rows: no stacks
    assert cuda_op._sweep_stack(lrf, 4, 7, 16, 16, 7, CPU) == 1  # few blocks: one image a band


@pytest.mark.parametrize("H,kernel_sizes", [(4, (3, 5, 7)), (1, (1, 1))])  # (1, 1): no halo, a one-row gap
def test_host_stacks_change_no_pixel_math(ext, monkeypatch, H, kernel_sizes):
    """Stacking images in context_bwd's bands changes no pixel's arithmetic: the gradients of q, ctx, gates and h are
    bitwise those of one image a band; the depthwise weight gradients add the same terms in another order (a partial
    per band)."""
    _, inputs, _ = focal_case(5, H, 6, 12, kernel_sizes)
    labels, leaves = differentiable(inputs)
    results = []
    for stack in (1, 3):
        monkeypatch.setattr(cuda_op, "SWEEP_BWD_STACK", stack)
        names = launched_kernels(monkeypatch)
        out = focal_modulation_cuda(**inputs)
        results.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
        assert "context_bwd" in names, names
    for label, a, b in zip(labels, *results):
        if label.startswith("weights"):
            assert rel_err(a, b) < 1e-6, label
        else:
            assert torch.equal(a, b), f"{label} depends on the stack"


@pytest.mark.parametrize("change,words", [
    (dict(stack=0), "stack: expected a positive number of images, got 0"),
    (dict(stack=2, band_rows=2), "stack: stacks whole images: band_rows must be H = 3, got 2"),
    (dict(stack=2, weight_partial=torch.empty(3, 34, 8)), "weight_partial: expected shape [2, 34, 8]"),
    (dict(stack=2, ctx=torch.randn(3, 1 << 13, 4, 8)), "stack: 2 images of 8192 rows are too many rows for a band"),
])
def test_binding_rejects_bad_stacks(ext, change, words):
    """context_bwd's stacks: whole images only, a weight partial per stack, rows its band decode handles."""
    B, H, W, C = 3, 3, 4, 8
    kwargs = dict(ctx=torch.randn(B, H, W, C), weights=torch.randn(34, C), kernel_sizes=[3, 5],
                  gates=torch.randn(B, H, W, 3), scale=1.0, chunk=8, band_rows=H, grad_ctx_all=None,
                  grad_mean=torch.randn(B, C), pooled=torch.randn(B, C), ctx_local=None, grad_ctx=None,
                  weight_partial=torch.empty(2, 34, C), gate_partial=None, strip=0)
    kwargs.update(change)
    shape = tuple(kwargs["ctx"].shape)
    for name in ("grad_ctx_all", "ctx_local", "grad_ctx"):
        kwargs[name] = torch.empty(shape)
    kwargs["gates"] = torch.randn(*shape[:3], 3)
    kwargs["gate_partial"] = torch.empty(*shape[:3], 3, 1)
    if "band_rows" not in change:
        kwargs["band_rows"] = shape[1]
    with pytest.raises(ValueError) as info:
        _Kernels(torch.device("cpu")).launch("context_bwd", **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("change,words", [
    (dict(kernel_sizes=[3]), "kernel_sizes: expected one per focal level (L = 2), got 1"),
    (dict(kernel_sizes=[3, 4]), "kernel_sizes: kernel size must be odd and at most 13, got 4"),
    (dict(chunk=12), "chunk: expected a power of two >= 8, got 12"),
    (dict(chunk=24), "chunk: expected a power of two >= 8, got 24"),
    (dict(band_rows=0), "band_rows: expected a positive number of rows, got 0"),
    (dict(band_rows=2, pooled_sum=torch.empty(1, 8)), "pooled_sum: expected shape [2, 8]"),
    (dict(weights=torch.randn(33, 8)), "weights: expected shape [34, 8]"),
])
def test_binding_rejects_bad_sweep_arguments(ext, change, words):
    B, H, W, C = 1, 3, 4, 8
    kwargs = dict(ctx=torch.randn(B, H, W, C), weights=torch.randn(34, C), kernel_sizes=[3, 5],
                  gates=torch.randn(B, H, W, 3), scale=1.0, chunk=8, band_rows=H,
                  ctx_local=torch.empty(B, H, W, C), pooled_sum=None)
    kwargs.update(change)
    with pytest.raises(ValueError) as info:
        _Kernels(torch.device("cpu")).launch("context_fwd", **kwargs)
    assert words in str(info.value)


@pytest.mark.parametrize("width", [5, 56])
@pytest.mark.parametrize("kernel_sizes,chain", [
    ((3,), "FixedChain<3, 1>"), ((3, 5), "FixedChain<3, 2>"), ((3, 5, 7), "FixedChain<3, 3>"),
    ((3, 5, 7, 9), "FixedChain<3, 4>"), ((5, 7), "GenericChain"), ((3, 7), "GenericChain"), ((1,), "GenericChain"),
])
def test_sweeps_take_the_compile_time_chain_of_focalnet_sizes(ext, monkeypatch, kernel_sizes, chain, width):
    """k_l = 3 + 2 l (every published configuration) runs the sweeps instantiated for that chain;
    any other sizes the run-time one. A FixedChain's forward takes its narrow variant for a 5-pixel row and half
    strips for 7 strips x 16 channels; the GenericChain has one variant (whole strips, gates by strip). All match
    the reference."""
    monkeypatch.setattr(cuda_op, "MIN_THREADS", 1)
    inputs = random_focal_inputs(1, 4, width, 16, kernel_sizes, generator=torch.Generator().manual_seed(0))
    with extension.recorded_launches(ext) as records:  # records the launches, runs none
        focal_modulation_cuda(**inputs)
    ops = {r["name"]: r["op"] for r in records}
    variant = "false, false" if chain == "GenericChain" else "true, false" if width == 5 else "false, true"
    assert f"ContextFwd<float, focalfast::{chain}, {variant}>" in ops["context_fwd"], ops
    assert rel_err(focal_modulation_cuda(**inputs), focal_modulation_ref(**inputs)) < 1e-5


def test_host_saves_one_pooled_mean_vector(ext):
    """Beyond the contract's bound (two [B, C] vectors): this backend keeps only pooled_mean."""
    B, C = 2, 16
    _, extras = saved_for_backward(focal_modulation_cuda, focal_case(B, 6, 5, C, (3, 5, 7))[1])
    assert sum(t.numel() for t in extras) <= B * C, [tuple(t.shape) for t in extras]


# --------------------------------------------------------------------------------------------------
# Argument checks of the binding
# --------------------------------------------------------------------------------------------------


def conv_level_fwd_args(B=1, H=3, W=4, C=8, L=2, k=3):
    f32 = torch.float32
    return dict(
        z_in=torch.randn(B, H, W, C), weight=torch.randn(k, k, C), gates=torch.randn(B, H, W, L + 1),
        level=0, scale=1.0, acc_in=None, acc_out=torch.empty(B, H, W, C, dtype=f32),
        z_out=torch.empty(B, H, W, C, dtype=f32), ctx_out=None, pool_partial=None, pixels_per_strip=4)


@pytest.mark.parametrize("change,error,words", [
    (dict(weight=torch.randn(3, 3, 7)), ValueError, "weight: expected a tap-major kernel [k, k, C]"),
    (dict(weight=torch.randn(4, 4, 8)), ValueError, "weight: kernel size must be odd"),
    (dict(weight=torch.randn(15, 15, 8)), ValueError, "weight: kernel size must be odd and at most 13"),
    (dict(gates=torch.randn(1, 3, 4, 7)), ValueError, "gates: expected shape [B, H, W, L + 1]"),
    (dict(z_in=torch.randn(1, 3, 4, 8).half()), TypeError, "z_in: expected dtype float32"),
    (dict(ctx_out=torch.empty(1, 3, 4, 8).bfloat16()), TypeError, "ctx_out: expected dtype float32"),
    (dict(z_out=torch.empty(1, 3, 4, 8).half()), TypeError, "z_out: expected dtype float32"),
    (dict(acc_out=torch.empty(1, 4, 3, 8)), ValueError, "acc_out: expected shape [1, 3, 4, 8]"),
    (dict(acc_out=torch.empty(1, 3, 8, 4).transpose(2, 3)), ValueError, "acc_out: expected a contiguous tensor"),
    (dict(z_in=torch.randn(1, 3, 4, 16)[..., ::2]), ValueError, "z_in: expected channels (the last dim) contiguous"),
    (dict(level=2), ValueError, "level: expected 0 <= level < L = 2"),
    (dict(pixels_per_strip=0), ValueError, "pixels_per_strip: must be >= 1"),
])
def test_binding_rejects_bad_arguments(ext, change, error, words):
    kwargs = conv_level_fwd_args()
    kwargs.update(change)
    with pytest.raises(error) as info:
        _Kernels(torch.device("cpu")).launch("conv_level_fwd", **kwargs)
    assert words in str(info.value)


def test_binding_rejects_mixed_devices(ext):
    kernels = _Kernels(torch.device("cpu"))
    kwargs = {k: kernels._arg(v) if isinstance(v, torch.Tensor) else v for k, v in conv_level_fwd_args().items()}
    gates = kwargs["gates"]
    kwargs["gates"] = ext.TensorArg(1 << 20, ext.DType.float32, gates.shape, gates.strides, 0)  # "cuda:0"
    with pytest.raises(ValueError, match="gates: is on cuda:0 but the first tensor is on cpu"):
        ext.conv_level_fwd(stream=0, **kwargs)


# --------------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere)
# --------------------------------------------------------------------------------------------------

# FocalNet-T stages (H = W, C) and focal levels: srf (3, 5) and lrf (3, 5, 7).
STAGES = [(56, 96), (28, 192), (14, 384), (7, 768)]
GPU_CASES = (
    [(32, s, s, c, ks, dt, False, True) for s, c in STAGES for ks in [(3, 5), (3, 5, 7)]
     for dt in (torch.float32, torch.bfloat16)]
    + [(128, 56, 56, 96, (3, 5, 7), torch.bfloat16, False, True),
       (64, 28, 28, 192, (3, 5), torch.float32, True, True)]
    # stage 1 at 512 and 1024 px with one or two images: the sweeps run in bands of rows
    + [(1, 128, 128, 96, (3, 5, 7), torch.float32, True, True),
       (2, 256, 256, 96, (3, 5), torch.bfloat16, False, True)]
    # odd sizes, L = 1..4, windows 3 and 5, normalize on/off, no bias
    + [(3, 13, 17, 20, (3, 5, 7, 9), torch.float32, True, True),
       (1, 1, 1, 8, (3,), torch.float32, False, True),
       (2, 7, 5, 3, (5, 7), torch.bfloat16, True, False),
       (5, 9, 11, 40, (5,), torch.float32, False, False),
       (2, 16, 15, 64, (5, 7, 9), torch.bfloat16, True, True),
       (2, 10, 10, 24, (11, 13), torch.float16, False, True)]
)


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,W,C,kernel_sizes,dtype,normalize,bias", GPU_CASES)
@pytest.mark.parametrize("layout", ["views", "contiguous"])
def test_gpu_matches_reference(ext, B, H, W, C, kernel_sizes, dtype, normalize, bias, layout):
    matmul = torch.backends.cuda.matmul  # fp32_precision since torch 2.9 (reading allow_tf32 then may raise)
    tf32 = matmul.fp32_precision == "tf32" if hasattr(matmul, "fp32_precision") else matmul.allow_tf32
    assert not tf32, "TF32 GEMMs cannot meet the fp32 tolerance"
    tol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)
    check_against_reference(focal_modulation_cuda, B, H, W, C, kernel_sizes, normalize, bias, dtype, *tol, layout,
                            device="cuda")


@pytest.mark.gpu
def test_gpu_dispatch_and_current_stream(ext):
    """backend="cuda" reaches this op, and the kernels run on the caller's current stream."""
    _, inputs, _ = focal_case(2, 14, 14, 384, (3, 5), device="cuda")
    expected = focal_modulation_cuda(**inputs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = focal_modulation(**inputs, backend="cuda")
    torch.cuda.current_stream().wait_stream(stream)
    assert rel_err(out, expected) < 1e-6  # a launch on another stream than the allocations' would race


@pytest.mark.gpu
def test_gpu_sanitize_entry_point_runs(ext):
    from focalfast.ops.cuda import sanitize

    assert sanitize.main() == 0
