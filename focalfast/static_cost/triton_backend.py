"""The Triton backend's kernels for one case: capture, compile, disassemble, count."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch

from focalfast.static_cost.cases import Case, op_inputs
from focalfast.static_cost.count import kernel_cost
from focalfast.static_cost.kernel_record import KernelRecord
from focalfast.static_cost.loop_map import map_loops
from focalfast.static_cost.resources import resources
from focalfast.static_cost.sass import disassemble
from focalfast.static_cost.torch_ops import RecordTorchOps, TorchOp
from focalfast.static_cost.triton_compile import compile_triton_launch
from focalfast.static_cost.triton_launches import TritonLaunch, capture_triton_launches
from focalfast.static_cost.triton_trips import loop_counts


def launch_record(launch: TritonLaunch) -> KernelRecord:
    """Compile, disassemble and count one captured launch."""
    cubin = compile_triton_launch(launch)
    sass = disassemble(cubin.path, cubin.symbol)
    counts = loop_counts(launch)
    cost = kernel_cost(sass, map_loops(sass, counts.trips.keys()), counts.trips, launch.programs, cubin.threads // 32)
    return KernelRecord(launch.name, cubin.source, launch.grid,
                        resources(cubin.path, cubin.symbol, cubin.threads, cubin.dynamic_smem), cost, counts.trips)


def capture(case: Case, sm_count: int) -> Dict[str, Tuple[List[TritonLaunch], List[TorchOp]]]:
    """``{"fwd": (launches, torch ops), "bwd": ...}`` of the backend's real launch code on meta tensors."""
    from focalfast.ops.triton.focal_modulation import focal_modulation_backward, focal_modulation_forward

    inputs = op_inputs(case, "meta")
    B, C = case.batch, case.shape[2]
    mean = torch.empty(B, C, device="meta")
    result = {}

    def run(direction: str, call: Callable):
        recorder = RecordTorchOps()
        with recorder:
            launches = capture_triton_launches(call, sm_count)
        result[direction] = (launches, recorder.ops)

    run("fwd", lambda: focal_modulation_forward(**inputs, normalize_modulator=False))
    dout = torch.empty(inputs["q"].shape, dtype=inputs["q"].dtype, device="meta")
    run("bwd", lambda: focal_modulation_backward(dout, **inputs, mean=mean, glob=mean, normalize_modulator=False))
    return result
