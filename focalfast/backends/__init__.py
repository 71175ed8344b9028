"""Backend selection for the ops: the registered backends, the process-wide default, the one rule.

Backends (one ``Backend`` record each, in this package; ``docs/adding_a_backend.md``):
    reference  pure PyTorch (``focal_modulation_ref``), any device, the correctness oracle
    triton     fused Triton kernels; a CUDA GPU, or CPU tensors under ``TRITON_INTERPRET=1``
    cuda       fused CUDA C++ kernels from ``csrc/``; a CUDA GPU and the built extension
    auto       the first registered backend that can run the op on the tensors' device and
               config; the reference on CPU
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from focalfast.backends import cuda, reference, triton
from focalfast.backends.fused_limits import (
    FUSED_DTYPES,
    FUSED_MAX_KERNEL_SIZE,
    FUSED_MAX_LEVELS,
    fused_unsupported_reason,
)
from focalfast.backends.registry import Backend, BackendUnavailableError, OpConfig, get, register, registered

for _module in (reference, triton, cuda):  # registration order is "auto"'s preference
    register(_module.BACKEND)

FALLBACK = reference.BACKEND.name  # what "auto" runs where nothing faster can
BACKENDS = tuple(b.name for b in registered())
CHOICES = ("auto",) + BACKENDS
triton_interpreter_on = triton.interpreter_on

_default = "auto"

__all__ = [
    "BACKENDS", "CHOICES", "FUSED_DTYPES", "FUSED_MAX_KERNEL_SIZE", "FUSED_MAX_LEVELS", "Backend",
    "BackendUnavailableError", "OpConfig", "available_backends", "fused_unsupported_reason", "get",
    "get_backend", "implementation", "register", "registered", "requested", "resolve", "select",
    "check_choice", "set_backend", "triton_interpreter_on", "unavailable_reason",
]


def set_backend(name: str) -> None:
    """Set the process-wide default backend (used where ``backend=None``)."""
    global _default
    _default = _validate(name)


def get_backend() -> str:
    """The process-wide default backend name."""
    return _default


def _validate(name: str) -> str:
    if name != "auto":
        get(name)  # ValueError naming the choices
    return name


def check_choice(name: Optional[str]) -> Optional[str]:
    """``name`` if it is a backend choice or None (the process-wide default); ValueError otherwise.
    For constructors, which take ``backend=`` long before a forward resolves it."""
    if name is not None and name not in CHOICES:
        raise ValueError(f"backend: expected one of {CHOICES} or None, got {name!r}")
    return name


def requested(name: Optional[str]) -> str:
    """The backend asked for: ``name``, or the process-wide default where it is None."""
    return _validate(_default if name is None else name)


def unavailable_reason(name: str, device: Union[str, torch.device, None] = None) -> Optional[str]:
    """Why backend ``name`` cannot run on ``device`` (``None``: on a CUDA GPU); None if it can."""
    _validate(name)
    if name == "auto":
        return None
    return get(name).unavailable_reason(torch.device("cuda" if device is None else device))


def available_backends(device: Union[str, torch.device, None] = None) -> list:
    """The backends that can run on ``device`` (``None``: on a CUDA GPU)."""
    return [b for b in BACKENDS if unavailable_reason(b, device) is None]


def _auto(op: str, device: torch.device, config: Optional[OpConfig]) -> Backend:
    """The first registered backend that ``"auto"`` may choose on ``device`` and that can run ``op``
    (and ``config``, where given) there; the fallback where none can."""
    for backend in registered():
        if (device.type in backend.auto_devices and op in backend.ops
                and backend.unavailable_reason(device) is None
                and (config is None or backend.unsupported_reason(config) is None)):
            return backend
    return get(FALLBACK)


def _explicit(name: str, op: str, device: torch.device) -> Backend:
    """The record of an explicitly chosen backend; BackendUnavailableError where it cannot run ``op`` there."""
    backend = get(name)
    if op not in backend.ops:
        others = sorted(n for n in CHOICES if n == "auto" or op in get(n).ops)
        raise BackendUnavailableError(f"backend={name!r} is not available for {op}: the {backend.summary} "
                                      f"have no {op}; use one of {others}")
    reason = backend.unavailable_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} is not available: {reason}")
    return backend


def resolve(name: Optional[str], device: Union[str, torch.device], op: str = "focal_modulation") -> str:
    """Turn ``name`` (or the default, or ``"auto"``) into the backend that runs ``op`` on ``device``."""
    name, device = requested(name), torch.device(device)
    return (_auto(op, device, None) if name == "auto" else _explicit(name, op, device)).name


def select(name: Optional[str], config: OpConfig, device: torch.device) -> Callable:
    """The implementation that runs ``config`` on ``device`` for ``backend=name``: the one dispatch rule.

    ``"auto"`` takes the first backend that can run it, else the reference. An explicit backend that
    cannot run on ``device`` raises BackendUnavailableError, one that cannot compute ``config``
    raises ValueError; both say why.
    """
    name = requested(name)
    if name == "auto":
        return _auto(config.op, device, config).implementation(config.op)
    backend = _explicit(name, config.op, device)
    reason = backend.unsupported_reason(config)
    if reason is not None:
        raise ValueError(f"backend={name!r}: {reason}")
    return backend.implementation(config.op)


def implementation(name: str, op: str = "focal_modulation") -> Callable:
    """The function of ``op`` on backend ``name`` (inputs validated and cast by the caller)."""
    return get(name).implementation(op)
