"""``focalfast bench``: time the op, the module and a training step on every backend.

Rows ("variants") of each case:

    eager     the pure-PyTorch reference (``focal_modulation_ref``), eager mode: the baseline
    compiled  the same reference under ``torch.compile`` (GPU only)
    triton    focalfast's fused Triton kernels (GPU only: the CPU interpreter says nothing of speed)
    cuda      focalfast's fused CUDA C++ kernels (GPU and the built extension)
    timm      timm's own model (training step only, where timm imports)

One table: median time, speed-up over eager and over compiled, achieved bandwidth and % of the
roofline floor of the op (counted in ``focalfast.roofline``), peak memory; plus a JSON file, a
markdown table and a PNG plot. Timing follows ``focalfast.timing``. The same workloads back the
pytest-benchmark files in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from focalfast import backends, roofline, timing
from focalfast.roofline import OpShape

VARIANTS = ("eager", "compiled", "triton", "cuda")
TRAIN_VARIANTS = VARIANTS + ("timm",)
FUSED = ("triton", "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
DEFAULT_MODEL = "focalnet_tiny_srf"
JSON_FORMAT = "focalfast-bench/1"
CPU_NOTE = ("CPU run: these numbers time PyTorch's CPU kernels to exercise the harness. "
            "They are not GPU numbers and say nothing about the fused kernels' speed.")

# FocalNet stage shapes (channels, side) at 224x224 input; T and S share them (S is deeper).
STAGES = {
    "T": ((96, 56), (192, 28), (384, 14), (768, 7)),
    "B": ((128, 56), (256, 28), (512, 14), (1024, 7)),
}
SRF = (3, 5)  # focal_level 2 (the *_srf models)
LRF = (3, 5, 7)  # focal_level 3 (the *_lrf models)
HIGH_RESOLUTIONS = (384, 512, 768, 1024)
STAGE_BATCH = 128  # at 224: fills an H100
HIGH_RES_BATCH = 16
TINY_SHAPE = OpShape(2, 16, 16, 32, SRF)


# ----------------------------------------------------------------------------------- shapes


def stage_shape(model: str, stage: int, resolution: int = 224, batch: int = STAGE_BATCH,
                kernel_sizes=SRF) -> OpShape:
    """The op's shape in stage ``stage`` (1-4) of FocalNet-``model`` at ``resolution``."""
    channels, side = STAGES[model][stage - 1]
    side = side * resolution // 224
    return OpShape(batch, side, side, channels, tuple(kernel_sizes))


def op_shapes(scope: str) -> dict:
    """Named op shapes: ``tiny`` (CPU), ``quick`` (two stage shapes) or ``full``.

    Keys: ``T.s1`` is FocalNet-T/S stage 1 at 224 (batch 128), ``T.s1@512`` the same stage at
    512x512 input (batch 16), ``T.s1.lrf`` with three levels (kernels 3, 5, 7).
    """
    if scope == "tiny":
        return {"tiny": TINY_SHAPE}
    shapes = {"T.s1": stage_shape("T", 1), "T.s3": stage_shape("T", 3)}
    if scope == "quick":
        return shapes
    if scope != "full":
        raise ValueError(f"scope: expected 'tiny', 'quick' or 'full', got {scope!r}")
    for model in STAGES:
        for stage in (1, 2, 3, 4):
            shapes[f"{model}.s{stage}"] = stage_shape(model, stage)
    for resolution in HIGH_RESOLUTIONS:
        shapes[f"T.s1@{resolution}"] = stage_shape("T", 1, resolution, HIGH_RES_BATCH)
    shapes["T.s1.lrf"] = stage_shape("T", 1, kernel_sizes=LRF)
    return shapes


def train_shapes(scope: str) -> list:
    """``(resolution, batch)`` pairs of the training-step benchmark."""
    if scope == "tiny":
        return [(64, 2)]
    if scope == "quick":
        return [(224, STAGE_BATCH)]
    return [(224, STAGE_BATCH)] + [(r, HIGH_RES_BATCH) for r in (224,) + HIGH_RESOLUTIONS]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_scope(device: torch.device) -> str:
    """Scope of the pytest benchmarks: ``tiny`` on CPU; on a GPU ``FOCALFAST_BENCH_SCOPE``, ``quick``
    (about 10 minutes, most of it torch.compile) by default or ``full`` (over an hour)."""
    if device.type != "cuda":
        return "tiny"
    return os.environ.get("FOCALFAST_BENCH_SCOPE", "quick")


# ----------------------------------------------------------------------------- availability


def unavailable_reason(variant: str, device) -> Optional[str]:
    """Why ``variant`` is not benchmarked on ``device``; None if it is."""
    device = torch.device(device)
    if variant == "eager":
        return None
    if variant == "compiled":
        if device.type != "cuda":
            return ("torch.compile is benchmarked on GPUs only (on CPU it spends tens of seconds "
                    "compiling each shape, and CPU numbers are not GPU numbers)")
        reason = backends.unavailable_reason("triton", device)
        return None if reason is None else f"torch.compile generates Triton code: {reason}"
    if variant == "timm":
        try:
            import timm  # noqa: F401
        except Exception as exc:  # timm can be installed yet broken (its torchvision)
            return f"timm is not importable ({type(exc).__name__}: {exc})"
        return None
    if variant not in FUSED:
        raise ValueError(f"variant: expected one of {TRAIN_VARIANTS}, got {variant!r}")
    if variant == "triton" and device.type != "cuda":
        return ("Triton's CPU interpreter checks correctness, not speed: the Triton kernels are "
                "benchmarked on GPUs only")
    reason = backends.unavailable_reason(variant, device)
    if reason is not None:
        return reason
    try:
        backends.implementation(variant)
    except Exception as exc:
        return f"focalfast's {variant} backend does not import ({type(exc).__name__}: {exc})"
    return None


def model_unavailable_reason() -> Optional[str]:
    """Why focalfast's own FocalNet models cannot be built (None if they can)."""
    try:
        from focalfast.models import create  # noqa: F401
    except Exception as exc:
        return f"focalfast.models.create is not importable ({type(exc).__name__}: {exc})"
    return None


# -------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """One thing to time: ``step(*inputs)`` over rotating ``input_sets``, with what it computes."""

    kind: str  # "op" | "module" | "train"
    pass_: str  # "forward" | "forward_backward" | "train_step"
    shape_name: str
    dtype: torch.dtype
    variant: str
    device: torch.device
    step: Callable
    input_sets: list
    op_shape: Optional[OpShape] = None  # for the roofline (op rows)
    images: int = 0  # images per call (training step)
    _next: int = dataclasses.field(default=0, init=False, repr=False)

    @property
    def group(self) -> str:
        return f"{self.kind} {PASS_LABELS[self.pass_]} | {self.shape_name} | {DTYPE_NAMES[self.dtype]}"

    def next_inputs(self):
        """pytest-benchmark ``setup``: the next input set, as ``(args, kwargs)``."""
        args = self.input_sets[self._next % len(self.input_sets)]
        self._next += 1
        return args, {}


PASS_LABELS = {"forward": "fwd", "forward_backward": "fwd+bwd", "train_step": "step"}


def _allow_recompiles() -> None:
    """Each benchmarked shape is its own compiled graph: lift dynamo's per-function recompile limit."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 256))


@functools.lru_cache(maxsize=None)
def _compiled_reference_op() -> Callable:
    from focalfast.ops.focal_modulation import focal_modulation_ref

    _allow_recompiles()
    return torch.compile(focal_modulation_ref, dynamic=False)


def op_function(variant: str) -> Callable:
    """The op of ``variant`` with the backend signature ``(q, ctx, gates, weights, h_w, h_b, norm)``."""
    if variant == "eager":
        from focalfast.ops.focal_modulation import focal_modulation_ref

        return focal_modulation_ref
    if variant == "compiled":
        return _compiled_reference_op()
    if variant in FUSED:
        return backends.implementation(variant)
    raise ValueError(f"variant: expected one of {VARIANTS} for the op, got {variant!r}")


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _randn(shape, scale, dtype, device, generator, requires_grad=False):
    t = torch.randn(shape, device=device, generator=generator) * scale
    return t.to(dtype).requires_grad_(requires_grad)


def op_input_sets(shape: OpShape, dtype, device, backward: bool, seed: int = 0) -> list:
    """Random op arguments, as many sets as ``timing.input_set_count`` asks for.

    A set is ``(q, ctx, gates, weights, h_weight, h_bias[, grad_out])``; q, ctx and gates are views
    of one ``[B, H, W, 2C + L + 1]`` tensor like ``f``'s output. Made on the device (fast at any
    size), scaled like ``focalfast.testing.random_focal_inputs`` so every level stays O(1).
    """
    device = torch.device(device)
    B, H, W, C, L = shape.batch, shape.height, shape.width, shape.channels, shape.levels
    per_set = shape.pixels * (2 * C + L + 1 + (C if backward else 0)) * roofline.element_size(dtype)
    count = timing.input_set_count(per_set, timing.l2_cache_bytes(device))
    generator = _generator(device, seed)
    sets = []
    for _ in range(count):
        y = _randn((B, H, W, 2 * C + L + 1), 1.0, dtype, device, generator, backward)
        q, ctx, gates = torch.split(y, (C, C, L + 1), dim=-1)
        weights = [_randn((C, 1, k, k), 1.0 / k, dtype, device, generator, backward)
                   for k in shape.kernel_sizes]
        h_weight = _randn((C, C), C ** -0.5, dtype, device, generator, backward)
        h_bias = _randn((C,), 0.1, dtype, device, generator, backward) if shape.bias else None
        args = (q, ctx, gates, weights, h_weight, h_bias)
        if backward:
            args += (_randn((B, H, W, C), 1.0, dtype, device, generator),)
        sets.append(args)
    return sets


def op_workload(variant: str, shape: OpShape, dtype, device, backward: bool,
                shape_name: Optional[str] = None, seed: int = 0) -> Workload:
    """The fused op alone, forward (no autograd graph) or forward + backward (all gradients)."""
    device = torch.device(device)
    op = op_function(variant)
    if backward:
        def step(q, ctx, gates, weights, h_weight, h_bias, grad_out):
            out = op(q, ctx, gates, weights, h_weight, h_bias, False)
            inputs = [q, ctx, gates, *weights, h_weight] + ([h_bias] if h_bias is not None else [])
            return torch.autograd.grad(out, inputs, grad_out)
    else:
        def step(q, ctx, gates, weights, h_weight, h_bias):
            return op(q, ctx, gates, weights, h_weight, h_bias, False)
    return Workload("op", "forward_backward" if backward else "forward", shape_name or shape.describe(),
                    dtype, variant, device, step, op_input_sets(shape, dtype, device, backward, seed),
                    op_shape=shape)


def _op_backend(variant: str) -> str:
    return "reference" if variant in ("eager", "compiled") else variant


def module_workload(variant: str, shape: OpShape, dtype, device, backward: bool,
                    shape_name: Optional[str] = None, seed: int = 0) -> Workload:
    """``FocalModulation`` (f, the op, proj), ``[B, H, W, C]`` in and out; fwd or fwd + bwd."""
    from focalfast.modules.focal_modulation import FocalModulation

    device = torch.device(device)
    ks = shape.kernel_sizes
    factor = ks[1] - ks[0] if len(ks) > 1 else 2
    if any(k != ks[0] + factor * i for i, k in enumerate(ks)):
        raise ValueError(f"shape: kernel sizes {ks} are not focal_window + focal_factor * l")
    torch.manual_seed(seed)
    module = FocalModulation(shape.channels, focal_window=ks[0], focal_level=len(ks), focal_factor=factor,
                             bias=shape.bias, backend=_op_backend(variant)).to(device, dtype)
    if variant == "compiled":
        _allow_recompiles()
    forward = torch.compile(module, dynamic=False) if variant == "compiled" else module
    params = list(module.parameters())
    generator = _generator(device, seed)
    B, H, W, C = shape.batch, shape.height, shape.width, shape.channels
    per_set = shape.pixels * C * (2 if backward else 1) * roofline.element_size(dtype)
    sets = []
    for _ in range(timing.input_set_count(per_set, timing.l2_cache_bytes(device))):
        x = _randn((B, H, W, C), 1.0, dtype, device, generator, backward)
        sets.append((x, _randn((B, H, W, C), 1.0, dtype, device, generator)) if backward else (x,))
    if backward:
        def step(x, grad_out):
            return torch.autograd.grad(forward(x), [x] + params, grad_out)
    else:
        def step(x):
            with torch.no_grad():
                return forward(x)
    return Workload("module", "forward_backward" if backward else "forward", shape_name or shape.describe(),
                    dtype, variant, device, step, sets)


def build_model(variant: str, model_name: str = DEFAULT_MODEL) -> torch.nn.Module:
    """A FocalNet: focalfast's on the variant's backend, or timm's (variant ``timm``).

    Both get the variant's published stochastic-depth rate, so they do the same work.
    """
    from focalfast.models import create, get_config

    drop_path_rate = get_config(model_name).drop_path_rate
    if variant == "timm":
        import timm

        return timm.create_model(model_name, pretrained=False, drop_path_rate=drop_path_rate)
    return create(model_name, backend=_op_backend(variant))


class TrainStep:
    """One optimisation step of an image classifier: forward, cross-entropy, backward, AdamW.

    bf16 runs under ``torch.autocast`` (mixed precision, fp32 weights), as training does.
    """

    def __init__(self, model: torch.nn.Module, dtype, device, compile_model: bool):
        self.model = model.to(device).train()
        self.device = torch.device(device)
        self.dtype = dtype
        self.num_classes = int(getattr(model, "num_classes", 1000) or 1000)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=self.device.type == "cuda")
        if compile_model:
            _allow_recompiles()
        self.forward = torch.compile(self.model, dynamic=False) if compile_model else self.model

    def batch(self, batch: int, resolution: int, seed: int = 0) -> tuple:
        generator = _generator(self.device, seed)
        images = torch.randn(batch, 3, resolution, resolution, device=self.device, generator=generator)
        labels = torch.randint(0, self.num_classes, (batch,), device=self.device, generator=generator)
        return images, labels

    def __call__(self, images, labels):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            loss = F.cross_entropy(self.forward(images), labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def train_workload(variant: str, resolution: int, batch: int, dtype, device,
                   model_name: str = DEFAULT_MODEL, seed: int = 0) -> Workload:
    """A training step of ``model_name`` (timm's for variant ``timm``), one batch reused."""
    device = torch.device(device)
    torch.manual_seed(seed)
    step = TrainStep(build_model(variant, model_name), dtype, device, compile_model=variant == "compiled")
    return Workload("train", "train_step", f"{resolution}px B{batch}", dtype, variant, device,
                    step, [step.batch(batch, resolution, seed)], images=batch)


def release_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- measuring


@functools.lru_cache(maxsize=None)
def device_ceilings(device_str: str) -> Optional[roofline.Ceilings]:
    """The device's measured ceilings (once per process); None on CPU."""
    return roofline.measure_ceilings(torch.device(device_str))


def metrics(workload: Workload, median_s: float, ceilings: Optional[roofline.Ceilings]) -> dict:
    """Bandwidth, roofline and throughput numbers of one timed workload."""
    out = {}
    if workload.op_shape is not None:
        shape, dtype = workload.op_shape, workload.dtype
        nbytes = roofline.op_bytes(shape, dtype, workload.pass_)
        flops = roofline.op_flops(shape, workload.pass_)
        out.update(bytes=nbytes, vector_flops=flops.vector, gemm_flops=flops.gemm,
                   achieved_gbps=nbytes / median_s / 1e9)
        if ceilings is not None:
            floor = roofline.floor_seconds(shape, dtype, workload.pass_, ceilings)
            out.update(floor_ms=floor * 1e3, roofline_pct=100 * floor / median_s)
    if workload.images:
        out["images_per_s"] = workload.images / median_s
    return out


def measure_memory(workload: Workload) -> dict:
    """Peak memory of one call (GPU only).

    Training step: ``peak_memory_bytes`` is the whole process's peak (model, optimizer state,
    batch, activations): what must fit on the card. Op and module: the peak above what was
    allocated before the call (outputs, saved tensors, workspaces).
    """
    measured = timing.peak_memory(workload.step, workload.input_sets[0], workload.device)
    if measured is None:
        return {}
    peak, before = measured
    if workload.kind == "train":
        return {"peak_memory_bytes": peak, "peak_memory_kind": "process"}
    return {"peak_memory_bytes": peak - before, "peak_memory_kind": "call"}


def largest_fitting(fits: Callable[[int], bool], start: int, multiple: int, limit: int) -> Optional[int]:
    """The largest multiple of ``multiple`` in ``[start, limit]`` that ``fits``, assuming ``fits`` is
    monotone (true up to some size, false beyond); None if ``start`` does not fit.

    Doubles from ``start`` until a size does not fit, then bisects: about 2 log2(limit / start) probes.
    """
    if start % multiple:
        raise ValueError(f"start: expected a multiple of {multiple}, got {start}")
    if not fits(start):
        return None
    lo, hi = start, start * 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit // multiple * multiple + multiple)
    while hi - lo > multiple:  # invariant: lo fits; hi does not, or is past the limit
        mid = (lo + hi) // 2 // multiple * multiple
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def max_resolution(variant: str, cap_bytes: int, batch: int, dtype, device, model_name: str = DEFAULT_MODEL,
                   start: int = 224, multiple: int = 32, limit: int = 4096) -> dict:
    """The largest resolution (a multiple of ``multiple``) whose training step fits in ``cap_bytes``.

    The caching allocator is capped (``torch.cuda.set_per_process_memory_fraction``) as on a card
    of that size, so a step fits if it does not run out of memory; ``largest_fitting`` searches.
    A step at ``start`` first creates the optimizer state. ``probes`` maps each resolution tried
    to its peak allocated bytes (None: out of memory).
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("max_resolution needs a CUDA device (torch.cuda.max_memory_allocated)")
    release_memory(device)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap_bytes / total), device)
    try:
        return _search_resolution(variant, cap_bytes, batch, dtype, device, model_name, start, multiple, limit)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        release_memory(device)


def _search_resolution(variant, cap_bytes, batch, dtype, device, model_name, start, multiple, limit) -> dict:
    torch.manual_seed(0)
    step = TrainStep(build_model(variant, model_name), dtype, device, compile_model=False)
    probes = {}

    def peak_at(resolution: int) -> Optional[int]:
        if resolution not in probes:
            images, labels = step.batch(batch, resolution)
            try:
                probes[resolution] = timing.peak_memory(step, (images, labels), device)[0]
            except torch.cuda.OutOfMemoryError:
                probes[resolution] = None
            del images, labels
            step.optimizer.zero_grad(set_to_none=True)
            release_memory(device)
        return probes[resolution]

    def fits(resolution: int) -> bool:
        peak = peak_at(resolution)
        return peak is not None and peak <= cap_bytes

    peak_at(start)
    probes.clear()
    best = largest_fitting(fits, start, multiple, limit)
    del step
    return {"variant": variant, "dtype": DTYPE_NAMES[dtype], "batch": batch, "model": model_name,
            "cap_bytes": cap_bytes, "resolution": best,
            "peak_memory_bytes": probes.get(best) if best else None,
            "probes": {str(r): p for r, p in sorted(probes.items())}}


# ------------------------------------------------------------------------------------ suites


@dataclass
class Case:
    """One row group of the table: a workload at one shape and dtype, across variants."""

    kind: str  # "op" | "module" | "train"
    pass_: str
    shape_name: str
    dtype: torch.dtype
    variants: tuple
    op_shape: Optional[OpShape] = None
    resolution: int = 0
    batch: int = 0

    def workload(self, variant: str, device, model_name: str) -> Workload:
        backward = self.pass_ == "forward_backward"
        if self.kind == "op":
            return op_workload(variant, self.op_shape, self.dtype, device, backward, self.shape_name)
        if self.kind == "module":
            return module_workload(variant, self.op_shape, self.dtype, device, backward, self.shape_name)
        return train_workload(variant, self.resolution, self.batch, self.dtype, device, model_name)

    @property
    def label(self) -> str:
        return "memory" if self.kind == "memory" else f"{self.kind} {PASS_LABELS[self.pass_]}"

    def row(self, variant: str) -> dict:
        """The identifying fields of a result row."""
        row = {"kind": self.kind, "pass": self.pass_, "shape": self.shape_name, "dtype": DTYPE_NAMES[self.dtype],
               "variant": variant, "status": "ok"}
        if self.op_shape is not None:
            row["op_shape"] = dataclasses.asdict(self.op_shape)
        if self.kind == "train":
            row.update(resolution=self.resolution, batch=self.batch)
        return row


# Run order inside a case: the cheap and the essential first, torch.compile (slow to build) last.
RUN_ORDER = ("eager", "triton", "cuda", "timm", "compiled")
# Seconds a row may take on a GPU (compiling included); under --time-budget a row starts only if
# that much is left. torch.compile of a whole training step takes minutes.
EXPECTED_SECONDS = {("train", "compiled"): 180, ("op", "compiled"): 40, ("module", "compiled"): 40,
                    ("memory", None): 60, ("train", None): 20}


def suite_cases(suite: str, dtypes: list, variants: list) -> list:
    """The cases of a suite, most important first (a time budget cuts the tail).

    tiny     op fwd / fwd+bwd, module fwd+bwd at a tiny shape; a 64px training step (fp32)
    default  op at FocalNet-T stages 1 and 3, module at stage 1, training step at 224 (batch 128)
    full     default, then every T/S/B stage shape, stage 1 at 384-1024 px, three levels, the
             module at every T stage, and training steps at 224-1024 px (batch 16, no compile)

    Every suite also holds a "memory" case (the largest training resolution under a memory cap,
    eager against fused, bf16 if asked for), run where ``--kinds`` names it (full suite: default).
    """
    def ordered(names, allowed):
        return tuple(v for v in RUN_ORDER if v in names and v in allowed)

    op_variants = ordered(variants, VARIANTS)
    train_variants = ordered(variants, TRAIN_VARIANTS)
    cases = []

    def op_cases(names, shapes, passes=("forward_backward", "forward"), kind="op"):
        for name in names:
            for pass_ in passes:
                for dtype in dtypes:
                    cases.append(Case(kind, pass_, name, dtype, op_variants, op_shape=shapes[name]))

    def train_cases(pairs, allowed, train_dtypes):
        for resolution, batch in pairs:
            for dtype in train_dtypes:
                cases.append(Case("train", "train_step", f"{resolution}px B{batch}", dtype,
                                  tuple(v for v in train_variants if v in allowed),
                                  resolution=resolution, batch=batch))

    def memory_case():
        dtype = torch.bfloat16 if torch.bfloat16 in dtypes else dtypes[0]
        cases.append(Case("memory", "train_step", "largest resolution", dtype,
                          ordered(variants, ("eager",) + FUSED)))

    if suite == "tiny":
        shapes = op_shapes("tiny")
        op_cases(["tiny"], shapes)
        op_cases(["tiny"], shapes, passes=("forward_backward",), kind="module")
        train_cases(train_shapes("tiny"), TRAIN_VARIANTS, [torch.float32])
        memory_case()
        return cases
    if suite not in ("default", "full"):
        raise ValueError(f"suite: expected tiny, default or full, got {suite!r}")
    shapes = op_shapes("full")
    train_dtypes = sorted(dtypes, key=lambda d: d != torch.bfloat16)  # mixed precision first
    op_cases(["T.s1"], shapes)
    train_cases([(224, STAGE_BATCH)], TRAIN_VARIANTS, train_dtypes)
    memory_case()
    op_cases(["T.s3"], shapes)
    op_cases(["T.s1"], shapes, passes=("forward_backward",), kind="module")
    if suite == "default":
        return cases
    op_cases(["T.s2", "T.s4"] + [f"B.s{s}" for s in (1, 2, 3, 4)], shapes)
    op_cases([f"T.s1@{r}" for r in HIGH_RESOLUTIONS] + ["T.s1.lrf"], shapes)
    op_cases(["T.s2", "T.s3", "T.s4"], shapes, passes=("forward_backward",), kind="module")
    train_cases([(r, HIGH_RES_BATCH) for r in (224,) + HIGH_RESOLUTIONS],
                ("eager", "triton", "cuda", "timm"), train_dtypes)
    return cases


# ----------------------------------------------------------------------------------- runner


def git_commit() -> str:
    """``FOCALFAST_COMMIT`` if set (the GPU machine gets no .git), else ``git`` (+ ``-dirty``)."""
    if os.environ.get("FOCALFAST_COMMIT"):
        return os.environ["FOCALFAST_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment(device) -> dict:
    """Device, library versions, commit and date of a run."""
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    env = {
        "device_type": device.type,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(memory_bytes=props.total_memory, sm_count=props.multi_processor_count,
                   l2_bytes=timing.l2_cache_bytes(device), cudnn_benchmark=torch.backends.cudnn.benchmark)
        matmul = torch.backends.cuda.matmul  # fp32_precision since torch 2.9; reading both APIs can raise
        env["matmul_fp32_precision"] = (matmul.fp32_precision if hasattr(matmul, "fp32_precision")
                                        else ("tf32" if matmul.allow_tf32 else "ieee"))
    return env


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_variant(case: Case, variant: str, device, settings: dict, ceilings) -> dict:
    """Build, time and measure one variant of a case; never raises (errors become rows)."""
    row = case.row(variant)
    reason = unavailable_reason(variant, device)
    if reason is None and case.kind == "train" and variant != "timm":
        reason = model_unavailable_reason()
    if reason is not None:
        return dict(row, status="skipped", reason=reason)
    workload = None
    try:
        workload = case.workload(variant, device, settings["model"])
        train = case.kind == "train"
        result = timing.measure(workload.step, workload.input_sets,
                                warmup=settings["warmup_train" if train else "warmup"],
                                rounds=settings["rounds_train" if train else "rounds"], device=device)
        row.update(median_ms=result.median * 1e3, mean_ms=result.mean * 1e3, min_ms=result.min * 1e3,
                   iqr_ms=result.iqr * 1e3, rounds=len(result.times), input_sets=len(workload.input_sets))
        row.update(metrics(workload, result.median, ceilings))
        row.update(measure_memory(workload))
    except torch.cuda.OutOfMemoryError as exc:
        row.update(status="oom", reason=_error_text(exc))
    except Exception as exc:
        row.update(status="error", reason=_error_text(exc))
    finally:
        del workload
        if variant == "compiled":
            torch._dynamo.reset()
        release_memory(device)
    return row


def add_speedups(rows: list) -> None:
    """Speed-up of each row over the eager, compiled and timm rows of its case."""
    def key(r):
        return (r["kind"], r["pass"], r["shape"], r["dtype"])

    base = {}
    for r in rows:
        if r["status"] == "ok":
            base[key(r) + (r["variant"],)] = r["median_ms"]
    for r in rows:
        if r["status"] != "ok":
            continue
        for name, column in (("eager", "speedup_vs_eager"), ("compiled", "speedup_vs_compiled"),
                             ("timm", "speedup_vs_timm")):
            reference = base.get(key(r) + (name,))
            if reference is not None:
                r[column] = reference / r["median_ms"]


# ---------------------------------------------------------------------------------- output

KINDS = ("op", "module", "train", "memory")
COLUMNS = ("case", "shape", "dtype", "backend", "time ms", "x eager", "x compiled", "GB/s",
           "% roofline", "peak MiB")
TRAIN_COLUMNS = ("img/s", "x timm")


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 else f"{value:.{digits + 1}f}"


def table_rows(rows: list) -> tuple:
    """Header and cells of the table (rows that ran or failed; skipped ones are listed apart)."""
    shown = [r for r in rows if r["status"] != "skipped"]
    with_train = any(r["kind"] == "train" for r in shown)
    header = COLUMNS + (TRAIN_COLUMNS if with_train else ())
    cells = []
    for r in shown:
        ok = r["status"] == "ok"
        peak = r.get("peak_memory_bytes")
        line = [f"{r['kind']} {PASS_LABELS[r['pass']]}", r["shape"], r["dtype"], r["variant"],
                _fmt(r.get("median_ms"), 3) if ok else r["status"],
                _fmt(r.get("speedup_vs_eager")), _fmt(r.get("speedup_vs_compiled")),
                _fmt(r.get("achieved_gbps"), 1), _fmt(r.get("roofline_pct"), 1),
                _fmt(None if peak is None else peak / 2**20, 1)]
        if with_train:
            line += [_fmt(r.get("images_per_s"), 1), _fmt(r.get("speedup_vs_timm"))]
        cells.append(line)
    return header, cells


def format_table(rows: list) -> str:
    header, cells = table_rows(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def format_markdown_table(rows: list) -> str:
    header, cells = table_rows(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    return "\n".join(lines)


def not_run_lines(rows: list) -> list:
    """One line per (variant, reason) that kept rows from running, and per failure."""
    seen, lines = set(), []
    for r in rows:
        if r["status"] == "ok":
            continue
        where = "" if r["status"] == "skipped" else f" [{r['kind']} {PASS_LABELS[r['pass']]} {r['shape']} {r['dtype']}]"
        text = f"{r['variant']} {r['status']}{where}: {r.get('reason', '')}"
        if text not in seen:
            seen.add(text)
            lines.append(text)
    return lines


def format_max_resolution(entries: list) -> str:
    lines = []
    for e in entries:
        if "error" in e:
            lines.append(f"{e['variant']}: {e['error']}")
            continue
        peak = e.get("peak_memory_bytes")
        lines.append(f"{e['variant']:>8} {e['dtype']} batch {e['batch']}: largest resolution under "
                     f"{e['cap_bytes'] / 2**30:.1f} GiB = {e['resolution']} px"
                     + (f" (peak {peak / 2**30:.2f} GiB)" if peak else ""))
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """The committed-results format (benchmarks/results/README.md): header, table, notes."""
    env = report["environment"]
    lines = [f"# focalfast bench: {env['device']}", "",
             f"- device: {env['device']}" + (f", {env.get('sm_count')} SMs, "
                                             f"{env.get('memory_bytes', 0) / 2**30:.0f} GiB"
                                             if env["device_type"] == "cuda" else ""),
             f"- torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, Triton {env['triton']}, "
             f"Python {env['python']}",
             f"- commit {env['commit']}, date {env['date']}",
             f"- suite {report['settings']['suite']}, training step of {report['settings']['model']}; "
             f"median of {report['settings']['rounds']} timed calls after {report['settings']['warmup']} "
             f"warm-up calls (training step: {report['settings']['rounds_train']} after "
             f"{report['settings']['warmup_train']}), "
             + ("CUDA events, input sets rotated to cover 4x L2" if env["device_type"] == "cuda"
                else "time.perf_counter")]
    ceilings = report.get("ceilings")
    if ceilings:
        lines.append(f"- measured ceilings: copy {ceilings['bandwidth'] / 1e12:.2f} TB/s, fp32 FMA "
                     f"{ceilings['fp32_flops'] / 1e12:.1f} TFLOP/s, bf16 GEMM "
                     f"{ceilings['bf16_gemm_flops'] / 1e12:.0f} TFLOP/s")
    if env["device_type"] != "cuda":
        lines += ["", f"**{CPU_NOTE}**"]
    lines += ["", format_markdown_table(report["results"])]
    notes = not_run_lines(report["results"])
    if notes:
        lines += ["", "Not run or failed:", ""] + [f"- {n}" for n in notes]
    if report.get("max_resolution"):
        lines += ["", "Largest training resolution under the memory cap:", "", "```",
                  format_max_resolution(report["max_resolution"]), "```"]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """PNG: median time per case and backend (log scale); peak memory of training steps if measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in report["results"] if r["status"] == "ok"]
    cases = list(dict.fromkeys((r["kind"], r["pass"], r["shape"], r["dtype"]) for r in ok))
    variants = [v for v in TRAIN_VARIANTS if any(r["variant"] == v for r in ok)]
    memory = [r for r in ok if r["kind"] == "train" and r.get("peak_memory_bytes")]
    panels = 2 if memory else 1
    height = max(3.0, 0.32 * len(cases) * max(1, len(variants)) / 2 + 1.5)
    fig = Figure(figsize=(10 * panels, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, panels, 1)
    median = {(r["kind"], r["pass"], r["shape"], r["dtype"], r["variant"]): r["median_ms"] for r in ok}
    bar = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        found = [(i + j * bar, median[case + (variant,)]) for i, case in enumerate(cases) if case + (variant,) in median]
        ax.barh([y for y, _ in found], [x for _, x in found], height=bar, label=variant)
    ax.set_yticks([i + bar * (len(variants) - 1) / 2 for i in range(len(cases))])
    ax.set_yticklabels([f"{k} {PASS_LABELS[p]} {s} {d}" for k, p, s, d in cases], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median time per call, ms (log scale)")
    ax.legend(fontsize=8)
    env = report["environment"]
    title = f"focalfast bench on {env['device']}, torch {env['torch']}, {env['commit']}"
    ax.set_title(title if env["device_type"] == "cuda" else title + "\nCPU: not GPU numbers", fontsize=9)
    if memory:
        ax2 = fig.add_subplot(1, 2, 2)
        labels = [f"{r['shape']} {r['dtype']} {r['variant']}" for r in memory]
        ax2.barh(range(len(memory)), [r["peak_memory_bytes"] / 2**30 for r in memory])
        ax2.set_yticks(range(len(memory)))
        ax2.set_yticklabels(labels, fontsize=7)
        ax2.invert_yaxis()
        ax2.set_xlabel("peak allocated memory of a training step, GiB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict, out_dir: Path, with_plot: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str) + "\n")
    paths["markdown"].write_text(markdown_report(report))
    if with_plot:
        paths["png"] = out_dir / "bench.png"
        plot(report, paths["png"])
    return paths


# -------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", choices=("tiny", "default", "full"), default=None,
                        help="what to run (default: 'default' on a GPU, 'tiny' on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--variants", default=",".join(TRAIN_VARIANTS),
                        help=f"comma-separated subset of {','.join(TRAIN_VARIANTS)}")
    parser.add_argument("--dtypes", default=None, help="comma-separated fp32,bf16 (default both; fp32 on CPU)")
    parser.add_argument("--kinds", default=None,
                        help="comma-separated subset of op,module,train,memory (default: op,module,train, "
                             "and memory in the full suite; memory: the largest training resolution under "
                             "--memory-cap-gib, GPU only)")
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per row (default 20 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3 GPU, 1 CPU)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model of the training step")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0,
                        help="memory cap of the largest-resolution search (GiB)")
    parser.add_argument("--memory-batch", type=int, default=HIGH_RES_BATCH, help="batch of that search")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds; a row starts only while the time it may take is left "
                             "(EXPECTED_SECONDS), the others are listed as skipped")
    parser.add_argument("--out-dir", default="runs/bench", help="where bench.json, bench.md and bench.png go")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_list(text: str, allowed, what: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"focalfast bench: --{what}: expected a comma-separated subset of "
                         f"{','.join(allowed)}, got {text!r}")
    return items


def _settings(args: argparse.Namespace, on_gpu: bool) -> dict:
    suite = args.suite or ("default" if on_gpu else "tiny")
    kinds = (_parse_list(args.kinds, KINDS, "kinds") if args.kinds
             else ["op", "module", "train"] + (["memory"] if suite == "full" else []))
    warmup_given = args.warmup is not None
    return {
        "suite": suite, "model": args.model, "kinds": kinds,
        "variants": _parse_list(args.variants, TRAIN_VARIANTS, "variants"),
        "dtypes": _parse_list(args.dtypes or ("fp32,bf16" if on_gpu else "fp32"), tuple(DTYPES), "dtypes"),
        "rounds": args.rounds or (20 if on_gpu else 5),
        "warmup": args.warmup if warmup_given else (3 if on_gpu else 1),
        "rounds_train": args.rounds or (10 if on_gpu else 3),
        "warmup_train": args.warmup if warmup_given else (2 if on_gpu else 1),
        "time_budget_s": args.time_budget, "memory_cap_gib": args.memory_cap_gib, "memory_batch": args.memory_batch,
    }


def run_memory_variant(case: Case, variant: str, device, settings: dict) -> dict:
    """The largest-resolution search of one variant; never raises (errors go in the entry)."""
    cap = int(settings["memory_cap_gib"] * 2**30)
    entry = {"variant": variant, "dtype": DTYPE_NAMES[case.dtype], "batch": settings["memory_batch"],
             "cap_bytes": cap}
    reason = ("needs a CUDA GPU (torch.cuda.max_memory_allocated)" if device.type != "cuda"
              else unavailable_reason(variant, device) or model_unavailable_reason())
    if reason is not None:
        return dict(entry, error=f"skipped: {reason}")
    try:
        return max_resolution(variant, cap, settings["memory_batch"], case.dtype, device, settings["model"])
    except Exception as exc:
        release_memory(device)
        return dict(entry, error=_error_text(exc))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    device = torch.device(args.device) if args.device else default_device()  # focalfast.cli checked it
    on_gpu = device.type == "cuda"
    settings = _settings(args, on_gpu)
    if on_gpu:
        torch.backends.cudnn.benchmark = True  # the eager baseline gets cuDNN's best algorithms
    else:
        print(f"NOTE: {CPU_NOTE}\n", file=sys.stderr)

    started = time.monotonic()
    out_dir = Path(args.out_dir)
    dtypes = [DTYPES[d] for d in settings["dtypes"]]
    cases = [c for c in suite_cases(settings["suite"], dtypes, settings["variants"]) if c.kind in settings["kinds"]]
    ceilings = device_ceilings(str(device))
    report = {"format": JSON_FORMAT, "environment": environment(device), "settings": settings,
              "ceilings": ceilings.as_dict() if ceilings else None,
              "note": None if on_gpu else CPU_NOTE, "results": [], "max_resolution": []}

    def budget_refusal(kind: str, variant: str) -> Optional[str]:
        """Why the time budget does not allow this row now (None if it does)."""
        if args.time_budget is None or unavailable_reason(variant, device) is not None:
            return None  # unavailable rows say why instead
        left = args.time_budget - (time.monotonic() - started)
        needs = EXPECTED_SECONDS.get((kind, variant), EXPECTED_SECONDS.get((kind, None), 5))
        return None if left >= needs else f"time budget of {args.time_budget:.0f} s: less than {needs} s left"

    progress = tqdm(total=sum(len(c.variants) for c in cases), desc="focalfast bench", unit="row",
                    disable=args.no_progress or None)
    for index, case in enumerate(cases):
        done = []
        for variant in case.variants:
            progress.set_postfix_str(f"{case.label} {case.shape_name} {DTYPE_NAMES[case.dtype]} {variant}")
            over_budget = budget_refusal(case.kind, variant)
            if case.kind == "memory":
                entry = (dict(variant=variant, error=f"skipped: {over_budget}") if over_budget
                         else run_memory_variant(case, variant, device, settings))
                report["max_resolution"].append(entry)
                done.append(f"{variant} {entry.get('resolution', entry.get('error'))}")
            else:
                row = (dict(case.row(variant), status="skipped", reason=over_budget) if over_budget
                       else run_variant(case, variant, device, settings, ceilings))
                report["results"].append(row)
                done.append(f"{variant} {_fmt(row['median_ms'], 3)} ms" if row["status"] == "ok"
                            else f"{variant} {row['status']}")
            progress.update()
        add_speedups(report["results"])
        if progress.disable and not args.no_progress:  # a log, not a terminal: one line per case
            print(f"[{index + 1}/{len(cases)}] {case.label} {case.shape_name} {DTYPE_NAMES[case.dtype]}: "
                  + ", ".join(done), file=sys.stderr, flush=True)
        write_outputs(report, out_dir, with_plot=False)  # a killed run still leaves its rows
    progress.close()

    report["elapsed_s"] = time.monotonic() - started
    paths = write_outputs(report, out_dir, with_plot=not args.no_plot)
    env = report["environment"]
    print(f"focalfast bench: {env['device']}, torch {env['torch']}, CUDA {env['cuda']}, Triton {env['triton']}, "
          f"commit {env['commit']}, {env['date']}")
    print(format_table(report["results"]))
    notes = not_run_lines(report["results"])
    if notes:
        print("\nNot run or failed:\n  " + "\n  ".join(notes))
    if report["max_resolution"]:
        print("\n" + format_max_resolution(report["max_resolution"]))
    if not on_gpu:
        print(f"\nNOTE: {CPU_NOTE}")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv=None) -> int:
    """``python -m focalfast.bench``: the subcommand without the other subcommands' imports."""
    parser = argparse.ArgumentParser(prog="focalfast bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
