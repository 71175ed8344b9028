"""``focalfast train`` under faults: bad options, divergence, signals, crashes, damaged files, bad data."""

import json
import math
import os
import signal

import pytest
import torch
from torch import nn

from focalfast import cli
from focalfast.run_checkpoint import CheckpointError, checksum, load_checkpoint, save_checkpoint
from focalfast.data import DataError, Shapes
from focalfast.train import TrainConfigError, train
from focalfast.training.faults import TrainingDiverged, TrainingInterrupted

from test_train import TINY, sha256, write_image_folder

# 3 steps per epoch; dropout and drop path, so an exact resume must restore the random generators.
RUN = dict(TINY, epochs=2)
SMALL_FOLDER = dict(model="build", image_size=16, batch_size=4, epochs=1, val_fraction=0.2, progress=False,
                    num_workers=0, model_options=dict(patch_size=8, hidden_size=8, num_layers=1, focal_levels=1))


def checkpoint_of(out):
    return load_checkpoint(os.path.join(out, "checkpoint.safetensors"))


def assert_same_state(a, b):
    for group in ("model", "optimizer", "rng"):
        tensors_a, tensors_b = getattr(a, group), getattr(b, group)
        assert tensors_a.keys() == tensors_b.keys() and tensors_a, group
        for key in tensors_a:
            assert torch.equal(tensors_a[key], tensors_b[key]), f"{group}.{key} differs"
    assert a.record["step"] == b.record["step"]
    columns = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert ([{k: row[k] for k in columns} for row in a.record["history"]]
            == [{k: row[k] for k in columns} for row in b.record["history"]])


def patch_render(monkeypatch, at_call, action):
    """Run ``action()`` inside the ``at_call``-th rendering of a generated batch (1-based)."""
    render = Shapes.render
    calls = []

    def patched(self, *args, **kwargs):
        calls.append(1)
        images, labels = render(self, *args, **kwargs)
        if len(calls) == at_call:
            images = action(images)
        return images, labels

    monkeypatch.setattr(Shapes, "render", patched)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("straight"))
    train(dict(RUN, out_dir=out))
    return checkpoint_of(out)


@pytest.mark.parametrize("name, value", [("weight_decay", math.nan), ("clip_grad", math.nan), ("lr", math.inf),
                                         ("lr", -1e-3), ("min_lr", math.nan), ("label_smoothing", math.nan),
                                         ("weight_decay", -0.1), ("val_fraction", math.nan), ("num_workers", -1),
                                         ("save_every", 0), ("grad_accum", 0), ("seed", -1), ("lr", True)])
def test_numeric_options_are_validated(tmp_path, name, value):
    out = str(tmp_path / "run")
    with pytest.raises(TrainConfigError, match=f"^{name}: "):
        train(dict(TINY, out_dir=out, **{name: value}))
    assert not os.path.exists(out)


def test_cli_rejects_nan_options(tmp_path, capsys):
    for option in ("--weight-decay", "--clip-grad"):
        assert cli.main(["train", "--out", str(tmp_path / "x"), option, "nan"]) == 2
        assert f"{option[2:].replace('-', '_')}: expected a finite number" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x")


def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "run")
    train(dict(RUN, out_dir=out, epochs=1))  # a finished run: checkpoint, metrics, summary
    before = {name: sha256(os.path.join(out, name)) for name in ("checkpoint.safetensors", "summary.json")}
    # a NaN image in the 2nd step after resuming with one more epoch; the 1st step is saved (save_every)
    patch_render(monkeypatch, at_call=2, action=lambda images: images.index_fill(0, torch.tensor([1]), math.nan))
    with pytest.raises(TrainingDiverged, match=r"non-finite training step 5 .*loss nan.*step 4\).*kept"):
        train(dict(out_dir=out, resume=True, epochs=2, save_every=1))
    kept = checkpoint_of(out)
    assert kept.record["step"] == 4 and kept.record["epoch_step"] == 1
    assert all(torch.isfinite(t).all() for t in kept.model.values())
    assert sha256(os.path.join(out, "summary.json")) == before["summary.json"]
    # the command line exits non-zero with the message, the checkpoint untouched
    saved = sha256(os.path.join(out, "checkpoint.safetensors"))
    patch_render(monkeypatch, at_call=1, action=lambda images: images * math.inf)
    assert cli.main(["train", "--out", out, "--resume", "--no-progress"]) == 1
    assert "non-finite training step 5" in capsys.readouterr().err
    assert sha256(os.path.join(out, "checkpoint.safetensors")) == saved


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    step = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data[0] = math.nan
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"non-finite weights after step 1 \(.*\): not saved"):
        train(dict(TINY, out_dir=str(out), save_every=1))
    assert os.listdir(out) == ["config.json"]


def test_resume_keeps_every_setting_not_given_again(tmp_path, capsys):
    out = str(tmp_path / "run")
    train(dict(TINY, out_dir=out, epochs=1, lr=2e-3, label_smoothing=0.1))
    # the README's resume command: nothing given, so epochs stays 1 and the run is finished
    assert cli.main(["train", "--out", out, "--resume", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.split("summary: ", 1)[1])
    assert summary["steps_this_run"] == 0 and summary["epoch"] == 1
    config = checkpoint_of(out).config
    assert (config["epochs"], config["lr"], config["label_smoothing"]) == (1, 2e-3, 0.1)
    # epochs given again continues; a stop point (max_steps) is the invocation's own, not kept
    train(dict(out_dir=out, resume=True, epochs=3, max_steps=4))
    assert train(dict(out_dir=out, resume=True, progress=False))["step"] == 9
    assert checkpoint_of(out).config["epochs"] == 3


def test_resume_refuses_data_whose_classes_differ(tmp_path):
    data = str(tmp_path / "images")
    write_image_folder(data, per_class=5)
    out = str(tmp_path / "run")
    train(dict(SMALL_FOLDER, out_dir=out, data_dir=data, max_steps=1))
    os.rename(os.path.join(data, "blue"), os.path.join(data, "zblue"))  # red would become label 0
    with pytest.raises(DataError, match=r"classes \['red', 'zblue'\] differ from the checkpoint's \['blue', 'red'\]"):
        train(dict(out_dir=out, resume=True))
    os.rename(os.path.join(data, "zblue"), os.path.join(data, "blue"))
    write_image_folder(data, classes=("green",), per_class=5)  # one more class: a wider head
    with pytest.raises(DataError, match=r"classes \['blue', 'green', 'red'\] differ"):
        train(dict(out_dir=out, resume=True))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_then_resume_equals_uninterrupted_run(straight, tmp_path, monkeypatch, capsys, sig):
    out = str(tmp_path / "run")
    before = signal.getsignal(sig)  # SIG_DFL / default_int_handler, or SIG_IGN where the shell started us ignoring it

    def send(images):
        os.kill(os.getpid(), sig)  # arrives while the 2nd batch is being prepared
        return images

    patch_render(monkeypatch, at_call=2, action=send)
    if sig == signal.SIGINT:
        with pytest.raises(TrainingInterrupted, match=r"SIGINT: stopped after step 2 .*--resume"):
            train(dict(RUN, out_dir=out))
    else:  # the command line: exit status 128 + 15
        args = ["train", "--out", out, "--model", "build", "--image-size", "32", "--batch-size", "16",
                "--train-samples", "48", "--val-samples", "16", "--epochs", "2", "--lr", "3e-3",
                "--no-progress", "--num-workers", "0"]
        args += [f"-O{k}={v}" for k, v in TINY["model_options"].items()]
        assert cli.main(args) == 128 + signal.SIGTERM
        assert "SIGTERM: stopped after step 2" in capsys.readouterr().err
    assert signal.getsignal(sig) == before  # handlers restored
    stopped = checkpoint_of(out)
    assert (stopped.record["step"], stopped.record["epoch_step"]) == (2, 2)
    monkeypatch.undo()
    assert train(dict(out_dir=out, resume=True))["steps_this_run"] == 4
    assert_same_state(checkpoint_of(out), straight)


def test_crash_after_save_every_resumes_exactly(straight, tmp_path, monkeypatch):
    out = str(tmp_path / "run")

    def crash(images):
        raise RuntimeError("simulated crash")

    patch_render(monkeypatch, at_call=6, action=crash)  # the 5th step's batch (renders: 3 steps, 1 val, step 4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(dict(RUN, out_dir=out, save_every=2))
    assert checkpoint_of(out).record["step"] == 4  # saved at steps 2, 3 (epoch end) and 4
    monkeypatch.undo()
    assert train(dict(out_dir=out, resume=True))["steps_this_run"] == 2
    assert_same_state(checkpoint_of(out), straight)


def test_unreadable_images_are_skipped_and_reported(tmp_path, capsys):
    data = tmp_path / "images"
    write_image_folder(str(data), per_class=5)
    broken = data / "red" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not a jpeg")
    summary = train(dict(SMALL_FOLDER, out_dir=str(tmp_path / "run"), data_dir=str(data), val_fraction=0.0,
                         epochs=2))  # the broken image comes up in both epochs, is reported once
    assert summary["step"] == 2 * (11 // 4) and summary["unreadable_images"] == [str(broken)]
    err = capsys.readouterr().err
    assert err.count("skipping an unreadable image") == 1 and "broken.jpg" in err


def test_no_output_of_an_existing_run_is_replaced_without_overwrite(tmp_path):
    for name in ("metrics.csv", "summary.json", "config.json"):
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).write_text("my results")
        with pytest.raises(TrainConfigError, match=f"already holds a run \\({name}\\).*--overwrite"):
            train(dict(TINY, out_dir=str(out)))
        assert (out / name).read_text() == "my results"


def tiny_checkpoint(path, record_update=(), drop=()):
    record = dict(config=dict(model="build", model_options={}, image_size=16), step=1, epoch=0, epoch_step=1,
                  steps_per_epoch=2, epoch_sums=dict(loss_sum=0.0, correct=0, seen=0), history=[],
                  classes=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3, num_classes=2)
    record.update(record_update)
    for key in drop:
        record.pop(key)
    save_checkpoint(str(path), nn.Linear(3, 2), record)
    return str(path)


def test_damaged_checkpoint_is_refused_by_name(tmp_path):
    path = tiny_checkpoint(tmp_path / "ok.safetensors")
    assert load_checkpoint(path).record["step"] == 1
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10  # a bit of the last tensor's bytes
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged\.safetensors' is damaged.*SHA-256"):
        load_checkpoint(str(damaged))


def test_checkpoint_is_flushed_before_it_is_renamed(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), replace(a, b)))
    path = tiny_checkpoint(tmp_path / "c.safetensors")
    assert events == [("fsync", path + ".tmp"), ("replace", path + ".tmp", path), ("fsync", str(tmp_path))]


def test_checkpoint_metadata_errors_name_the_file_and_key(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(CheckpointError, match=r"no_step\.safetensors'.*lacks the key\(s\) step"):
        load_checkpoint(tiny_checkpoint(tmp_path / "no_step.safetensors", drop=("step",)))
    path = tiny_checkpoint(tmp_path / "no_model.safetensors",
                           record_update=dict(config=dict(model_options={}, image_size=16)))
    with pytest.raises(CheckpointError, match=r"no_model\.safetensors'.*lacks the key\(s\) config\.model"):
        load_checkpoint(path)
    tensors = {"model.weight": torch.zeros(2)}
    text = '{"format": "focalfast.train/2", "step": '
    bad_json = str(tmp_path / "bad_json.safetensors")
    save_file(tensors, bad_json, metadata={"focalfast": text, "focalfast_sha256": checksum(text, tensors)})
    with pytest.raises(CheckpointError, match=r"bad_json\.safetensors'.*not valid JSON"):
        load_checkpoint(bad_json)
