"""Training speed, measured two ways (both leave out the first ``timing_warmup`` steps):

* ``train_images_per_s``: images over the wall-clock time of the training loop, data loading or
  rendering included (what a run's length is made of; evaluation and checkpoint saves excluded);
* ``step_images_per_s``: images over the time of forward, backward and optimizer step alone
  (CUDA events on GPU), i.e. what the model and kernels sustain when data is never waited for.

The progress bar's ``img/s`` is the first over the last ``log_every`` steps.
"""

from __future__ import annotations

import time
from typing import List, Optional, Tuple

import torch


def _synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WallClock:
    """Wall-clock seconds between ``start`` and ``stop`` (summed over pauses) and the images in them."""

    def __init__(self, device):
        self.device = device
        self.images, self.seconds, self.started = 0, 0.0, None

    def start(self) -> None:
        if self.started is None:
            _synchronize(self.device)
            self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is not None:
            _synchronize(self.device)
            self.seconds += time.perf_counter() - self.started
            self.started = None

    def rate(self) -> Optional[float]:
        return self.images / self.seconds if self.seconds > 0 else None


class StepClock:
    """Seconds inside ``begin``/``end`` pairs: CUDA events on GPU (read once they are old, so that
    reading never waits for the GPU), else perf_counter."""

    PENDING_EVENTS = 64  # event pairs held before the older half is read

    def __init__(self, device):
        self.device = device
        self.images, self.seconds = 0, 0.0
        self._events: List[Tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._began = None

    def begin(self) -> None:
        if self.device.type == "cuda":
            self._began = torch.cuda.Event(enable_timing=True)
            self._began.record()
        else:
            self._began = time.perf_counter()

    def end(self, images: int) -> None:
        self.images += images
        if self.device.type == "cuda":
            ended = torch.cuda.Event(enable_timing=True)
            ended.record()
            self._events.append((self._began, ended))
            if len(self._events) > self.PENDING_EVENTS:
                self._read_events(keep=self.PENDING_EVENTS // 2)
        else:
            self.seconds += time.perf_counter() - self._began

    def _read_events(self, keep: int) -> None:
        """Add the time of all but the last ``keep`` event pairs."""
        done, self._events = self._events[: len(self._events) - keep], self._events[len(self._events) - keep:]
        if done:
            done[-1][1].synchronize()
            self.seconds += sum(a.elapsed_time(b) for a, b in done) / 1000

    def rate(self) -> Optional[float]:
        self._read_events(keep=0)
        return self.images / self.seconds if self.seconds > 0 else None


def peak_memory_mb(device) -> Optional[float]:
    """The peak of ``torch.cuda.max_memory_allocated`` in MiB; None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20
