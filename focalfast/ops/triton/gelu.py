"""Exact (erf) GELU and its derivative, in fp32, for use inside Triton kernels.

    gelu(x)  = x * Phi(x),                 Phi(x) = (1 + erf(x / sqrt(2))) / 2
    gelu'(x) = Phi(x) + x * phi(x),        phi(x) = exp(-x^2 / 2) / sqrt(2 pi)

``tl.math.erf`` exists (and means the same) in Triton 3.2 through 3.9; no libdevice.
"""

import triton
import triton.language as tl

_RSQRT_2 = tl.constexpr(0.7071067811865476)
_RSQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def gelu(x):
    """``x * Phi(x)`` elementwise; ``x`` fp32."""
    return 0.5 * x * (1.0 + tl.math.erf(x * _RSQRT_2))


@triton.jit
def gelu_grad(x):
    """``d gelu(x) / dx = Phi(x) + x * phi(x)`` elementwise; ``x`` fp32."""
    cdf = 0.5 * (1.0 + tl.math.erf(x * _RSQRT_2))
    return cdf + x * tl.exp(-0.5 * x * x) * _RSQRT_2PI


@triton.jit
def gelu_and_grad(x):
    """``(gelu(x), gelu'(x))`` elementwise from one erf; ``x`` fp32."""
    cdf = 0.5 * (1.0 + tl.math.erf(x * _RSQRT_2))
    return x * cdf, cdf + x * tl.exp(-0.5 * x * x) * _RSQRT_2PI
