"""Capture the Triton kernel launches the backend's real launch code makes, without a GPU.

``capture_triton_launches(run)`` calls ``run()`` (e.g. the backend's forward on meta tensors)
with ``JITFunction.run`` replaced by a recorder and every ``sm_count`` helper of the Triton
backend's modules answering ``sm_count``: nothing executes, and each launch is kept with its
kernel, bound arguments, grid and options exactly as the launcher passed them. Meta tensors
report ``data_ptr() = storage_offset * element size`` from a base of 0, so Triton's own
specialisation (16-byte alignment of pointers, divisibility by 16 and ``== 1`` of integers)
sees what a fresh CUDA allocation (256-byte aligned) with those views would give.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field
from typing import Callable, List, Tuple

import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from focalfast.ops.triton import chain_schedule


@dataclass
class TritonLaunch:
    """One kernel launch: ``fn`` with ``args`` (parameter name -> value) on a 3-d ``grid``."""

    fn: JITFunction
    args: dict
    options: dict  # num_warps, num_stages and any other launch keyword that is not a parameter
    grid: Tuple[int, int, int]
    positional: tuple = field(repr=False, default=())
    keywords: dict = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        return self.fn.fn.__name__

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]


def _grid3(grid, bound_args) -> Tuple[int, int, int]:
    if callable(grid):
        grid = grid(bound_args)
    grid = tuple(int(g) for g in grid) + (1, 1)
    return grid[:3]


@contextlib.contextmanager
def patched_sm_count(sms: int):
    """Every ``sm_count`` of the Triton backend's modules (imported by name) answers ``sms``."""
    original = chain_schedule.sm_count
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("focalfast.ops.triton") and getattr(module, "sm_count", None) is original:
            patched.append(module)
            module.sm_count = lambda device: sms
    try:
        yield
    finally:
        for module in patched:
            module.sm_count = original


def capture_triton_launches(run: Callable[[], object], sm_count: int = 132) -> List[TritonLaunch]:
    """The launches ``run()`` makes, in order; nothing is compiled or executed."""
    launches: List[TritonLaunch] = []
    original_run = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        names = [p.name for p in self.params]
        values = dict(zip(names, args))
        values.update({k: v for k, v in kwargs.items() if k in names})
        for p in self.params:  # defaults the launcher left out
            if p.name not in values and p.has_default:
                values[p.name] = p.default
        options = {k: v for k, v in kwargs.items() if k not in names}
        launches.append(TritonLaunch(self, values, options, _grid3(grid, values), args,
                                     {k: v for k, v in kwargs.items() if k in names}))
        return None

    def interpreted(self, *args, **kwargs):
        raise RuntimeError(f"{self.fn.__name__} was built for Triton's interpreter (TRITON_INTERPRET is set when "
                           "the kernels are imported); the static cost report compiles for sm_90a: unset it")

    original_interpreted = InterpretedFunction.run
    JITFunction.run, InterpretedFunction.run = record, interpreted
    try:
        with patched_sm_count(sm_count), torch.no_grad():
            run()
    finally:
        JITFunction.run, InterpretedFunction.run = original_run, original_interpreted
    return launches
