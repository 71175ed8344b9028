"""The backend contract: every check a backend of the focal-modulation op must pass.

Parametrized over ``focalfast.backends.registered()``, so a backend gets all of them by registering
(``docs/adding_a_backend.md``). Each backend runs where it can: CUDA tensors on a GPU; without one,
CPU tensors under its ``cpu_test_env`` (Triton's interpreter, the CUDA kernels' host path). A
backend that cannot run here is skipped with its reason. Every call goes through the dispatcher
(``focal_modulation(..., backend=name)``), the way users reach a backend.

Every backend: fp32 output and every gradient against the float64 reference (fixed and random
shapes), a strided bias, autocast, ``torch.compile(fullgraph=True)`` through the dispatcher, and
what it cannot compute (its ``unsupported_reason``) raising for an explicit choice and falling back
under ``"auto"``. Fused backends (``Backend.fused``) also: fp16/bf16, view and copied layouts with
bitwise equal results, bitwise-reproducible gradients, no per-level activation saved for backward,
``torch.library.opcheck`` of every custom op they call, inductor. Path-specific tests (tiles, bands, sweep
chunks, builds) stay in ``test_<backend>_backend.py``.
"""

import dataclasses
import functools
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from focalfast import backends
from focalfast.backends import registry
from focalfast.modules.focal_modulation import FocalModulation
from focalfast.ops.focal_modulation import focal_modulation, focal_modulation_ref
from focalfast.testing import (
    check_against_reference,
    differentiable,
    focal_case,
    random_focal_inputs,
    rel_err,
    saved_for_backward,
)

GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if GPU else "cpu")
# Triton's interpreter casts fp32 to bf16 by truncation (round toward zero), the GPU rounds to
# nearest: bf16 results on CPU carry about twice the rounding error they have on a GPU.
BF16_TOL = 1e-2 if GPU else 3e-2


def _names(fused_only: bool = False) -> list:
    return [b.name for b in backends.registered() if b.fused or not fused_only]


EVERY_BACKEND = pytest.mark.parametrize("backend", _names(), indirect=True)
FUSED_BACKENDS = pytest.mark.parametrize("backend", _names(fused_only=True), indirect=True)


@pytest.fixture
def backend(request, monkeypatch) -> backends.Backend:
    """The record of the backend under test, with its CPU test environment set; skipped where it cannot run."""
    record = backends.get(request.param)
    if not GPU:
        for name, value in record.cpu_test_env.items():
            monkeypatch.setenv(name, value)
    reason = record.unavailable_reason(DEVICE)
    if reason is not None:
        pytest.skip(f"backend {record.name!r} cannot run on {DEVICE.type} here: {reason}")
    return record


def dispatched(backend: backends.Backend):
    """The op on ``backend`` through the dispatcher."""
    return functools.partial(focal_modulation, backend=backend.name)


def fp32_check(backend, B, H, W, C, kernel_sizes, normalize, bias):
    check_against_reference(dispatched(backend), B, H, W, C, kernel_sizes, normalize, bias, torch.float32,
                            out_tol=1e-5, grad_tol=1e-4, device=DEVICE)


# (B, H, W, C, kernel sizes, normalize_modulator, bias): focal windows 3 and 5 (kernels 2l + window),
# L = 1..4, odd and tiny images (also smaller than the largest kernel), C not a multiple of 16,
# and C spanning two channel blocks (70).
CASES = [
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


@EVERY_BACKEND
@pytest.mark.parametrize("B,H,W,C,kernel_sizes,normalize,bias", CASES)
def test_fp32_matches_float64_reference(backend, B, H, W, C, kernel_sizes, normalize, bias):
    fp32_check(backend, B, H, W, C, kernel_sizes, normalize, bias)


@EVERY_BACKEND
@settings(max_examples=10, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@pytest.mark.slow
@given(B=st.integers(1, 2), H=st.integers(1, 8), W=st.integers(1, 8), C=st.integers(1, 24),
       levels=st.integers(1, 4), window=st.sampled_from([3, 5]), normalize=st.booleans(), bias=st.booleans())
def test_fp32_random_shapes_match_float64_reference(backend, B, H, W, C, levels, window, normalize, bias):
    """Hypothesis draws the shapes and options; kernel sizes are FocalNet's 2l + window."""
    fp32_check(backend, B, H, W, C, tuple(2 * level + window for level in range(levels)), normalize, bias)


@FUSED_BACKENDS
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_matches_float64_reference(backend, dtype):
    tol = 1e-2 if dtype == torch.float16 else BF16_TOL
    check_against_reference(dispatched(backend), 2, 5, 6, 24, (3, 5), True, True, dtype, tol, tol, device=DEVICE)


@FUSED_BACKENDS
def test_views_contiguous_and_copied_layouts_agree(backend):
    """Views of f's output (read in place), contiguous copies and layouts the kernels copy give one result."""
    _, inputs, _ = focal_case(2, 5, 6, 16, (3, 5), device=DEVICE)
    run = dispatched(backend)
    as_views = run(**inputs)
    contiguous = dict(inputs, **{k: inputs[k].detach().contiguous() for k in ("q", "ctx", "gates")})
    assert torch.equal(run(**contiguous), as_views)
    # q with a non-uniform pixel stride (W and H swapped in memory).
    q_t = inputs["q"].detach().transpose(1, 2).contiguous().transpose(1, 2)
    assert q_t.stride(-1) == 1 and not q_t.is_contiguous()
    assert torch.equal(run(**dict(contiguous, q=q_t)), as_views)
    # q channels-first in memory: channel stride != 1.
    q_nchw = inputs["q"].detach().permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
    assert q_nchw.stride(-1) != 1
    assert torch.equal(run(**dict(contiguous, q=q_nchw)), as_views)


@EVERY_BACKEND
def test_strided_h_bias(backend):
    """A non-contiguous bias (every other element of a larger tensor) gives the reference's answer."""
    inputs64, inputs, _ = focal_case(1, 4, 5, 16, (3, 5), device=DEVICE)
    wide = torch.randn(32, dtype=torch.float64, device=DEVICE)
    inputs64["h_bias"], inputs["h_bias"] = wide[::2], wide.float()[::2]
    assert not inputs["h_bias"].is_contiguous()
    assert rel_err(dispatched(backend)(**inputs), focal_modulation_ref(**inputs64)) < 1e-5


def bitwise_reproducible(run, inputs, dout):
    """Two runs give bitwise equal outputs and gradients."""
    labels, leaves = differentiable(inputs)
    runs = []
    for _ in range(2):
        out = run(**inputs)
        runs.append([out, *torch.autograd.grad(out, leaves, dout)])
    for label, a, b in zip(["out"] + labels, *runs):
        assert torch.equal(a, b), f"{label} differs between two identical runs"


@FUSED_BACKENDS
def test_gradients_are_bitwise_deterministic(backend):
    _, inputs, dout = focal_case(2, 6, 5, 40, (3, 5), device=DEVICE)
    bitwise_reproducible(functools.partial(dispatched(backend), normalize_modulator=True), inputs, dout.float())


@pytest.mark.gpu
@FUSED_BACKENDS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_gradients_are_bitwise_deterministic(backend, dtype):
    """At FocalNet-T stage 1 (B = 32): every reduction runs in a fixed order on the GPU too."""
    _, inputs, dout = focal_case(32, 56, 56, 96, (3, 5, 7), dtype, device=DEVICE)
    bitwise_reproducible(functools.partial(dispatched(backend), normalize_modulator=True), inputs, dout.to(dtype))


@FUSED_BACKENDS
@pytest.mark.parametrize("B,H,W,C", [(2, 6, 7, 24), pytest.param(8, 56, 56, 96, marks=pytest.mark.gpu)])
def test_saves_only_inputs_and_per_image_vectors(backend, B, H, W, C):
    """The autograd graph holds the inputs (or views of them) and at most two fp32 ``[B, C]``
    vectors: no level activation, nothing per pixel."""
    _, inputs, _ = focal_case(B, H, W, C, (3, 5, 7), device=DEVICE)
    saved, extras = saved_for_backward(dispatched(backend), inputs)
    assert saved, "nothing saved: the hook did not see the op"
    assert len(extras) <= 2, [tuple(t.shape) for t in extras]
    assert all(t.numel() <= B * C for t in extras), [tuple(t.shape) for t in extras]
    assert sum(t.numel() * t.element_size() for t in extras) <= 2 * B * C * 4


class _CustomOpCalls(TorchDispatchMode):
    """Records each ``focalfast::`` custom op call (op, args, kwargs) below autograd."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "focalfast":
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def _detached(value):
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value.detach() if isinstance(value, torch.Tensor) else value


@FUSED_BACKENDS
def test_custom_ops_pass_opcheck(backend):
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of every custom op the
    backend calls, forward (with the leaves) and backward (detached, as autograd calls it); the calls
    also show that the dispatcher reached the backend (no silent fallback to the reference)."""
    _, inputs, dout = focal_case(1, 3, 4, 16, (3, 5), device=DEVICE)
    with _CustomOpCalls() as forward:
        out = dispatched(backend)(**inputs, normalize_modulator=True)
    with _CustomOpCalls() as backward:
        torch.autograd.grad(out, differentiable(inputs)[1], dout.float())
    assert forward.calls and backward.calls, "no focalfast custom op ran forward and backward"
    for op, args, kwargs in forward.calls:
        torch.library.opcheck(op, args, kwargs)
    for op, args, kwargs in backward.calls:
        torch.library.opcheck(op, _detached(args), _detached(kwargs))


def _module_pair(backend_name: str):
    torch.manual_seed(0)
    ref = FocalModulation(16, focal_level=2, normalize_modulator=True, backend="reference").to(DEVICE)
    module = FocalModulation(16, focal_level=2, normalize_modulator=True, backend=backend_name).to(DEVICE)
    module.load_state_dict(ref.state_dict())
    return ref, module


@EVERY_BACKEND
def test_torch_compile_fullgraph_through_the_dispatcher(backend):
    """aot_eager: dynamo traces the module, the dispatcher and the op (fake impls, autograd) without a
    graph break; output and gradients equal eager (bitwise for a fused backend, whose reductions run in
    a fixed order; within 1e-6 for the reference, whose cuDNN convs need not), and the reference
    module within fp32 tolerance."""
    ref, module = _module_pair(backend.name)
    x = torch.randn(2, 5, 6, 16, device=DEVICE)
    eager = module(x)  # also imports the backend, which the dispatcher caches before compiling
    eager_grads = torch.autograd.grad(eager.sum(), list(module.parameters()))
    out = torch.compile(module, fullgraph=True, backend="aot_eager")(x)
    grads = torch.autograd.grad(out.sum(), list(module.parameters()))
    expected = ref(x)
    expected_grads = torch.autograd.grad(expected.sum(), list(ref.parameters()))
    same = torch.equal if backend.fused else (lambda a, b: rel_err(a, b) < 1e-6)
    assert same(out, eager)
    assert rel_err(out, expected) < 1e-5
    for (name, _), g, e, r in zip(module.named_parameters(), grads, eager_grads, expected_grads):
        assert same(g, e), name
        assert rel_err(g, r) < 1e-4, name


@FUSED_BACKENDS
def test_torch_compile_inductor_fullgraph(backend):
    if not GPU and not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("inductor needs a C++ compiler to build CPU kernels; none is on PATH")
    _, module = _module_pair(backend.name)
    x = torch.randn(2, 5, 6, 16, device=DEVICE)
    eager = module(x)
    eager_grads = torch.autograd.grad(eager.sum(), list(module.parameters()))
    out = torch.compile(module, fullgraph=True)(x)
    grads = torch.autograd.grad(out.sum(), list(module.parameters()))
    assert rel_err(out, eager) < 1e-6
    for (name, _), g, e in zip(module.named_parameters(), grads, eager_grads):
        assert rel_err(g, e) < 1e-6, name


@EVERY_BACKEND
def test_autocast_casts_at_the_dispatcher(backend):
    """Under autocast the dispatcher casts every tensor to the autocast dtype; gradients come back in the
    leaves' dtype."""
    inputs64, inputs, dout = focal_case(1, 4, 5, 16, (3, 5), device=DEVICE)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        out = dispatched(backend)(**inputs, normalize_modulator=True)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, focal_modulation_ref(**inputs64, normalize_modulator=True)) < BF16_TOL
    grads = torch.autograd.grad(out, differentiable(inputs)[1], dout.to(out.dtype))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


# (what, dtype, kernel sizes, the argument the reason must name)
CONFIGS = [
    ("float64", torch.float64, (3,), "q:"),
    ("five-levels", torch.float32, (3, 3, 3, 3, 3), "weights:"),
    ("kernel-15", torch.float32, (3, 15), "weights[1]:"),
]


@EVERY_BACKEND
@pytest.mark.parametrize("what,dtype,kernel_sizes,argument", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_unsupported_configurations(backend, monkeypatch, what, dtype, kernel_sizes, argument):
    """One predicate, two uses: where ``unsupported_reason`` says why not, an explicit choice raises
    ValueError with that reason (naming the argument) and ``"auto"`` runs the reference; where it says
    nothing, the backend runs the configuration, explicitly and under ``"auto"``."""
    inputs = random_focal_inputs(1, 3, 3, 8, kernel_sizes, dtype=dtype, device=DEVICE)
    config = backends.OpConfig("focal_modulation", dtype, kernel_sizes, 8)
    reason = backend.unsupported_reason(config)
    expected = focal_modulation_ref(**inputs)
    # "auto" with this backend as the only candidate on this device
    candidate = dataclasses.replace(backend, auto_devices=(DEVICE.type,))
    monkeypatch.setattr(registry, "_registry", {backends.FALLBACK: backends.get(backends.FALLBACK),
                                               backend.name: candidate})
    auto = backends.select("auto", config, DEVICE)
    if reason is None:
        assert auto is backend.implementation("focal_modulation")
        assert rel_err(focal_modulation(**inputs, backend=backend.name), expected) < 1e-5
        return
    assert reason.startswith(argument), reason
    with pytest.raises(ValueError) as info:
        focal_modulation(**inputs, backend=backend.name)
    assert str(info.value) == f"backend={backend.name!r}: {reason}"
    assert auto is backends.get(backends.FALLBACK).implementation("focal_modulation")
    assert torch.equal(focal_modulation(**inputs, backend="auto"), expected)
