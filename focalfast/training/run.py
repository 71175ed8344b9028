"""``train(config)``: one training run, in named steps.

    settings -> processes -> data -> model -> optimizer -> resume -> run directory
    -> epochs: train steps (gradient accumulation, non-finite check, stop requests),
       save points (every ``save_every`` steps, epoch ends, stops), evaluation -> summary
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
import torch
import torch.nn.functional as F

from focalfast.run_checkpoint import (CheckpointError, load_checkpoint, load_model_state, load_optimizer_state,
                                  process_rng_states, restore_rng, save_checkpoint)
from focalfast.classifier import build_classifier
from focalfast.data import DataError, build_data, normalize, sample_seed
from focalfast.training.activation_checkpointing import apply_checkpointing
from focalfast.training.config import (TrainConfig, TrainConfigError, check_config, given_settings,
                                       merge_resumed_settings)
from focalfast.training.faults import StopSignals, TrainingDiverged, TrainingInterrupted
from focalfast.training.processes import Processes
from focalfast.training.run_directory import RunDirectory
from focalfast.training.schedule import learning_rate, warmup_steps_of
from focalfast.training.throughput import StepClock, WallClock, peak_memory_mb


def resolve_amp(amp: str, device):
    """The autocast dtype (None: no autocast) of ``amp`` on ``device``."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "fp16" and device.type != "cuda":
        raise TrainConfigError("amp: fp16 needs a CUDA device (use bf16 or off on CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def parameter_groups(model, weight_decay: float) -> list:
    """AdamW groups: weight decay on matrices and kernels, none on biases, norms and 1-d parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_model(config: TrainConfig, num_classes: int):
    """The classifier ``config`` describes, for ``num_classes`` classes."""
    return build_classifier(config.model, config.model_options, config.image_size, num_classes, config.backend)


def resolve_settings(config):
    """``(TrainConfig, Checkpoint or None)``: the given settings over the defaults, or, resuming, over
    the checkpoint's; checked."""
    given = given_settings(config)
    checkpoint = None
    if given.get("resume"):
        path = RunDirectory(given.get("out_dir", TrainConfig.out_dir)).checkpoint
        if not os.path.isfile(path):
            raise CheckpointError(f"resume: no checkpoint at {path!r}")
        checkpoint = load_checkpoint(path)
        settings = merge_resumed_settings(given, checkpoint.config)
    else:
        settings = TrainConfig(**given)
    check_config(settings)
    return settings, checkpoint


@dataclass
class Progress:
    """Where the run stands: saved in every checkpoint, restored on resume.
    ``epoch_step == steps_per_epoch``: the epoch's steps are done, its evaluation is not."""

    step: int = 0
    epoch: int = 0
    epoch_step: int = 0
    history: list = field(default_factory=list)


class TrainingRun:
    """The pieces of one run, set up in order by ``__init__``; ``fit`` runs the epochs."""

    def __init__(self, settings: TrainConfig, processes: Processes, checkpoint=None):
        self.settings, self.processes, self.checkpoint = settings, processes, checkpoint
        self.run_dir = RunDirectory(settings.out_dir)
        self.run_dir.check_usable(settings.resume, settings.overwrite)
        self.device = processes.device
        self.setup_device()
        self.data = self.load_data()
        self.steps_per_epoch = len(self.data.train)
        if checkpoint is not None:
            self.check_resumed_data(checkpoint.record)
        self.model, self.trained_model = self.build_model()
        self.optimizer, self.scaler = self.build_optimizer()
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.warmup_steps = warmup_steps_of(settings.warmup_steps, self.total_steps)
        self.stop_step = min(self.total_steps, settings.max_steps or self.total_steps)
        self.progress = Progress()
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)  # this process's, this epoch
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.seen = 0
        if checkpoint is not None:
            self.resume(checkpoint)
        if processes.is_main:
            self.run_dir.prepare(settings.overwrite, dataclasses.asdict(settings))
        self.steps_this_run, self.saved_step, self.stop_signal = 0, None, None
        self.wall, self.step_clock = WallClock(self.device), StepClock(self.device)

    # -- setup ------------------------------------------------------------------------------------

    def setup_device(self) -> None:
        from focalfast import backends

        s = self.settings
        self.amp_dtype = resolve_amp(s.amp, self.device)
        self.channels_last = self.device.type == "cuda" if s.channels_last is None else s.channels_last
        self.backend = backends.resolve(s.backend, self.device)  # BackendUnavailableError says why
        world = self.processes.world_size
        if s.batch_size % (world * s.grad_accum):
            raise TrainConfigError(f"batch_size: {s.batch_size} images per step do not split into "
                                   f"{world} process(es) x {s.grad_accum} micro-batch(es) (grad_accum)")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def load_data(self):
        s, p = self.settings, self.processes
        return build_data(s.data_dir, s.image_size, s.batch_size, self.device, s.seed, s.train_samples,
                          s.val_samples, s.val_fraction, s.num_workers, p.rank, p.world_size)

    def build_model(self):
        """``(model, trained_model)``: the classifier, and the same in DistributedDataParallel with
        several processes. Every process builds the same initial weights from ``seed``, then seeds
        its own random masks (dropout, drop path) from ``(seed, rank)``."""
        s = self.settings
        torch.manual_seed(s.seed)
        model = build_model(s, len(self.data.classes))
        if self.checkpoint is not None:
            load_model_state(model, self.checkpoint, f"model {s.model!r}")
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        apply_checkpointing(model, s.checkpointing)
        torch.manual_seed(sample_seed(s.seed, -5, self.processes.rank))
        return model, self.processes.wrap(model)

    def build_optimizer(self):
        s = self.settings
        optimizer = torch.optim.AdamW(parameter_groups(self.model, s.weight_decay), lr=s.lr)
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        return optimizer, scaler

    def check_resumed_data(self, record: dict) -> None:
        """Refuse data whose classes or steps per epoch differ from the checkpoint's run."""
        if record["classes"] != self.data.classes:
            raise DataError(f"resume: the data's classes {self.data.classes} differ from the checkpoint's "
                            f"{record['classes']}: every label would change; use the run's data, or "
                            "--overwrite to start over")
        if record["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(f"resume: the data gives {self.steps_per_epoch} steps per epoch but the "
                                  f"checkpoint's run had {record['steps_per_epoch']}; the data has changed")

    def resume(self, checkpoint) -> None:
        """Continue from ``checkpoint``: optimizer, progress, epoch sums, grad scaler, RNG."""
        record = checkpoint.record
        load_optimizer_state(self.optimizer, checkpoint)
        self.progress = Progress(record["step"], record["epoch"], record["epoch_step"], record["history"])
        if self.processes.is_main:  # the sums are over all processes: one process holds them
            sums = record["epoch_sums"]
            self.loss_sum.fill_(sums["loss_sum"])
            self.correct.fill_(sums["correct"])
            self.seen = sums["seen"]
        if self.scaler is not None and record.get("grad_scaler"):
            self.scaler.load_state_dict(record["grad_scaler"])
        p = self.processes
        if record.get("world_size", 1) != p.world_size or not restore_rng(checkpoint, p.rank):
            torch.manual_seed(sample_seed(self.settings.seed, record["step"], p.rank))
            self.log(f"resuming a run of {record.get('world_size', 1)} process(es) with {p.world_size}: "
                     "random masks (dropout, drop path) are drawn anew")

    # -- the loop ---------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.processes.is_main:
            print(message, file=sys.stderr)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def model_input(self, images):
        x = normalize(images, self.data.mean, self.data.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def fit(self) -> dict:
        """Run epochs until ``stop_step`` or a stop request; return the summary."""
        s, p = self.settings, self.progress
        self.log(f"focalfast train: {s.model} on {self.data.description}, {s.image_size}px, batch "
                 f"{s.batch_size} ({self.processes.world_size} process(es) x {s.grad_accum} micro-batch(es)), "
                 f"{self.steps_per_epoch} steps/epoch, device {self.device}, backend {self.backend}, "
                 f"amp {self.amp_dtype or 'off'}, channels_last {self.channels_last}")
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.train()
        with StopSignals() as self.signals:
            while (p.step < self.stop_step or p.epoch_step == self.steps_per_epoch) and not self.stopping():
                if not self.run_epoch():
                    break  # stopped inside the epoch: max_steps, or a stop request
        summary = self.summary()
        if self.stop_signal is not None:
            name = signal.Signals(self.stop_signal).name
            raise TrainingInterrupted(f"{name}: stopped after step {p.step} (epoch {p.epoch + 1}, batch "
                                      f"{p.epoch_step}) and saved {self.run_dir.checkpoint}; continue with "
                                      "--resume", self.stop_signal)
        return summary

    def stopping(self) -> bool:
        """Whether any process received SIGINT / SIGTERM (agreed by all processes)."""
        if self.stop_signal is None:
            flag = torch.tensor([float(self.signals.received is not None)], device=self.device)
            if self.processes.sum(flag).item() > 0:
                self.stop_signal = self.signals.received or signal.SIGTERM
        return self.stop_signal is not None

    def run_epoch(self) -> bool:
        """The rest of the current epoch's steps (saving where due), then, at its end, the evaluation;
        False if the run stopped before the end."""
        from tqdm.auto import tqdm

        s, p = self.settings, self.progress
        epoch_started = time.perf_counter()
        epoch_wall, epoch_steps = WallClock(self.device), StepClock(self.device)
        bar = tqdm(total=self.steps_per_epoch, initial=p.epoch_step, desc=f"epoch {p.epoch + 1}/{s.epochs}",
                   disable=not (s.progress and self.processes.is_main), dynamic_ncols=True, file=sys.stderr)
        window_images, window_start = 0, time.perf_counter()
        lr = learning_rate(max(p.step - 1, 0), s.lr, s.min_lr, self.warmup_steps, self.total_steps)
        batches = self.data.train.batches(p.epoch, p.epoch_step) if p.epoch_step < self.steps_per_epoch else ()
        for images, labels in batches:
            timed = self.steps_this_run >= s.timing_warmup
            if timed:
                self.wall.start()
                epoch_wall.start()
                self.step_clock.begin()
                epoch_steps.begin()
            lr = learning_rate(p.step, s.lr, s.min_lr, self.warmup_steps, self.total_steps)
            stop = self.train_step(images, labels, lr)
            images_all = labels.numel() * self.processes.world_size
            if timed:
                for clock in (self.wall, epoch_wall):
                    clock.images += images_all
                for clock in (self.step_clock, epoch_steps):
                    clock.end(images_all)
            p.step, p.epoch_step, self.steps_this_run = p.step + 1, p.epoch_step + 1, self.steps_this_run + 1
            window_images += images_all
            bar.update(1)
            if p.step % s.log_every == 0 or p.epoch_step == self.steps_per_epoch or p.step == self.stop_step:
                loss_sum, correct, seen = self.epoch_sums()
                now = time.perf_counter()
                postfix = dict(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}", lr=f"{lr:.2e}",
                               **{"img/s": f"{window_images / (now - window_start):.1f}"})
                window_images, window_start = 0, now
                memory = peak_memory_mb(self.device)
                if memory is not None:
                    postfix["mem"] = f"{memory / 1024:.2f}GB"
                bar.set_postfix(postfix, refresh=False)
            if s.save_every and p.step % s.save_every == 0:
                self.save(lr)
            if stop or p.step >= self.stop_step:
                break
        self.wall.stop()
        epoch_wall.stop()
        bar.close()
        if p.epoch_step < self.steps_per_epoch or self.stop_signal is not None:
            if self.saved_step != p.step:
                self.save(lr)
            return False
        self.end_epoch(lr, epoch_wall, epoch_steps, time.perf_counter() - epoch_started)
        return True

    def train_step(self, images, labels, lr: float) -> bool:
        """One optimizer step on this process's share of a batch, in ``grad_accum`` micro-batches.
        Raises ``TrainingDiverged`` (before updating the weights) on a non-finite loss or gradient
        norm; returns whether a stop was requested (both decided alike on every process)."""
        s = self.settings
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images_here = labels.numel()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        micro_batches = list(zip(images.chunk(s.grad_accum), labels.chunk(s.grad_accum)))
        for i, (x, y) in enumerate(micro_batches):
            defer_sync = self.processes.distributed and i < len(micro_batches) - 1
            with self.trained_model.no_sync() if defer_sync else nullcontext():
                with self.autocast():
                    logits = self.trained_model(self.model_input(x))
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=s.label_smoothing, reduction="sum")
                scaled = loss / images_here  # the mean over this process's share of the batch
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach().double()
            self.correct += (logits.detach().argmax(1) == y).sum()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   s.clip_grad if s.clip_grad > 0 else math.inf)
        finite = torch.isfinite(loss_sum)
        if self.scaler is None:  # with fp16 loss scaling, overflowing gradients only skip the step
            finite = finite & torch.isfinite(grad_norm)
        flags = torch.stack([(~finite).float(), torch.tensor(float(self.signals.received is not None),
                                                              device=self.device)])
        diverged, stop = (value > 0 for value in self.processes.sum(flags).tolist())
        if diverged:
            self.optimizer.zero_grad(set_to_none=True)
            p = self.progress
            last = (f"the last checkpoint (step {self.saved_step})" if self.saved_step is not None
                    else "any earlier checkpoint")
            raise TrainingDiverged(
                f"non-finite training step {p.step + 1} (epoch {p.epoch + 1}, batch {p.epoch_step + 1}): loss "
                f"{loss_sum.item() / images_here:.4g}, gradient norm {grad_norm.item():.4g}; the weights were not "
                f"updated and {last} in {self.run_dir.path!r} is kept. Lower --lr, keep --clip-grad on, "
                "or check the data")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss_sum += loss_sum
        self.seen += images_here
        if stop:
            self.stop_signal = self.signals.received or signal.SIGTERM
        return stop

    def epoch_sums(self):
        """``(loss_sum, correct, seen)`` of the current epoch's training images, over all processes."""
        sums = torch.stack([self.loss_sum, self.correct.double(),
                            torch.tensor(float(self.seen), dtype=torch.float64, device=self.device)])
        loss_sum, correct, seen = self.processes.sum(sums).tolist()
        return loss_sum, int(correct), int(seen)

    @torch.no_grad()
    def evaluate(self):
        """``(val_loss, val_acc)`` over the validation images of all processes; None, None without any."""
        if self.data.val is None:
            return None, None
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, labels in self.data.val.batches(self.progress.epoch):
            with self.autocast():
                logits = self.model(self.model_input(images))
            sums[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
            sums[1] += (logits.argmax(1) == labels).sum()
            sums[2] += labels.numel()
        self.model.train()
        loss_sum, correct, seen = self.processes.sum(sums).tolist()
        return (loss_sum / seen, correct / seen) if seen else (None, None)

    def end_epoch(self, lr: float, wall: WallClock, steps: StepClock, seconds: float) -> None:
        """Evaluate, append the epoch's metrics, start the next epoch, save, write metrics."""
        p = self.progress
        val_loss, val_acc = self.evaluate()
        loss_sum, correct, seen = self.epoch_sums()
        p.history.append(dict(epoch=p.epoch + 1, step=p.step, lr=lr, train_loss=loss_sum / seen,
                              train_acc=correct / seen, val_loss=val_loss, val_acc=val_acc,
                              train_images_per_s=wall.rate(), step_images_per_s=steps.rate(),
                              peak_memory_mb=peak_memory_mb(self.device), seconds=seconds))
        p.epoch, p.epoch_step = p.epoch + 1, 0
        self.loss_sum.zero_()
        self.correct.zero_()
        self.seen = 0
        self.save(lr)
        if self.processes.is_main:
            self.run_dir.write_metrics(p.history)
        row = p.history[-1]
        val = f", val loss {val_loss:.4f} acc {val_acc:.3f}" if val_loss is not None else ""
        self.log(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}{val}")

    # -- outputs ----------------------------------------------------------------------------------

    def rng_states(self) -> dict:
        """Every process's generator states, keyed ``<rank>.cpu`` / ``<rank>.cuda``."""
        states = {}
        for key, state in process_rng_states().items():
            name = key.split(".", 1)[1]
            parts = self.processes.gather(state.to(self.device) if self.processes.distributed else state)
            states.update({f"{rank}.{name}": part.cpu() for rank, part in enumerate(parts)})
        return states

    def save(self, lr: float) -> None:
        """Checkpoint the run as it stands (a collective: every process calls it; rank 0 writes).
        Raises ``TrainingDiverged`` instead of writing non-finite weights."""
        p = self.progress
        broken = [name for name, tensor in self.model.state_dict().items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if broken:
            raise TrainingDiverged(f"non-finite weights after step {p.step} ({', '.join(broken[:3])}"
                                   f"{', ...' if len(broken) > 3 else ''}): not saved; the last checkpoint "
                                   f"in {self.run_dir.path!r} is kept")
        loss_sum, correct, seen = self.epoch_sums()
        rng_states = self.rng_states()
        if self.processes.is_main:
            record = dict(config=dataclasses.asdict(self.settings), step=p.step, epoch=p.epoch,
                          epoch_step=p.epoch_step, steps_per_epoch=self.steps_per_epoch,
                          epoch_sums=dict(loss_sum=loss_sum, correct=correct, seen=seen), history=p.history,
                          lr=lr, classes=self.data.classes, mean=self.data.mean, std=self.data.std,
                          num_classes=len(self.data.classes), world_size=self.processes.world_size,
                          grad_scaler=self.scaler.state_dict() if self.scaler is not None else None)
            save_checkpoint(self.run_dir.checkpoint, self.model, record, self.optimizer, rng_states)
        self.saved_step = p.step

    def summary(self) -> dict:
        """The run's summary (written to ``summary.json`` by rank 0)."""
        s, p = self.settings, self.progress
        last = dict(p.history[-1]) if p.history else {}
        loss_sum, correct, seen = self.epoch_sums()
        if seen:  # stopped inside an epoch: that epoch's training metrics so far
            last.update(train_loss=loss_sum / seen, train_acc=correct / seen)
        summary = dict(
            model=s.model, backend=self.backend, device=str(self.device),
            device_name=torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu",
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else "off",
            channels_last=self.channels_last, checkpointing=s.checkpointing, image_size=s.image_size,
            batch_size=s.batch_size, grad_accum=s.grad_accum, processes=self.processes.world_size,
            step=p.step, epoch=p.epoch, steps_this_run=self.steps_this_run,
            timed_steps=max(0, self.steps_this_run - s.timing_warmup),
            train_images_per_s=self.wall.rate(), step_images_per_s=self.step_clock.rate(),
            peak_memory_mb=peak_memory_mb(self.device),
            train_loss=last.get("train_loss"), train_acc=last.get("train_acc"),
            val_loss=last.get("val_loss"), val_acc=last.get("val_acc"),
            unreadable_images=self.data.unreadable(), torch=torch.__version__, out_dir=s.out_dir)
        if self.processes.is_main:
            self.run_dir.write_json("summary.json", summary)
        return summary


def train(config) -> dict:
    """Train as ``config`` says and return the summary dict.

    ``config``: a ``TrainConfig`` or a dict of its fields. With ``resume``, the settings not given
    (a dict's missing keys; a ``TrainConfig``'s fields left at their defaults) are the checkpoint's.
    Raises ``TrainConfigError``, ``focalfast.data.DataError`` or ``focalfast.run_checkpoint.CheckpointError``
    (all ValueError) before anything is written when the settings, data or checkpoint are unusable;
    ``TrainingDiverged`` on a non-finite step; ``TrainingInterrupted`` after saving on SIGINT / SIGTERM.
    """
    settings, checkpoint = resolve_settings(config)
    processes = Processes(settings.device)
    try:
        run = TrainingRun(settings, processes, checkpoint)
        summary = run.fit()
        # The DDP model and its gloo work go before the group does (freed at exit instead, a gloo thread can
        # outlive the group and abort the process), and no process leaves the group while another is in it.
        del run
        gc.collect()
        processes.barrier()
        return summary
    finally:
        processes.close()
