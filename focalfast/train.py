"""``focalfast train``: train a FocalNet (or ``build(...)`` / ConvNeXt) image classifier.

AdamW with a warm-up + cosine learning rate, bf16/fp16 autocast on GPU, channels-last,
gradient clipping, optional activation checkpointing; evaluation every epoch; a resumable
safetensors checkpoint (model, optimizer, schedule step, RNG, config), ``metrics.csv``,
``metrics.png`` and ``summary.json`` (img/s and peak GPU memory) in the output directory.

Python: ``focalfast.train.train(TrainConfig(...))`` or ``train(dict(...))``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

CHECKPOINT = "checkpoint.safetensors"
OUTPUT_FILES = (CHECKPOINT, "metrics.csv", "metrics.png", "summary.json", "config.json")
AMP_CHOICES = ("auto", "bf16", "fp16", "off")
# Settings that may differ when a run is resumed: they change neither the model nor the math.
RUNTIME_KEYS = ("out_dir", "epochs", "max_steps", "backend", "device", "channels_last",
                "grad_checkpointing", "num_workers", "log_every", "timing_warmup", "progress",
                "resume", "overwrite")


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
    batch_size: int = 64
    epochs: int = 10
    max_steps: Optional[int] = None    # stop (and checkpoint) after this many optimizer steps
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: Optional[int] = None  # None: 5% of all steps
    weight_decay: float = 0.05
    clip_grad: float = 5.0             # max gradient norm; 0 turns clipping off
    label_smoothing: float = 0.0
    amp: str = "auto"                  # auto: bf16 (fp16 where bf16 is unsupported) on GPU, off on CPU
    channels_last: Optional[bool] = None  # None: on GPU
    grad_checkpointing: bool = False
    backend: str = "auto"              # focal modulation backend: auto / reference / triton / cuda
    device: Optional[str] = None       # None: cuda if available
    seed: int = 0
    num_workers: int = 4               # image decoding processes (ImageFolder only)
    log_every: int = 10                # progress-bar refresh interval in steps
    timing_warmup: int = 5             # steps left out of the img/s measurement
    progress: bool = True
    resume: bool = False
    overwrite: bool = False


class TrainConfigError(ValueError):
    """Settings that cannot run: the message names the option."""


# ---------------------------------------------------------------------------------------------
# Pieces of a run
# ---------------------------------------------------------------------------------------------

def check_config(config: TrainConfig) -> None:
    def positive(name, allow_none=False):
        value = getattr(config, name)
        if allow_none and value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise TrainConfigError(f"{name}: expected a positive int, got {value!r}")

    for name in ("image_size", "batch_size", "epochs", "train_samples", "val_samples", "log_every"):
        positive(name)
    positive("max_steps", allow_none=True)
    if config.warmup_steps is not None and (not isinstance(config.warmup_steps, int) or config.warmup_steps < 0):
        raise TrainConfigError(f"warmup_steps: expected a non-negative int, got {config.warmup_steps!r}")
    if not config.lr > 0:
        raise TrainConfigError(f"lr: expected a positive learning rate, got {config.lr!r}")
    if not 0 <= config.min_lr <= config.lr:
        raise TrainConfigError(f"min_lr: expected 0 <= min_lr <= lr = {config.lr}, got {config.min_lr!r}")
    if config.weight_decay < 0 or config.clip_grad < 0 or not 0 <= config.label_smoothing < 1:
        raise TrainConfigError("weight_decay and clip_grad must be >= 0 and label_smoothing in [0, 1), got "
                               f"{config.weight_decay}, {config.clip_grad}, {config.label_smoothing}")
    if not 0 <= config.val_fraction < 1:
        raise TrainConfigError(f"val_fraction: expected a fraction in [0, 1), got {config.val_fraction!r}")
    if config.amp not in AMP_CHOICES:
        raise TrainConfigError(f"amp: expected one of {AMP_CHOICES}, got {config.amp!r}")
    if not isinstance(config.model_options, dict):
        raise TrainConfigError(f"model_options: expected a dict, got {type(config.model_options).__name__}")
    if config.resume and config.overwrite:
        raise TrainConfigError("resume and overwrite exclude each other: resume continues the run in "
                               "out_dir, overwrite starts it over")


def resolve_amp(amp: str, device):
    """The autocast dtype (None: no autocast) of ``amp`` on ``device``."""
    import torch

    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise TrainConfigError("amp: fp16 needs a CUDA device (use bf16 or off on CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_model(config: TrainConfig, num_classes: int):
    """The classifier named by ``config.model`` with ``config.model_options``."""
    import focalfast

    options = dict(config.model_options)
    try:
        if config.model == "build":
            return focalfast.build(image_size=config.image_size, num_classes=num_classes,
                                   backend=config.backend, **options)
        if config.model == "convnext":
            return focalfast.build_convnext(image_size=config.image_size, num_classes=num_classes,
                                            backend=config.backend, **options)
        from focalfast import models

        return models.create(config.model, num_classes=num_classes, backend=config.backend, **options)
    except TypeError as exc:
        raise TrainConfigError(f"model_options {options} do not fit model {config.model!r}: {exc}") from exc


def set_grad_checkpointing(model, enabled: bool = True) -> None:
    """Recompute each block's activations in backward: the model's own ``set_grad_checkpointing``
    if it has one, else every module in an ``nn.ModuleList`` named ``blocks`` is wrapped."""
    import functools

    from torch import nn
    from torch.utils.checkpoint import checkpoint

    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(enabled)
        return
    blocks = [block for name, module in model.named_modules()
              if name.split(".")[-1] == "blocks" and isinstance(module, nn.ModuleList) for block in module]
    if enabled and not blocks:
        raise TrainConfigError(f"grad_checkpointing: {type(model).__name__} has no blocks to checkpoint")
    for block in blocks:
        block.__dict__.pop("forward", None)  # back to the class's forward
        if enabled:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def parameter_groups(model, weight_decay: float) -> list:
    """AdamW groups: weight decay on matrices and kernels, none on biases, norms and 1-d parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(config: TrainConfig, total_steps: int) -> int:
    return config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * total_steps))


def _jsonable(value):
    return json.loads(json.dumps(value))


def check_resume_config(saved: dict, config: TrainConfig) -> None:
    """Resuming keeps everything but ``RUNTIME_KEYS``; raise naming every option that differs."""
    current = _jsonable(dataclasses.asdict(config))
    defaults = _jsonable(dataclasses.asdict(TrainConfig()))
    differ = [f"{key}={current[key]!r} (checkpoint: {saved.get(key, defaults[key])!r})"
              for key in current if key not in RUNTIME_KEYS and saved.get(key, defaults[key]) != current[key]]
    if differ:
        raise TrainConfigError("cannot resume with settings that differ from the checkpoint's: "
                               + ", ".join(differ) + "; drop them, or use --overwrite to start over")


class Throughput:
    """Images per second over the timed steps (``timing_warmup`` steps in, pauses excluded)."""

    def __init__(self, device):
        self.device = device
        self.images, self.seconds, self.started = 0, 0.0, None

    def _sync(self):
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def start(self):
        if self.started is None:
            self._sync()
            self.started = time.perf_counter()

    def stop(self):
        if self.started is not None:
            self._sync()
            self.seconds += time.perf_counter() - self.started
            self.started = None

    def rate(self) -> Optional[float]:
        return self.images / self.seconds if self.seconds > 0 else None


def peak_memory_mb(device) -> Optional[float]:
    import torch

    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


@dataclass
class EpochSums:
    """Running sums of the current epoch's training loss and accuracy (saved for mid-epoch resume)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------

METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                  "img_per_s", "peak_memory_mb", "seconds")


def write_metrics(out_dir: str, history: list) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.png`` (loss and accuracy curves)."""
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    epochs = [row["epoch"] for row in history]
    for axes, metric, title in zip(figure.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split in ("train", "val"):
            points = [(e, row[f"{split}_{metric}"]) for e, row in zip(epochs, history)
                      if row.get(f"{split}_{metric}") is not None]
            if points:
                axes.plot(*zip(*points), marker="o", label=split)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "metrics.png"))


def _write_json(path: str, value) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

def train(config) -> dict:
    """Train as ``config`` (a ``TrainConfig`` or a dict of its fields) says; return the summary dict.

    Raises ``TrainConfigError``, ``focalfast.data.DataError`` or ``focalfast.checkpoint.CheckpointError``
    (all ValueError) before anything is written when the settings, data or checkpoint are unusable.
    """
    import torch
    import torch.nn.functional as F

    from focalfast import backends
    from focalfast.checkpoint import (CheckpointError, load_checkpoint, load_model_state,
                                      load_optimizer_state, restore_rng, save_checkpoint)
    from focalfast.data import build_data, normalize

    config = TrainConfig(**config) if isinstance(config, dict) else dataclasses.replace(config)
    check_config(config)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype = resolve_amp(config.amp, device)
    channels_last = device.type == "cuda" if config.channels_last is None else config.channels_last
    backend = backends.resolve(config.backend, device)  # BackendUnavailableError says why
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # Settle the output directory before anything is written to it.
    out_dir = config.out_dir
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    checkpoint = None
    if config.resume:
        if not os.path.isfile(checkpoint_path):
            raise CheckpointError(f"resume: no checkpoint at {checkpoint_path!r}")
        checkpoint = load_checkpoint(checkpoint_path)
        check_resume_config(checkpoint.config, config)
    elif os.path.exists(checkpoint_path) and not config.overwrite:
        raise TrainConfigError(f"out_dir {out_dir!r} already holds a checkpoint; pass --resume to continue "
                               "that run or --overwrite to replace it")
    elif os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise TrainConfigError(f"out_dir {out_dir!r} exists and is not a directory")

    data = build_data(config.data_dir, config.image_size, config.batch_size, device, config.seed,
                      config.train_samples, config.val_samples, config.val_fraction, config.num_workers)
    torch.manual_seed(config.seed)
    model = build_model(config, len(data.classes))
    if checkpoint is not None:
        load_model_state(model, checkpoint, f"model {config.model!r}")
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if config.grad_checkpointing:
        set_grad_checkpointing(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    steps_per_epoch = len(data.train)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = warmup_steps_of(config, total_steps)
    step, epoch, epoch_step, history, sums = 0, 0, 0, [], EpochSums()
    if checkpoint is not None:
        load_optimizer_state(optimizer, checkpoint)
        record = checkpoint.record
        if record["steps_per_epoch"] != steps_per_epoch:
            raise CheckpointError(f"resume: the data gives {steps_per_epoch} steps per epoch but the checkpoint's "
                                  f"run had {record['steps_per_epoch']}; the data directory has changed")
        step, epoch, epoch_step = record["step"], record["epoch"], record["epoch_step"]
        history, sums = record["history"], EpochSums(**record["epoch_sums"])
        if scaler is not None and record.get("grad_scaler"):
            scaler.load_state_dict(record["grad_scaler"])
        restore_rng(checkpoint)
    stop_step = total_steps if config.max_steps is None else min(total_steps, config.max_steps)

    os.makedirs(out_dir, exist_ok=True)
    if config.overwrite:
        for name in OUTPUT_FILES:
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
    _write_json(os.path.join(out_dir, "config.json"), dataclasses.asdict(config))

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def model_input(images):
        x = normalize(images, data.mean, data.std)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def save(lr):
        record = dict(config=dataclasses.asdict(config), step=step, epoch=epoch, epoch_step=epoch_step,
                      steps_per_epoch=steps_per_epoch, epoch_sums=dataclasses.asdict(sums), history=history,
                      lr=lr, classes=data.classes, mean=data.mean, std=data.std, num_classes=len(data.classes),
                      grad_scaler=scaler.state_dict() if scaler is not None else None)
        save_checkpoint(checkpoint_path, model, record, optimizer)

    @torch.no_grad()
    def evaluate():
        if data.val is None:
            return None, None
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for images, labels in data.val.batches(epoch):
            with autocast():
                logits = model(model_input(images))
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.numel()
        model.train()
        return loss_sum.item() / seen, correct.item() / seen

    from tqdm.auto import tqdm

    print(f"focalfast train: {config.model} on {data.description}, {config.image_size}px, batch "
          f"{config.batch_size}, {steps_per_epoch} steps/epoch, device {device}, backend {backend}, "
          f"amp {amp_dtype or 'off'}, channels_last {channels_last}", file=sys.stderr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = Throughput(device)
    steps_this_run = 0
    lr = learning_rate(step, config.lr, config.min_lr, warmup_steps, total_steps)
    model.train()
    while step < stop_step:
        epoch_started = time.perf_counter()
        epoch_meter = Throughput(device)
        loss_sum = torch.tensor(sums.loss_sum, dtype=torch.float64, device=device)
        correct = torch.tensor(sums.correct, dtype=torch.int64, device=device)
        seen = sums.seen
        bar = tqdm(total=steps_per_epoch, initial=epoch_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress, dynamic_ncols=True, file=sys.stderr)
        window_images, window_start = 0, time.perf_counter()
        for images, labels in data.train.batches(epoch, epoch_step):
            if steps_this_run >= config.timing_warmup:
                meter.start()
                epoch_meter.start()
            lr = learning_rate(step, config.lr, config.min_lr, warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                logits = model(model_input(images))
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            n = labels.numel()
            loss_sum += loss.detach().double() * n
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += n
            step, epoch_step, steps_this_run = step + 1, epoch_step + 1, steps_this_run + 1
            if steps_this_run > config.timing_warmup:
                meter.images += n
                epoch_meter.images += n
            window_images += n
            bar.update(1)
            if step % config.log_every == 0 or epoch_step == steps_per_epoch or step == stop_step:
                postfix = dict(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}",
                               lr=f"{lr:.2e}")
                now = time.perf_counter()
                postfix["img/s"] = f"{window_images / (now - window_start):.1f}"
                window_images, window_start = 0, now
                memory = peak_memory_mb(device)
                if memory is not None:
                    postfix["mem"] = f"{memory / 1024:.2f}GB"
                bar.set_postfix(postfix, refresh=False)
            if step >= stop_step:
                break
        meter.stop()
        epoch_meter.stop()
        bar.close()
        sums = EpochSums(loss_sum.item(), int(correct.item()), seen)
        if epoch_step < steps_per_epoch:  # stopped by max_steps inside the epoch
            save(lr)
            break
        val_loss, val_acc = evaluate()
        history.append(dict(epoch=epoch + 1, step=step, lr=lr, train_loss=sums.loss_sum / sums.seen,
                            train_acc=sums.correct / sums.seen, val_loss=val_loss, val_acc=val_acc,
                            img_per_s=epoch_meter.rate(), peak_memory_mb=peak_memory_mb(device),
                            seconds=time.perf_counter() - epoch_started))
        epoch, epoch_step, sums = epoch + 1, 0, EpochSums()
        save(lr)
        write_metrics(out_dir, history)
        row = history[-1]
        val = f", val loss {val_loss:.4f} acc {val_acc:.3f}" if val_loss is not None else ""
        print(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}{val}",
              file=sys.stderr)

    last = dict(history[-1]) if history else {}
    if sums.seen:  # stopped inside an epoch: that epoch's training metrics so far
        last.update(train_loss=sums.loss_sum / sums.seen, train_acc=sums.correct / sums.seen)
    summary = dict(
        model=config.model, backend=backend, device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        amp=str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "off",
        channels_last=channels_last, grad_checkpointing=config.grad_checkpointing,
        image_size=config.image_size, batch_size=config.batch_size, step=step, epoch=epoch,
        steps_this_run=steps_this_run, timed_steps=max(0, steps_this_run - config.timing_warmup),
        img_per_s=meter.rate(), peak_memory_mb=peak_memory_mb(device),
        train_loss=last.get("train_loss"), train_acc=last.get("train_acc"),
        val_loss=last.get("val_loss"), val_acc=last.get("val_acc"),
        torch=torch.__version__, out_dir=out_dir)
    _write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def _option_value(text: str):
    """``--model-opt`` values: JSON (numbers, lists, true/false), ``1,2,3`` lists, else a string."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    parts = text.split(",")
    if len(parts) > 1:
        try:
            return [json.loads(p) for p in parts]
        except ValueError:
            pass
    return text


def _model_option(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. hidden_size=128), got {text!r}")
    return key, _option_value(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    # Config options default to None here so that a resumed run can tell what was given.
    a = parser.add_argument
    a("--out", dest="out_dir", default=None, help=f"output directory (default {d.out_dir})")
    a("--model", default=None, help=f"a registered FocalNet name, 'build' (isotropic FocalNet) or "
      f"'convnext' (default {d.model})")
    a("--model-opt", "-O", dest="model_opt", action="append", type=_model_option, default=None,
      metavar="KEY=VALUE", help="a model constructor option, repeatable (e.g. -O hidden_size=128 "
      "-O num_layers=6 for build, -O depths=2,2,6,2 for convnext, -O drop_path_rate=0.1)")
    a("--data", dest="data_dir", default=None, help="ImageFolder directory: DIR/<class>/<image>, or "
      "DIR/train/<class>/... and DIR/val/<class>/...; default: generated shapes (no download)")
    a("--train-samples", type=int, default=None, help=f"generated shapes: training images ({d.train_samples})")
    a("--val-samples", type=int, default=None, help=f"generated shapes: validation images ({d.val_samples})")
    a("--val-fraction", type=float, default=None,
      help=f"ImageFolder without val/: share of each class held out ({d.val_fraction})")
    a("--image-size", type=int, default=None, help=f"training resolution ({d.image_size})")
    a("--batch-size", type=int, default=None, help=f"images per optimizer step ({d.batch_size})")
    a("--epochs", type=int, default=None, help=f"passes over the training data ({d.epochs})")
    a("--max-steps", type=int, default=None,
      help="stop after this many optimizer steps (checkpointed; --resume continues)")
    a("--lr", type=float, default=None, help=f"peak AdamW learning rate ({d.lr})")
    a("--min-lr", type=float, default=None, help=f"learning rate at the end of the cosine ({d.min_lr})")
    a("--warmup-steps", type=int, default=None, help="linear warm-up steps (5%% of all steps)")
    a("--weight-decay", type=float, default=None, help=f"({d.weight_decay})")
    a("--clip-grad", type=float, default=None, help=f"max gradient norm, 0 = off ({d.clip_grad})")
    a("--label-smoothing", type=float, default=None, help=f"({d.label_smoothing})")
    a("--amp", choices=AMP_CHOICES, default=None,
      help="autocast dtype (auto: bf16, or fp16 where bf16 is unsupported, on GPU; off on CPU)")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None,
      help="channels-last memory format (default: on GPU)")
    a("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
      help="recompute block activations in backward to save memory")
    a("--backend", choices=("auto", "reference", "triton", "cuda"), default=None,
      help="focal modulation backend (auto: the fastest available)")
    a("--device", default=None, help="torch device (default: cuda if available)")
    a("--seed", type=int, default=None, help=f"({d.seed})")
    a("--num-workers", type=int, default=None, help=f"image decoding processes ({d.num_workers})")
    a("--log-every", type=int, default=None, help=f"progress refresh interval in steps ({d.log_every})")
    a("--timing-warmup", type=int, default=None, help=f"steps left out of img/s ({d.timing_warmup})")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    a("--resume", action="store_true", default=None,
      help="continue the run whose checkpoint is in --out (its settings are kept)")
    a("--overwrite", action="store_true", default=None, help="replace the run in --out")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The given options over the defaults, or, with ``--resume``, over the checkpoint's settings."""
    from focalfast.checkpoint import load_checkpoint

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.model_opt is not None:
        given["model_options"] = dict(args.model_opt)
    base = dataclasses.asdict(TrainConfig())
    out_dir = given.get("out_dir", base["out_dir"])
    checkpoint_path = os.path.join(out_dir, CHECKPOINT)
    if given.get("resume") and os.path.isfile(checkpoint_path):
        saved = load_checkpoint(checkpoint_path).config
        base.update({k: v for k, v in saved.items() if k in base and k not in RUNTIME_KEYS})
    base.update(given)
    return TrainConfig(**base)


def run(args: argparse.Namespace) -> int:
    from focalfast.backends import BackendUnavailableError

    try:
        summary = train(config_from_args(args))
    except (ValueError, BackendUnavailableError) as exc:  # DataError, CheckpointError, TrainConfigError
        message = str(exc).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the error line
            message = message.splitlines()[-1]
        print(f"focalfast train: error: {message}", file=sys.stderr)
        return 2
    print("summary: " + json.dumps(summary))
    return 0
