"""Bytes and FLOPs of the fused op, and the time floor they set on a device.

The roofline of ``docs/design.md`` ("Where the time goes").

Notation: P = B * H * W pixels, C channels, L focal levels with kernel sizes k_l, e bytes per
element of the op's dtype, K2 = sum_l k_l^2. "Parameters" are the L depthwise kernels (C * K2),
``h_weight`` (C^2) and ``h_bias`` (C).

Memory floor: the fewest bytes any implementation must move through device memory, each
tensor of the op's boundary read or written exactly once and nothing else (a fused kernel keeps
the levels, ``ctx_all`` and the modulator on chip; the forward saves only its inputs):

    forward   read q, ctx [P, C] and gates [P, L+1], write out [P, C]
              + read the parameters                                  P (3C + L + 1) e + params e
    backward  read q, ctx, gates and dout, write dq, dctx, dgates
              + read the parameters, write their gradients          P (5C + 2L + 2) e + 2 params e

q, ctx and gates are usually views of one ``[P, 2C + L + 1]`` tensor; reading the three views
reads exactly that tensor, so the count does not depend on the strides. The global context
needs the image-wide mean of the last level before any output pixel is final; the floor still
counts ctx once (an implementation that reads it twice moves more than the floor).

FLOPs, a multiply-add counted as 2, per pixel and channel (multiply by P * C):

    vector (CUDA cores, always fp32 accumulation)
      forward   depthwise convs 2 K2, gated sum of L + 1 levels 2 (L + 1), mean pool 1,
                h bias 1, q * modulator 1                             = 2 K2 + 2 (L + 1) + 3
      backward  the forward's convs recomputed (the op boundary of docs/design.md) 2 K2, their
                input and weight gradients 4 K2, gated-sum and gate gradients 4 (L + 1), dq,
                dmodulator and the pooled gradient's broadcast 3      = 6 K2 + 4 (L + 1) + 3
    GEMM (h, a [P, C] x [C, C] product)
      forward   2 C;   backward  recomputed h 2 C, dctx_all 2 C, dh_weight 2 C = 6 C

GELU (erf) and its derivative are not counted: they run on the special-function and FMA units
in ways no single rate captures, so the compute floor is a lower bound.

Time floor: ``max(bytes / bandwidth, compute time)``. The kernels keep float32 accuracy
(``docs/design.md``, "Measuring"), so in float32 the GEMM runs on the FMA units too and compute
time is ``(vector + GEMM) / fp32 rate``; in bfloat16 the GEMM may use the tensor cores and compute time
is ``max(vector / fp32 rate, GEMM / bf16 tensor rate)``. ``% of roofline`` is floor / measured.
The rates (``Ceilings``) are measured on the device by ``measure_ceilings``: a large
device-to-device copy (bytes read + written) and large fp32 (TF32 off) and bf16 matrix products,
which is what a kernel can actually reach rather than the datasheet.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch

PASSES = ("forward", "backward", "forward_backward")


@dataclass(frozen=True)
class OpShape:
    """One call of the op: q, ctx ``[batch, height, width, channels]`` with L = len(kernel_sizes)."""

    batch: int
    height: int
    width: int
    channels: int
    kernel_sizes: Tuple[int, ...] = (3, 5)
    bias: bool = True

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width

    @property
    def levels(self) -> int:
        return len(self.kernel_sizes)

    @property
    def parameters(self) -> int:
        """Elements of the L depthwise kernels, h_weight and h_bias."""
        C = self.channels
        return C * sum(k * k for k in self.kernel_sizes) + C * C + (C if self.bias else 0)

    def describe(self) -> str:
        ks = ",".join(map(str, self.kernel_sizes))
        return f"B{self.batch} {self.height}x{self.width} C{self.channels} k{ks}"


@dataclass(frozen=True)
class Flops:
    vector: int  # fp32 CUDA-core FLOPs
    gemm: int  # FLOPs of the h products

    @property
    def total(self) -> int:
        return self.vector + self.gemm


def _check_pass(pass_: str) -> None:
    if pass_ not in PASSES:
        raise ValueError(f"pass_: expected one of {PASSES}, got {pass_!r}")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def op_bytes(shape: OpShape, dtype: torch.dtype, pass_: str = "forward") -> int:
    """Minimal device-memory traffic of the op in bytes (see the module docstring)."""
    _check_pass(pass_)
    C, L, e = shape.channels, shape.levels, element_size(dtype)
    forward = shape.pixels * (3 * C + L + 1) + shape.parameters
    backward = shape.pixels * (5 * C + 2 * L + 2) + 2 * shape.parameters
    elements = {"forward": forward, "backward": backward, "forward_backward": forward + backward}[pass_]
    return elements * e


def op_flops(shape: OpShape, pass_: str = "forward") -> Flops:
    """Arithmetic of the op (see the module docstring); GELU not counted."""
    _check_pass(pass_)
    C, L = shape.channels, shape.levels
    K2 = sum(k * k for k in shape.kernel_sizes)
    n = shape.pixels * C
    forward = Flops(vector=n * (2 * K2 + 2 * (L + 1) + 3), gemm=n * 2 * C)
    backward = Flops(vector=n * (6 * K2 + 4 * (L + 1) + 3), gemm=n * 6 * C)
    if pass_ == "forward":
        return forward
    if pass_ == "backward":
        return backward
    return Flops(forward.vector + backward.vector, forward.gemm + backward.gemm)


@dataclass(frozen=True)
class Ceilings:
    """What the device reaches: bytes/s of a copy, FLOP/s of fp32 FMA work and of bf16 GEMMs."""

    bandwidth: float
    fp32_flops: Optional[float] = None
    bf16_gemm_flops: Optional[float] = None
    source: str = "given"

    def as_dict(self) -> dict:
        return asdict(self)


def floor_seconds(shape: OpShape, dtype: torch.dtype, pass_: str, ceilings: Ceilings) -> float:
    """The op's roofline time floor on a device with ``ceilings`` (memory-only if rates are unknown)."""
    memory = op_bytes(shape, dtype, pass_) / ceilings.bandwidth
    flops = op_flops(shape, pass_)
    compute = 0.0
    if ceilings.fp32_flops:
        if dtype == torch.bfloat16 and ceilings.bf16_gemm_flops:
            compute = max(flops.vector / ceilings.fp32_flops, flops.gemm / ceilings.bf16_gemm_flops)
        else:
            compute = flops.total / ceilings.fp32_flops
    return max(memory, compute)


@contextlib.contextmanager
def _ieee_fp32_matmul():
    """TF32 off for fp32 matrix products, through the API this torch has (mixing the two raises)."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else ("allow_tf32", False)
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def measure_ceilings(device: torch.device) -> Optional[Ceilings]:
    """Measure copy bandwidth and fp32 / bf16 GEMM rates on a CUDA device (None on CPU); ~0.5 s."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    from focalfast import timing

    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = timing.measure(lambda: dst.copy_(src), [()], warmup=3, rounds=10, device=device)
    bandwidth = 2 * src.numel() * 4 / copy.median
    del src, dst

    rates = {}
    n = 8192
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        with _ieee_fp32_matmul():  # fp32 products on the FMA units, as the kernels compute
            gemm = timing.measure(lambda: torch.mm(a, b), [()], warmup=2, rounds=5, device=device)
        rates[dtype] = 2 * n**3 / gemm.median
        del a, b
    torch.cuda.empty_cache()
    return Ceilings(bandwidth=bandwidth, fp32_flops=rates[torch.float32],
                    bf16_gemm_flops=rates[torch.bfloat16], source="measured")
