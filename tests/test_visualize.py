"""``focalfast visualize``: the PNG's panels and size, layer choice, the user's image, bad input."""

import os

import numpy as np
import pytest
from PIL import Image

from focalfast import cli
from focalfast.run_checkpoint import CheckpointError, load_checkpoint
from focalfast.data import DataError
from focalfast.classifier import build_classifier
from focalfast.train import train
from focalfast.visualize import TITLE_PX, modulation_layers, visualize

PANEL = 64
# A 4-stage FocalNet with 2 focal levels and 2 blocks in stage 2 (one epoch on 32 shapes images).
RUN = dict(model="focalnet_tiny_srf", model_options=dict(embed_dim=8, depths=[1, 1, 2, 1]),
           image_size=32, batch_size=16, epochs=1, train_samples=32, val_samples=16, progress=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("visualize_run"))
    train(dict(RUN, out_dir=out))
    return os.path.join(out, "checkpoint.safetensors")


def panels(path, count):
    """The picture area of each panel of a PNG written with ``panel_px=PANEL``, as float arrays."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (count * PANEL, PANEL + TITLE_PX)
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    return [pixels[TITLE_PX:, i * PANEL:(i + 1) * PANEL] for i in range(count)], pixels[:TITLE_PX]


def test_png_has_input_gate_and_modulator_panels(checkpoint, tmp_path):
    out = str(tmp_path / "maps.png")
    result = visualize(checkpoint, out, stage=2, block=-1, panel_px=PANEL)
    L = 2  # focal levels of every stage of focalnet_tiny_srf
    assert result["layer"] == "layers.2.blocks.1.modulation" and (result["stage"], result["block"]) == (2, 1)
    assert result["panels"][1:] == ["gate 1 (3x3)", "gate 2 (5x5)", "gate 3 (global)", "|modulator|"]
    assert result["panels"][0].startswith("input: ") and result["size"] == ((L + 3) * PANEL, PANEL + TITLE_PX)
    pictures, titles = panels(out, L + 3)
    for i, picture in enumerate(pictures):
        assert picture.std() > 5, f"panel {i} is blank"
        column = titles[:, i * PANEL:(i + 1) * PANEL]
        assert (column < 128).any(), f"panel {i} has no title"
    for i in range(1, L + 3):  # every map is overlaid in colour on the input
        assert np.abs(pictures[i] - pictures[0]).mean() > 10
    assert result["prediction"] in load_checkpoint(checkpoint).record["classes"]


def test_users_image_and_layer_choice(checkpoint, tmp_path):
    picture = np.zeros((40, 40, 3), dtype=np.uint8)
    picture[:, :20] = (255, 0, 0)   # red left half, blue right half
    picture[:, 20:] = (0, 0, 255)
    image_path = str(tmp_path / "mine.png")
    Image.fromarray(picture).save(image_path)
    out = str(tmp_path / "mine_maps.png")
    result = visualize(checkpoint, out, image=image_path, stage=0, block=0, panel_px=PANEL)
    assert result["layer"] == "layers.0.blocks.0.modulation" and result["image"] == image_path
    (first, *_), _ = panels(out, 5)
    left, right = first[:, : PANEL // 4], first[:, -PANEL // 4:]
    assert left[..., 0].mean() > 200 and left[..., 2].mean() < 50   # the input panel shows the image
    assert right[..., 2].mean() > 200 and right[..., 0].mean() < 50

    with pytest.raises(ValueError, match="stage: the model has 4 stage"):
        visualize(checkpoint, out, stage=4)
    with pytest.raises(ValueError, match="block: stage 2 has 2 block"):
        visualize(checkpoint, out, stage=2, block=2)


def test_modulation_layers_are_found_by_stage_and_block(checkpoint):
    ckpt = load_checkpoint(checkpoint)
    config = ckpt.config
    model = build_classifier(config["model"], config["model_options"], config["image_size"],
                             ckpt.record["num_classes"])
    layers = modulation_layers(model)
    assert [position for _, position, _ in layers] == [(0, 0), (1, 0), (2, 0), (2, 1), (3, 0)]
    assert all(not module.capture and module.gates is None for _, _, module in layers)


def test_bad_inputs_raise_clear_errors_and_write_nothing(checkpoint, tmp_path):
    out = str(tmp_path / "never.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        visualize(checkpoint, out, image=str(broken))
    with pytest.raises(DataError, match="cannot read image"):
        visualize(checkpoint, out, image=str(tmp_path / "missing.png"))
    with pytest.raises(CheckpointError, match="does not exist"):
        visualize(str(tmp_path / "none.safetensors"), out)

    convnext_dir = str(tmp_path / "convnext")
    train(dict(RUN, out_dir=convnext_dir, model="convnext", model_options=dict(depths=[1, 1], dims=[8, 16]),
               max_steps=1))
    with pytest.raises(CheckpointError, match="no focal modulation layers"):
        visualize(os.path.join(convnext_dir, "checkpoint.safetensors"), out)
    assert not os.path.exists(out)


def test_cli_visualize(checkpoint, tmp_path, capsys):
    out = str(tmp_path / "cli.png")
    assert cli.main(["visualize", checkpoint, "--out", out, "--stage", "1", "--panel-size", str(PANEL)]) == 0
    assert "layers.1.blocks.0.modulation" in capsys.readouterr().out
    panels(out, 5)
    assert cli.main(["visualize", checkpoint, "--list-layers"]) == 0
    assert capsys.readouterr().out.count("modulation") == 5
    assert cli.main(["visualize", checkpoint, "--image", str(tmp_path / "nope.jpg"), "--out",
                     str(tmp_path / "x.png")]) == 2
    assert "cannot read image" in capsys.readouterr().err and not os.path.exists(tmp_path / "x.png")
