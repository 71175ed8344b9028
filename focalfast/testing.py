"""Helpers shared by the tests, benchmarks and the demo: random op inputs, the error metric and the
harness that checks an implementation of the op against the float64 reference."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from focalfast.ops.focal_modulation import focal_modulation_ref


def rel_err(out: Tensor, ref: Tensor) -> float:
    """``||out - ref|| / ||ref||`` in float64; any NaN or inf in ``out`` gives inf, so it never passes."""
    out, ref = out.detach().double(), ref.detach().double()
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def random_focal_inputs(
    batch: int,
    height: int,
    width: int,
    channels: int,
    kernel_sizes: Sequence[int] = (3, 5),
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    bias: bool = True,
    requires_grad: bool = False,
    generator: Optional[torch.Generator] = None,
) -> dict:
    """Fresh random arguments of the fused op, as keyword arguments of ``focal_modulation``.

    q, ctx and gates are views of one ``[B, H, W, 2C + L + 1]`` tensor, as ``f``'s output is in
    the module (take gradients with ``torch.autograd.grad``). Scales keep every level O(1).
    """
    C, L = channels, len(kernel_sizes)

    def randn(*shape, scale=1.0):
        t = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return t.to(device=device, dtype=dtype).requires_grad_(requires_grad)

    y = randn(batch, height, width, 2 * C + L + 1)
    q, ctx, gates = torch.split(y, (C, C, L + 1), dim=-1)
    weights = [randn(C, 1, k, k, scale=1.0 / k) for k in kernel_sizes]
    h_weight = randn(C, C, scale=C ** -0.5)
    h_bias = randn(C, scale=0.1) if bias else None
    return dict(q=q, ctx=ctx, gates=gates, weights=weights, h_weight=h_weight, h_bias=h_bias)


GRAD_NAMES = ("q", "ctx", "gates", "h_weight", "h_bias")


def differentiable(inputs: dict) -> Tuple[List[str], List[Tensor]]:
    """``(labels, tensors)`` of the op arguments that take a gradient (h_bias where given, each weight)."""
    names = [n for n in GRAD_NAMES if inputs[n] is not None]
    labels = names + [f"weights[{i}]" for i in range(len(inputs["weights"]))]
    return labels, [inputs[n] for n in names] + list(inputs["weights"])


def focal_case(batch: int, height: int, width: int, channels: int, kernel_sizes: Sequence[int] = (3, 5),
               dtype: torch.dtype = torch.float32, bias: bool = True, layout: str = "views",
               device: str = "cpu", seed: int = 0) -> Tuple[dict, dict, Tensor]:
    """``(inputs64, inputs, dout64)``: fresh random op arguments as ``dtype`` leaves that require grad,
    the same values as float64 leaves (so a comparison measures the kernels, not the rounding of the
    inputs), and an upstream gradient that ``dtype`` holds exactly.

    ``layout``: ``"views"`` (q, ctx, gates are views of one tensor, like ``f``'s output) or
    ``"contiguous"`` (each its own contiguous tensor).
    """
    if layout not in ("views", "contiguous"):
        raise ValueError(f"layout: expected 'views' or 'contiguous', got {layout!r}")
    generator = torch.Generator().manual_seed(seed)
    values = random_focal_inputs(batch, height, width, channels, kernel_sizes, dtype=dtype, device=device,
                                 bias=bias, generator=generator)
    y = torch.cat([values["q"], values["ctx"], values["gates"]], -1)
    sizes = (channels, channels, len(kernel_sizes) + 1)

    def leaves(dt):
        if layout == "views":
            q, ctx, gates = torch.split(y.to(dt).requires_grad_(), sizes, dim=-1)
        else:
            q, ctx, gates = (t.to(dt).contiguous().requires_grad_() for t in torch.split(y, sizes, dim=-1))
        return dict(q=q, ctx=ctx, gates=gates, weights=[w.to(dt).requires_grad_() for w in values["weights"]],
                    h_weight=values["h_weight"].to(dt).requires_grad_(),
                    h_bias=values["h_bias"].to(dt).requires_grad_() if bias else None)

    dout = torch.randn(batch, height, width, channels, generator=generator, dtype=torch.float64)
    return leaves(torch.float64), leaves(dtype), dout.to(device=device, dtype=dtype).double()


def reference_errors(run: Callable, inputs64: dict, inputs: dict, dout64: Tensor,
                     normalize_modulator: bool) -> Dict[str, float]:
    """Relative errors of ``run(**inputs, normalize_modulator=...)`` and of every gradient against the
    float64 reference on the same values: ``{"out": e, "q": e, ..., "weights[i]": e}``."""
    ref = focal_modulation_ref(**inputs64, normalize_modulator=normalize_modulator)
    labels, ref_leaves = differentiable(inputs64)
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout64)
    out = run(**inputs, normalize_modulator=normalize_modulator)
    dtype = inputs["q"].dtype
    assert out.dtype == dtype and out.shape == ref.shape, (out.dtype, tuple(out.shape))
    grads = torch.autograd.grad(out, differentiable(inputs)[1], dout64.to(dtype))
    errors = {"out": rel_err(out, ref)}
    for label, g, r in zip(labels, grads, ref_grads):
        assert g.shape == r.shape, label
        errors[label] = rel_err(g, r)
    return errors


def check_against_reference(run: Callable, batch: int, height: int, width: int, channels: int,
                            kernel_sizes: Sequence[int], normalize_modulator: bool, bias: bool,
                            dtype: torch.dtype, out_tol: float, grad_tol: float, layout: str = "views",
                            device: str = "cpu") -> None:
    """Assert that ``run`` (the op's signature) meets ``out_tol`` on the output and ``grad_tol`` on the
    gradient of every input and weight, against the float64 reference on fresh random inputs."""
    inputs64, inputs, dout64 = focal_case(batch, height, width, channels, kernel_sizes, dtype, bias, layout, device)
    errors = reference_errors(run, inputs64, inputs, dout64, normalize_modulator)
    bad = {n: e for n, e in errors.items() if not e < (out_tol if n == "out" else grad_tol)}
    assert not bad, f"relative errors over tolerance: {bad} (all: {errors})"


def saved_for_backward(run: Callable, inputs: dict) -> Tuple[List[Tensor], List[Tensor]]:
    """``(saved, extras)``: every tensor the autograd graph of ``run(**inputs)`` saves, and those that
    are not (views of) its inputs. Runs the backward too, which must still work."""
    input_storages = {t.untyped_storage().data_ptr() for t in differentiable(inputs)[1]}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = run(**inputs)
    torch.autograd.grad(out, differentiable(inputs)[1], torch.ones_like(out))
    return saved, [t for t in saved if t.untyped_storage().data_ptr() not in input_storages]


def errors_in_subprocess(script: str, *args: str, env: Optional[dict] = None) -> Tuple[float, float]:
    """``(output error, gradient error)`` that ``python -c script *args`` prints after ``errors``.

    For checks whose failure may crash the process (a wrapped 32-bit offset reads or writes
    anywhere): AssertionError with the process's output when it does not exit 0."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    out_err, grad_err = map(float, run.stdout.split("errors")[1].split())
    return out_err, grad_err
