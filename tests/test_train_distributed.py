"""Several training processes (torchrun, DistributedDataParallel over gloo on CPU), gradient
accumulation and activation checkpointing modes: the same global batch gives the same run."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from focalfast import cli
from focalfast.run_checkpoint import load_checkpoint
from focalfast.train import TrainConfigError, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No dropout or drop path: random masks are drawn per process, so only a deterministic model can
# give the same weights whatever the number of processes. 4 steps per epoch of 8 images.
RUN = dict(model="build", image_size=16, batch_size=8, train_samples=32, val_samples=12, epochs=2, lr=3e-3,
           model_options=dict(patch_size=8, hidden_size=8, num_layers=2, focal_levels=1), progress=False,
           num_workers=0)


def cli_args(settings):
    args = ["--model", settings["model"], "--image-size", str(settings["image_size"]),
            "--batch-size", str(settings["batch_size"]), "--train-samples", str(settings["train_samples"]),
            "--val-samples", str(settings["val_samples"]), "--epochs", str(settings["epochs"]),
            "--lr", str(settings["lr"]), "--no-progress", "--num-workers", "0"]
    return args + [f"-O{k}={v}" for k, v in settings["model_options"].items()]


def assert_close_runs(a, b, rtol=1e-4, atol=1e-6):
    """Same step and history; weights and optimizer state equal to float rounding (the sums over a
    batch run in another order when it is split over processes or micro-batches)."""
    assert a.record["step"] == b.record["step"] and a.model.keys() == b.model.keys()
    for group in ("model", "optimizer"):
        tensors_a, tensors_b = getattr(a, group), getattr(b, group)
        assert tensors_a.keys() == tensors_b.keys()
        for key in tensors_a:
            torch.testing.assert_close(tensors_a[key], tensors_b[key], rtol=rtol, atol=atol, msg=f"{group}.{key}")
    for row_a, row_b in zip(a.record["history"], b.record["history"], strict=True):
        assert row_a["val_acc"] == row_b["val_acc"] and row_a["step"] == row_b["step"]
        assert row_a["val_loss"] == pytest.approx(row_b["val_loss"], rel=1e-4)


def checkpoint_of(out):
    return load_checkpoint(os.path.join(out, "checkpoint.safetensors"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    outs = {}
    for grad_accum in (1, 2):
        outs[grad_accum] = str(tmp_path / f"accum{grad_accum}")
        summary = train(dict(RUN, out_dir=outs[grad_accum], grad_accum=grad_accum, max_steps=5))
        assert summary["grad_accum"] == grad_accum and summary["step"] == 5
    assert_close_runs(checkpoint_of(outs[1]), checkpoint_of(outs[2]))
    with pytest.raises(TrainConfigError, match=r"batch_size: 8 images per step do not split into 1 process\(es\) x 3"):
        train(dict(RUN, out_dir=str(tmp_path / "x"), grad_accum=3))


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_with_one(tmp_path):
    """torchrun --nproc_per_node 2 (gloo, CPU) to step 5 (past an epoch end and its sharded
    evaluation) == one process to step 5; both resumed with one process to the end agree too."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    train(dict(RUN, out_dir=one, max_steps=5))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on the loopback, whatever the host name resolves to
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "focalfast", "train", "--out", two,
               "--max-steps", "5", *cli_args(RUN)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("summary: ") == 1 and '"processes": 2' in done.stdout  # rank 0 reports
    two_processes = checkpoint_of(two)
    assert two_processes.record["world_size"] == 2 and {"0.cpu", "1.cpu"} <= set(two_processes.rng)
    assert_close_runs(checkpoint_of(one), two_processes)
    for out in (one, two):
        assert train(dict(out_dir=out, resume=True))["step"] == 8
    assert_close_runs(checkpoint_of(one), checkpoint_of(two))


def test_checkpointing_modes_reach_the_models(tmp_path, monkeypatch, capsys):
    """--checkpointing MODE calls focalfast.models.set_checkpointing(model, MODE); --grad-checkpointing
    is "blocks" and is recorded so in the run's settings."""
    from focalfast import models

    base = ["train", "--max-steps", "1", "--epochs", "1", *cli_args(dict(RUN, train_samples=8, val_samples=4))]
    calls = []
    monkeypatch.setattr(models, "set_checkpointing", lambda model, mode: calls.append((type(model).__name__, mode)))
    for mode in ("mlp", "stage"):
        assert cli.main([*base, "--out", str(tmp_path / mode), "--checkpointing", mode]) == 0
    assert cli.main([*base, "--out", str(tmp_path / "grad"), "--grad-checkpointing"]) == 0
    assert [mode for _, mode in calls] == ["mlp", "stage", "blocks"]
    assert checkpoint_of(str(tmp_path / "grad")).config["checkpointing"] == "blocks"
