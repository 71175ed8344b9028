"""The settings of a training run (``TrainConfig``), their checks, and what ``--resume`` keeps."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Optional

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
from focalfast.models.activation_checkpointing import CHECKPOINTING_MODES as CHECKPOINTING_CHOICES
# Options of one invocation, never taken from a checkpoint: where to write, whether to resume,
# where this invocation stops, and how it reports.
INVOCATION_KEYS = ("out_dir", "resume", "overwrite", "max_steps", "progress", "log_every", "timing_warmup")
# Settings a resumed run keeps unless given again, and which may then take another value: they change
# neither the model nor the math of an optimizer step (epochs replans the cosine schedule; grad_accum
# and the number of processes only split the same global batch differently).
CHANGEABLE_ON_RESUME = ("epochs", "backend", "device", "channels_last", "checkpointing", "num_workers",
                        "save_every", "grad_accum", "data_dir")


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in the checkpoint and in ``config.json``."""

    out_dir: str = "runs/focalfast"
    model: str = "focalnet_tiny_srf"   # a registered name, "build" or "convnext"
    model_options: dict = field(default_factory=dict)  # keyword arguments of the model constructor
    data_dir: Optional[str] = None     # None: the generated shapes (no download)
    train_samples: int = 5000          # generated shapes only
    val_samples: int = 1000            # generated shapes only
    val_fraction: float = 0.1          # ImageFolder without a val/ directory
    image_size: int = 224
    batch_size: int = 64               # images per optimizer step, over all processes and micro-batches
    grad_accum: int = 1                # micro-batches per optimizer step (gradient accumulation)
    epochs: int = 10
    max_steps: Optional[int] = None    # stop (and checkpoint) after this many optimizer steps
    save_every: Optional[int] = None   # also checkpoint every this many optimizer steps
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: Optional[int] = None  # None: 5% of all steps
    weight_decay: float = 0.05
    clip_grad: float = 5.0             # max gradient norm; 0 turns clipping off
    label_smoothing: float = 0.0
    amp: str = "auto"                  # auto: bf16 (fp16 where bf16 is unsupported) on GPU, off on CPU
    channels_last: Optional[bool] = None  # None: on GPU
    checkpointing: str = "none"        # activation checkpointing: none / blocks / mlp / stage
    backend: str = "auto"              # focal modulation backend: auto / reference / triton / cuda
    device: Optional[str] = None       # None: cuda if available
    seed: int = 0
    num_workers: Optional[int] = None  # image decoding processes per process (ImageFolder); None: min(4, cores)
    log_every: int = 10                # progress-bar refresh interval in steps
    timing_warmup: int = 5             # steps left out of the img/s measurement
    progress: bool = True
    resume: bool = False
    overwrite: bool = False


class TrainConfigError(ValueError):
    """Settings that cannot run: the message names the option."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_config(config: TrainConfig) -> None:
    """Raise ``TrainConfigError`` naming the first option that cannot run."""
    for name in ("image_size", "batch_size", "grad_accum", "epochs", "train_samples", "val_samples",
                 "log_every"):
        value = getattr(config, name)
        if not _is_int(value) or value < 1:
            raise TrainConfigError(f"{name}: expected a positive int, got {value!r}")
    for name in ("max_steps", "save_every"):
        value = getattr(config, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise TrainConfigError(f"{name}: expected a positive int (or None), got {value!r}")
    for name in ("warmup_steps", "num_workers"):
        value = getattr(config, name)
        if value is not None and (not _is_int(value) or value < 0):
            raise TrainConfigError(f"{name}: expected a non-negative int (or None), got {value!r}")
    for name in ("seed", "timing_warmup"):
        value = getattr(config, name)
        if not _is_int(value) or value < 0:
            raise TrainConfigError(f"{name}: expected a non-negative int, got {value!r}")
    for name in ("lr", "min_lr", "weight_decay", "clip_grad", "label_smoothing", "val_fraction"):
        value = getattr(config, name)
        if not _is_real(value) or value < 0:
            raise TrainConfigError(f"{name}: expected a finite number >= 0, got {value!r}")
    if not config.lr > 0:
        raise TrainConfigError(f"lr: expected a positive learning rate, got {config.lr!r}")
    if not config.min_lr <= config.lr:
        raise TrainConfigError(f"min_lr: expected 0 <= min_lr <= lr = {config.lr}, got {config.min_lr!r}")
    if not config.label_smoothing < 1:
        raise TrainConfigError(f"label_smoothing: expected a value in [0, 1), got {config.label_smoothing!r}")
    if not config.val_fraction < 1:
        raise TrainConfigError(f"val_fraction: expected a fraction in [0, 1), got {config.val_fraction!r}")
    if config.amp not in AMP_CHOICES:
        raise TrainConfigError(f"amp: expected one of {AMP_CHOICES}, got {config.amp!r}")
    if config.checkpointing not in CHECKPOINTING_CHOICES:
        raise TrainConfigError(f"checkpointing: expected one of {CHECKPOINTING_CHOICES}, "
                               f"got {config.checkpointing!r}")
    if not isinstance(config.model_options, dict):
        raise TrainConfigError(f"model_options: expected a dict, got {type(config.model_options).__name__}")
    if config.resume and config.overwrite:
        raise TrainConfigError("resume and overwrite exclude each other: resume continues the run in "
                               "out_dir, overwrite starts it over")


def jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def given_settings(config) -> dict:
    """The settings a caller gave: a dict's keys; a ``TrainConfig``'s fields that differ from the defaults."""
    if isinstance(config, dict):
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise TrainConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return dict(config)
    defaults = TrainConfig()
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)
            if getattr(config, f.name) != getattr(defaults, f.name)}


def merge_resumed_settings(given: dict, saved: dict) -> TrainConfig:
    """The settings of a resumed run: the checkpoint's (``saved``), except the invocation's own options,
    overridden by the ``given`` ones; raises naming every given setting that would change the math."""
    defaults = jsonable(dataclasses.asdict(TrainConfig()))
    kept = {k: v for k, v in saved.items() if k in defaults and k not in INVOCATION_KEYS}
    differ = [f"{key}={jsonable(value)!r} (checkpoint: {kept.get(key, defaults[key])!r})"
              for key, value in given.items()
              if key not in INVOCATION_KEYS + CHANGEABLE_ON_RESUME
              and jsonable(value) != kept.get(key, defaults[key])]
    if differ:
        raise TrainConfigError("cannot resume with settings that differ from the checkpoint's: "
                               + ", ".join(differ) + "; drop them, or use --overwrite to start over")
    return TrainConfig(**{**defaults, **kept, **given})
