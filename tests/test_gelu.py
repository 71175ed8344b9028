"""The kernels' exact-GELU and GELU' against float64, on a dense grid of fp32 inputs.

Both backends evaluate Phi from the same tail polynomial (``focalfast/ops/triton/gelu.py``,
``csrc/focal_modulation_common.cuh``). Triton's runs in its interpreter (conftest), the CUDA one
through a host build of the header by nvcc (exp2 exact there; the GPU's MUFU.EX2 adds about 2 ulp).
Bounds: |GELU - exact| <= 3e-7 + 2e-6 |exact|, |GELU' - exact| <= 5e-7.
"""

import ctypes
import os
import subprocess

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from focalfast.ops.cuda import extension
from focalfast.ops.triton.gelu import gelu, gelu_and_grad, gelu_grad

X = torch.linspace(-12.0, 12.0, 200_001, dtype=torch.float32)


def _exact(x: torch.Tensor):
    x = x.to(torch.float64)
    cdf = 0.5 * torch.erfc(-x / 2**0.5)
    pdf = torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5
    return x * cdf, cdf + x * pdf


def _check(gelu, gelu_and_value, grad):
    value, derivative = _exact(X)
    for name, got in (("gelu", gelu), ("gelu_and_grad value", gelu_and_value)):
        err = (got.to(torch.float64) - value).abs()
        bound = 3e-7 + 2e-6 * value.abs()
        assert bool((err <= bound).all()), f"{name}: worst at x = {X[(err - bound).argmax()].item()}: {err.max().item()}"
    err = (grad.to(torch.float64) - derivative).abs()
    assert err.max().item() <= 5e-7, f"gelu_and_grad grad: worst at x = {X[err.argmax()].item()}: {err.max().item()}"


@triton.jit
def _gelu_kernel(x_ptr, gelu_ptr, value_ptr, grad_ptr, grad_only_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    tl.store(gelu_ptr + offs, gelu(x), mask=mask)
    value, grad = gelu_and_grad(x)
    tl.store(value_ptr + offs, value, mask=mask)
    tl.store(grad_ptr + offs, grad, mask=mask)
    tl.store(grad_only_ptr + offs, gelu_grad(x), mask=mask)


@pytest.mark.skipif(not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
                    reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set by conftest.py when there is no GPU)")
def test_triton_gelu_matches_float64():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = X.to(device)
    outs = [torch.empty_like(x) for _ in range(4)]
    block = 4096
    _gelu_kernel[(triton.cdiv(x.numel(), block),)](x, *outs, x.numel(), BLOCK=block)
    gelu_out, value, grad, grad_only = (o.cpu() for o in outs)
    _check(gelu_out, value, grad)
    assert torch.equal(grad, grad_only)


_HOST_SOURCE = r"""
#include "focal_modulation_common.cuh"
extern "C" void ff_gelu(const float* x, float* gelu, float* value, float* grad, int n) {
  for (int i = 0; i < n; ++i) {
    gelu[i] = focalfast::gelu(x[i]);
    focalfast::gelu_and_grad(x[i], value[i], grad[i]);
  }
}
"""


@pytest.mark.skipif(extension.find_nvcc() is None, reason="nvcc not found (no CUDA toolkit)")
def test_cuda_gelu_matches_float64(tmp_path):
    source = tmp_path / "gelu_host.cu"
    source.write_text(_HOST_SOURCE)
    library = tmp_path / "gelu_host.so"
    subprocess.run([extension.find_nvcc(), "-shared", "-Xcompiler", "-fPIC", "-O2", "-std=c++17",
                    f"-I{extension.SOURCE_DIR}", str(source), "-o", str(library)], check=True)
    fn = ctypes.CDLL(str(library)).ff_gelu
    x = X.numpy().copy()
    outs = [np.empty_like(x) for _ in range(3)]
    ptr = ctypes.POINTER(ctypes.c_float)
    fn(x.ctypes.data_as(ptr), *(o.ctypes.data_as(ptr) for o in outs), ctypes.c_int(x.size))
    _check(*(torch.from_numpy(o) for o in outs))
