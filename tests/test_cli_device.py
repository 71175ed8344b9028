"""``--device`` on every ``focalfast`` subcommand: a device this machine cannot use ends in one line on
stderr and exit code 2, before any work (``focalfast.devices``, checked in ``focalfast.cli``)."""

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalfast.cli import COMMANDS
from focalfast.devices import device_unavailable_reason, resolve_device

REPO = Path(__file__).resolve().parents[1]
# Positional arguments a subcommand needs to parse; the device check comes before they are used.
POSITIONAL = {"visualize": ["no-such-checkpoint.safetensors"]}


def takes_device(command: str) -> bool:
    """Whether ``focalfast <command>`` has a ``--device`` option (``plan`` and ``static-cost`` run on
    the CPU whatever GPU they plan or count for)."""
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return any("--device" in action.option_strings for action in parser._actions)


DEVICE_COMMANDS = [command for command in sorted(COMMANDS) if takes_device(command)]
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: --device cuda would run")


@no_gpu
@pytest.mark.parametrize("command", DEVICE_COMMANDS)
def test_device_cuda_without_gpu_is_one_line(command, tmp_path):
    result = subprocess.run([sys.executable, "-m", "focalfast", command, *POSITIONAL.get(command, []),
                             "--device", "cuda"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line == f"focalfast: --device cuda: {device_unavailable_reason('cuda')}"


@no_gpu
def test_cuda_reason_names_the_cpu_only_build():
    reason = device_unavailable_reason("cuda:0")
    if torch.version.cuda is None:
        assert "CPU-only build" in reason and torch.__version__ in reason
    else:
        assert "no CUDA GPU is visible" in reason


def test_device_reasons():
    assert device_unavailable_reason("cpu") is None
    assert "not a torch device" in device_unavailable_reason("gpu0")
    assert device_unavailable_reason("meta") == "focalfast runs on cpu or cuda devices, got meta"
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_every_device_command_is_checked():
    """The commands that run on a device are the ones a user meets first."""
    assert {"bench", "demo", "train", "visualize"} <= set(DEVICE_COMMANDS)
