"""The fused Triton depthwise conv + LayerNorm of ConvNeXt: against the reference, deterministic, in the model.

Without a GPU the kernels run in Triton's interpreter (``tests/conftest.py``), in fp32 on tiny
shapes; the GPU tests at ConvNeXt-T stage shapes are skipped there.
"""

import os

import pytest
import torch

pytest.importorskip("triton")

from focalfast import build_convnext  # noqa: E402
from focalfast.ops.dwconv_layernorm import dwconv_layernorm, dwconv_layernorm_ref  # noqa: E402
from focalfast.ops.triton.dwconv_layernorm import (  # noqa: E402
    MAX_CHANNELS,
    dwconv_layernorm_backward_op,
    dwconv_layernorm_op,
    dwconv_layernorm_triton,
    launch_plan,
)
from focalfast.testing import errors_in_subprocess, rel_err  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x_nhwc", "conv_weight", "conv_bias", "ln_weight", "ln_bias")


def random_inputs(B, H, W, C, k=7, layout="contiguous", device=DEVICE, seed=0):
    """Float64 op arguments. ``layout``: "contiguous", "nchw" (a channels-last view of an NCHW
    tensor: channel stride H*W) or "slice" (channels [3, 3 + C) of a wider tensor: channel
    stride 1, pixel stride 2C + 1)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device)

    if layout == "nchw":
        x = randn(B, C, H, W).permute(0, 2, 3, 1)
    elif layout == "slice":
        x = randn(B, H, W, 2 * C + 1)[..., 3:3 + C]
    else:
        x = randn(B, H, W, C, shift=0.5)  # a common offset in every channel: LayerNorm must remove it
    return dict(x_nhwc=x, conv_weight=randn(C, 1, k, k, scale=1.0 / k), conv_bias=randn(C, scale=0.3),
                ln_weight=randn(C, scale=0.3, shift=1.0), ln_bias=randn(C, scale=0.3), eps=1e-6)


def output_and_grads(args, dtype, backend, dy):
    """Output and the gradients of ``sum(out * dy)`` w.r.t. all five tensors, computed in ``dtype``."""
    tensors = [args[n].detach().to(dtype).requires_grad_() for n in NAMES]
    out = dwconv_layernorm(*tensors, eps=args["eps"], backend=backend)
    grads = torch.autograd.grad((out * dy.to(out.dtype)).sum(), tensors)
    return out, grads


def check_against_reference(args, dtype, out_tol, grad_tol):
    dy = torch.randn(args["x_nhwc"].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dy = dy.to(args["x_nhwc"].device)
    ref, ref_grads = output_and_grads(args, torch.float64, "reference", dy)
    out, grads = output_and_grads(args, dtype, "triton", dy)
    assert out.dtype == dtype and out.shape == ref.shape
    assert rel_err(out, ref) < out_tol
    for name, g, e in zip(NAMES, grads, ref_grads):
        assert g.dtype == dtype and g.shape == e.shape, name
        assert rel_err(g, e) < grad_tol, name


# (B, H, W, C, k, layout): single pixel, maps smaller than the kernel, odd sizes, C not a multiple
# of 16, several tiles / programs / channel blocks with ragged tails (see launch_plan).
SHAPES = [
    (1, 1, 1, 3, 7, "contiguous"),
    (2, 5, 7, 20, 7, "nchw"),
    (1, 6, 4, 40, 7, "slice"),
    (1, 3, 9, 17, 3, "contiguous"),
]


@pytest.mark.parametrize("B,H,W,C,k,layout", SHAPES)
def test_matches_reference_fp32(B, H, W, C, k, layout):
    check_against_reference(random_inputs(B, H, W, C, k, layout), torch.float32, 1e-5, 1e-4)


def test_interpreter_plan_exercises_tails_and_split_reductions():
    """Under the interpreter's plan, the (2, 5, 7, 20) shape above has ragged last pixel tiles,
    programs that loop over two tiles and two programs per pixel reduction in both backward
    kernels, and two channel blocks (the last one ragged) in bwd_conv."""
    n_pix, C = 2 * 5 * 7, 20
    plan = launch_plan(n_pix, C, interpret=True)
    for block, per_program in ((plan.norm_block_p, plan.norm_tiles_per_program),
                               (plan.conv_block_p, plan.conv_tiles_per_program)):
        assert n_pix % block and per_program > 1 and -(-n_pix // block) > per_program
    assert plan.conv_block_c < C < 2 * plan.conv_block_c


def test_gradients_are_bitwise_reproducible():
    args = random_inputs(2, 5, 7, 20, k=3, seed=3)
    dy = torch.randn(args["x_nhwc"].shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    first = output_and_grads(args, torch.float32, "triton", dy)
    second = output_and_grads(args, torch.float32, "triton", dy)
    assert torch.equal(first[0], second[0])
    for name, a, b in zip(NAMES, first[1], second[1]):
        assert torch.equal(a, b), name


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementations, autograd registration and AOT dispatch of both ops."""
    args = random_inputs(1, 2, 3, 3, k=3, seed=5)
    tensors = [args[n].float().requires_grad_() for n in NAMES]
    torch.library.opcheck(dwconv_layernorm_op, (*tensors, 1e-6))
    dy = torch.randn(1, 2, 3, 3, device=DEVICE)
    torch.library.opcheck(dwconv_layernorm_backward_op, (dy, *[t.detach() for t in tensors[:4]], 1e-6))


_HUGE_IMAGE = r"""
import sys, torch
from focalfast.ops.dwconv_layernorm import dwconv_layernorm_ref
from focalfast.ops.triton.dwconv_layernorm import dwconv_layernorm_backward_op, dwconv_layernorm_op
from focalfast.testing import rel_err

B, H, W, C, k = 2, 4, 4, 8, 3
stride = 2**28 + 64  # pixel stride: one image spans H * W * stride = 2**32 + 1024 elements
with open(sys.argv[1], "wb") as f:
    f.truncate(B * H * W * stride * 4)  # sparse: only the pixels' first C elements are ever written
y = torch.from_file(sys.argv[1], shared=True, size=B * H * W * stride, dtype=torch.float32).view(B, H, W, stride)
g = torch.Generator().manual_seed(0)
x = torch.randn(B, H, W, C, generator=g, dtype=torch.float64)
params = [torch.randn(C, 1, k, k, generator=g, dtype=torch.float64) / k] + [
    torch.randn(C, generator=g, dtype=torch.float64) * 0.3 + shift for shift in (0.0, 1.0, 0.0)]
y[..., :C] = x
view = y[..., :C]
out = dwconv_layernorm_op(view, *[p.float() for p in params], 1e-6)
dy = torch.randn(B, H, W, C, generator=g)
grads = dwconv_layernorm_backward_op(dy, view, *[p.float() for p in params[:3]], 1e-6)
ref_in = [x.requires_grad_()] + [p.requires_grad_() for p in params]
ref = dwconv_layernorm_ref(*ref_in, eps=1e-6)
ref_grads = torch.autograd.grad(ref, ref_in, dy.double())
print("errors", rel_err(out, ref), max(rel_err(a, b) for a, b in zip(grads, ref_grads)))
"""


def test_images_larger_than_2_31_elements(tmp_path):
    """x as a view with a pixel stride so large that one image spans more than 2**31 elements (over
    a sparse memory-mapped file): every offset inside an image must be 64-bit. In a subprocess,
    since a wrapped 32-bit offset reads or writes anywhere."""
    env = dict(os.environ, TRITON_INTERPRET="1") if DEVICE == "cpu" else dict(os.environ)
    out_err, grad_err = errors_in_subprocess(_HUGE_IMAGE, str(tmp_path / "y.bin"), env=env)
    assert out_err < 1e-5 and grad_err < 1e-4, (out_err, grad_err)


def test_too_many_channels_is_a_clear_error():
    C = MAX_CHANNELS + 1
    x = torch.zeros(1, 1, 1, C, device=DEVICE)
    with pytest.raises(ValueError, match="x_nhwc.*at most"):
        dwconv_layernorm(x, torch.zeros(C, 1, 3, 3, device=DEVICE), *torch.zeros(3, C, device=DEVICE),
                         backend="triton")


def perturbed_convnext(backend, seed=0):
    """A two-stage ConvNeXt with every parameter randomised (layer scale 1, so the blocks matter)."""
    torch.manual_seed(seed)
    model = build_convnext(image_size=32, patch_size=4, depths=(1, 1), dims=(8, 12), num_classes=5,
                           layer_scale_init=1.0, backend=backend).to(DEVICE)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g).to(DEVICE))
    return model


def test_convnext_triton_matches_reference():
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7)).to(DEVICE)
    results = []
    for backend in ("reference", "triton"):
        model = perturbed_convnext(backend)
        x = images.clone().requires_grad_()
        logits = model(x)
        grads = torch.autograd.grad(logits.square().sum(), [x, *model.parameters()])
        results.append((logits, dict(zip(["images"] + [n for n, _ in model.named_parameters()], grads))))
    (ref_logits, ref_grads), (logits, grads) = results
    assert rel_err(logits, ref_logits) < 1e-5
    assert any("dwconv" in name for name in grads)
    for name, e in ref_grads.items():
        assert rel_err(grads[name], e) < 1e-4, name


# ConvNeXt-T stage shapes (B = 8): the GPU tile plan, fp32 and bf16.
STAGES = [(8, 56, 56, 96), (8, 28, 28, 192), (8, 14, 14, 384), (8, 7, 7, 768)]


@pytest.mark.gpu
@pytest.mark.parametrize("B,H,W,C", STAGES)
@pytest.mark.parametrize("dtype,out_tol,grad_tol", [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 1e-2, 1e-2)])
def test_gpu_convnext_tiny_stages(B, H, W, C, dtype, out_tol, grad_tol):
    check_against_reference(random_inputs(B, H, W, C, layout="nchw"), dtype, out_tol, grad_tol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_gradients_are_bitwise_reproducible(dtype):
    args = random_inputs(8, 28, 28, 192)
    dy = torch.randn(args["x_nhwc"].shape, device=DEVICE)
    first = output_and_grads(args, dtype, "triton", dy)
    second = output_and_grads(args, dtype, "triton", dy)
    for name, a, b in zip(("out",) + NAMES, [first[0], *first[1]], [second[0], *second[1]]):
        assert torch.equal(a, b), name


@pytest.mark.gpu
def test_gpu_autocast_and_compile():
    args = random_inputs(2, 14, 14, 384)
    tensors = [args[n].float() for n in NAMES]
    ref = dwconv_layernorm_ref(*[t.double() for t in tensors], eps=args["eps"])
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = dwconv_layernorm(*tensors, eps=args["eps"], backend="triton")
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) < 1e-2
    compiled = torch.compile(dwconv_layernorm_triton, fullgraph=True)  # the custom op traces whole
    assert rel_err(compiled(*tensors, args["eps"]), ref) < 1e-5
