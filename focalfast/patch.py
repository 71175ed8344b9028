"""``focalfast.patch(model)`` / ``focalfast.unpatch(model)``: run the focal modulations of an HF
transformers, timm or official FocalNet on the fused op, in place, and back.

Patching changes only ``forward``: each modulation keeps its class (as a thin subclass), its
submodules, parameters, state-dict keys and public attributes, so ``state_dict`` /
``save_pretrained`` round-trip with the unpatched library and adapter ``target_modules`` names
still resolve. The fused op reads the module's own parameters (views, no copies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from torch import nn

from focalfast import backends
from focalfast.modules.focal_modulation import FocalModulation
from focalfast.modules.host_forwards import HFModulationForward, OfficialModulationForward, TimmModulationForward


@dataclass(frozen=True)
class Host:
    """A library whose focal modulation ``patch`` knows: its forward and the attributes
    (with their values) that this forward reads and the library's module lacks."""

    name: str
    forward: type
    added: Tuple[Tuple[str, object], ...] = ()
    h: str = "h"


HOSTS = {
    "hf": Host("hf", HFModulationForward, h="projection_context"),
    "timm": Host("timm", TimmModulationForward),
    "official": Host("official", OfficialModulationForward, added=(("layout", "nhwc"), ("capture", False))),
}


class PatchedModulation:
    """Base of every patched class: ``host_class`` and ``host`` say what it was; pickling and
    ``copy.deepcopy`` rebuild the patched module (the class itself is made at run time)."""

    def extra_repr(self) -> str:
        own = super().extra_repr()
        return f"{own}, backend={self.backend!r}" if own else f"focalfast backend={self.backend!r}"

    def __reduce_ex__(self, protocol):
        return _new_patched, (type(self).host_class, type(self).host.name), self.__dict__.copy()


_PATCHED_CLASSES: Dict[type, type] = {}


def patched_class(host_class: type, host: str) -> type:
    """The patched subclass of ``host_class`` (made once, same name), with ``host``'s forward."""
    cls = _PATCHED_CLASSES.get(host_class)
    if cls is None:
        cls = _PATCHED_CLASSES[host_class] = type(
            host_class.__name__, (PatchedModulation, HOSTS[host].forward, host_class),
            {"host_class": host_class, "host": HOSTS[host], "__module__": __name__})
    return cls


def _new_patched(host_class: type, host: str) -> nn.Module:
    cls = patched_class(host_class, host)
    return cls.__new__(cls)


def host_of(module: nn.Module) -> Optional[str]:
    """``"hf"``, ``"timm"`` or ``"official"`` for a focal modulation of that library not yet
    patched, else None (focalfast's own ``FocalModulation`` and patched modules included)."""
    if isinstance(module, (FocalModulation, PatchedModulation)) or not hasattr(module, "focal_layers"):
        return None
    if hasattr(module, "projection_in") and hasattr(module, "projection_context"):
        return "hf"
    if hasattr(module, "f") and hasattr(module, "h"):
        return "timm" if isinstance(module.f, nn.Conv2d) else "official"
    return None


def check_fusable(module: nn.Module, host: str, name: str) -> None:
    """ValueError naming ``name`` unless the fused op computes what ``module``'s forward does:
    bias-free depthwise odd kernels with exact GELUs, a 1x1 ``h`` and the attributes the
    patched forward reads."""
    where = name or type(module).__name__
    spec = HOSTS[host]
    for attr in ("dim", "focal_level", "normalize_modulator"):
        if not hasattr(module, attr):
            raise ValueError(f"{where}: a {host} focal modulation without .{attr} cannot be patched")
    if len(module.focal_layers) != module.focal_level:
        raise ValueError(f"{where}: has {len(module.focal_layers)} focal layers but focal_level = {module.focal_level}")
    for level, layer in enumerate(module.focal_layers):
        conv = layer[0] if isinstance(layer, nn.Sequential) and len(layer) == 2 else None
        gelu = layer[1] if conv is not None else None
        k = conv.kernel_size[0] if isinstance(conv, nn.Conv2d) else 0
        if not (isinstance(conv, nn.Conv2d) and conv.bias is None and conv.groups == conv.in_channels == module.dim
                and conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2)
                and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
                and isinstance(gelu, nn.GELU) and gelu.approximate == "none"):
            raise ValueError(f"{where}.focal_layers.{level}: the fused op needs Sequential(bias-free depthwise "
                             f"Conv2d with an odd kernel and same padding, exact nn.GELU()), got {layer}")
    for attr in ("activation", "act"):  # HF's and timm / official's GELU of the global level
        act = getattr(module, attr, None)
        if act is not None and not (isinstance(act, nn.GELU) and act.approximate == "none"):
            raise ValueError(f"{where}.{attr}: the fused op applies an exact GELU to the global context, got {act}")
    h = getattr(module, spec.h)
    if not (isinstance(h, nn.Conv2d) and h.kernel_size == (1, 1) and h.groups == 1):
        raise ValueError(f"{where}.{spec.h}: the fused op needs a 1x1 Conv2d, got {h}")


def patch(model: nn.Module, backend: Optional[str] = "auto") -> int:
    """Run every HF transformers / timm / official focal modulation inside ``model`` (``model``
    itself included) on the fused op with ``backend``, in place; returns how many were patched.

    Only ``forward`` changes (see the module docstring); ``focalfast.unpatch`` undoes it.
    Patched modules met again get ``backend`` and are not counted, so a second call returns 0.
    focalfast's own ``FocalModulation`` layers are left as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    backends.check_choice(backend)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, PatchedModulation):
            module.backend = backend
        host = host_of(module)
        if host is not None:
            check_fusable(module, host, name)
            found.append((module, host))
    for module, host in found:  # all checked before any is changed
        module.__class__ = patched_class(type(module), host)
        for attr, value in HOSTS[host].added:
            setattr(module, attr, value)
        module.backend = backend
    return len(found)


def unpatch(model: nn.Module) -> int:
    """Give every module patched by ``focalfast.patch`` inside ``model`` back its library's class
    and forward, with its (possibly trained) weights; returns how many were restored."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    restored = 0
    for module in model.modules():
        if isinstance(module, PatchedModulation):
            host = type(module).host
            module.__class__ = type(module).host_class
            for attr in ("backend",) + tuple(attr for attr, _ in host.added):
                module.__dict__.pop(attr, None)
            restored += 1
    return restored
