"""Timing and memory measurement for the benchmarks (``docs/design.md``, "Measuring").

On a CUDA device every call is timed with CUDA events (the GPU's own clock), after warm-up,
rotating over several input sets so that repeated calls do not find their inputs in L2; the
statistic reported is the median. On CPU the same loop uses ``time.perf_counter``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch


@dataclass
class Timing:
    """Seconds per call of ``rounds`` timed calls."""

    times: list

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread of the middle half of the calls."""
        if len(self.times) < 2:
            return 0.0
        q = statistics.quantiles(self.times, n=4)
        return q[2] - q[0]


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def l2_cache_bytes(device) -> int:
    """The device's L2 cache size (50 MB on an H100); 0 on CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20))


def input_set_count(bytes_per_set: int, l2_bytes: int, max_sets: int = 8) -> int:
    """How many input sets to rotate over so that together they are 4x the L2 cache.

    One set if a set alone is that large (or there is no cache to defeat), at most ``max_sets``.
    """
    if l2_bytes <= 0 or bytes_per_set <= 0:
        return 1
    return max(1, min(max_sets, math.ceil(4 * l2_bytes / bytes_per_set)))


def measure(
    fn: Callable,
    input_sets: Sequence[tuple],
    warmup: int,
    rounds: int,
    device,
) -> Timing:
    """Time ``fn(*input_sets[i % len(input_sets)])`` for ``rounds`` calls after ``warmup`` calls."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    if len(input_sets) == 0:
        raise ValueError("input_sets: expected at least one set of arguments")
    device = torch.device(device)
    n = len(input_sets)
    for i in range(warmup):
        fn(*input_sets[i % n])
    synchronize(device)
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(rounds)]
        for i, (start, end) in enumerate(events):
            start.record()
            fn(*input_sets[i % n])
            end.record()
        torch.cuda.synchronize(device)
        return Timing([start.elapsed_time(end) / 1e3 for start, end in events])
    times = []
    for i in range(rounds):
        start = time.perf_counter()
        fn(*input_sets[i % n])
        times.append(time.perf_counter() - start)
    return Timing(times)


def peak_memory(fn: Callable, args: tuple, device) -> Optional[tuple]:
    """``(peak, before)`` bytes allocated around one call of ``fn(*args)`` on a CUDA device.

    ``peak`` is ``torch.cuda.max_memory_allocated`` during the call, ``before`` what was allocated
    when it started. None on CPU, where PyTorch keeps no such counter.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*args)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device), before


class CudaEventClock:
    """A clock for pytest-benchmark's ``timer`` that reads the GPU's clock through CUDA events.

    Each reading records an event on the current stream, waits for it, and returns seconds
    since the first reading, so ``end - start`` of one round is exactly the events' elapsed time
    of the work between them. Differences are accumulated reading by reading, which keeps
    them exact in float64 however long the session runs.
    """

    __name__ = "cuda_event_clock"

    def __init__(self):
        self._last_event = None
        self._last_seconds = 0.0

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self._last_event is not None:
            self._last_seconds += self._last_event.elapsed_time(event) / 1e3
        self._last_event = event
        return self._last_seconds


cuda_event_clock = CudaEventClock()
