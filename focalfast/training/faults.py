"""How a run stops early: a diverged step (non-finite loss or gradients) or SIGINT / SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Optional


class TrainingDiverged(RuntimeError):
    """A step gave a non-finite loss or gradient norm; the weights were not updated with it and the
    last checkpoint is kept as it was."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM stopped the run after a checkpoint of its last step was written."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class StopSignals:
    """While entered, SIGINT (Ctrl-C) and SIGTERM only record ``received`` (the signal number): the
    run finishes its step, saves and stops. A second signal raises ``KeyboardInterrupt`` at once.
    Outside the main thread (where Python cannot install handlers) it records nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while saving")
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
