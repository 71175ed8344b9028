"""A run's output directory: what it holds, the guard against replacing a run, and its files.

``checkpoint.safetensors``, ``config.json``, ``metrics.csv`` (one row per epoch), ``metrics.png``
and ``summary.json``; every file is replaced atomically (written aside, flushed, renamed).
"""

from __future__ import annotations

import csv
import json
import os

from focalfast.atomic_file import replace_atomically
from focalfast.training.config import TrainConfigError

CHECKPOINT = "checkpoint.safetensors"
OUTPUT_FILES = (CHECKPOINT, "metrics.csv", "metrics.png", "summary.json", "config.json")
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc",
                  "train_images_per_s", "step_images_per_s", "peak_memory_mb", "seconds")


class RunDirectory:
    """The files of the run in ``path``."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoint = os.path.join(path, CHECKPOINT)

    def existing_outputs(self) -> list:
        return [name for name in OUTPUT_FILES if os.path.exists(os.path.join(self.path, name))]

    def check_usable(self, resume: bool, overwrite: bool) -> None:
        """Raise unless the run may write here: an existing run is only continued (``resume``) or
        replaced (``overwrite``), never written over by a new one."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise TrainConfigError(f"out_dir {self.path!r} exists and is not a directory")
        found = self.existing_outputs()
        if found and not (resume or overwrite):
            raise TrainConfigError(f"out_dir {self.path!r} already holds a run ({', '.join(found)}); pass "
                                   "--resume to continue that run or --overwrite to replace it")

    def prepare(self, overwrite: bool, config: dict) -> None:
        """Create the directory (with ``overwrite``: empty of the run's files) and write ``config.json``."""
        os.makedirs(self.path, exist_ok=True)
        if overwrite:
            for name in self.existing_outputs():
                os.remove(os.path.join(self.path, name))
        self.write_json("config.json", config)

    def write_json(self, name: str, value) -> None:
        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(value, f, indent=2)
                f.write("\n")

        replace_atomically(os.path.join(self.path, name), write)

    def write_metrics(self, history: list) -> None:
        """``metrics.csv`` (one row per epoch) and ``metrics.png`` (loss and accuracy curves)."""
        def write_csv(tmp):
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
                writer.writeheader()
                for row in history:
                    writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})

        replace_atomically(os.path.join(self.path, "metrics.csv"), write_csv)
        figure = metrics_figure(history)
        replace_atomically(os.path.join(self.path, "metrics.png"),
                           lambda tmp: figure.savefig(tmp, format="png"))


def metrics_figure(history: list):
    """Loss and accuracy per epoch, train and val, side by side (a 1000 x 400 px matplotlib Figure)."""
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
    return figure
