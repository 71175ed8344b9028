"""ConvNeXt's depthwise conv + LayerNorm as fused Triton kernels, with their own backward.

With u the depthwise conv of x (kernel w ``[C, 1, K, K]``, zero padding K // 2) plus its bias b,
per pixel p (all sums over the C channels, in fp32):

    mean = sum_c u / C,   rstd = 1 / sqrt(sum_c (u - mean)^2 / C + eps),   xhat = (u - mean) * rstd
    y    = xhat * gamma + beta

Backward, with g = dy * gamma:

    du          = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))        (LayerNorm backward)
    dx          = dwconv_transposed(du, w)
    dw[c, tap]  = sum_p du[p, c] * x[p + tap, c],   db = sum_p du
    dgamma      = sum_p dy * xhat,                  dbeta = sum_p dy

Kernels (E bytes per element of x's dtype):

    forward         read x (with its 3-pixel halo), write y                          2 E per value
    bwd_norm        read x, dy; recompute u; write du; dgamma/dbeta/db partials       3 E per value
    bwd_conv        read du, x; write dx; dw partials                                 3 E per value

Only the inputs are saved for backward; ``bwd_norm`` recomputes the conv (49 FMAs a value for
K = 7) rather than reading a saved u. The two normalising kernels own a tile of pixels with
*all* C channels of each (LayerNorm needs the whole channel vector), padded to the next power
of two: C up to ``MAX_CHANNELS`` = 4096 (every ConvNeXt, T to XL: 96 ... 2048). ``bwd_conv`` is
per channel, so it runs on narrow channel blocks. Pixel tiles are runs of consecutive pixels
of the flattened ``[B * H * W]`` index (they may cross rows and images), so small late-stage
maps (7 x 7) waste nothing on ragged tiles.

Every reduction over pixels is split: each program sums its own pixels in fp32 (in registers,
or in its own ``[K * K, BC]`` slot for dw), and the ``[programs, ...]`` partials are summed
afterwards in a fixed order. No atomics: the gradients are bitwise reproducible.

The depthwise conv of a tile, its transposed form and the per-tile weight-gradient partials
are ``focalfast.ops.triton.depthwise_conv``'s helpers (shared with the focal-modulation
kernels). Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``. The ops' bodies
(``dwconv_layernorm_op_body``, ``dwconv_layernorm_backward_op_body``) are plain functions too: the
memory planner runs them with the launches skipped to count their buffers.
"""

from dataclasses import dataclass
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from focalfast.ops.triton.depthwise_conv import dwconv_tile, dwconv_weight_grad_tile

MAX_CHANNELS = 4096


@triton.jit
def _pixel_tile(tile, n_pix, H, W, BLOCK_P: tl.constexpr):
    """Pixels ``tile * BLOCK_P + [0, BLOCK_P)`` of the flattened ``[B, H, W]`` index, as ``[1, BLOCK_P, 1]``.

    Returns (pix, valid, image, row, col). Pixels past the end (``valid`` False) are clamped to
    the last pixel, so every address stays inside the tensors; callers mask their stores.
    """
    pix = tile * BLOCK_P + tl.arange(0, BLOCK_P)[None, :, None]
    valid = pix < n_pix
    pix = tl.minimum(pix, n_pix - 1)
    img = pix // (H * W)
    row = (pix // W) % H
    col = pix % W
    return pix.to(tl.int64), valid, img.to(tl.int64), row.to(tl.int64), col  # 64-bit: images > 2**31 elements


@triton.jit
def _normalized_conv(x, conv_w, conv_b, img, row, col, chans, C, H, W, sxb, sxh, sxw, eps,
                     K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """``(xhat [1, BLOCK_P, BLOCK_C], rstd [1, BLOCK_P, 1])`` of the pixels, fp32; xhat is 0 at channels >= C."""
    cmask = chans < C
    u = dwconv_tile(x + img * sxb + chans, row, col, chans, C, H, W, sxh, sxw, conv_w,
                    K, False, 1, BLOCK_P, BLOCK_C)
    u += tl.load(conv_b + chans, mask=cmask, other=0.0).to(tl.float32)  # u is 0 at channels >= C
    mean = tl.sum(u, axis=2, keep_dims=True) / C
    centered = tl.where(cmask, u - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(centered * centered, axis=2, keep_dims=True) / C + eps)
    return centered * rstd, rstd


@triton.jit
def dwconv_layernorm_fwd_kernel(
    x, conv_w, conv_b, ln_w, ln_b, y,
    n_pix, H, W, C, sxb, sxh, sxw, eps,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``y = LayerNorm_C(dwconv(x) + b)``; one program per BLOCK_P pixels, all channels."""
    pix, valid, img, row, col = _pixel_tile(tl.program_id(0), n_pix, H, W, BLOCK_P)
    chans = tl.arange(0, BLOCK_C)[None, None, :]
    cmask = chans < C
    xhat, _ = _normalized_conv(x, conv_w, conv_b, img, row, col, chans, C, H, W, sxb, sxh, sxw, eps,
                               K, BLOCK_P, BLOCK_C)
    gamma = tl.load(ln_w + chans, mask=cmask, other=0.0).to(tl.float32)
    beta = tl.load(ln_b + chans, mask=cmask, other=0.0).to(tl.float32)
    tl.store(y + pix * C + chans, (xhat * gamma + beta).to(y.dtype.element_ty), mask=valid & cmask)


@triton.jit
def dwconv_layernorm_bwd_norm_kernel(
    x, conv_w, conv_b, ln_w, dy, du, dgamma_part, dbeta_part, db_part,
    n_pix, H, W, C, sxb, sxh, sxw, eps, tiles_per_program,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """LayerNorm backward into ``du`` ``[B*H*W, C]``; program g handles tiles
    ``[g * tiles_per_program, (g + 1) * tiles_per_program)`` and writes row g of the fp32
    ``[programs, C]`` partials of dgamma, dbeta and the conv bias gradient."""
    prog = tl.program_id(0)
    chans = tl.arange(0, BLOCK_C)[None, None, :]
    cmask = chans < C
    gamma = tl.load(ln_w + chans, mask=cmask, other=0.0).to(tl.float32)
    dgamma = tl.zeros((1, 1, BLOCK_C), dtype=tl.float32)
    dbeta = tl.zeros((1, 1, BLOCK_C), dtype=tl.float32)
    db = tl.zeros((1, 1, BLOCK_C), dtype=tl.float32)
    for t in range(tiles_per_program):
        pix, valid, img, row, col = _pixel_tile(prog * tiles_per_program + t, n_pix, H, W, BLOCK_P)
        mask = valid & cmask
        xhat, rstd = _normalized_conv(x, conv_w, conv_b, img, row, col, chans, C, H, W, sxb, sxh, sxw, eps,
                                      K, BLOCK_P, BLOCK_C)
        dyv = tl.load(dy + pix * C + chans, mask=mask, other=0.0).to(tl.float32)
        g = dyv * gamma
        g_mean = tl.sum(g, axis=2, keep_dims=True) / C
        gx_mean = tl.sum(g * xhat, axis=2, keep_dims=True) / C
        duv = tl.where(mask, rstd * (g - g_mean - xhat * gx_mean), 0.0)
        tl.store(du + pix * C + chans, duv.to(du.dtype.element_ty), mask=mask)
        dgamma += tl.sum(dyv * xhat, axis=1, keep_dims=True)
        dbeta += tl.sum(dyv, axis=1, keep_dims=True)
        db += tl.sum(duv, axis=1, keep_dims=True)
    part = prog.to(tl.int64) * C + chans
    tl.store(dgamma_part + part, dgamma, mask=cmask)
    tl.store(dbeta_part + part, dbeta, mask=cmask)
    tl.store(db_part + part, db, mask=cmask)


@triton.jit
def dwconv_layernorm_bwd_conv_kernel(
    x, conv_w, du, dx, dw_part,
    n_pix, H, W, C, sxb, sxh, sxw, tiles_per_program,
    K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``dx = dwconv_transposed(du, w)`` and the dw partials; grid ``(cdiv(C, BLOCK_C), programs)``.

    Program (cb, g) handles channel block cb of tiles ``[g * tiles_per_program, ...)`` and sums
    its share of dw into its own zeroed slot ``dw_part[g, cb]`` (fp32 ``[K * K, BLOCK_C]``).
    """
    cb = tl.program_id(0)
    prog = tl.program_id(1)
    chans = cb * BLOCK_C + tl.arange(0, BLOCK_C)[None, None, :]
    cmask = chans < C
    dw_prog = dw_part + (prog * tl.num_programs(0) + cb).to(tl.int64) * (K * K * BLOCK_C)
    for t in range(tiles_per_program):
        pix, valid, img, row, col = _pixel_tile(prog * tiles_per_program + t, n_pix, H, W, BLOCK_P)
        mask = valid & cmask
        dxv = dwconv_tile(du + img * H * W * C + chans, row, col, chans, C, H, W, W * C, C, conv_w,
                          K, True, 1, BLOCK_P, BLOCK_C)
        tl.store(dx + pix * C + chans, dxv.to(dx.dtype.element_ty), mask=mask)
        duv = tl.load(du + pix * C + chans, mask=mask, other=0.0).to(tl.float32)
        dwconv_weight_grad_tile(duv, x + img * sxb + chans, row, col, chans, C, H, W, sxh, sxw, dw_prog,
                                K, BLOCK_C)


@dataclass(frozen=True)
class LaunchPlan:
    """Tile sizes of the three kernels for one problem shape."""

    norm_block_p: int  # pixels per tile of the all-channel kernels (forward, bwd_norm)
    norm_block_c: int  # next_power_of_2(C)
    norm_warps: int
    norm_tiles_per_program: int  # bwd_norm
    conv_block_p: int  # bwd_conv
    conv_block_c: int
    conv_warps: int
    conv_tiles_per_program: int


def launch_plan(n_pix: int, C: int, interpret: bool) -> LaunchPlan:
    """Tiles of about 2K values on a GPU; bwd_norm programs take 16 tiles each, bwd_conv programs
    about 1024 pixels of a 32-channel block, so the dw partials (K * K values per channel and
    program) stay near 5 % of a C-sized tensor for K = 7.

    Under the interpreter the tiles are small (1K values, 512 in bwd_conv) and programs take 2
    tiles, so that tiny test shapes still have ragged tiles, several programs per reduction and
    several channel blocks.
    """
    np2 = triton.next_power_of_2
    block_c = np2(C)
    norm_p = max(1, min(np2(n_pix), (1024 if interpret else 2048) // block_c))
    conv_c = min(block_c, 16 if interpret else 32)
    conv_p = min(np2(n_pix), (512 if interpret else 2048) // conv_c)
    n_norm_tiles = triton.cdiv(n_pix, norm_p)
    n_conv_tiles = triton.cdiv(n_pix, conv_p)
    return LaunchPlan(
        norm_block_p=norm_p,
        norm_block_c=block_c,
        norm_warps=max(1, min(8, norm_p * block_c // 256)),
        norm_tiles_per_program=min(n_norm_tiles, 2 if interpret else 16),
        conv_block_p=conv_p,
        conv_block_c=conv_c,
        conv_warps=max(1, min(8, conv_p * conv_c // 256)),
        conv_tiles_per_program=min(n_conv_tiles, 2 if interpret else max(1, 1024 // conv_p)),
    )


def _interpret(t: Tensor) -> bool:
    return t.device.type == "cpu"


def _strides(x: Tensor) -> Tuple[int, int, int]:
    """(image, row, column) strides of a channels-last x with channel stride 1."""
    return x.stride(0), x.stride(1), x.stride(2)


def dwconv_layernorm_op_body(x: Tensor, conv_weight: Tensor, conv_bias: Tensor, ln_weight: Tensor,
                             ln_bias: Tensor, eps: float) -> Tensor:
    """``LayerNorm_C(dwconv(x) + conv_bias)``; x ``[B, H, W, C]`` with channel stride 1 -> contiguous y."""
    B, H, W, C = x.shape
    n_pix = B * H * W
    plan = launch_plan(n_pix, C, _interpret(x))
    y = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n_pix, plan.norm_block_p),)
    dwconv_layernorm_fwd_kernel[grid](
        x, conv_weight.contiguous(), conv_bias.contiguous(), ln_weight.contiguous(), ln_bias.contiguous(), y,
        n_pix, H, W, C, *_strides(x), eps,
        conv_weight.shape[-1], plan.norm_block_p, plan.norm_block_c, num_warps=plan.norm_warps,
    )
    return y


dwconv_layernorm_op = torch.library.custom_op("focalfast::dwconv_layernorm_triton", mutates_args=())(
    dwconv_layernorm_op_body)


@dwconv_layernorm_op.register_fake
def _(x, conv_weight, conv_bias, ln_weight, ln_bias, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def dwconv_layernorm_backward_op_body(dy: Tensor, x: Tensor, conv_weight: Tensor, conv_bias: Tensor,
                                      ln_weight: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(dx, d_conv_weight, d_conv_bias, d_ln_weight, d_ln_bias)``; dx contiguous ``[B, H, W, C]``."""
    B, H, W, C = x.shape
    K = conv_weight.shape[-1]
    n_pix = B * H * W
    plan = launch_plan(n_pix, C, _interpret(x))
    conv_weight, conv_bias, ln_weight = conv_weight.contiguous(), conv_bias.contiguous(), ln_weight.contiguous()
    dy = dy.to(x.dtype).contiguous()
    strides = _strides(x)

    n_norm = triton.cdiv(triton.cdiv(n_pix, plan.norm_block_p), plan.norm_tiles_per_program)
    du = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    dgamma_part, dbeta_part, db_part = torch.empty((3, n_norm, C), device=x.device, dtype=torch.float32)
    dwconv_layernorm_bwd_norm_kernel[(n_norm,)](
        x, conv_weight, conv_bias, ln_weight, dy, du, dgamma_part, dbeta_part, db_part,
        n_pix, H, W, C, *strides, eps, plan.norm_tiles_per_program,
        K, plan.norm_block_p, plan.norm_block_c, num_warps=plan.norm_warps,
    )

    n_cb = triton.cdiv(C, plan.conv_block_c)
    n_conv = triton.cdiv(triton.cdiv(n_pix, plan.conv_block_p), plan.conv_tiles_per_program)
    dx = torch.empty((B, H, W, C), device=x.device, dtype=x.dtype)
    dw_part = torch.zeros((n_conv, n_cb, K * K, plan.conv_block_c), device=x.device, dtype=torch.float32)
    dwconv_layernorm_bwd_conv_kernel[(n_cb, n_conv)](
        x, conv_weight, du, dx, dw_part,
        n_pix, H, W, C, *strides, plan.conv_tiles_per_program,
        K, plan.conv_block_p, plan.conv_block_c, num_warps=plan.conv_warps,
    )
    dw = dw_part.sum(0).transpose(1, 2).reshape(n_cb * plan.conv_block_c, K * K)[:C]  # [C, K * K]
    return (dx, dw.reshape(C, 1, K, K).contiguous().to(conv_weight.dtype), db_part.sum(0).to(conv_bias.dtype),
            dgamma_part.sum(0).to(ln_weight.dtype), dbeta_part.sum(0).to(ln_weight.dtype))


dwconv_layernorm_backward_op = torch.library.custom_op("focalfast::dwconv_layernorm_triton_backward",
                                                       mutates_args=())(dwconv_layernorm_backward_op_body)


@dwconv_layernorm_backward_op.register_fake
def _(dy, x, conv_weight, conv_bias, ln_weight, eps):
    def like(t):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)

    return like(x), like(conv_weight), like(conv_bias), like(ln_weight), like(ln_weight)


def _setup_context(ctx, inputs, output):
    x, conv_weight, conv_bias, ln_weight, _, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(x, conv_weight, conv_bias, ln_weight)


def _backward(ctx, dy):
    x, conv_weight, conv_bias, ln_weight = ctx.saved_tensors
    dx, dw, db, dgamma, dbeta = dwconv_layernorm_backward_op(dy, x, conv_weight, conv_bias, ln_weight, ctx.eps)
    return dx, dw, db, dgamma, dbeta, None


dwconv_layernorm_op.register_autograd(_backward, setup_context=_setup_context)


def dwconv_layernorm_triton(x_nhwc: Tensor, conv_weight: Tensor, conv_bias: Tensor, ln_weight: Tensor,
                            ln_bias: Tensor, eps: float) -> Tensor:
    """``LayerNorm_C(dwconv(x) + conv_bias)`` ``[B, H, W, C]`` with the fused Triton kernels.

    The backend function of ``focalfast.ops.dwconv_layernorm``: arguments validated and cast for
    autocast there, one device and dtype, C at most ``MAX_CHANNELS``. x may be any view with channel
    stride 1 (read in place), anything else is copied to contiguous first. All arithmetic is fp32.
    """
    if x_nhwc.shape[-1] > 1 and x_nhwc.stride(3) != 1:
        x_nhwc = x_nhwc.contiguous()
    return dwconv_layernorm_op(x_nhwc, conv_weight, conv_bias, ln_weight, ln_bias, float(eps))
