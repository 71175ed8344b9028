"""``focalfast bench``: time the op, the module and a training step on every backend.

Rows ("variants") of each case (``variants``): ``eager`` (the pure-PyTorch reference, the
baseline), ``compiled`` (the same under ``torch.compile``, GPU only), every fused backend of the
registry (``triton``, ``cuda``; GPU only) and ``timm`` (training step only).

One table: median time, speed-up over eager and over compiled, achieved bandwidth and % of the
roofline floor of the op (counted in ``focalfast.roofline``), peak memory; plus a JSON file, a
markdown table and a PNG plot. Timing follows ``focalfast.timing``. The same workloads back the
pytest-benchmark files in ``benchmarks/``.

Modules, one concern each:
    shapes       the benchmarked op shapes, training sizes, dtypes and device
    variants     the rows and why one cannot run here
    workloads    one thing to time (op, module, training step) with its input sets
    memory       peak memory of a call; the largest training resolution under a cap
    cases        the suites: which cases run, in which order
    runner       time and measure one variant of a case (never raises)
    environment  device, versions, commit and date of a run
    report       table, bench.json, bench.md, bench.png
    cli          arguments, settings and the run loop (``focalfast bench``, ``python -m focalfast.bench``)
"""

from focalfast.bench.cases import Case, suite_cases
from focalfast.bench.cli import add_arguments, main, run
from focalfast.bench.environment import environment
from focalfast.bench.memory import largest_fitting, max_resolution, measure_memory
from focalfast.bench.report import JSON_FORMAT
from focalfast.bench.runner import device_ceilings, metrics
from focalfast.bench.shapes import DTYPES, HIGH_RES_BATCH, op_shapes, pytest_scope, train_shapes
from focalfast.devices import default_device
from focalfast.bench.variants import FUSED, TRAIN_VARIANTS, VARIANTS, model_unavailable_reason, unavailable_reason
from focalfast.bench.workloads import (
    Workload,
    module_workload,
    op_workload,
    release_memory,
    train_workload,
)

__all__ = [
    "Case", "DTYPES", "FUSED", "HIGH_RES_BATCH", "JSON_FORMAT", "TRAIN_VARIANTS", "VARIANTS", "Workload",
    "add_arguments", "default_device", "device_ceilings", "environment", "largest_fitting", "main",
    "max_resolution", "measure_memory", "metrics", "model_unavailable_reason", "module_workload",
    "op_shapes", "op_workload", "pytest_scope", "release_memory", "run", "suite_cases", "train_shapes",
    "train_workload", "unavailable_reason",
]
