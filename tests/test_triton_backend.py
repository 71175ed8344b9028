"""The Triton backend's own paths, against the float64 reference.

The checks every backend passes (parity, layouts, determinism, saved tensors, opcheck, compile,
unsupported configurations) are in ``test_backend_contract.py``. Here: what only the Triton
kernels have. Without a GPU the kernels run in Triton's interpreter (conftest sets
TRITON_INTERPRET=1): small tiles and bands forced onto small shapes, the band plan, the error
without an interpreter, and a build of every kernel for sm_90. The GPU tests (FocalNet-T stage
shapes, fp32/fp16/bf16) are skipped unless a CUDA GPU is visible.
"""

import functools
import os
import subprocess
import sys

import pytest
import torch

from focalfast.ops.focal_modulation import focal_modulation
from focalfast.testing import check_against_reference, errors_in_subprocess, random_focal_inputs

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set by conftest.py when there is no GPU)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
triton_op = functools.partial(focal_modulation, backend="triton")

# Small tiles (R rows, WT columns, BC channels) force what the GPU schedule does and the
# interpreter's whole-image tiles skip: many row steps through the rings, ragged column tiles
# and ragged channel blocks.
SMALL_TILE_CASES = [
    (1, 5, 6, 12, (3, 5, 7), True, True, (2, 4, 8)),
    (1, 5, 6, 12, (5,), False, False, (1, 8, 16)),
    (2, 6, 5, 20, (3, 5), True, False, (4, 4, 16)),
    (1, 3, 5, 6, (3, 3, 3, 3), True, True, (2, 4, 8)),
    (1, 4, 5, 10, (3, 5, 7, 9), False, True, (2, 4, 8)),
    (1, 4, 3, 8, (3, 9), False, True, (1, 4, 8)),
]


def _force_schedule(monkeypatch, **overrides):
    """Make both chain kernels use ``chain_schedule(..., **overrides)`` (tile, band_rows)."""
    from focalfast.ops.triton import chain_schedule, focal_context_bwd, focal_context_fwd

    forced = functools.partial(chain_schedule.chain_schedule, **overrides)
    monkeypatch.setattr(focal_context_fwd, "chain_schedule", forced)
    monkeypatch.setattr(focal_context_bwd, "chain_schedule", forced)


@pytest.mark.slow
@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias,tile", SMALL_TILE_CASES)
def test_fp32_small_tiles_match_reference(monkeypatch, B, H, W, C, kernel_sizes, normalize, bias, tile):
    _force_schedule(monkeypatch, tile=tile)
    check_against_reference(triton_op, B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4,
                            device=DEVICE)


# Bands (what the GPU schedule does at small batch and high resolution): halos shorter and longer
# than a band, a ragged last band, one-row bands, with whole-image and small tiles.
BAND_CASES = [
    (1, 9, 5, 12, (3, 5, 7), True, True, 2, None),
    (2, 7, 4, 20, (3, 5), False, True, 3, (2, 4, 16)),
    (1, 6, 6, 9, (5,), True, False, 1, None),
    (1, 8, 3, 8, (3, 5, 7, 9), False, True, 4, (2, 4, 8)),
    (1, 5, 4, 10, (3, 3), True, True, 2, (1, 4, 8)),
]


@pytest.mark.slow
@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias,band_rows,tile", BAND_CASES)
def test_fp32_bands_match_reference(monkeypatch, B, H, W, C, kernel_sizes, normalize, bias, band_rows, tile):
    _force_schedule(monkeypatch, band_rows=band_rows, tile=tile)
    check_against_reference(triton_op, B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4,
                            device=DEVICE)



# Forward tiles only (the backward's rows are a tensor dimension, a power of two): row steps of any
# count, exact tiles (R | H, WT | W, BC | C, one band: the kernel's unmasked path) and ragged ones.
FORWARD_TILE_CASES = [
    (2, 6, 8, 16, (3, 5), (3, 4, 16), True),
    (1, 7, 6, 12, (3, 5, 7), (3, 4, 8), False),
    (1, 10, 4, 8, (5, 3), (5, 2, 4), True),
]


@pytest.mark.parametrize("B,H,W,C,kernel_sizes,tile,exact", FORWARD_TILE_CASES)
def test_fp32_forward_row_steps_match_reference(B, H, W, C, kernel_sizes, tile, exact):
    from focalfast.ops.focal_modulation import focal_context_ref
    from focalfast.ops.triton.chain_schedule import chain_schedule
    from focalfast.ops.triton.focal_context_fwd import focal_context_fwd

    sched = chain_schedule(H, W, C, kernel_sizes, False, interpret=True, tile=tile)
    assert (sched.whole_steps and W % tile[1] == 0 and C % tile[2] == 0) == exact
    inp = random_focal_inputs(B, H, W, C, kernel_sizes, device=DEVICE, generator=torch.Generator().manual_seed(H))
    ctx, gates, L = inp["ctx"], inp["gates"], len(kernel_sizes)
    ctx_local, _, glob = focal_context_fwd(ctx, ctx.stride(2), gates, gates.stride(2), inp["weights"],
                                           interpret=DEVICE == "cpu", schedule={"tile": tile})
    # ctx_all without the h GEMM: ctx_local plus the global level that modulation_gemm adds
    got = ctx_local.double() + gates[..., L:].double() * glob.double()[:, None, None, :]
    want = focal_context_ref(ctx.double(), gates.double(), [w.double() for w in inp["weights"]], False)
    assert (got - want).abs().max().item() < 1e-5

def test_bands_only_when_the_gpu_would_idle():
    """Whole-image sweeps when they fill the GPU, bands of at least 4 lags when they do not."""
    from focalfast.ops.triton.chain_schedule import chain_schedule

    def bands(H, batch, backward=False):
        return chain_schedule(H, H, 96, (3, 5, 7), backward, interpret=False, batch=batch, sm_count=132).bands

    assert bands(56, 128) == 1 and bands(56, 128, backward=True) == 1  # FocalNet-T 224, B = 128: 384 programs
    assert chain_schedule(256, 256, 96, (3, 5, 7), False, interpret=True, batch=1, sm_count=132).bands == 1
    # 1024 px, B = 8: 24 programs; bands of 24 rows forward (lag 5), 44 backward (lag 11)
    assert bands(256, 8) == 11 and bands(256, 8, backward=True) == 6
    assert bands(128, 32) == 3 and bands(128, 32, backward=True) == 3  # 512 px, B = 32
    assert bands(7, 1) == 1  # too short to pay for a halo


def test_triton_without_gpu_or_interpreter_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible, so backend='triton' is available")
    code = (
        "import torch\n"
        "from focalfast import BackendUnavailableError\n"
        "from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref\n"
        "from focalfast.testing import random_focal_inputs\n"
        "inp = random_focal_inputs(1, 3, 3, 8)\n"
        "try:\n"
        "    focal_modulation(**inp, backend='triton')\n"
        "except BackendUnavailableError as e:\n"
        "    print('ERROR:', e)\n"
        "from focalfast.ops.triton.focal_modulation import focal_modulation_triton\n"
        "try:\n"
        "    focal_modulation_triton(**inp, normalize_modulator=False)\n"
        "except BackendUnavailableError as e:\n"
        "    print('DIRECT-ERROR:', e)\n"
        "out = focal_modulation(**inp, backend='auto')\n"
        "assert torch.equal(out, focal_modulation_ref(**inp)), 'auto did not run the reference'\n"
        "print('AUTO-OK')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "ERROR: backend='triton' is not available" in run.stdout and "TRITON_INTERPRET" in run.stdout
    assert "DIRECT-ERROR: backend='triton' is not available" in run.stdout
    assert "AUTO-OK" in run.stdout


_HUGE_IMAGE = r"""
import sys, torch
from focalfast.ops.focal_modulation import focal_modulation_ref
from focalfast.ops.triton.focal_modulation import focal_modulation_backward, focal_modulation_forward
from focalfast.testing import random_focal_inputs, rel_err

path, device = sys.argv[1], sys.argv[2]
B, H, W, C, ks = 2, 4, 4, 8, (3, 5)
n = 2 * C + len(ks) + 1
stride = 2**28 + 64  # pixel stride: one image spans H * W * stride = 2**32 + 1024 elements
if device == "cpu":  # sparse: only the pixels' first n elements are ever written
    with open(path, "wb") as f:
        f.truncate(B * H * W * stride * 4)
    y = torch.from_file(path, shared=True, size=B * H * W * stride, dtype=torch.float32)
else:  # 34 GB of GPU memory, left unwritten but for the pixels' first n elements
    y = torch.empty(B * H * W * stride, dtype=torch.float32, device=device)
y = y.view(B, H, W, stride)
inp = random_focal_inputs(B, H, W, C, ks, generator=torch.Generator().manual_seed(0))
on_device = {k: [w.to(device) for w in v] if k == "weights" else v.to(device) for k, v in inp.items()}
y[..., :C], y[..., C:2 * C], y[..., 2 * C:n] = on_device["q"], on_device["ctx"], on_device["gates"]
views = dict(on_device, q=y[..., :C], ctx=y[..., C:2 * C], gates=y[..., 2 * C:n])
out, mean, glob = focal_modulation_forward(**views, normalize_modulator=True)
dout = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(1))
grads = focal_modulation_backward(dout.to(device), **views, mean=mean, glob=glob, normalize_modulator=True)

ref_in = {k: v.double().requires_grad_() for k, v in inp.items() if k != "weights"}
ref_in["weights"] = [w.double().requires_grad_() for w in inp["weights"]]
ref = focal_modulation_ref(**ref_in, normalize_modulator=True)
ref_grads = torch.autograd.grad(ref, [ref_in[k] for k in ("q", "ctx", "gates")] + ref_in["weights"]
                                + [ref_in["h_weight"], ref_in["h_bias"]], dout.double())
got = [g.cpu() for g in (grads[0], grads[1], grads[2], *grads[3], grads[4], grads[5])]
print("errors", rel_err(out.cpu(), ref), max(rel_err(g, r) for g, r in zip(got, ref_grads)))
"""


def test_images_larger_than_2_31_elements(tmp_path):
    """q, ctx, gates as views with a pixel stride so large that one image spans more than 2**31
    elements (over a sparse memory-mapped file on CPU, 34 GB of memory on a GPU): every offset inside
    an image must be 64-bit. In a subprocess, since a wrapped 32-bit offset reads or writes anywhere."""
    env = dict(os.environ, TRITON_INTERPRET="1") if DEVICE == "cpu" else dict(os.environ)
    out_err, grad_err = errors_in_subprocess(_HUGE_IMAGE, str(tmp_path / "y.bin"), DEVICE, env=env)
    assert out_err < 1e-5 and grad_err < 1e-4, (out_err, grad_err)


_SM90_BUILD = r"""
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from focalfast.ops.triton.focal_modulation import focal_modulation_backward, focal_modulation_forward
from focalfast.testing import random_focal_inputs

TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

def build(self, *args, grid, warmup, **kwargs):
    # Instead of launching: compile for sm_90 with the launch's arguments, specialised like the JIT.
    values = dict(zip(self.arg_names, args), **{k: v for k, v in kwargs.items() if k in self.arg_names})
    signature, constexprs, attrs = {}, {}, {}
    for i, p in enumerate(self.params):
        v = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[p.name], attrs[(i,)] = "*" + TYPES[v.dtype], [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[p.name] = "fp32"
        else:
            signature[p.name] = "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    triton.compile(ASTSource(self, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                   options=options)
    print("built", self.fn.__name__)

JITFunction.run = build
import focalfast.ops.triton.focal_context_bwd as bwd, focalfast.ops.triton.focal_context_fwd as fwd
# (B, H, W, C, kernel sizes, dtype, multiprocessors): the third one is cut into bands; the last
# (C > 256) takes the unfused context gradient (dM, then a GEMM: one launch more).
CASES = [(2, 56, 56, 96, (3, 5, 7), torch.bfloat16, None), (2, 9, 70, 40, (13,), torch.float32, None),
         (1, 128, 128, 96, (3, 5), torch.float16, 132), (2, 7, 7, 320, (3, 5), torch.bfloat16, None)]
for B, H, W, C, ks, dtype, sms in CASES:
    fwd.sm_count = bwd.sm_count = lambda device: sms
    inp = random_focal_inputs(B, H, W, C, ks, dtype=dtype, device="meta")
    out, mean, glob = focal_modulation_forward(**inp, normalize_modulator=True)
    focal_modulation_backward(torch.empty_like(out), **inp, mean=mean, glob=glob, normalize_modulator=True)
print("ALL-BUILT")
"""


def test_kernels_build_for_sm90():
    """Every kernel, with the GPU launch configuration, compiles to sm_90 code (no GPU needed).

    The interpreter does not compile, so this is what catches code that only it accepts. It
    runs the launchers on meta tensors with kernel launches replaced by ``triton.compile``.
    """
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the GPU tests build and run every kernel")
    try:
        from triton.backends import backends

        if "nvidia" not in backends:
            pytest.skip("this Triton has no NVIDIA backend to build with")
    except ImportError as exc:
        pytest.skip(f"Triton's backends are not importable: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _SM90_BUILD], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and "ALL-BUILT" in run.stdout, run.stdout + run.stderr[-4000:]
    assert run.stdout.count("built ") == 3 * 6 + 7, run.stdout


# ---------------------------------------------------------------------------------------------- GPU
STAGES = [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768)]  # FocalNet-T stages at 224 px
GPU_TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (1e-2, 1e-2)}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H,W,C", STAGES)
@pytest.mark.parametrize("kernel_sizes", [(3, 5), (3, 5, 7)], ids=["srf", "lrf"])
def test_gpu_focalnet_t_stages(H, W, C, kernel_sizes, dtype):
    out_tol, grad_tol = GPU_TOL[dtype]
    check_against_reference(triton_op, 32, H, W, C, kernel_sizes, False, True, dtype, out_tol, grad_tol,
                            device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [False, True])
def test_gpu_stage1_batch128_bf16(normalize):
    check_against_reference(triton_op, 128, 56, 56, 96, (3, 5), normalize, True, torch.bfloat16, 1e-2, 1e-2,
                            device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,C,dtype", [(1, 128, 96, torch.float32), (2, 256, 96, torch.bfloat16)], ids=str)
def test_gpu_high_resolution_small_batch(B, H, C, dtype):
    """Stage 1 at 512 and 1024 px with one or two images: the sweeps are cut into bands."""
    from focalfast.ops.triton.chain_schedule import chain_schedule, sm_count

    sched = chain_schedule(H, H, C, (3, 5, 7), True, interpret=False, batch=B,
                           sm_count=sm_count(torch.device("cuda")))
    assert sched.bands > 1
    out_tol, grad_tol = GPU_TOL[dtype]
    check_against_reference(triton_op, B, H, H, C, (3, 5, 7), True, True, dtype, out_tol, grad_tol, device="cuda")


ODD_SHAPES = [(9, 13, 40, (5, 7, 9, 11)), (1, 1, 24, (3,)), (3, 70, 20, (13,)), (130, 3, 8, (3, 5))]


@pytest.mark.gpu
@pytest.mark.parametrize("H,W,C,kernel_sizes", ODD_SHAPES)
def test_gpu_odd_shapes_fp32(H, W, C, kernel_sizes):
    check_against_reference(triton_op, 3, H, W, C, kernel_sizes, True, True, torch.float32, 1e-5, 1e-4,
                            device="cuda")


def test_the_raw_custom_op_refuses_float64():
    """``torch.ops.focalfast.focal_modulation_triton`` called directly (no dispatcher) names the dtype."""
    import focalfast.ops.triton.focal_modulation  # noqa: F401  registers the custom op
    inputs = random_focal_inputs(1, 3, 4, 8, (3,), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="focal_modulation_triton: q: the fused kernels support .* got torch.float64"):
        torch.ops.focalfast.focal_modulation_triton(inputs["q"], inputs["ctx"], inputs["gates"], inputs["weights"],
                                                    inputs["h_weight"], inputs["h_bias"], False)
