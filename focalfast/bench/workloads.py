"""Workloads: one thing to time (op, module or training step) with its rotating input sets."""

from __future__ import annotations

import dataclasses
import gc
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from focalfast import roofline, timing
from focalfast.bench.shapes import DTYPE_NAMES
from focalfast.bench.variants import allow_recompiles, backend_of, op_function
from focalfast.roofline import OpShape


DEFAULT_MODEL = "focalnet_tiny_srf"


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
                             bias=shape.bias, backend=backend_of(variant)).to(device, dtype)
    if variant == "compiled":
        allow_recompiles()
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
    return create(model_name, backend=backend_of(variant))


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
            allow_recompiles()
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
