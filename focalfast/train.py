"""``focalfast train``: train a FocalNet (or ``build(...)`` / ConvNeXt) image classifier.

AdamW with a warm-up + cosine learning rate, bf16/fp16 autocast on GPU, channels-last, gradient
clipping and accumulation, activation checkpointing, several processes under ``torchrun``;
evaluation every epoch; a resumable, checksummed safetensors checkpoint, ``metrics.csv``,
``metrics.png`` and ``summary.json`` in the output directory. The pieces live in
``focalfast/training/``; this module is the command line.

Python: ``focalfast.train.train(TrainConfig(...))`` or ``train(dict(...))``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from focalfast.training.config import (AMP_CHOICES, CHECKPOINTING_CHOICES, TrainConfig,  # noqa: F401
                                       TrainConfigError)
from focalfast.training.run import build_model, train  # noqa: F401
from focalfast.training.schedule import learning_rate  # noqa: F401

# Exit status of a run stopped by a non-finite step (settings errors exit 2, signals 128 + number).
EXIT_DIVERGED = 1


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
    a("--batch-size", type=int, default=None,
      help=f"images per optimizer step, over all processes and micro-batches ({d.batch_size})")
    a("--grad-accum", type=int, default=None,
      help=f"micro-batches per optimizer step: gradient accumulation ({d.grad_accum})")
    a("--epochs", type=int, default=None, help=f"passes over the training data ({d.epochs})")
    a("--max-steps", type=int, default=None,
      help="stop this invocation after this many optimizer steps in all (checkpointed; --resume continues)")
    a("--save-every", type=int, default=None,
      help="also checkpoint every N optimizer steps (default: at epoch ends and stops only)")
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
    a("--checkpointing", choices=CHECKPOINTING_CHOICES, default=None,
      help="activation checkpointing, recomputed in backward to save memory: every block, each block's "
      f"MLP, or whole stages ({d.checkpointing})")
    a("--grad-checkpointing", dest="checkpointing", action="store_const", const="blocks",
      help="the same as --checkpointing blocks")
    a("--backend", choices=("auto", "reference", "triton", "cuda"), default=None,
      help="focal modulation backend (auto: the fastest available)")
    a("--device", default=None, help="torch device (default: cuda if available)")
    a("--seed", type=int, default=None, help=f"({d.seed})")
    a("--num-workers", type=int, default=None,
      help="image decoding processes per training process (default: up to 4, at most the CPU cores)")
    a("--log-every", type=int, default=None, help=f"progress refresh interval in steps ({d.log_every})")
    a("--timing-warmup", type=int, default=None, help=f"steps left out of img/s ({d.timing_warmup})")
    a("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    a("--resume", action="store_true", default=None,
      help="continue the run in --out: its settings are kept unless given again")
    a("--overwrite", action="store_true", default=None, help="replace the run in --out")


def given_options(args: argparse.Namespace) -> dict:
    """The settings given on the command line (a resumed run takes the others from its checkpoint)."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if args.model_opt is not None:
        given["model_options"] = dict(args.model_opt)
    return given


def run(args: argparse.Namespace) -> int:
    from focalfast.backends import BackendUnavailableError
    from focalfast.training.faults import TrainingDiverged, TrainingInterrupted

    try:
        summary = train(given_options(args))
    except (ValueError, BackendUnavailableError) as exc:  # DataError, CheckpointError, TrainConfigError
        message = str(exc).strip()
        if "Original Traceback" in message:  # raised in a DataLoader worker: keep the error line
            message = message.splitlines()[-1]
        print(f"focalfast train: error: {message}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"focalfast train: error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except TrainingInterrupted as exc:
        print(f"focalfast train: {exc}", file=sys.stderr)
        return 128 + exc.signal_number
    if os.environ.get("RANK", "0") == "0":
        print("summary: " + json.dumps(summary))
    return 0
