"""The fused focal-modulation op on the CUDA C++ kernels of ``csrc/``, with a fused backward.

Forward, L levels, s = 1/(L+1) with ``normalize_modulator`` else 1 (docs/design.md, "The math"):
    context_fwd          one row-streaming sweep per (image, chunk of channels): z_{l+1} = GELU(dwconv(z_l))
                         in shared-memory rings, ctx_local = s * sum_l g_l z_{l+1} in T, and
                         pooled_sum = sum_{H,W} z_L [B, C] fp32;  G = GELU(pooled_sum / (H W))
    F.linear (cuBLAS)    linear = ctx_local W^T + b
    output_fwd           out = q * (linear + s * gates_L * (G W^T))
The autograd graph keeps the inputs and ``pooled_mean`` only; no per-level activation.

Backward, in this order: grad_mod = grad_out * q needs no modulator, so nothing recomputes the forward
before the levels' own backward sweep, which recomputes the levels once and gives ctx_local on the way:
    output_bwd           grad_mod = grad_out * q, per-thread sums of grad_mod and g_L * grad_mod
    cuBLAS               grad_ctx_all = grad_mod W
    context_bwd          one bottom-to-top sweep per (band, chunk; a band: an image, rows of one, or a stack of
                         small images, below): recomputes the levels, writes ctx_local
                         (the last level's recompute; z_1 .. z_{L-1} of that row are still in their rings) and
                         runs their adjoint chain a few rows behind; writes grad_ctx, per-band partials of the
                         depthwise weight gradients and partials of the gate gradients (per 8 channels;
                         per chunk in stacks)
    cuBLAS               grad_W = grad_mod^T ctx_local + s * u^T G,  linear = ctx_local W^T + b
    output_fwd           grad_q = grad_out * (linear + s * gates_L * (G W^T)), in place on linear
with u[b] = sum_p g_L grad_mod and dG = s * u W. Every partial sum is reduced by ``reduce_sum`` in a
fixed order (no atomics): the gradients are bitwise deterministic. The backward's transient C-tensors (in T)
are grad_mod, grad_ctx_all and ctx_local (three; grad_q is made by the GEMM that gives linear), plus the fp32
gate partials, (L + 1) * ceil(C / 8) floats a pixel (144 bytes at C = 96, L = 2: three quarters of a bf16
C-tensor; (L + 1) * ceil(C / chunk) in stacks); the fallback (below) adds its fp32 level inputs z_1 .. z_{L-1}
and per-level scratch.

HBM traffic per element of a C-sized tensor (bf16, C = 96, kernels 3/5/7; counted, not measured):
context_fwd about 4 bytes (read ctx and gates, write ctx_local: the floor of docs/design.md, "Where the time goes"),
the whole forward about 14 (with the GEMM and the epilogue). The whole backward about 32: output_bwd 6 (read
grad_out, q; write grad_mod), the two GEMMs on grad_mod 4 each, context_bwd 8 (read ctx, grad_ctx_all; write
ctx_local, grad_ctx), linear 4, output_fwd 6 (read grad_out, linear; write grad_q). The sweeps
are bound by instruction issue: they are written for few instructions per output element (pixel x
channel). An item of a conv phase is one channel of an 8-pixel strip: its window rows come in 16-byte
shared loads and feed 8 K FMAs each, the tap loops unroll (kernel size as a template parameter), and
GELU is 11 instructions (max(x, 0) - |x| Phi(-|x|), Phi's tail from one exp2 of a degree-8 polynomial) and GELU'
shares its Phi (csrc/focal_modulation_common.cuh). Where a row's strips x chunk is not a whole number of warps
(stage 1 lrf: 7 strips x 16 channels) context_fwd splits the row's last strips into 4-pixel halves until it is:
the warp the row left part idle runs half strips, about half a pass of instructions. Its ctx load takes 4
channels of a strip an item (one pixel step for 4 loads) where rows are wide, a channel an item at 14x14 and 7x7. context_fwd advances two output
rows per step: an item's K + 1 window rows feed both rows' FMAs, and the per-row bookkeeping (ring slots, global
addresses, barriers, the load phase) is paid once per two rows. An item whose rows and columns are all inside
runs its two rows unrolled without tests; the others (image and band edges, the strip past W) run them as a
one-copy row loop, so the static cost report counts their branches exactly. Global addresses: a row pointer
stepped once per step, a pixel stride (a 64-bit add) per value. Maps of at most two strips a row (7x7, 14x14) load
their gates a value an item, not a strip an item (a warp's lanes all work), and their strips past W (every strip at
7x7) take the unrolled rows too, with a column test. The half strips and the narrow rows are variants of the
FocalNet kernel sizes' sweeps (FixedChain); other sizes (GenericChain, a copy of the level code per size) sweep
whole strips with gates by strip, one variant: its others cost more build time than every FixedChain together.
output_fwd and output_bwd are instantiated per access (vector, scalar, bounded), so a kernel holds the one row loop
it runs, and their row pointers step by the views' row strides in bytes, given by the host (one 64-bit add a row).

Instruction counts (the static cost report, ``python -m focalfast.static_cost --backend cuda``: sm_90a SASS
of nvcc -O3 times the host path's trip counts), in warp-instructions per output element, bf16, q/ctx/gates as
views, FocalNet-T stage 1 (B = 128, 56x56, C = 96), srf / lrf; a model of issue, not a GPU measurement:
    context_fwd   2.91 / 5.62 (the forward 3.18 / 5.89; stages 2-4: 3.98 / 6.99, 4.53 / 7.01, 5.00 / 7.52);
                  FMA floor 1.06 / 2.59
    context_bwd   9.07 / 17.05 (the backward 9.70 / 17.71; stages 2-4: 10.09 / 18.95, 10.90 / 23.83,
                  12.50 / 25.07: stacks of small images); FMA floor 3.19 / 7.78
context_fwd finds a step's ring rows in per-ring slot tables (one broadcast shared load a row, no wrap); context_bwd
reads the taps it does not hold as zero-padded kernel rows (``TapRows``: two 16-byte loads a 7-tap row), and decodes
a step's global rows (image, row, inside / owned, each view's row offset) and its ring rows once, a thread an entry,
into a table that every phase reads with 16-byte shared loads (``BwdRowPlan``, ``BwdRingPlan``).
Registers and occupancy (ptxas, H100/H200 228 KB shared memory per SM): context_fwd 128 / 128 registers (123 / 128
at 14x14 and 7x7), context_bwd 166 / 210 (153 / 218 where it stacks images, 168 at 4-pixel strips; a thread keeps
its weight-gradient sums in registers, 34 / 83, and srf all 34 taps; ptxas is told one block per SM, else it squeezes
lrf into 64 registers with a stack frame), no stack, no spills (the host-computed layout is a __grid_constant__ argument).
The chunk is the largest whose blocks fill the GPU twice with two blocks per SM (``_sweep_chunk``): context_fwd
takes 32 channels for srf (95 KB, 2 blocks of 7 warps per SM) and 16 for lrf (94 KB, 2 blocks of 4 warps), one
warp per block where a level's items fit one (7x7 maps);
context_bwd's rings are deeper (the adjoint trails the recompute by up to 2R rows) and take 8 channels at stage 1
(71 KB srf: 3 blocks of 2 warps per SM; 167 KB lrf: one). Shared memory, not registers, sets the occupancy.
A context_bwd block has as many warps as its conv items (strips x chunk) fill, one at small maps (stage 2 lrf,
stages 3-4: 2-3 warps per SM): no warp pays every step's bookkeeping with nothing in the conv phases. A thread runs
one item a phase (an `if`, not a loop): a schedule of more than 256 items takes the level-at-a-time backward. Where 8-pixel
items would fill at most half a warp (stage 3-4 lrf: 14x14 with 8 channels, 7x7 with 16) its strips are 4 pixels
(``context_bwd_strip`` in csrc), the same rings read by twice the items; larger chunks would fill the warp too but
leave one warp per SM, so ``_sweep_chunk`` keeps two blocks per SM where it can. ``SWEEP_BWD_STRIP`` forces 4 or 8
pixels an item, ``SWEEP_CHUNKS`` and ``SWEEP_BAND_ROWS`` the chunk and bands: the schedules that
``focalfast.ops.cuda.tune_sweep`` times on a GPU. Its gate gradients go through
shared memory: each adjoint item writes grad_ctx_all * z_{l+1} for its strip (blocks of 4 pixels, a 16-byte store
each), and an item per (pixel, level) sums a pixel's channels in channel order.

When images x chunks give fewer than PROGRAMS_PER_SM blocks per SM (small batch, high resolution), each image is
cut into bands of rows (``focalfast.ops.sweep_geometry``), a block each, with a halo of R = sum_l k_l // 2 rows
(forward) or 2R (backward). The other way round, context_bwd sweeps small images (H at most four halos: 14x14, 7x7)
in stacks of whole images (``_sweep_stack``, ``SWEEP_BWD_STACK``), one tall image with zero rows between them, so
that a block pays the 2R halo steps once a stack, not once an image.

The sweep keeps every level's rows in shared memory, whose size grows with W (``sweep_smem_bytes``).
Images too wide for it even with 8-channel chunks take the level-at-a-time kernels instead
(conv_level_fwd, conv_level_bwd, weight_grad, conv_adjoint: one launch per level, fp32 scratch tensors); their
backward recomputes the level inputs and ctx_local with conv_level_fwd first, after grad_ctx_all.

The op is the ``torch.library`` custom op ``focalfast::focal_modulation_cuda`` with a fake (meta)
implementation and ``register_autograd`` (its backward is the custom op
``focalfast::focal_modulation_cuda_backward``), so ``torch.compile(fullgraph=True)`` traces through it.
CUDA tensors run on the current stream; CPU tensors run the same kernel bodies serially on the host
(slow; for tests on machines without a GPU).
"""

import contextlib
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from focalfast.ops.sweep_geometry import (HOST_SM_COUNT, PROGRAMS_PER_SM, band_count, images_per_band,
                                          rows_per_band)
from focalfast.ops.cuda import extension

# The pooling level of the fallback (conv_level_fwd) gives a thread a strip of up to PIXELS_PER_STRIP
# pixels of one column, fewer when that would leave less than MIN_THREADS threads (a full GPU).
PIXELS_PER_STRIP = 32
MIN_THREADS = 1 << 18
ROWS_PER_WEIGHT_STRIP = 8  # image rows per thread in weight_grad
# output_fwd (out, and grad_q) and output_bwd give a thread one channel group of one column of up to EPILOGUE_ROWS image rows,
# fewer when that would leave less than EPILOGUE_MIN_THREADS threads (about 16 warps per SM of an H100,
# each with 2-3 KB of loads in flight a row; the thread's set-up, about 300 instructions, is paid once).
EPILOGUE_ROWS = 64
EPILOGUE_MIN_THREADS = 1 << 16
# Channels per block of the fused sweep, in order of preference: of those whose shared memory fits
# SWEEP_SMEM_BYTES (None: the device's per-block opt-in maximum), the largest that gives at least
# PROGRAMS_PER_SM blocks per SM (sweep_geometry) with two blocks per SM, else with one, else the smallest.
SWEEP_CHUNKS = (32, 16, 8)
SWEEP_SMEM_BYTES: Optional[int] = None
HOST_SMEM_BYTES = 227 * 1024  # CPU tensors follow an H100's choices
SWEEP_BAND_ROWS: Optional[int] = None  # rows per band of the sweeps (None: _sweep_band_rows decides)
SWEEP_BWD_STRIP = 0  # pixels per conv item of context_bwd, 4 or 8 (0: context_bwd_strip in csrc decides)
SWEEP_BWD_STACK: Optional[int] = None  # whole images per band of context_bwd (None: _sweep_stack decides)
MAX_SWEEP_ROWS = 1 << 24  # taller images take the level-at-a-time kernels (the sweep's ring slots: csrc)
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


class _Kernels:
    """The extension's launchers for tensors on one device: Tensor arguments become TensorArgs, and
    every launch goes to the device's current CUDA stream (CPU tensors: the host)."""

    def __init__(self, device: torch.device):
        self.ext = extension.load()
        self.stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0

    def _arg(self, t: Tensor):
        device = -1 if t.device.type == "cpu" else t.device.index
        dtype = getattr(self.ext.DType, DTYPES[t.dtype])
        return self.ext.TensorArg(t.data_ptr(), dtype, list(t.shape), list(t.stride()), device)

    def launch(self, name: str, **kwargs) -> None:
        args = {k: self._arg(v) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        getattr(self.ext, name)(stream=self.stream, **args)

    def reduce_sum(self, partial: Tensor, scale: float = 1.0) -> Tensor:
        """``scale * partial.sum(1)`` for fp32 ``[outer, rows, cols]`` (any strides), in a fixed order."""
        out = torch.empty((partial.shape[0], partial.shape[2]), dtype=torch.float32, device=partial.device)
        self.launch("reduce_sum", input=partial, out=out, scale=scale)
        return out


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _channels_contiguous(t: Tensor) -> Tensor:
    """``t`` if its last dim has stride 1 (views of f's output do), else a contiguous copy."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _tap_major(weight: Tensor) -> Tensor:
    """Depthwise kernel ``[C, 1, k, k]`` as fp32 ``[k, k, C]``: a tap's C weights are contiguous."""
    C, _, k, _ = weight.shape
    return weight.detach().to(torch.float32).reshape(C, k, k).permute(1, 2, 0).contiguous()


def _taps_concat(weights: List[Tensor]) -> Tensor:
    """The levels' kernels ``[C, 1, k, k]`` as one fp32 ``[sum_l k_l^2, C]``, tap-major."""
    return torch.cat([_tap_major(w).reshape(-1, w.shape[0]) for w in weights])


def _split_taps(grad_taps: Tensor, weights: List[Tensor]) -> List[Tensor]:
    """Inverse of ``_taps_concat`` for gradients: ``[sum k^2, C]`` to ``[C, 1, k, k]`` each, in the weights' dtype."""
    out, start = [], 0
    for w in weights:
        C, _, k, _ = w.shape
        out.append(grad_taps[start:start + k * k].t().reshape(C, 1, k, k).to(w.dtype, copy=True).contiguous())
        start += k * k
    return out


def _smem_limit(device: torch.device) -> int:
    if SWEEP_SMEM_BYTES is not None:
        return SWEEP_SMEM_BYTES
    if device.type != "cuda":
        return HOST_SMEM_BYTES
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 48 * 1024)


def _sweep_chunk(kernels: _Kernels, kernel_sizes: List[int], B: int, H: int, W: int, C: int, backward: bool,
                 device: torch.device) -> Optional[int]:
    """Channels per block of the fused sweep, or None if even the smallest chunk does not fit (or H is
    MAX_SWEEP_ROWS or more)."""
    if H >= MAX_SWEEP_ROWS:
        return None
    limit = _smem_limit(device)
    wanted = [c for c in SWEEP_CHUNKS if c < C + 8] or [min(SWEEP_CHUNKS)]
    smem = {c: kernels.ext.sweep_smem_bytes(kernel_sizes, W, c, backward, SWEEP_BWD_STRIP) for c in wanted}
    fits = [c for c in wanted if smem[c] <= limit]
    if not fits:
        return None
    busy = [c for c in fits if B * -(-C // c) >= PROGRAMS_PER_SM * _sm_count(device)]
    two_per_sm = [c for c in busy if 2 * smem[c] <= limit]  # one block's barrier wait hides behind another's
    return (two_per_sm or busy or fits[-1:])[0]


def _sm_count(device: torch.device) -> int:
    """Multiprocessors of the GPU (CPU tensors follow an H100's choices)."""
    if device.type != "cuda":
        return HOST_SM_COUNT
    return torch.cuda.get_device_properties(device).multi_processor_count


def _sweep_band_rows(kernel_sizes: List[int], B: int, H: int, C: int, chunk: int, backward: bool,
                     device: torch.device) -> int:
    """Rows per band of the sweep: H (whole images) unless B * chunks blocks leave the GPU idle."""
    if SWEEP_BAND_ROWS is not None:
        return min(SWEEP_BAND_ROWS, H)
    halo = sum(k // 2 for k in kernel_sizes) * (2 if backward else 1)
    return rows_per_band(H, halo, B * -(-C // chunk), _sm_count(device))


def _sweep_stack(kernel_sizes: List[int], B: int, H: int, C: int, chunk: int, band_rows: int,
                 device: torch.device) -> int:
    """Whole images per band of context_bwd (swept as one tall image, its halo once): 1 but for small maps
    (SWEEP_BWD_STACK forces it where the bands are whole images)."""
    if SWEEP_BWD_STACK is not None:
        return min(SWEEP_BWD_STACK, B) if band_rows == H else 1
    halo = 2 * sum(k // 2 for k in kernel_sizes)
    return images_per_band(B, H, band_rows, halo, -(-C // chunk), _sm_count(device))


def _gelu_grad(x: Tensor) -> Tensor:
    """d GELU(x) / dx for the exact (erf) GELU."""
    cdf = 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))
    return cdf + x * torch.exp(-0.5 * x * x) * 0.3989422804014327


def _strips(pixels: int, per_strip: int) -> int:
    return -(-pixels // per_strip)


def _pixels_per_strip(B: int, H: int, W: int, C: int) -> int:
    """Strip length for the per-strip partial sums: long strips, short partials, enough threads."""
    one_pixel_threads = B * H * W * -(-C // 8)  # threads with one pixel each
    return max(1, min(PIXELS_PER_STRIP, one_pixel_threads // MIN_THREADS))


def _epilogue_rows(B: int, H: int, W: int, C: int) -> int:
    """Image rows per thread of output_fwd / output_bwd: many (the thread's set-up is paid once), enough
    threads, and bands of equal height (but the last)."""
    column_threads = B * W * -(-C // 8)  # threads with whole columns
    rows = max(1, min(EPILOGUE_ROWS, H, column_threads * H // EPILOGUE_MIN_THREADS))
    return -(-H // -(-H // rows))


def _levels_forward(kernels: _Kernels, ctx: Tensor, gates: Tensor, taps: List[Tensor], scale: float,
                    keep_levels: bool, pool: bool):
    """Runs the focal levels. Returns ``ctx_local`` (T, already scaled), the level inputs
    ``[ctx, z_1, ..., z_{L-1}]`` (only ``[ctx]`` unless ``keep_levels``) and the pooling partials
    ``[B, strips, C]`` (None unless ``pool``)."""
    B, H, W, C = ctx.shape
    L = len(taps)
    f32 = dict(dtype=torch.float32, device=ctx.device)
    ctx_local = torch.empty((B, H, W, C), dtype=ctx.dtype, device=ctx.device)
    acc = torch.empty((B, H, W, C), **f32) if L > 1 else None
    strip = _pixels_per_strip(B, H, W, C) if pool else 1
    pool_partial = torch.empty((B, _strips(H, strip) * W, C), **f32) if pool else None
    z_in, levels = ctx, [ctx]
    for level, taps_l in enumerate(taps):
        last = level == L - 1
        z_out = None if last else torch.empty((B, H, W, C), **f32)
        kernels.launch(
            "conv_level_fwd", z_in=z_in, weight=taps_l, gates=gates, level=level, scale=scale,
            acc_in=acc if level > 0 else None, acc_out=None if last else acc, z_out=z_out,
            ctx_out=ctx_local if last else None, pool_partial=pool_partial if last else None,
            pixels_per_strip=strip if last else 1)
        z_in = z_out
        if keep_levels and not last:
            levels.append(z_out)
    return ctx_local, levels, pool_partial


def _forward(q: Tensor, ctx: Tensor, gates: Tensor, weights: List[Tensor], h_weight: Tensor,
             h_bias: Optional[Tensor], normalize_modulator: bool) -> Tuple[Tensor, Tensor]:
    B, H, W, C = q.shape
    L = len(weights)
    scale = 1.0 / (L + 1) if normalize_modulator else 1.0
    q, ctx = _channels_contiguous(q), _channels_contiguous(ctx)
    with _device_guard(q.device):
        kernels = _Kernels(q.device)
        kernel_sizes = [w.shape[-1] for w in weights]
        chunk = _sweep_chunk(kernels, kernel_sizes, B, H, W, C, False, q.device)
        if chunk is not None:
            band_rows = _sweep_band_rows(kernel_sizes, B, H, C, chunk, False, q.device)
            bands = band_count(H, band_rows)
            ctx_local = torch.empty((B, H, W, C), dtype=q.dtype, device=q.device)
            pooled_sum = torch.empty((B * bands, C), dtype=torch.float32, device=q.device)
            kernels.launch("context_fwd", ctx=ctx, weights=_taps_concat(weights), kernel_sizes=kernel_sizes,
                           gates=gates, scale=scale, chunk=chunk, band_rows=band_rows, ctx_local=ctx_local,
                           pooled_sum=pooled_sum)
            pooled_mean = kernels.reduce_sum(pooled_sum.reshape(B, bands, C), scale=1.0 / (H * W))
        else:
            taps = [_tap_major(w) for w in weights]
            ctx_local, _, pool_partial = _levels_forward(kernels, ctx, gates, taps, scale, keep_levels=False,
                                                         pool=True)
            pooled_mean = kernels.reduce_sum(pool_partial, scale=1.0 / (H * W))
        global_term = F.gelu(pooled_mean) @ h_weight.to(torch.float32).t()
        linear = F.linear(ctx_local, h_weight, h_bias)
        out = torch.empty((B, H, W, C), dtype=q.dtype, device=q.device)
        kernels.launch("output_fwd", q=q, linear=linear, gates=gates, global_term=global_term, scale=scale, out=out,
                       rows_per_thread=_epilogue_rows(B, H, W, C))
    return out, pooled_mean


def _sweep_backward(kernels: _Kernels, ctx: Tensor, gates: Tensor, weights: List[Tensor], scale: float, chunk: int,
                    grad_ctx_all: Tensor, grad_mean: Tensor, pooled: Tensor):
    """The levels' backward in one context_bwd sweep: ``(ctx_local, grad_ctx, grad_gates fp32, grad_weights)``."""
    B, H, W, C = ctx.shape
    L = len(weights)
    kernel_sizes = [w.shape[-1] for w in weights]
    taps_concat = _taps_concat(weights)
    band_rows = _sweep_band_rows(kernel_sizes, B, H, C, chunk, True, ctx.device)
    stack = _sweep_stack(kernel_sizes, B, H, C, chunk, band_rows, ctx.device)
    bands = band_count(B, stack) if stack > 1 else B * band_count(H, band_rows)  # context_bwd's weight partials
    f32 = dict(dtype=torch.float32, device=ctx.device)
    ctx_local = torch.empty((B, H, W, C), dtype=ctx.dtype, device=ctx.device)
    grad_ctx = torch.empty((B, H, W, C), dtype=ctx.dtype, device=ctx.device)
    weight_partial = torch.empty((bands, taps_concat.shape[0], C), **f32)
    gate_columns = -(-C // chunk) if stack > 1 else -(-C // 8)  # per chunk in stacks, else per 8 channels
    gate_partial = torch.empty((B, H, W, L + 1, gate_columns), **f32)
    kernels.launch(
        "context_bwd", ctx=ctx, weights=taps_concat, kernel_sizes=kernel_sizes, gates=gates, scale=scale,
        chunk=chunk, band_rows=band_rows, grad_ctx_all=grad_ctx_all, grad_mean=grad_mean, pooled=pooled,
        ctx_local=ctx_local, grad_ctx=grad_ctx, weight_partial=weight_partial, gate_partial=gate_partial,
        strip=SWEEP_BWD_STRIP, stack=stack)
    grad_taps = kernels.reduce_sum(weight_partial.reshape(1, bands, -1)).reshape(-1, C)
    grad_gates = kernels.reduce_sum(gate_partial.reshape(B * H * W * (L + 1), gate_columns, 1))
    return ctx_local, grad_ctx, grad_gates.reshape(B, H, W, L + 1), _split_taps(grad_taps, weights)


def _levels_backward(kernels: _Kernels, ctx: Tensor, gates: Tensor, weights: List[Tensor], scale: float,
                     grad_ctx_all: Tensor, grad_mean: Tensor, pooled: Tensor):
    """The levels' backward one level at a time (the fallback): recomputes the level inputs
    ``[ctx, z_1, ...]`` and ctx_local with conv_level_fwd, then runs the levels' adjoints:
    ``(ctx_local, grad_ctx, grad_gates fp32, grad_weights)``."""
    B, H, W, C = ctx.shape
    L, dtype = len(weights), ctx.dtype
    taps = [_tap_major(w) for w in weights]
    ctx_local, levels, _ = _levels_forward(kernels, ctx, gates, taps, scale, keep_levels=True, pool=False)
    f32 = dict(dtype=torch.float32, device=ctx.device)
    groups = -(-C // 8)
    gate_partial = torch.empty((B, H, W, L + 1, groups), **f32)
    grad_weights = [None] * L
    grad_pre_next = None
    for level in reversed(range(L)):
        last = level == L - 1
        z_in = levels.pop()  # z_level, freed after this level
        grad_pre = torch.empty((B, H, W, C), **f32)
        kernels.launch(
            "conv_level_bwd", z_in=z_in, weight=taps[level], gates=gates, level=level, scale=scale,
            grad_ctx_all=grad_ctx_all, grad_mean=grad_mean if last else None, pooled=pooled if last else None,
            grad_pre_next=grad_pre_next, weight_next=None if last else taps[level + 1], grad_pre=grad_pre,
            gate_partial=gate_partial)
        k = taps[level].shape[0]
        row_strips = _strips(H, ROWS_PER_WEIGHT_STRIP)
        weight_partial = torch.empty((B * row_strips, k, k, C), **f32)
        kernels.launch("weight_grad", z_in=z_in, grad_pre=grad_pre, partial=weight_partial,
                       rows_per_strip=ROWS_PER_WEIGHT_STRIP)
        grad_taps = kernels.reduce_sum(weight_partial.reshape(1, B * row_strips, k * k * C))
        grad_weights[level] = grad_taps.reshape(k, k, C).permute(2, 0, 1).contiguous().reshape(C, 1, k, k).to(dtype)
        grad_pre_next = grad_pre
    grad_ctx = torch.empty((B, H, W, C), dtype=dtype, device=ctx.device)
    kernels.launch("conv_adjoint", grad_pre=grad_pre_next, weight=taps[0], grad_in=grad_ctx)
    grad_gates = kernels.reduce_sum(gate_partial.reshape(B * H * W * (L + 1), groups, 1)).reshape(B, H, W, L + 1)
    return ctx_local, grad_ctx, grad_gates, grad_weights


def _backward(grad_out: Tensor, q: Tensor, ctx: Tensor, gates: Tensor, weights: List[Tensor], h_weight: Tensor,
              h_bias: Optional[Tensor], pooled_mean: Tensor, normalize_modulator: bool) -> List[Tensor]:
    """``[grad_q, grad_ctx, grad_gates, grad_h_weight, grad_h_bias, *grad_weights]``."""
    B, H, W, C = q.shape
    L, N, dtype = len(weights), B * H * W, q.dtype
    scale = 1.0 / (L + 1) if normalize_modulator else 1.0
    q, ctx, grad_out = _channels_contiguous(q), _channels_contiguous(ctx), _channels_contiguous(grad_out)
    with _device_guard(q.device):
        kernels = _Kernels(q.device)
        # grad_mod = grad_out * q (no modulator needed), and per thread the partials of sum_p grad_mod and
        # sum_p g_L * grad_mod, summed per image (u), then over the images (grad_h_bias).
        grad_mod = torch.empty((B, H, W, C), dtype=dtype, device=q.device)
        rows = _epilogue_rows(B, H, W, C)
        strips = _strips(H, rows) * W
        partial = torch.empty((B, strips, 2, C), dtype=torch.float32, device=q.device)
        kernels.launch("output_bwd", grad_out=grad_out, q=q, gates=gates, grad_modulator=grad_mod, partial=partial,
                       rows_per_thread=rows)
        per_image = kernels.reduce_sum(partial.reshape(B, strips, 2 * C))
        grad_h_bias = kernels.reduce_sum(per_image[:, :C].reshape(1, B, C)).reshape(C)
        gated = per_image[:, C:]  # u [B, C]

        # grad_ctx_all = grad_mod W; the global level: dG = s * u W, through GELU and the mean over H * W pixels.
        weight32 = h_weight.to(torch.float32)
        pooled = F.gelu(pooled_mean)
        grad_mod_2d = grad_mod.reshape(N, C)
        grad_ctx_all = (grad_mod_2d @ h_weight).reshape(B, H, W, C)
        grad_mean = scale * (gated @ weight32) * _gelu_grad(pooled_mean) / (H * W)

        chunk = _sweep_chunk(kernels, [w.shape[-1] for w in weights], B, H, W, C, True, q.device)
        if chunk is not None:
            ctx_local, grad_ctx, grad_gates, grad_weights = _sweep_backward(
                kernels, ctx, gates, weights, scale, chunk, grad_ctx_all, grad_mean, pooled)
        else:
            ctx_local, grad_ctx, grad_gates, grad_weights = _levels_backward(
                kernels, ctx, gates, weights, scale, grad_ctx_all, grad_mean, pooled)
        del grad_ctx_all

        # h: grad_W = grad_mod^T ctx_all with ctx_all = ctx_local + s * g_L * G; grad_q = grad_out * h(ctx_all),
        # the forward's epilogue in place on the GEMM's output.
        grad_h_weight = (grad_mod_2d.t() @ ctx_local.reshape(N, C)).to(torch.float32) + scale * (gated.t() @ pooled)
        del grad_mod, grad_mod_2d
        grad_q = F.linear(ctx_local, h_weight, h_bias)
        kernels.launch("output_fwd", q=grad_out, linear=grad_q, gates=gates, global_term=pooled @ weight32.t(),
                       scale=scale, out=grad_q, rows_per_thread=rows)
    return [grad_q, grad_ctx, grad_gates.to(dtype), grad_h_weight.to(dtype), grad_h_bias.to(dtype), *grad_weights]


@torch.library.custom_op("focalfast::focal_modulation_cuda", mutates_args=())
def _focal_modulation_op(q: Tensor, ctx: Tensor, gates: Tensor, weights: List[Tensor], h_weight: Tensor,
                         h_bias: Optional[Tensor], normalize_modulator: bool) -> Tuple[Tensor, Tensor]:
    """``(out [B, H, W, C], pooled_mean [B, C] fp32)``; pooled_mean is saved for the backward."""
    with torch.autocast(q.device.type, enabled=False):  # the products inside keep the kernels' dtypes
        return _forward(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator)


@_focal_modulation_op.register_fake
def _(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator):
    B, H, W, C = q.shape
    return q.new_empty((B, H, W, C)), q.new_empty((B, C), dtype=torch.float32)


@torch.library.custom_op("focalfast::focal_modulation_cuda_backward", mutates_args=())
def _focal_modulation_backward_op(grad_out: Tensor, q: Tensor, ctx: Tensor, gates: Tensor, weights: List[Tensor],
                                  h_weight: Tensor, h_bias: Optional[Tensor], pooled_mean: Tensor,
                                  normalize_modulator: bool) -> List[Tensor]:
    """``[grad_q, grad_ctx, grad_gates, grad_h_weight, grad_h_bias, *grad_weights]``."""
    with torch.autocast(q.device.type, enabled=False):
        return _backward(grad_out, q, ctx, gates, weights, h_weight, h_bias, pooled_mean, normalize_modulator)


@_focal_modulation_backward_op.register_fake
def _(grad_out, q, ctx, gates, weights, h_weight, h_bias, pooled_mean, normalize_modulator):
    C = q.shape[-1]
    return [q.new_empty(q.shape), ctx.new_empty(ctx.shape), gates.new_empty(gates.shape),
            h_weight.new_empty(h_weight.shape), h_weight.new_empty((C,)), *(w.new_empty(w.shape) for w in weights)]


def _setup_context(ctx, inputs, output):
    q, c, gates, weights, h_weight, h_bias, normalize_modulator = inputs
    _, pooled_mean = output
    ctx.save_for_backward(q, c, gates, h_weight, h_bias, pooled_mean, *weights)
    ctx.normalize_modulator = normalize_modulator
    ctx.has_bias = h_bias is not None
    ctx.mark_non_differentiable(pooled_mean)


def _backward_autograd(ctx, grad_out, _grad_pooled_mean):
    q, c, gates, h_weight, h_bias, pooled_mean, *weights = ctx.saved_tensors
    grad_q, grad_ctx, grad_gates, grad_h_weight, grad_h_bias, *grad_weights = _focal_modulation_backward_op(
        grad_out, q, c, gates, weights, h_weight, h_bias, pooled_mean, ctx.normalize_modulator)
    return grad_q, grad_ctx, grad_gates, grad_weights, grad_h_weight, grad_h_bias if ctx.has_bias else None, None


_focal_modulation_op.register_autograd(_backward_autograd, setup_context=_setup_context)


def focal_modulation_cuda(q: Tensor, ctx: Tensor, gates: Tensor, weights: List[Tensor], h_weight: Tensor,
                          h_bias: Optional[Tensor] = None, normalize_modulator: bool = False) -> Tensor:
    """``q * h(ctx_all)`` ``[B, H, W, C]`` on the CUDA C++ kernels; differentiable, compilable.

    Takes what the dispatcher (``focalfast.ops.focal_modulation.focal_modulation``) passes on:
    validated arguments in one dtype (cast for autocast there), within the fused kernels' limits
    (``focalfast.backends.fused_limits``: float32, float16, bfloat16; 1 to 4 levels; odd kernel
    sizes up to 13).
    """
    out, _ = _focal_modulation_op(q, ctx, gates, list(weights), h_weight, h_bias, bool(normalize_modulator))
    return out
