"""``focalfast visualize``: a checkpoint's gate maps and modulator norm drawn over an image.

One PNG row: the input image (with the model's prediction), then for the chosen focal
modulation layer each gate map ``gates[l]`` (levels 1..L and the global level) and the
modulator norm ``||h(ctx_all)||`` per pixel, each upsampled and overlaid on the image.
The maps come from ``FocalModulation(capture=True)``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional, Tuple

TITLE_PX = 28  # the band above the panels holding their titles


def modulation_layers(model) -> List[Tuple[str, Tuple[int, int], object]]:
    """``[(module name, (stage, block), FocalModulation)]`` in forward order.

    ``layers.{s}.blocks.{b}`` names give ``(s, b)``; ``blocks.{b}`` alone gives ``(0, b)``.
    """
    from focalfast.modules.focal_modulation import FocalModulation

    found = []
    for name, module in model.named_modules():
        if not isinstance(module, FocalModulation):
            continue
        staged = re.search(r"(?:^|\.)layers\.(\d+)\.blocks\.(\d+)\.", name + ".")
        flat = re.search(r"(?:^|\.)blocks\.(\d+)\.", name + ".")
        if staged:
            position = (int(staged.group(1)), int(staged.group(2)))
        elif flat:
            position = (0, int(flat.group(1)))
        else:
            position = (0, len(found))
        found.append((name, position, module))
    return found


def select_layer(layers, stage: int, block: int):
    """The layer at ``(stage, block)``; negative indices count from the end as in Python."""
    stages = sorted({s for _, (s, _), _ in layers})
    if not -len(stages) <= stage < len(stages):
        raise ValueError(f"stage: the model has {len(stages)} stage(s) with focal modulation, got {stage}")
    stage = stages[stage]
    in_stage = [layer for layer in layers if layer[1][0] == stage]
    if not -len(in_stage) <= block < len(in_stage):
        raise ValueError(f"block: stage {stage} has {len(in_stage)} block(s), got {block}")
    return in_stage[block]


def classifier_of(checkpoint, backend: str = "auto"):
    """The classifier a training-run checkpoint describes, with its weights (CPU, train mode)."""
    from focalfast.classifier import build_classifier
    from focalfast.run_checkpoint import load_model_state

    config = checkpoint.config
    model = build_classifier(config["model"], config["model_options"], config["image_size"],
                             checkpoint.record["num_classes"], backend)
    load_model_state(model, checkpoint, f"model {config['model']!r} built from its own config")
    return model


def _overlay_map(values, size: int):
    """``[h, w]`` map -> ``[size, size]`` numpy array scaled to [0, 1] (bilinear upsampling)."""
    import torch.nn.functional as F

    up = F.interpolate(values[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    low, high = up.min(), up.max()
    return ((up - low) / (high - low).clamp_min(1e-12)).cpu().numpy()


def visualize(checkpoint_path: str, out: str = "focal_maps.png", image: Optional[str] = None,
              stage: int = 0, block: int = -1, sample: int = 0, panel_px: int = 256,
              backend: str = "auto", device: str = "cpu") -> dict:
    """Draw the gate maps and modulator norm of layer ``(stage, block)`` for ``image`` (a file;
    None: generated shapes sample ``sample``) with the weights of ``checkpoint_path``; write a PNG
    of ``(L + 3) * panel_px`` x ``panel_px + TITLE_PX`` pixels to ``out`` and return a summary dict."""
    import torch

    from focalfast.data import Shapes, center_crop, normalize, read_image
    from focalfast.run_checkpoint import CheckpointError, load_checkpoint

    if not isinstance(panel_px, int) or panel_px < 16:
        raise ValueError(f"panel_px: expected an int >= 16, got {panel_px!r}")
    checkpoint = load_checkpoint(checkpoint_path)
    config, record = checkpoint.config, checkpoint.record
    model = classifier_of(checkpoint, backend)
    model.to(device).eval()

    layers = modulation_layers(model)
    if not layers:
        raise CheckpointError(f"checkpoint {checkpoint_path!r}: model {config['model']!r} has no focal "
                              "modulation layers to draw")
    name, position, modulation = select_layer(layers, stage, block)

    size = config["image_size"]
    if image is None:
        shapes = Shapes(max(sample + 1, 1), size, config.get("seed", 0), "val")
        pixels, _ = shapes.render(torch.tensor([sample]), "cpu", noise_seed=sample)
        pixels = pixels[0]
        source = f"generated shapes sample {sample}"
    else:
        pixels = center_crop(read_image(image), size).float() / 255.0
        source = image
    x = normalize(pixels[None], record["mean"], record["std"]).to(device)

    modulation.capture = True
    try:
        with torch.no_grad():
            probabilities = model(x).float().softmax(-1)[0]
    finally:
        modulation.capture = False
    gates, modulator = modulation.gates[0], modulation.modulator[0]   # [L+1, h, w], [C, h, w]
    modulation.gates = modulation.modulator = None
    confidence, predicted = probabilities.max(0)
    label = record["classes"][predicted.item()]

    L = gates.shape[0] - 1
    titles = [f"input: {label} {confidence.item():.0%}"]
    titles += [f"gate {l + 1} ({k}x{k})" for l, k in enumerate(modulation.kernel_sizes)]
    titles += [f"gate {L + 1} (global)", "|modulator|"]
    maps = [_overlay_map(gates[l], size) for l in range(L + 1)]
    maps.append(_overlay_map(modulator.float().norm(dim=0), size))
    picture = pixels.permute(1, 2, 0).clamp(0, 1).numpy()

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, dpi = len(titles), 100
    height = panel_px + TITLE_PX
    figure = Figure(figsize=(n * panel_px / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(figure)
    for i, title in enumerate(titles):
        axes = figure.add_axes((i / n, 0, 1 / n, panel_px / height))
        axes.set_axis_off()
        axes.imshow(picture, interpolation="bilinear", aspect="auto")
        if i > 0:
            axes.imshow(maps[i - 1], cmap="jet", alpha=0.5, interpolation="bilinear", aspect="auto")
        figure.text((i + 0.5) / n, 1 - 0.5 * TITLE_PX / height, title, ha="center", va="center",
                    fontsize=max(6, min(11, panel_px // 22)))
    figure.savefig(out, dpi=dpi)
    return dict(out=out, layer=name, stage=position[0], block=position[1], panels=titles,
                size=(n * panel_px, height), prediction=label, confidence=confidence.item(), image=source)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("checkpoint", help="a checkpoint.safetensors written by `focalfast train`")
    a("--image", default=None, help="an image file (default: a generated shapes image)")
    a("--sample", type=int, default=0, help="which generated shapes image when --image is not given")
    a("--stage", type=int, default=0, help="stage of the layer to draw (negative: from the end; default 0)")
    a("--block", type=int, default=-1, help="block within the stage (default -1: the last)")
    a("--out", default="focal_maps.png", help="output PNG (default focal_maps.png)")
    a("--panel-size", type=int, default=256, help="pixels per panel side (default 256)")
    a("--backend", choices=("auto", "reference", "triton", "cuda"), default="auto")
    a("--device", default="cpu")
    a("--list-layers", action="store_true", help="print the focal modulation layers and exit")


def run(args: argparse.Namespace) -> int:
    from focalfast.backends import BackendUnavailableError

    try:
        if args.list_layers:
            from focalfast.run_checkpoint import load_checkpoint

            model = classifier_of(load_checkpoint(args.checkpoint), args.backend)
            for name, (stage, block), module in modulation_layers(model):
                print(f"stage {stage} block {block}: {name} (dim {module.dim}, kernels {module.kernel_sizes})")
            return 0
        result = visualize(args.checkpoint, args.out, args.image, args.stage, args.block, args.sample,
                           args.panel_size, args.backend, args.device)
    except (ValueError, BackendUnavailableError) as exc:  # DataError, CheckpointError included
        print(f"focalfast visualize: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']}: {result['layer']} (stage {result['stage']}, block {result['block']}), "
          f"{len(result['panels'])} panels, prediction {result['prediction']} ({result['confidence']:.0%})")
    return 0
