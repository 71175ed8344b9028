"""``FocalModulation`` (f, the fused op, proj), forward and forward + backward, on every backend."""

import pytest

from focalfast import bench

DEVICE = bench.default_device()
SHAPES = {name: shape for name, shape in bench.op_shapes(bench.pytest_scope(DEVICE)).items()
          if name == "tiny" or (name.startswith("T.s") and "@" not in name and "lrf" not in name)}
DTYPES = ("fp32", "bf16")
PASSES = {"fwd": False, "fwd+bwd": True}
CASES = [(pass_name, shape, dtype, variant)
         for shape in SHAPES for dtype in DTYPES for pass_name in PASSES for variant in bench.VARIANTS]


@pytest.mark.parametrize("pass_name,shape,dtype,variant", CASES, ids=["-".join(c) for c in CASES])
def test_module(run_workload, skip_unless_available, pass_name, shape, dtype, variant):
    skip_unless_available(variant)
    run_workload(bench.module_workload(variant, SHAPES[shape], bench.DTYPES[dtype], DEVICE,
                                       backward=PASSES[pass_name], shape_name=shape))
