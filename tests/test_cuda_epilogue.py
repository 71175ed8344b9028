"""The CUDA backend's epilogue kernels (output_fwd: the forward's out and, in place on the GEMM's output,
the backward's grad_q; output_bwd: grad_modulator and its partial sums) and its split reduction (reduce_sum),
launched one by one on the host (CPU tensors run the GPU thread bodies serially), against float64 math.

The epilogue's threads each walk down a band of image rows; the launch picks the access of every tensor (a kernel
instantiation each): 16-byte vectors (aligned), eight scalars (a view of f's output whose rows are not 16-byte
aligned), or a bounded channel tail (C not a multiple of 8). The cases below reach every one of these paths, with ragged
last bands; reduce_sum is checked bitwise against the in-order sum for every stride pattern it merges.
"""

import pytest
import torch

from focalfast.ops.cuda import extension
from focalfast.ops.cuda.focal_modulation import _Kernels


@pytest.fixture(scope="module")
def kernels():
    if extension.unavailable_reason() is not None and extension.find_nvcc() is None:
        pytest.skip("the CUDA extension is unavailable and there is no nvcc to build it")
    return _Kernels(torch.device("cpu"))


def pixel_tensor(B, H, W, C, dtype, layout, generator):
    """A random [B, H, W, C] tensor: contiguous, or a view at channel offset 1 of a wider row (pixel stride
    2C + 3, as q in f's output: rows not 16-byte aligned)."""
    if layout == "contiguous":
        return torch.randn(B, H, W, C, generator=generator).to(dtype)
    return torch.randn(B, H, W, 2 * C + 3, generator=generator).to(dtype)[..., 1:C + 1]


def epilogue_inputs(B, H, W, C, dtype, q_layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    L = 2
    return dict(
        q=pixel_tensor(B, H, W, C, dtype, q_layout, g),
        linear=torch.randn(B, H, W, C, generator=g).to(dtype),
        gates=torch.randn(B, H, W, 2 * C + L + 1, generator=g).to(dtype)[..., 2 * C:],
        global_term=torch.randn(B, C, generator=g),
        scale=1.0 / (L + 1),
    )


def modulator64(a):
    """linear (the GEMM's output, bias included) + scale * gates_L * global_term."""
    gate = a["gates"][..., -1:].double()
    return a["linear"].double() + a["scale"] * gate * a["global_term"].double()[:, None, None, :]


def rel_err(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


# B, H, W, C, rows per thread: whole columns, bands with a ragged last one, one row; C = 12 and 5 have a
# channel tail (bounded access), C = 16 full groups.
SHAPES = [(2, 7, 5, 16, 16), (1, 7, 3, 16, 3), (2, 5, 4, 12, 2), (1, 3, 2, 5, 1)]


@pytest.mark.parametrize("B,H,W,C,rows", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("q_layout", ["contiguous", "view"])
@pytest.mark.parametrize("grad_layout", ["contiguous", "view"])
def test_output_kernels_match_float64(kernels, B, H, W, C, rows, dtype, q_layout, grad_layout):
    a = epilogue_inputs(B, H, W, C, dtype, q_layout)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    modulator = modulator64(a)

    out = torch.empty(B, H, W, C, dtype=dtype)
    kernels.launch("output_fwd", out=out, rows_per_thread=rows, **a)
    assert rel_err(out, a["q"].double() * modulator) < tol

    grad_out = pixel_tensor(B, H, W, C, dtype, grad_layout, torch.Generator().manual_seed(1))
    # The backward's grad_q: output_fwd with grad_out as q, in place on linear (the GEMM's output).
    grad_q = a["linear"].clone()
    kernels.launch("output_fwd", **{**a, "q": grad_out, "linear": grad_q}, out=grad_q, rows_per_thread=rows)
    assert rel_err(grad_q, grad_out.double() * modulator) < tol

    strips = -(-H // rows) * W
    grad_mod = torch.empty(B, H, W, C, dtype=dtype)
    partial = torch.full((B, strips, 2, C), float("nan"))
    kernels.launch("output_bwd", grad_out=grad_out, q=a["q"], gates=a["gates"], grad_modulator=grad_mod,
                   partial=partial, rows_per_thread=rows)
    grad_mod64 = grad_out.double() * a["q"].double()
    assert rel_err(grad_mod, grad_mod64) < tol
    # partial[b, band * W + x] sums the rows of band `band` at column x.
    gated64 = a["gates"][..., -1:].double() * grad_mod64
    bands = -(-H // rows)
    pad = bands * rows - H
    for j, expected in enumerate((grad_mod64, gated64)):
        padded = torch.cat([expected, expected.new_zeros(B, pad, W, C)], dim=1)
        per_strip = padded.reshape(B, bands, rows, W, C).sum(2).reshape(B, strips, C)
        assert rel_err(partial[:, :, j], per_strip) < 1e-6, j


def recorded_accesses(kernels, name, **args):
    """The accesses of the one kernel instantiation that launching ``name`` picks (recorded, not run), by name."""
    with extension.recorded_launches(kernels.ext) as records:
        kernels.launch(name, **args)
    (record,) = records
    names = {"(focalfast::Access)0": "vector", "(focalfast::Access)1": "scalar", "(focalfast::Access)2": "bounded"}
    return tuple(names[a.strip()] for a in record["op"].rstrip(">").split(",")[1:])


# C, q's layout, grad_out's layout -> output_fwd's (q, linear and out) and output_bwd's (grad_out, q,
# grad_modulator) accesses: every instantiation the launches pick, and only aligned tensors as vectors.
ACCESS_CASES = [
    (16, "contiguous", "contiguous", ("vector", "vector"), ("vector", "vector", "vector")),
    (16, "view", "contiguous", ("scalar", "vector"), ("vector", "scalar", "vector")),
    (16, "view", "view", ("scalar", "vector"), ("scalar", "scalar", "vector")),
    (16, "contiguous", "view", ("vector", "vector"), ("scalar", "scalar", "vector")),
    (12, "contiguous", "contiguous", ("bounded", "bounded"), ("bounded", "bounded", "bounded")),
]


@pytest.mark.parametrize("C,q_layout,grad_layout,fwd,bwd", ACCESS_CASES)
def test_output_kernels_pick_their_access_per_launch(kernels, C, q_layout, grad_layout, fwd, bwd):
    a = epilogue_inputs(1, 4, 3, C, torch.bfloat16, q_layout)
    out = torch.empty(1, 4, 3, C, dtype=torch.bfloat16)
    assert recorded_accesses(kernels, "output_fwd", out=out, rows_per_thread=2, **a) == fwd
    grad_out = pixel_tensor(1, 4, 3, C, torch.bfloat16, grad_layout, torch.Generator().manual_seed(1))
    partial = torch.empty(1, 2 * 3, 2, C)
    assert recorded_accesses(kernels, "output_bwd", grad_out=grad_out, q=a["q"], gates=a["gates"],
                             grad_modulator=torch.empty_like(out), partial=partial, rows_per_thread=2) == bwd


def test_output_bwd_partial_shape_is_checked(kernels):
    a = epilogue_inputs(1, 5, 3, 8, torch.float32, "contiguous")
    empty = torch.empty(1, 5, 3, 8)
    with pytest.raises(ValueError, match=r"partial: expected shape \[1, 6, 2, 8\]"):
        kernels.launch("output_bwd", grad_out=empty, q=a["q"], gates=a["gates"], grad_modulator=torch.empty_like(empty),
                       partial=torch.empty(1, 15, 2, 8), rows_per_thread=3)
    with pytest.raises(ValueError, match="rows_per_thread: must be >= 1"):
        kernels.launch("output_fwd", out=torch.empty_like(empty), rows_per_thread=0, **a)


def in_order_sum(x, scale):
    """``scale * x.sum(1)`` summed in fp32 in the order r = 0, 1, ...: what reduce_sum must give bitwise."""
    acc = torch.zeros(x.shape[0], x.shape[2])
    for r in range(x.shape[1]):
        acc = acc + x[:, r]
    return acc * scale


# [outer, rows, cols] inputs: contiguous; a column view; cols = 1 (merged into the columns); outer = 1;
# strides that do not merge (a transposed view); a single row; and whether each sums its columns as 16-byte runs
# (contiguous columns from 16-byte boundaries, rows a multiple of 4: the gate partials).
def reduce_inputs():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 9, 40, generator=g)
    flat = torch.randn(300 * 12 + 1, generator=g)
    return {
        "contiguous": (base, False),
        "columns of a wider tensor": (base[:, :, 3:20], False),
        "one column": (base[:, :, :1].contiguous(), False),
        "one outer": (base[:1], False),
        "transposed": (base.transpose(0, 2), False),
        "one row": (base[:, :1], False),
        "gate partials": (torch.randn(300, 12, 1, generator=g), True),
        "gate partials, runs of 8 in a wider tensor": (torch.randn(300, 12, 1, generator=g)[:, :8], True),
        "gate partials from an odd float": (flat[1:].view(300, 12, 1), False),
        "gate partials, 6 rows": (torch.randn(300, 6, 1, generator=g), False),
        "runs along the columns": (torch.randn(6, 40, 12, generator=g).transpose(1, 2)[:, :8], True),
    }


@pytest.mark.parametrize("name", list(reduce_inputs()))
def test_reduce_sum_is_the_in_order_sum(kernels, name):
    x, runs = reduce_inputs()[name]
    assert torch.equal(kernels.reduce_sum(x, scale=0.25), in_order_sum(x, 0.25)), name
    with extension.recorded_launches(kernels.ext) as records:
        kernels.reduce_sum(x, scale=0.25)
    assert [r["op"].endswith(f"ReduceSum<{str(runs).lower()}>") for r in records] == [True]
