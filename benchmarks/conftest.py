"""Benchmarks share the tests' setup (Triton interpreter on machines without a GPU).

On a GPU, pytest-benchmark times with the GPU's clock (``focalfast.timing.cuda_event_clock``),
each round on the next of several input sets (so L2 does not flatter), after warm-up rounds; the
median is the number to read. The clock synchronises at each round's start and end, so a round
also holds the launch of its first kernel (``focalfast bench`` queues rounds back to back). Without a GPU only the eager reference runs, at tiny shapes, which
tests the harness and measures nothing about the kernels.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from focalfast import bench, timing  # noqa: E402  (after TRITON_INTERPRET is set)

DEVICE = bench.default_device()
ROUNDS = {"cuda": 20, "cpu": 5}
WARMUP = {"cuda": 3, "cpu": 1}
TRAIN_ROUNDS = {"cuda": 10, "cpu": 3}
TRAIN_WARMUP = {"cuda": 2, "cpu": 1}

if DEVICE.type == "cuda":
    torch.backends.cudnn.benchmark = True  # the eager baseline gets cuDNN's best algorithms


def pytest_collection_modifyitems(items):
    if DEVICE.type != "cuda":
        return
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(timer=timing.cuda_event_clock))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Device, library versions and commit in ``--benchmark-json`` output."""
    machine_info["focalfast"] = bench.environment(DEVICE)


@pytest.fixture
def skip_unless_available():
    """``skip_unless_available(variant)``: skip with the reason the variant cannot run here."""

    def check(variant: str, needs_model: bool = False):
        reason = bench.unavailable_reason(variant, DEVICE)
        if reason is None and needs_model:
            reason = bench.model_unavailable_reason()
        if reason is not None:
            pytest.skip(f"{variant}: {reason}")

    return check


@pytest.fixture
def run_workload(benchmark):
    """``run_workload(workload)``: time it with pytest-benchmark, grouped by case, rows by variant."""

    def run(workload: bench.Workload):
        train = workload.kind == "train"
        device = workload.device.type
        benchmark.group = workload.group
        benchmark.extra_info.update(variant=workload.variant, input_sets=len(workload.input_sets))
        try:
            benchmark.pedantic(workload.step, setup=workload.next_inputs,
                               rounds=(TRAIN_ROUNDS if train else ROUNDS)[device],
                               warmup_rounds=(TRAIN_WARMUP if train else WARMUP)[device])
            if benchmark.stats is not None:  # None under --benchmark-disable
                median = benchmark.stats.stats.median
                benchmark.extra_info.update(bench.metrics(workload, median, bench.device_ceilings(str(DEVICE))))
                benchmark.extra_info.update(bench.measure_memory(workload))
        finally:
            if workload.variant == "compiled":
                torch._dynamo.reset()
            del workload
            bench.release_memory(DEVICE)

    return run
