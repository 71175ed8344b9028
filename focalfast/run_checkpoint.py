"""Training-run checkpoints in one safetensors file: weights, optimizer, RNG and a JSON record.

Tensors are stored under prefixes:

    model.<name>                   the model's state dict
    optimizer.<param index>.<key>  the optimizer's per-parameter state (AdamW: step, exp_avg, exp_avg_sq)
    rng.<rank>.cpu, rng.<rank>.cuda  each training process's torch random generator states

The metadata key ``focalfast`` holds JSON: the run's config, step and epoch, optimizer param
groups, grad-scaler state, metric history, class names and normalisation; ``focalfast_sha256`` a
SHA-256 of that JSON and of every tensor (name, dtype, shape, bytes), checked on load. Files are
written to a temporary name, flushed to disk and renamed, so an interrupted save never leaves a
broken checkpoint, and a file damaged later is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from focalfast.atomic_file import replace_atomically
from focalfast.weights import WeightsError, load_weights

FORMAT = "focalfast.train/2"
READABLE_FORMATS = ("focalfast.train/1", FORMAT)  # /1: written before checksums, read without one
METADATA_KEY = "focalfast"
CHECKSUM_KEY = "focalfast_sha256"
# What every reader of a checkpoint relies on: the record's keys, and the config's keys within it.
RECORD_KEYS = ("config", "step", "epoch", "epoch_step", "steps_per_epoch", "epoch_sums", "history",
               "classes", "mean", "std", "num_classes")
CONFIG_KEYS = ("model", "model_options", "image_size")


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used here (unreadable, damaged, not focalfast's, another architecture)."""


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


def checksum(record_json: str, tensors: Dict[str, Tensor]) -> str:
    """SHA-256 of the record's JSON text and of every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(record_json.encode())
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def process_rng_states(rank: int = 0) -> Dict[str, Tensor]:
    """This process's torch generator states, keyed ``<rank>.cpu`` and ``<rank>.cuda`` (its current
    CUDA device, where CUDA is in use)."""
    states = {f"{rank}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states[f"{rank}.cuda"] = torch.cuda.get_rng_state()
    return states


def save_checkpoint(path: str, model: nn.Module, record: dict,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    rng_states: Optional[Dict[str, Tensor]] = None) -> None:
    """Write ``model`` (+ ``optimizer`` state, + ``rng_states``: default this process's) and the JSON
    ``record`` to ``path``, with a checksum, atomically."""
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
    for key, state in (process_rng_states() if rng_states is None else rng_states).items():
        tensors[f"rng.{key}"] = state.cpu()
    record_json = json.dumps(record)
    metadata = {METADATA_KEY: record_json, CHECKSUM_KEY: checksum(record_json, tensors)}
    replace_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(path: str) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; CheckpointError naming ``path`` if it is
    missing, foreign, damaged (checksum) or lacks a key its readers need."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path!r} (expected a safetensors file): {exc}") from exc
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path!r} is a safetensors file but not a focalfast training checkpoint "
                              f"(no {METADATA_KEY!r} metadata); write one with `focalfast train`")
    record_json = metadata[METADATA_KEY]
    if CHECKSUM_KEY in metadata and metadata[CHECKSUM_KEY] != checksum(record_json, tensors):
        raise CheckpointError(f"checkpoint {path!r} is damaged: its contents do not match the SHA-256 "
                              "written with it; use a copy, or start over with --overwrite")
    try:
        record = json.loads(record_json)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path!r}: its {METADATA_KEY!r} metadata is not valid JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") not in READABLE_FORMATS:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"checkpoint {path!r} has format {found!r}; this version reads "
                              f"{', '.join(READABLE_FORMATS)}")
    if record["format"] != "focalfast.train/1" and CHECKSUM_KEY not in metadata:
        raise CheckpointError(f"checkpoint {path!r} has no {CHECKSUM_KEY!r} metadata, which format "
                              f"{record['format']!r} always writes: the file was altered")
    missing = [key for key in RECORD_KEYS if key not in record]
    if not missing and isinstance(record["config"], dict):
        missing = [f"config.{key}" for key in CONFIG_KEYS if key not in record["config"]]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: its metadata lacks the key(s) {', '.join(missing)}")
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
    if "optimizer_param_groups" not in checkpoint.record:
        raise CheckpointError(f"checkpoint {checkpoint.path!r}: its metadata lacks the key "
                              "optimizer_param_groups (it holds no optimizer state to resume)")
    state: Dict[int, dict] = {}
    for key, value in checkpoint.optimizer.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = checkpoint.record["optimizer_param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_rng(checkpoint: Checkpoint, rank: int = 0) -> bool:
    """Set this process's torch generators to the states saved for ``rank``; False if none were saved."""
    cpu = checkpoint.rng.get(f"{rank}.cpu")
    if cpu is None:
        return False
    torch.set_rng_state(cpu)
    cuda = checkpoint.rng.get(f"{rank}.cuda")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    return True
