"""The Triton backend of the fused focal-modulation op: custom op, autograd, entry point.

``focal_modulation_triton(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator)`` is the
backend function of ``focalfast.backends``. It calls the custom op
``focalfast::focal_modulation_triton`` (fake implementation included, so ``torch.compile`` with
``fullgraph=True`` traces it without a graph break), whose gradient is the custom op
``focalfast::focal_modulation_triton_backward`` (registered with ``register_autograd``).

Design (bytes are per pixel; one "C-tensor" is C elements of the input dtype, 2C bytes in
bf16/fp16, 4C in fp32; gates add (L + 1) elements):

forward, 5 C-tensors (10 C bytes in bf16):
    focal_context_fwd   read ctx, gates               write ctx_local = sum_l gates[l-1] * z_l
                        and, per image and channel, mean z_L and glob = GELU(mean) (fp32)
    modulation_gemm     read ctx_local, q, gates[L]   write out = q * (s * a @ h_weight.T + h_bias)
                        with a = ctx_local + gates[L] * glob[b]: the glob term as gates[L] *
                        h_glob[b] in the epilogue (h_glob = s * glob @ h_weight.T, a [B, C] GEMM)
  The level chain streams rows per (image, channel block): ctx rows (read in place) and
  z_1..z_{L-1} pass through per-program fp32 ring buffers of a few rows (cache-resident scratch,
  never a per-level tensor), z_L stays in registers. When B * cdiv(C, BC) programs would leave the GPU idle (small
  batch, high resolution) each image is cut into bands of rows, one program each, which re-read
  and recompute a halo of D_L rows (forward) or B_0 rows (backward; ``chain_schedule``).
  The global term is the epilogue's g_L * (s * glob @ h_weight.T)[b], so that both operands
  go from memory to the tensor cores untouched; scale, bias and ``q *`` are the epilogue. The ideal would be 3 C-tensors (read q, ctx; write out): the
  ctx_local round trip is the price of a chain that runs per channel block while ``h`` needs
  all channels of a pixel, and of the global level, which needs the whole image's pool.

backward, about 13 C-tensors (26 C bytes in bf16; 14 for C > 256); nothing per level is saved or re-read:
    context_grad        read dout, q                   write dM = dout * q, d_ctx_all = s * dM @ h_weight,
                                                       per-tile partials of s * v = s * sum gates[L] * dM, d_h_bias
                        (C > 256: dM only, then d_ctx_all as a GEMM that reads dM: the output
                        blocks of one program would each re-form dM)
    focal_context_bwd   read ctx, gates, d_ctx_all     write dctx, ctx_local; fp32 partials of
                        dgates (per channel block) and of the depthwise weight gradients
    modulation_gemm     read ctx_local, dout, gates    write dq = dout * h(ctx_all)
    weight_grad         read dM, ctx_local             write fp32 split-M partials of d_h_weight
  focal_context_bwd recomputes the levels (ahead) and runs their gradients (behind) in one
  sweep, again through ring buffers of a few rows; these and the small partial buffers are the
  only transient scratch. Every reduction is a fixed-order sum of fp32 partials: two runs give
  bitwise equal gradients.

Saved for backward: the op's inputs plus ``mean`` and ``glob`` (``[B, C]`` fp32 each).
q, ctx and gates may be views with channel stride 1 and one uniform pixel stride (the slices of
``f``'s output): they are read in place; anything else is made contiguous first (a copy).
Gradients come back contiguous.

Runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` (the same kernels, in
Triton's interpreter; small shapes only).

The ops' bodies (``focal_modulation_op_body``, ``focal_modulation_backward_op_body``) are plain
functions too: the memory planner (``focalfast.memory_plan``) runs them on fake tensors with the
launches skipped, so that it counts every buffer the launch code allocates, for as long as it lives.
The fake implementations only make the outputs (``torch.compile`` needs no more).
"""

import contextlib
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from focalfast import backends
from focalfast.backends.fused_limits import fused_unsupported_reason
from focalfast.ops.triton.focal_context_bwd import focal_context_bwd
from focalfast.ops.triton.focal_context_fwd import focal_context_fwd
from focalfast.ops.triton.modulation_gemm import global_term, modulation_gemm
from focalfast.ops.triton.modulation_gemm_bwd import context_grad, weight_grad


def _interpret(t: Tensor) -> bool:
    """Whether the kernels run in Triton's interpreter (CPU tensors); a clear error where they cannot run."""
    if t.device.type in ("cuda", "meta"):  # meta: builds without launching (tests)
        return False
    reason = backends.unavailable_reason("triton", t.device)
    if reason is not None:
        raise backends.BackendUnavailableError(f"backend='triton' is not available: {reason}")
    return True


def _on_device(t: Tensor):
    """Launch on the tensors' GPU, not merely the current one."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _pixel_strided(t: Tensor) -> Tuple[Tensor, int]:
    """``(t', s)`` with element (b, y, x, c) of ``t'`` at ``((b*H + y)*W + x) * s + c``.

    Views with channel stride 1 and a uniform pixel stride are returned as they are (no copy);
    anything else is made contiguous.
    """
    B, H, W, C = t.shape
    s = t.stride(2) if W > 1 else (t.stride(1) if H > 1 else (t.stride(0) if B > 1 else C))
    uniform = (C == 1 or t.stride(3) == 1) and s >= C
    uniform &= W == 1 or t.stride(2) == s
    uniform &= H == 1 or t.stride(1) == W * s
    uniform &= B == 1 or t.stride(0) == H * W * s
    if uniform:
        return t, s
    return t.contiguous(), C


def _scale(levels: int, normalize_modulator: bool) -> float:
    return 1.0 / (levels + 1) if normalize_modulator else 1.0


def focal_modulation_forward(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator: bool):
    """``(out [B,H,W,C], mean [B,C] fp32, glob [B,C] fp32)``: launches the forward kernels."""
    interpret = _interpret(q)
    q, q_stride = _pixel_strided(q)
    ctx, ctx_stride = _pixel_strided(ctx)
    gates, gates_stride = _pixel_strided(gates)
    weights = [w.contiguous() for w in weights]
    with _on_device(q):
        ctx_local, mean, glob = focal_context_fwd(ctx, ctx_stride, gates, gates_stride, weights, interpret)
        h_weight = h_weight.contiguous()
        scale = _scale(len(weights), normalize_modulator)
        out = modulation_gemm(q, q_stride, ctx_local, gates, gates_stride,
                              global_term(glob, h_weight.to(torch.float32), scale), h_weight, h_bias, scale, interpret)
    return out, mean, glob


def focal_modulation_backward(dout, q, ctx, gates, weights, h_weight, h_bias, mean, glob,
                              normalize_modulator: bool):
    """``(dq, dctx, dgates, dweights, d_h_weight, d_h_bias or None)``: launches the backward kernels."""
    interpret = _interpret(q)
    scale = _scale(len(weights), normalize_modulator)
    dout, dout_stride = _pixel_strided(dout.to(q.dtype))
    q, q_stride = _pixel_strided(q)
    ctx, ctx_stride = _pixel_strided(ctx)
    gates, gates_stride = _pixel_strided(gates)
    weights = [w.contiguous() for w in weights]
    h_weight = h_weight.contiguous()
    h_weight_f32 = h_weight.to(torch.float32)  # one fp32 copy for both [B, C] GEMMs of the global level

    with _on_device(q):
        d_ctx_all, d_mod, d_glob_part, sv, d_h_bias = context_grad(dout, dout_stride, q, q_stride, h_weight,
                                                                   h_weight_f32, gates, gates_stride, scale,
                                                                   interpret)
        dctx, dgates, dweights, ctx_local = focal_context_bwd(ctx, ctx_stride, gates, gates_stride, weights,
                                                              d_ctx_all, d_glob_part, mean, glob, interpret)
        dq = modulation_gemm(dout, dout_stride, ctx_local, gates, gates_stride, global_term(glob, h_weight_f32, scale),
                             h_weight, h_bias, scale, interpret)
        d_h_weight = weight_grad(d_mod, ctx_local, glob, sv, scale, interpret)
    d_h_bias = d_h_bias.to(h_bias.dtype) if h_bias is not None else None
    return dq, dctx, dgates, dweights, d_h_weight.to(h_weight.dtype), d_h_bias


def focal_modulation_op_body(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: List[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor],
    normalize_modulator: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(out [B,H,W,C], mean [B,C] fp32, glob [B,C] fp32)``; mean and glob are kept for backward.

    Called directly (``torch.ops.focalfast.focal_modulation_triton``, without the dispatcher's
    checks) it still refuses what the kernels do not compute (float64, more than 4 levels, ...)."""
    reason = fused_unsupported_reason(q.dtype, [w.shape[-1] for w in weights])
    if reason is not None:
        raise ValueError(f"focalfast::focal_modulation_triton: {reason}")
    return focal_modulation_forward(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator)


focal_modulation_op = torch.library.custom_op("focalfast::focal_modulation_triton", mutates_args=())(
    focal_modulation_op_body)


@focal_modulation_op.register_fake
def _(q, ctx, gates, weights, h_weight, h_bias, normalize_modulator):
    B, _, _, C = q.shape
    stats = q.new_empty((B, C), dtype=torch.float32)
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), stats, torch.empty_like(stats)


def focal_modulation_backward_op_body(
    dout: Tensor,
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: List[Tensor],
    h_weight: Tensor,
    h_bias: Optional[Tensor],
    mean: Tensor,
    glob: Tensor,
    normalize_modulator: bool,
) -> Tuple[Tensor, Tensor, Tensor, List[Tensor], Tensor, Tensor]:
    """``(dq, dctx, dgates, dweights, d_h_weight, d_h_bias)``; d_h_bias is empty without a bias."""
    grads = focal_modulation_backward(dout, q, ctx, gates, weights, h_weight, h_bias, mean, glob,
                                      normalize_modulator)
    return grads[:-1] + ((grads[-1] if h_bias is not None else h_weight.new_empty((0,))),)


focal_modulation_backward_op = torch.library.custom_op("focalfast::focal_modulation_triton_backward",
                                                       mutates_args=())(focal_modulation_backward_op_body)


@focal_modulation_backward_op.register_fake
def _(dout, q, ctx, gates, weights, h_weight, h_bias, mean, glob, normalize_modulator):
    def like(t):
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)

    d_h_bias = like(h_bias) if h_bias is not None else h_weight.new_empty((0,))
    return like(q), like(ctx), like(gates), [like(w) for w in weights], like(h_weight), d_h_bias


def _setup_context(ctx, inputs, output):
    q, c, gates, weights, h_weight, h_bias, normalize_modulator = inputs
    _, mean, glob = output
    ctx.mark_non_differentiable(mean, glob)
    ctx.has_bias = h_bias is not None
    ctx.normalize_modulator = normalize_modulator
    biases = [h_bias] if h_bias is not None else []
    ctx.save_for_backward(q, c, gates, h_weight, mean, glob, *biases, *weights)


def _backward(ctx, d_out, d_mean, d_glob):
    q, c, gates, h_weight, mean, glob, *rest = ctx.saved_tensors
    h_bias = rest[0] if ctx.has_bias else None
    weights = rest[1:] if ctx.has_bias else rest
    dq, dctx, dgates, dweights, d_h_weight, d_h_bias = focal_modulation_backward_op(
        d_out, q, c, gates, list(weights), h_weight, h_bias, mean, glob, ctx.normalize_modulator
    )
    return dq, dctx, dgates, dweights, d_h_weight, (d_h_bias if ctx.has_bias else None), None


focal_modulation_op.register_autograd(_backward, setup_context=_setup_context)


def focal_modulation_triton(
    q: Tensor,
    ctx: Tensor,
    gates: Tensor,
    weights: list,
    h_weight: Tensor,
    h_bias: Optional[Tensor],
    normalize_modulator: bool,
) -> Tensor:
    """``q * h(ctx_all)`` ``[B, H, W, C]`` with the fused Triton kernels: the backend's op function.

    Takes what the dispatcher (``focalfast.ops.focal_modulation.focal_modulation``) passes on:
    validated arguments in one dtype (cast for autocast there), ``h_weight`` ``[C, C]``, within the
    fused kernels' limits (``focalfast.backends.fused_limits``). Accumulates in fp32.
    """
    out, _, _ = focal_modulation_op(q, ctx, gates, list(weights), h_weight, h_bias, bool(normalize_modulator))
    return out
