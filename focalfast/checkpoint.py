"""Training checkpoints in one safetensors file: weights, optimizer, RNG and a JSON record.

Tensors are stored under prefixes:

    model.<name>                   the model's state dict
    optimizer.<param index>.<key>  the optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)
    rng.cpu, rng.cuda.<device>     torch's random generator states

and the metadata key ``focalfast`` holds JSON: the run's config, step and epoch, optimizer
param groups, grad-scaler state, metric history, class names and normalisation. Files are
written to a temporary name and renamed, so an interrupted save never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from focalfast.weights import WeightsError, load_weights

FORMAT = "focalfast.train/1"
METADATA_KEY = "focalfast"


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used here (unreadable, not focalfast's, another architecture)."""


class Checkpoint:
    """A loaded checkpoint: ``model`` / ``optimizer`` / ``rng`` tensors and the ``record`` dict."""

    def __init__(self, path: str, tensors: Dict[str, Tensor], record: dict):
        self.path = path
        self.record = record
        self.model = _strip(tensors, "model.")
        self.optimizer = _strip(tensors, "optimizer.")
        self.rng = _strip(tensors, "rng.")

    @property
    def config(self) -> dict:
        return self.record["config"]


def _strip(tensors: Dict[str, Tensor], prefix: str) -> Dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def save_checkpoint(path: str, model: nn.Module, record: dict,
                    optimizer: Optional[torch.optim.Optimizer] = None) -> None:
    """Write ``model`` (+ ``optimizer`` state, + torch RNG states) and the JSON ``record`` to ``path``."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    record = dict(record, format=FORMAT)
    if optimizer is not None:
        state = optimizer.state_dict()
        record["optimizer_param_groups"] = state["param_groups"]
        for index, param_state in state["state"].items():
            for key, value in param_state.items():
                if not isinstance(value, Tensor):
                    value = torch.tensor(value)
                tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    tmp = f"{path}.tmp"
    save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(record)})
    os.replace(tmp, path)


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError if it is missing or foreign."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r} (expected a safetensors file): {exc}") from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path!r} is a safetensors file but not a focalfast training checkpoint "
                              f"(no {METADATA_KEY!r} metadata); write one with `focalfast train`")
    record = json.loads(metadata[METADATA_KEY])
    if record.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} has format {record.get('format')!r}; "
                              f"this version reads {FORMAT!r}")
    return Checkpoint(path, tensors, record)


def load_model_state(model: nn.Module, checkpoint: Checkpoint, what: str = "this model") -> None:
    """Copy the checkpoint's weights into ``model``; CheckpointError listing any key or shape mismatch."""
    try:
        load_weights(model, checkpoint.model, what="its weights")
    except WeightsError as exc:
        saved = checkpoint.config.get("model", "?")
        raise CheckpointError(f"checkpoint {checkpoint.path!r} holds another architecture (saved model "
                              f"{saved!r}) than {what}: {exc}") from exc


def load_optimizer_state(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Restore the optimizer's param groups and per-parameter state."""
    state: Dict[int, dict] = {}
    for key, value in checkpoint.optimizer.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = checkpoint.record["optimizer_param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(checkpoint: Checkpoint) -> None:
    """Set torch's CPU (and, where saved and present, CUDA) generators to the saved states."""
    torch.set_rng_state(checkpoint.rng["cpu"])
    cuda_states = []
    while f"cuda.{len(cuda_states)}" in checkpoint.rng:
        cuda_states.append(checkpoint.rng[f"cuda.{len(cuda_states)}"])
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
