"""The fused op alone, forward and forward + backward, on every backend.

Groups read "op fwd | T.s1 | bf16": one row per backend (eager, compiled, triton, cuda) of one
shape and dtype. Shapes (``focalfast.bench.op_shapes``): ``tiny`` on CPU; on a GPU, with
``FOCALFAST_BENCH_SCOPE=quick`` (the default) FocalNet-T/S stages 1 and 3 at 224 px, batch 128;
with ``full`` every T/S and B stage shape, stage 1 at 384-1024 px (batch 16) and three levels.
"""

import pytest

from focalfast import bench

DEVICE = bench.default_device()
SHAPES = bench.op_shapes(bench.pytest_scope(DEVICE))
DTYPES = ("fp32", "bf16")
PASSES = {"fwd": False, "fwd+bwd": True}
CASES = [(pass_name, shape, dtype, variant)
         for shape in SHAPES for dtype in DTYPES for pass_name in PASSES for variant in bench.VARIANTS]


@pytest.mark.parametrize("pass_name,shape,dtype,variant", CASES, ids=["-".join(c) for c in CASES])
def test_op(run_workload, skip_unless_available, pass_name, shape, dtype, variant):
    skip_unless_available(variant)
    run_workload(bench.op_workload(variant, SHAPES[shape], bench.DTYPES[dtype], DEVICE,
                                   backward=PASSES[pass_name], shape_name=shape))
