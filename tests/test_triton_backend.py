"""The Triton backend of the fused op against the float64 reference.

Without a GPU the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1): the CPU
tests use small shapes, mostly fp32 (the GEMMs take fp32 operands there), and a build check
compiles every kernel for sm_90 without running it. The GPU tests (FocalNet-T stage shapes,
fp32/fp16/bf16) are skipped unless a CUDA GPU is visible.
"""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref
from focalfast.testing import random_focal_inputs, rel_err

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set by conftest.py when there is no GPU)",
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter casts fp32 to bf16 by truncation (round toward zero), the GPU rounds to
# nearest: bf16 results on CPU carry about twice the rounding error they have on a GPU.
BF16_TOL = 1e-2 if torch.cuda.is_available() else 3e-2
GRAD_NAMES = ("q", "ctx", "gates", "h_weight", "h_bias")


def _triton():
    from focalfast.ops.triton.focal_modulation import focal_modulation_triton

    return focal_modulation_triton


def _case(B, H, W, C, kernel_sizes, bias, dtype, device, seed=0):
    """Random inputs as ``dtype`` leaves, the same values as float64 leaves for the reference
    (so the comparison measures the kernels, not the rounding of the inputs), and a dout."""
    gen = torch.Generator().manual_seed(seed)
    values = random_focal_inputs(B, H, W, C, kernel_sizes, dtype=dtype, device=device, bias=bias,
                                 generator=gen)
    # q/ctx/gates as views of one tensor, like f's output in the module.
    y = torch.cat([values["q"], values["ctx"], values["gates"]], -1)
    sizes = (C, C, len(kernel_sizes) + 1)

    def leaves(dt):
        q, ctx, gates = torch.split(y.to(dt).requires_grad_(), sizes, dim=-1)
        return dict(q=q, ctx=ctx, gates=gates,
                    weights=[w.to(dt).requires_grad_() for w in values["weights"]],
                    h_weight=values["h_weight"].to(dt).requires_grad_(),
                    h_bias=values["h_bias"].to(dt).requires_grad_() if bias else None)

    dout = torch.randn(B, H, W, C, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return leaves(torch.float64), leaves(dtype), dout.double()


def _leaves(inputs):
    names = [n for n in GRAD_NAMES if inputs[n] is not None]
    return names + [f"weights[{i}]" for i in range(len(inputs["weights"]))], \
        [inputs[n] for n in names] + list(inputs["weights"])


def _check_against_reference(B, H, W, C, kernel_sizes, normalize, bias, dtype, out_tol, grad_tol,
                             device=DEVICE):
    ref_in, test_in, dout = _case(B, H, W, C, kernel_sizes, bias, dtype, device)
    ref = focal_modulation_ref(**ref_in, normalize_modulator=normalize)
    names, ref_leaves = _leaves(ref_in)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout)

    out = _triton()(**test_in, normalize_modulator=normalize)
    assert out.dtype == dtype and out.shape == (B, H, W, C)
    _, leaves = _leaves(test_in)
    grads = torch.autograd.grad(out, leaves, dout.to(dtype))

    errors = {"out": rel_err(out, ref)}
    errors.update({n: rel_err(g, r) for n, g, r in zip(names, grads, ref_grads)})
    bad = {n: e for n, e in errors.items() if not e < (out_tol if n == "out" else grad_tol)}
    assert not bad, f"relative errors over tolerance: {bad} (all: {errors})"


# (B, H, W, C, kernel sizes, normalize_modulator, bias): focal windows 3 and 5 (kernels 2l + window),
# L = 1..4, odd and tiny images (also smaller than the largest kernel), C not a multiple of 16,
# and C spanning two channel blocks (70).
CPU_CASES = [
    (2, 7, 9, 20, (3, 5), False, True),
    (1, 1, 1, 8, (3,), True, True),
    (2, 5, 4, 24, (3, 5, 7), True, False),
    (1, 6, 6, 17, (3, 5, 7, 9), True, True),
    (2, 4, 3, 16, (5,), False, False),
    (1, 3, 5, 33, (5, 7), True, True),
    (1, 2, 7, 12, (5, 7, 9), False, True),
    (1, 3, 3, 9, (5, 7, 9, 11), False, False),
    (2, 4, 4, 70, (3, 5), True, True),
    (1, 1, 6, 16, (13,), False, True),
]


@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias", CPU_CASES)
def test_fp32_matches_reference(B, H, W, C, kernel_sizes, normalize, bias):
    _check_against_reference(B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4)


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
    import functools

    from focalfast.ops.triton import chain_schedule, focal_context_bwd, focal_context_fwd

    forced = functools.partial(chain_schedule.chain_schedule, **overrides)
    monkeypatch.setattr(focal_context_fwd, "chain_schedule", forced)
    monkeypatch.setattr(focal_context_bwd, "chain_schedule", forced)


@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias,tile", SMALL_TILE_CASES)
def test_fp32_small_tiles_match_reference(monkeypatch, B, H, W, C, kernel_sizes, normalize, bias, tile):
    _force_schedule(monkeypatch, tile=tile)
    _check_against_reference(B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4)


# Bands (what the GPU schedule does at small batch and high resolution): halos shorter and longer
# than a band, a ragged last band, one-row bands, with whole-image and small tiles.
BAND_CASES = [
    (1, 9, 5, 12, (3, 5, 7), True, True, 2, None),
    (2, 7, 4, 20, (3, 5), False, True, 3, (2, 4, 16)),
    (1, 6, 6, 9, (5,), True, False, 1, None),
    (1, 8, 3, 8, (3, 5, 7, 9), False, True, 4, (2, 4, 8)),
    (1, 5, 4, 10, (3, 3), True, True, 2, (1, 4, 8)),
]


@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias,band_rows,tile", BAND_CASES)
def test_fp32_bands_match_reference(monkeypatch, B, H, W, C, kernel_sizes, normalize, bias, band_rows, tile):
    _force_schedule(monkeypatch, band_rows=band_rows, tile=tile)
    _check_against_reference(B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4)


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


@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(B=st.integers(1, 2), H=st.integers(1, 8), W=st.integers(1, 8), C=st.integers(1, 24),
       levels=st.integers(1, 4), window=st.sampled_from([3, 5]), normalize=st.booleans(), bias=st.booleans())
def test_fp32_random_shapes_match_reference(B, H, W, C, levels, window, normalize, bias):
    """Hypothesis draws the shapes and options; kernel sizes are FocalNet's 2l + window."""
    kernel_sizes = tuple(2 * level + window for level in range(levels))
    _check_against_reference(B, H, W, C, kernel_sizes, normalize, bias, torch.float32, 1e-5, 1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_matches_reference(dtype):
    tol = 1e-2 if dtype == torch.float16 else BF16_TOL
    _check_against_reference(2, 5, 6, 24, (3, 5), True, True, dtype, tol, tol)


def test_input_layouts_agree():
    """Views (read in place), contiguous copies and non-uniform views (copied) give one result."""
    _, test_in, dout = _case(2, 5, 6, 16, (3, 5), True, torch.float32, DEVICE)
    fn = _triton()
    as_views = fn(**test_in, normalize_modulator=False)
    contiguous = dict(test_in, **{k: test_in[k].detach().contiguous() for k in ("q", "ctx", "gates")})
    assert torch.equal(fn(**contiguous, normalize_modulator=False), as_views)
    # q with a non-uniform pixel stride (W and H swapped in memory): the wrapper copies it.
    q_t = test_in["q"].detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert q_t.stride(-1) == 1 and not q_t.is_contiguous()
    assert torch.equal(fn(**dict(contiguous, q=q_t), normalize_modulator=False), as_views)
    # q channels-first in memory: channel stride != 1.
    q_nchw = test_in["q"].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert q_nchw.stride(-1) != 1
    assert torch.equal(fn(**dict(contiguous, q=q_nchw), normalize_modulator=False), as_views)


def test_strided_h_bias_through_the_dispatch():
    """A non-contiguous bias (every other element of a larger tensor) gives the reference's answer."""
    ref_in, test_in, _ = _case(1, 4, 5, 16, (3, 5), True, torch.float32, DEVICE)
    wide = torch.randn(32, dtype=torch.float64)
    ref_in["h_bias"], test_in["h_bias"] = wide[::2], wide.to(torch.float32)[::2]
    assert not test_in["h_bias"].is_contiguous()
    out = focal_modulation(**test_in, backend="triton")
    assert rel_err(out, focal_modulation_ref(**ref_in)) < 1e-5


def test_configurations_the_kernels_do_not_handle():
    """float64 and more than 4 levels: ValueError for backend="triton" (auto runs the reference)."""
    _, test_in, _ = _case(1, 3, 3, 8, (3, 3, 3, 3, 3), True, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="backend='triton': weights: the fused kernels support 1 to 4"):
        focal_modulation(**test_in, backend="triton")
    ref_in, _, _ = _case(1, 3, 3, 8, (3,), True, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="backend='triton': q: the fused kernels support"):
        focal_modulation(**ref_in, backend="triton")


def test_dispatch_runs_the_triton_op():
    """``backend="triton"`` reaches the custom op (no silent fallback to the reference)."""
    _, test_in, _ = _case(1, 3, 4, 16, (3,), True, torch.float32, DEVICE)
    out = focal_modulation(**test_in, backend="triton")
    assert "focal_modulation_triton" in type(out.grad_fn).__name__


def test_gradients_are_bitwise_deterministic():
    _, test_in, dout = _case(2, 6, 5, 40, (3, 5), True, torch.float32, DEVICE)
    _, leaves = _leaves(test_in)
    runs = []
    for _ in range(2):
        out = _triton()(**test_in, normalize_modulator=True)
        runs.append(torch.autograd.grad(out, leaves, dout.float()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_saves_only_inputs_and_per_image_vectors():
    B, H, W, C, ks = 2, 6, 7, 24, (3, 5, 7)
    _, test_in, _ = _case(B, H, W, C, ks, True, torch.float32, DEVICE)
    inputs = [test_in[n] for n in GRAD_NAMES] + test_in["weights"]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        _triton()(**test_in, normalize_modulator=False)

    def is_input(t):
        return any(t.data_ptr() == i.data_ptr() and t.shape == i.shape and t.stride() == i.stride()
                   for i in inputs)

    extras = [t for t in saved if not is_input(t)]
    assert len(saved) == len(inputs) + 2, [tuple(t.shape) for t in saved]
    assert all(t.numel() <= B * C for t in extras), [tuple(t.shape) for t in extras]
    assert sum(t.numel() * t.element_size() for t in extras) <= 2 * B * C * 4


def test_too_many_levels_is_a_value_error():
    _, test_in, _ = _case(1, 3, 3, 8, (3, 3, 3, 3, 3), True, torch.float32, DEVICE)
    with pytest.raises(ValueError, match="weights"):
        _triton()(**test_in, normalize_modulator=False)


def test_autocast_casts_to_the_autocast_dtype():
    B, H, W, C, ks = 1, 4, 5, 16, (3, 5)
    ref_in, test_in, dout = _case(B, H, W, C, ks, True, torch.float32, DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = _triton()(**test_in, normalize_modulator=True)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, focal_modulation_ref(**ref_in, normalize_modulator=True)) < BF16_TOL
    _, leaves = _leaves(test_in)
    grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_torch_compile_fullgraph_traces_the_custom_op():
    """aot_eager: dynamo + AOTAutograd trace the op and its backward through the fake impls."""
    from focalfast.modules.focal_modulation import FocalModulation

    torch.manual_seed(0)
    ref = FocalModulation(16, focal_level=2, normalize_modulator=True, backend="reference").to(DEVICE)
    fused = FocalModulation(16, focal_level=2, normalize_modulator=True, backend="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 6, 16, device=DEVICE)
    eager = fused(x)  # also loads the backend, which dispatch caches before compiling
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    expected = ref(x)
    assert torch.equal(out, eager)
    assert rel_err(out, expected) < 1e-5
    out.sum().backward()
    expected.sum().backward()
    for (name, p), (_, p_ref) in zip(fused.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, p_ref.grad) < 1e-4, name


def test_torch_compile_inductor_fullgraph():
    import shutil

    if DEVICE == "cpu" and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("inductor needs a C++ compiler to build CPU kernels; none is on PATH")
    from focalfast.modules.focal_modulation import FocalModulation

    torch.manual_seed(0)
    fused = FocalModulation(16, focal_level=2, backend="triton").to(DEVICE)
    x = torch.randn(2, 5, 6, 16, device=DEVICE)
    eager = fused(x)
    eager_grads = torch.autograd.grad(eager.sum(), list(fused.parameters()))
    compiled = torch.compile(fused, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), list(fused.parameters()))
    assert rel_err(out, eager) < 1e-6
    for g, e in zip(grads, eager_grads):
        assert rel_err(g, e) < 1e-6


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) impls and autograd registration agree with the real kernels."""
    from focalfast.ops.triton.focal_modulation import focal_modulation_backward_op, focal_modulation_op

    _, test_in, dout = _case(1, 3, 4, 16, (3, 5), True, torch.float32, DEVICE)
    args = (test_in["q"], test_in["ctx"], test_in["gates"], test_in["weights"], test_in["h_weight"],
            test_in["h_bias"], True)
    torch.library.opcheck(focal_modulation_op, args)
    out, mean, glob = focal_modulation_op(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
    bwd_args = (dout.float(), *[a.detach() if isinstance(a, torch.Tensor) else a for a in args[:3]],
                [w.detach() for w in test_in["weights"]], test_in["h_weight"].detach(),
                test_in["h_bias"].detach(), mean, glob, True)
    torch.library.opcheck(focal_modulation_backward_op, bwd_args)


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

B, H, W, C, ks = 2, 4, 4, 8, (3, 5)
n = 2 * C + len(ks) + 1
stride = 2**28 + 64  # pixel stride: one image spans H * W * stride = 2**32 + 1024 elements
with open(sys.argv[1], "wb") as f:
    f.truncate(B * H * W * stride * 4)  # sparse: only the pixels' first n elements are ever written
y = torch.from_file(sys.argv[1], shared=True, size=B * H * W * stride, dtype=torch.float32).view(B, H, W, stride)
inp = random_focal_inputs(B, H, W, C, ks, generator=torch.Generator().manual_seed(0))
y[..., :C], y[..., C:2 * C], y[..., 2 * C:n] = inp["q"], inp["ctx"], inp["gates"]
views = dict(inp, q=y[..., :C], ctx=y[..., C:2 * C], gates=y[..., 2 * C:n])
out, mean, glob = focal_modulation_forward(**views, normalize_modulator=True)
dout = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(1))
grads = focal_modulation_backward(dout, **views, mean=mean, glob=glob, normalize_modulator=True)

ref_in = {k: v.double().requires_grad_() for k, v in inp.items() if k != "weights"}
ref_in["weights"] = [w.double().requires_grad_() for w in inp["weights"]]
ref = focal_modulation_ref(**ref_in, normalize_modulator=True)
ref_grads = torch.autograd.grad(ref, [ref_in[k] for k in ("q", "ctx", "gates")] + ref_in["weights"]
                                + [ref_in["h_weight"], ref_in["h_bias"]], dout.double())
got = [grads[0], grads[1], grads[2], *grads[3], grads[4], grads[5]]
print("errors", rel_err(out, ref), max(rel_err(g, r) for g, r in zip(got, ref_grads)))
"""


def test_images_larger_than_2_31_elements(tmp_path):
    """q, ctx, gates as views with a pixel stride so large that one image spans more than 2**31
    elements (over a sparse memory-mapped file): every offset inside an image must be 64-bit.
    In a subprocess, since a wrapped 32-bit offset reads or writes anywhere."""
    env = dict(os.environ, TRITON_INTERPRET="1") if DEVICE == "cpu" else dict(os.environ)
    run = subprocess.run([sys.executable, "-c", _HUGE_IMAGE, str(tmp_path / "y.bin")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    out_err, grad_err = map(float, run.stdout.split("errors")[1].split())
    assert out_err < 1e-5 and grad_err < 1e-4, run.stdout


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
# (B, H, W, C, kernel sizes, dtype, multiprocessors): the last one is cut into bands.
CASES = [(2, 56, 56, 96, (3, 5, 7), torch.bfloat16, None), (2, 9, 70, 40, (13,), torch.float32, None),
         (1, 128, 128, 96, (3, 5), torch.float16, 132)]
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
    assert run.stdout.count("built ") == 3 * 6, run.stdout


# ---------------------------------------------------------------------------------------------- GPU
STAGES = [(56, 56, 96), (28, 28, 192), (14, 14, 384), (7, 7, 768)]  # FocalNet-T stages at 224 px
GPU_TOL = {torch.float32: (1e-5, 1e-4), torch.float16: (5e-3, 1e-2), torch.bfloat16: (1e-2, 1e-2)}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("H,W,C", STAGES)
@pytest.mark.parametrize("kernel_sizes", [(3, 5), (3, 5, 7)], ids=["srf", "lrf"])
def test_gpu_focalnet_t_stages(H, W, C, kernel_sizes, dtype):
    out_tol, grad_tol = GPU_TOL[dtype]
    _check_against_reference(32, H, W, C, kernel_sizes, False, True, dtype, out_tol, grad_tol,
                             device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [False, True])
def test_gpu_stage1_batch128_bf16(normalize):
    _check_against_reference(128, 56, 56, 96, (3, 5), normalize, True, torch.bfloat16, 1e-2, 1e-2,
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
    _check_against_reference(B, H, H, C, (3, 5, 7), True, True, dtype, out_tol, grad_tol, device="cuda")


ODD_SHAPES = [(9, 13, 40, (5, 7, 9, 11)), (1, 1, 24, (3,)), (3, 70, 20, (13,)), (130, 3, 8, (3, 5))]


@pytest.mark.gpu
@pytest.mark.parametrize("H,W,C,kernel_sizes", ODD_SHAPES)
def test_gpu_odd_shapes_fp32(H, W, C, kernel_sizes):
    _check_against_reference(3, H, W, C, kernel_sizes, True, True, torch.float32, 1e-5, 1e-4,
                             device="cuda")


@pytest.mark.gpu
def test_gpu_gradients_are_bitwise_deterministic():
    _, test_in, dout = _case(32, 56, 56, 96, (3, 5, 7), True, torch.bfloat16, "cuda")
    _, leaves = _leaves(test_in)
    runs = []
    for _ in range(2):
        out = _triton()(**test_in, normalize_modulator=False)
        runs.append(torch.autograd.grad(out, leaves, dout.to(torch.bfloat16)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
