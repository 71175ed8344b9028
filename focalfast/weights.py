"""Weights: local weight files (nothing is downloaded), the one strict state-dict loader and its
error, ``WeightsError``, which every weight loader in focalfast raises (models, modulations,
training checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Tuple, Union

import torch
from torch import Tensor, nn

StateDictOrPath = Union[str, os.PathLike, Mapping[str, Tensor]]



class WeightsError(ValueError):
    """Weights that cannot be loaded: an unreadable file, missing or unexpected keys, shape
    mismatches, an unknown layout; the message names the file or the keys."""


_WRAPPERS = ("model", "state_dict", "model_state_dict", "module")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: Union[str, os.PathLike]) -> dict:
    """The tensors of a local ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file, on CPU.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}`` (official and training checkpoints) and a
    ``module.`` prefix (DistributedDataParallel). ``.pth`` files are read with
    ``torch.load(weights_only=True)``: no pickled code runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained: no such file {str(path)!r} (focalfast never downloads weights)")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError, OSError: truncated or not a safetensors file
            raise WeightsError(f"pretrained: cannot read {str(path)!r} as a safetensors file ({exc}); "
                               "is it complete?") from exc
    elif suffix in _TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(f"pretrained: cannot read {str(path)!r} as a weights-only PyTorch checkpoint "
                               f"({exc}); save its state dict alone with torch.save(model.state_dict(), ...)") from exc
    else:
        raise WeightsError(f"pretrained: expected a .safetensors or {'/'.join(_TORCH_SUFFIXES)} file, "
                           f"got {str(path)!r}")
    try:
        return unwrap_state_dict(state)
    except WeightsError as exc:
        raise WeightsError(f"pretrained: {str(path)!r}: {exc}") from exc


def unwrap_state_dict(state: Mapping) -> dict:
    """The tensor mapping inside a checkpoint dict, without a ``module.`` prefix."""
    while isinstance(state, Mapping):
        inner = next((state[k] for k in _WRAPPERS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError("expected a mapping of parameter names to tensors "
                           "(optionally under 'model' or 'state_dict')")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def as_state_dict(weights: StateDictOrPath) -> dict:
    """A state dict from a mapping or a local file path."""
    if isinstance(weights, (str, os.PathLike)):
        return read_state_dict(weights)
    return unwrap_state_dict(weights)


def _listing(items, limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return f"{len(items)} [{shown}{', ...' if len(items) > limit else ''}]"


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True,
                 what: str = "weights") -> Tuple[list, list]:
    """Load a state dict already in ``model``'s names; return ``(missing, unexpected)`` keys.

    ``strict``: raise ``WeightsError`` listing the missing and unexpected keys and the shape
    mismatches (``what`` says whose weights), loading nothing. Not strict: load the keys whose
    names and shapes match, and return the rest (mismatched shapes count as missing).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if strict and (missing or unexpected or mismatched):
        problems = []
        if missing:
            problems.append(f"missing keys {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_listing(unexpected)}")
        if mismatched:
            shapes = [f"{k}: shape {tuple(state_dict[k].shape)} in the weights, {tuple(own[k].shape)} in the model"
                      for k in mismatched]
            problems.append(f"shape mismatches {_listing(shapes)}")
        raise WeightsError(f"cannot load {what} into {type(model).__name__}: " + "; ".join(problems))
    usable = {k: v for k, v in state_dict.items() if k in own and k not in mismatched}
    model.load_state_dict(usable, strict=False)
    return missing + mismatched, unexpected
