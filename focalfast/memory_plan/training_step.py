"""``StepPlanner``: the memory of one training step of a model, measured on a CPU.

A step is what ``focalfast train`` runs: forward under autocast, cross-entropy, backward, gradient
clipping, AdamW (multi-tensor, as on a GPU), ``zero_grad(set_to_none=True)``. With ``fake=True``
(the default) it runs under ``FakeTensorMode``: every op computes shapes and dtypes only, so a
full-size step of any model takes a second or two and no memory. The bytes are those of real runs:
the same ops allocate the same storages (``tests/test_memory_plan.py`` checks fake against real CPU
runs at small sizes, byte for byte).

``backend="fused"`` runs the Triton backend's custom op through the public
``focalfast.focal_modulation``: its autograd registration (it saves what the fused kernels save: the
op's inputs and two ``[B, C]`` float32 vectors) and its bodies, the launch code, whose buffers (the
kernels' scratch) are counted for as long as they live (``focalfast.memory_plan.op_bodies``; on fake
tensors the launches are skipped). ``"reference"`` runs the pure-PyTorch op. Autocast follows CUDA's
policy (``cuda_autocast_policy``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from focalfast.memory_plan.cuda_autocast import cuda_autocast_policy
from focalfast.memory_plan.live_memory import LiveMemory
from focalfast.memory_plan.op_bodies import fused_op_bodies
from focalfast.memory_plan.saved_tensors import SavedTensors

PLAN_BACKENDS = {"reference": "reference", "fused": "triton"}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CLIP_GRAD = 5.0  # focalfast train's default
WARMUP_RESOLUTION = 32
GPU_SMS = 132  # multiprocessors of the GPU the fused kernels' scratch is planned for (H100 SXM, H200)


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of one training step at ``batch`` images of ``resolution`` x ``resolution``.

    state_bytes: parameters and AdamW state, live between steps.
    saved_bytes: what autograd keeps after the forward (distinct storages; parameters excluded).
    peak_bytes: the most bytes live at once over the step (state, batch, activations, gradients).
        Python's cyclic garbage collector is off during the step: what only it frees (activation
        checkpointing leaves some) counts until the step ends, an upper bound that does not depend
        on when a collection happens to run.
    forward_flops, step_flops: GEMM and convolution FLOPs of the forward and of the whole step
        (checkpointing adds its recomputation to the step); the fused op's own FLOPs are not seen.
    """

    batch: int
    resolution: int
    state_bytes: int
    saved_bytes: int
    peak_bytes: int
    forward_flops: int
    step_flops: int


@contextlib.contextmanager
def _triton_backend_on_cpu():
    """Let the Triton backend accept CPU tensors (as under ``TRITON_INTERPRET=1``); under
    ``FakeTensorMode`` no kernel is launched (``op_bodies``). The kernels are imported first, so that they keep the interpreter setting they were defined with."""
    from focalfast.backends import BackendUnavailableError

    try:
        import focalfast.ops.triton.dwconv_layernorm  # noqa: F401
        import focalfast.ops.triton.focal_modulation  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError("backend='fused': the plan runs the Triton backend's custom op (its fake "
                                      f"implementation), which needs Triton importable: {exc}") from exc

    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


def _to_fake(model: nn.Module, mode: FakeTensorMode) -> None:
    """Replace every parameter and buffer by a fake tensor of ``mode`` (same shape, dtype, flags)."""
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                module._parameters[name] = nn.Parameter(mode.from_tensor(p.detach()), p.requires_grad)
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = mode.from_tensor(b)


class StepPlanner:
    """Measures training steps of one model and setting at any batch and resolution.

    Args:
        model_factory: ``backend -> nn.Module`` (a classifier taking ``[B, 3, R, R]`` images), with
            backend ``"reference"`` or ``"triton"``; built once, on the CPU.
        backend: ``"reference"`` or ``"fused"``.
        checkpointing: a mode of ``focalfast.models.set_checkpointing``.
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"``; amp: autocast to ``dtype`` with float32
            parameters (else the parameters themselves are in ``dtype``).
        fake: measure under ``FakeTensorMode`` (else real CPU tensors: small sizes only).
        granularity: round each storage up to this many bytes (512: the CUDA caching allocator).
        gpu_sms: with ``fake``, the fused op's launch code sizes its scratch as for a GPU of this
            many multiprocessors (132: H100 SXM, H200); None: as for the CPU (Triton's interpreter,
            where a real step runs its kernels).
    """

    def __init__(self, model_factory: Callable[[str], nn.Module], backend: str = "fused",
                 checkpointing: str = "none", dtype: str = "bf16", amp: bool = True, fake: bool = True,
                 granularity: int = 1, num_classes: Optional[int] = None, gpu_sms: Optional[int] = GPU_SMS):
        from focalfast.models import set_checkpointing

        if backend not in PLAN_BACKENDS:
            raise ValueError(f"backend: expected one of {tuple(PLAN_BACKENDS)}, got {backend!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
        if gpu_sms is not None and (not isinstance(gpu_sms, int) or gpu_sms < 1):
            raise ValueError(f"gpu_sms: expected a positive int or None, got {gpu_sms!r}")
        self.backend, self.checkpointing, self.granularity = backend, checkpointing, granularity
        self._gpu_sms = gpu_sms if fake else None
        self.dtype = DTYPES[dtype]
        self.amp = amp and self.dtype != torch.float32
        self._fake = FakeTensorMode() if fake else None
        model = model_factory(PLAN_BACKENDS[backend])
        if not self.amp:
            model.to(self.dtype)
        set_checkpointing(model, checkpointing)
        model.train()
        if self._fake is not None:
            _to_fake(model, self._fake)
        self.model = model
        self.num_classes = num_classes or model.num_classes
        self.params = [p for p in model.parameters() if p.requires_grad]
        with self._context():
            # AdamW's state exists from the first step on: make it with a small step.
            self.optimizer = torch.optim.AdamW(self.params, lr=1e-6, weight_decay=0.05, foreach=True)
            self._step(*self._batch(1, WARMUP_RESOLUTION))

    @contextlib.contextmanager
    def _context(self):
        with contextlib.ExitStack() as stack:
            stack.enter_context(cuda_autocast_policy())
            if self.backend == "fused":
                stack.enter_context(_triton_backend_on_cpu())
            if self._fake is not None:
                stack.enter_context(self._fake)
            yield

    def _batch(self, batch: int, resolution: int):
        dtype = torch.float32 if self.amp else self.dtype
        images = torch.randn(batch, 3, resolution, resolution, dtype=dtype)
        return images, torch.randint(0, self.num_classes, (batch,))

    def _forward(self, images, labels):
        autocast = torch.autocast("cpu", self.dtype) if self.amp else contextlib.nullcontext()
        with autocast:
            return F.cross_entropy(self.model(images).float(), labels)

    def _step(self, images, labels) -> None:
        self._forward(images, labels).backward()
        self._update()

    def _update(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, CLIP_GRAD, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def measure(self, batch: int, resolution: int) -> StepMemory:
        """One training step at ``batch`` images of ``resolution`` x ``resolution`` pixels."""
        for name, value in (("batch", batch), ("resolution", resolution)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        gc.collect()
        gc.disable()  # cyclic garbage (activation checkpointing makes some) then stays until the step ends
        try:
            return self._measure(batch, resolution)
        finally:
            gc.enable()

    def _measure(self, batch: int, resolution: int) -> StepMemory:
        with self._context():
            live = LiveMemory(self.granularity, fused_op_bodies(self._gpu_sms) if self.backend == "fused" else None)
            flops = FlopCounterMode(display=False)
            with live:
                live.track(self.params, list(self.optimizer.state.values()))
                state_bytes = live.now
                images, labels = self._batch(batch, resolution)
                saved = SavedTensors(exclude=self.params)
                with flops:
                    with saved:
                        loss = self._forward(images, labels)
                    saved_bytes = saved.nbytes
                    forward_flops = flops.get_total_flops()
                    loss.backward()
                    del loss
                step_flops = flops.get_total_flops()
                self._update()
        return StepMemory(batch, resolution, state_bytes, saved_bytes, live.peak, forward_flops, step_flops)

    def saved_bytes_per_image(self, resolution: int) -> int:
        """Exact activation bytes one more image adds (saved storages are affine in the batch)."""
        return self.measure(2, resolution).saved_bytes - self.measure(1, resolution).saved_bytes
