"""The fused op's bodies for ``LiveMemory``: the kernels' scratch, counted with its lifetime.

A custom op is one dispatch: a counter of ops sees its outputs, not the buffers its launch code
allocates and frees inside (``ctx_local``, ``d_ctx_all``, the chain kernels' fp32 rings and
partial sums, split-K partials). ``fused_op_bodies()`` maps the Triton backend's two ops to their
bodies, which ``LiveMemory`` runs under itself, so every allocation of the launch code is counted
from the op that makes it until Python frees it:

- on fake tensors (``FakeTensorMode``) the kernel launches are skipped: the kernels only write
  values, every buffer is allocated by the launch code around them;
- on real tensors under Triton's interpreter, a launch leaves its arguments in reference cycles (the
  interpreter's host-copy closures) that only the cyclic garbage collector frees, which the
  planner turns off during a step: each launch's own garbage is collected when it returns (the
  objects older than the launch are frozen, so nothing else is freed earlier than it would be).
  Compiled launches on a GPU leave no such cycles.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Dict

from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._pytree import tree_flatten


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


def _counted(body: Callable) -> Callable:
    def run(*args, **kwargs):
        fake = any(isinstance(t, FakeTensor) for t in tree_flatten((args, kwargs))[0])
        with _kernel_launches(fake):
            return body(*args, **kwargs)

    return run


def fused_op_bodies() -> Dict[object, Callable]:
    """``{op overload: body}`` for the Triton backend's forward and backward ops (needs Triton)."""
    import torch

    from focalfast.ops.triton import focal_modulation as triton_op

    return {
        torch.ops.focalfast.focal_modulation_triton.default: _counted(triton_op.focal_modulation_op_body),
        torch.ops.focalfast.focal_modulation_triton_backward.default:
            _counted(triton_op.focal_modulation_backward_op_body),
    }
