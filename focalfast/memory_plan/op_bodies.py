"""The fused op's bodies for ``LiveMemory``: the kernels' scratch, counted with its lifetime.

A custom op is one dispatch: a counter of ops sees its outputs, not the buffers its launch code
allocates and frees inside (``ctx_local``, ``d_ctx_all``, the chain kernels' fp32 rings and
partial sums, split-K partials). ``fused_op_bodies()`` maps the Triton backend's ops to their
bodies, which ``LiveMemory`` runs under itself, so every allocation of the launch code is counted
from the op that makes it until Python frees it:

- on fake tensors (``FakeTensorMode``) the kernel launches are skipped: the kernels only write
  values, every buffer is allocated by the launch code around them. With ``gpu_sms`` the body runs
  on meta stand-ins with that many multiprocessors, so the launch code sizes its buffers as it does
  on a GPU (the static cost report's route, ``focalfast.static_cost.triton_launches``); on the
  CPU it would size them for Triton's interpreter;
- on real tensors under Triton's interpreter, a launch leaves its arguments in reference cycles (the
  interpreter's host-copy closures) that only the cyclic garbage collector frees, which the
  planner turns off during a step: each launch's own garbage is collected when it returns (the
  objects older than the launch are frozen, so nothing else is freed earlier than it would be).
  Compiled launches on a GPU leave no such cycles.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Dict, Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


def _skip_launch(self, *args, **kwargs):
    return None


def _launch_then_collect(launch):
    def run(self, *args, **kwargs):
        gc.freeze()
        try:
            return launch(self, *args, **kwargs)
        finally:
            gc.collect()
            gc.unfreeze()

    return run


@contextlib.contextmanager
def _kernel_launches(fake: bool):
    """Triton launches skipped (``fake``), or collecting the interpreter's garbage as they return."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}
    JITFunction.run = _skip_launch if fake else originals[JITFunction]
    InterpretedFunction.run = _skip_launch if fake else _launch_then_collect(originals[InterpretedFunction])
    try:
        yield
    finally:
        for cls, run in originals.items():
            cls.run = run


def _meta(t):
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta") if isinstance(t, Tensor) else t


def _on_gpu_plan(body: Callable, counting, args: tuple, gpu_sms: int):
    """``body(*args)`` on meta stand-ins (not counted: the arguments are counted already), as
    launched on a GPU of ``gpu_sms`` multiprocessors; its outputs are remade on the arguments' device
    once the meta ones are freed, uncounted too: the caller counts the op's outputs once."""
    from focalfast.static_cost.triton_launches import patched_sm_count

    device = next(t.device for t in tree_flatten(args)[0] if isinstance(t, Tensor))
    stand_ins = tree_map(_meta, args)
    counting.track_stand_ins(stand_ins)
    with counting, _kernel_launches(fake=True), patched_sm_count(gpu_sms):
        leaves, structure = tree_flatten(body(*stand_ins))
    del stand_ins
    layouts = [(t.shape, t.stride(), t.dtype) if isinstance(t, Tensor) else None for t in leaves]
    values = [None if layout else t for t, layout in zip(leaves, layouts)]
    del leaves
    return tree_unflatten([torch.empty_strided(*layout[:2], dtype=layout[2], device=device) if layout else value
                           for layout, value in zip(layouts, values)], structure)


def counted_body(body: Callable, gpu_sms: Optional[int] = None) -> Callable:
    """``body`` (a custom op's Python body) as a ``LiveMemory`` body: see the module's docstring."""

    def run(counting, *args):
        fake = any(isinstance(t, FakeTensor) for t in tree_flatten(args)[0])
        if fake and gpu_sms is not None:
            return _on_gpu_plan(body, counting, args, gpu_sms)
        with counting, _kernel_launches(fake):
            return body(*args)

    return run


def fused_op_bodies(gpu_sms: Optional[int] = None) -> Dict[object, Callable]:
    """``{op overload: body}`` for the Triton backend's ops, forward and backward: the focal
    modulation and ConvNeXt's depthwise conv + LayerNorm (needs Triton).

    gpu_sms: on fake tensors, run the launch code as it runs for a GPU of that many multiprocessors
    (on meta stand-ins of the arguments: a GPU's tiles, bands and partial sums); None: as it runs
    for the tensors' device (on a CPU: Triton's interpreter, whose tiles differ).
    """
    from focalfast.ops.triton import dwconv_layernorm, focal_modulation

    ops = torch.ops.focalfast
    bodies = {
        ops.focal_modulation_triton.default: focal_modulation.focal_modulation_op_body,
        ops.focal_modulation_triton_backward.default: focal_modulation.focal_modulation_backward_op_body,
        ops.dwconv_layernorm_triton.default: dwconv_layernorm.dwconv_layernorm_op_body,
        ops.dwconv_layernorm_triton_backward.default: dwconv_layernorm.dwconv_layernorm_backward_op_body,
    }
    return {op: counted_body(body, gpu_sms) for op, body in bodies.items()}
