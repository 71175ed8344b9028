"""The backend record and the registry: each backend declares itself once, as one ``Backend``.

A record says what a backend is (``name``, ``summary``), where it can run
(``unavailable_reason(device)``), what it can compute (``unsupported_reason(config)``) and where
its op implementations live (``ops``: op name -> ``"module:function"``, imported on first use).
The same two predicates drive ``"auto"`` (skip what cannot run) and the error for an explicit
choice (say why), so the two never disagree. ``docs/adding_a_backend.md`` walks through a new one.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Tuple

import torch


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


class OpConfig(NamedTuple):
    """What a backend is asked to compute, as far as its limits go (the inputs are already validated).

    op            ``"focal_modulation"`` or ``"dwconv_layernorm"``
    dtype         the dtype of every tensor argument (after the autocast cast)
    kernel_sizes  the depthwise kernel sizes, one per focal level (one for dwconv_layernorm)
    channels      C of the ``[B, H, W, C]`` input
    """

    op: str
    dtype: torch.dtype
    kernel_sizes: Tuple[int, ...]
    channels: int


def supports_everything(config: OpConfig) -> Optional[str]:
    """``unsupported_reason`` of a backend without limits (the reference)."""
    return None


@dataclass(frozen=True)
class Backend:
    """One backend, declared once.

    name                the ``backend=`` string
    summary             what it is, in a few words (error messages, docs, ``focalfast demo``)
    ops                 op name -> ``"module:function"`` of its implementation; the function takes
                        validated inputs already cast for autocast (the dispatcher does both)
    unavailable_reason  ``(device) -> why it cannot run there``, None if it can
    unsupported_reason  ``(OpConfig) -> why it cannot compute that``, None if it can; names the argument
    fused               a fused-kernel backend: ``torch.library`` custom ops that save only their inputs
                        and ``[B, C]`` vectors for backward (the conformance suite holds it to that),
                        timed by ``focalfast bench`` against eager PyTorch
    auto_devices        device types on which ``"auto"`` may choose it (registration order = preference)
    cpu_test_env        environment variables under which it runs CPU tensors (the conformance suite
                        sets them; an empty mapping where it runs CPU tensors anyway or never does)
    """

    name: str
    summary: str
    ops: Mapping[str, str]
    unavailable_reason: Callable[[torch.device], Optional[str]]
    unsupported_reason: Callable[[OpConfig], Optional[str]] = supports_everything
    fused: bool = True
    auto_devices: Tuple[str, ...] = ()
    cpu_test_env: Mapping[str, str] = field(default_factory=dict)

    def implementation(self, op: str) -> Callable:
        """The function of ``op`` (imported on first use, then cached, so that ``torch.compile``
        traces a plain dict lookup). A module already imported is read from ``sys.modules``:
        ``torch.compile`` cannot trace ``importlib``, so a first call inside a compiled function in a
        fresh process still traces for the modules ``focalfast`` imports."""
        fn = _loaded.get((self.name, op))
        if fn is None:
            module, attr = self.ops[op].split(":")
            fn = _loaded[(self.name, op)] = getattr(sys.modules.get(module) or importlib.import_module(module), attr)
        return fn


_registry: Dict[str, Backend] = {}
_loaded: Dict[Tuple[str, str], Callable] = {}


def register(backend: Backend) -> Backend:
    """Add ``backend`` to the registry (after those registered before it: ``"auto"`` prefers earlier ones)."""
    if backend.name in _registry or backend.name == "auto":
        raise ValueError(f"backend.name: {backend.name!r} is taken")
    _registry[backend.name] = backend
    return backend


def registered() -> Tuple[Backend, ...]:
    """Every registered backend, in registration order."""
    return tuple(_registry.values())


def get(name: str) -> Backend:
    """The record of backend ``name``; ValueError naming the choices if there is none."""
    try:
        return _registry[name]
    except KeyError:
        raise ValueError(f"backend: expected one of {('auto',) + tuple(_registry)}, got {name!r}") from None
