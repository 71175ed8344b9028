"""focalfast.build / focalfast.output_size: the Edifice-style isotropic FocalNet."""

import pytest
import torch

import focalfast
from focalfast import FocalModulation, build, output_size
from focalfast.models import FocalNet
from focalfast.testing import rel_err

SMALL = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=2)


def test_defaults():
    model = build()
    assert isinstance(model, FocalNet) and len(model.layers) == 1 and len(model.layers[0].blocks) == 4
    assert model.patch_embed.proj.kernel_size == (16, 16) and model.num_features == 256
    modulations = [m for m in model.modules() if isinstance(m, FocalModulation)]
    assert len(modulations) == 4 and all(m.kernel_sizes == [3, 5, 7] for m in modulations)
    assert output_size() == 256 and output_size(num_classes=10) == 10


@pytest.mark.parametrize("options", [
    dict(),
    dict(num_classes=10),
    dict(in_channels=1, focal_levels=1, focal_kernel=5),
    dict(image_size=24, patch_size=4, num_layers=1, focal_levels=4, focal_kernel=1, num_classes=3),
    dict(hidden_size=12, mlp_ratio=2.0, dropout=0.1, drop_path_rate=0.2, backend="reference"),
])
def test_output_shapes_follow_output_size(options):
    torch.manual_seed(0)
    options = {**SMALL, **options}
    model = build(**options).eval()
    x = torch.randn(2, options.get("in_channels", 3), options["image_size"], options["image_size"])
    out = model(x)
    expected = options.get("num_classes") or options["hidden_size"]
    assert out.shape == (2, expected) and output_size(**options) == expected
    kernels = [options.get("focal_kernel", 3) + 2 * level for level in range(options.get("focal_levels", 3))]
    for m in model.modules():
        if isinstance(m, FocalModulation):
            assert m.kernel_sizes == kernels and m.backend == options.get("backend")
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_is_the_real_focal_modulation():
    """The built model's blocks are FocalModulation with the op; against the pure reference
    written out by hand for one block's modulation."""
    torch.manual_seed(0)
    model = build(**SMALL, backend="reference").eval()
    modulation = model.layers[0].blocks[0].modulation
    x = torch.randn(2, 4, 4, 16)
    C, L = 16, 3
    q, ctx, gates = torch.split(modulation.f(x), (C, C, L + 1), -1)
    expected = modulation.proj(focalfast.focal_modulation_ref(
        q, ctx, gates, [layer[0].weight for layer in modulation.focal_layers], modulation.h.weight,
        modulation.h.bias))
    with torch.no_grad():
        assert rel_err(modulation(x), expected) < 1e-6


def test_dropout_only_in_training():
    torch.manual_seed(0)
    model = build(**SMALL, dropout=0.3, drop_path_rate=0.3)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))


@pytest.mark.parametrize("options, name", [
    (dict(image_size=30, patch_size=16), "patch_size"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(hidden_size=-8), "hidden_size"),
    (dict(image_size=0), "image_size"),
    (dict(patch_size=0), "patch_size"),
    (dict(in_channels=0), "in_channels"),
    (dict(focal_levels=0), "focal_levels"),
    (dict(focal_kernel=4), "focal_kernel"),
    (dict(num_classes=0), "num_classes"),
    (dict(num_layers=2.5), "num_layers"),
    (dict(dropout=1.5), "dropout"),
    (dict(drop_path_rate=-0.1), "drop_path_rate"),
    (dict(mlp_ratio=0), "mlp_ratio"),
    (dict(backend="fastest"), "backend"),
])
def test_bad_options_name_the_option(options, name):
    for fn in (build, output_size):
        with pytest.raises(ValueError, match=name):
            fn(**options)


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean 'focalnet_base_lrf'"):
        focalfast.models.create("focalnet_base_lfr")
