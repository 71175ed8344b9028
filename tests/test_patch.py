"""focalfast.patch: swap official / timm / HF focal modulations in place, outputs unchanged."""

import pytest
import torch
from torch import nn

from focalfast import FocalModulation, focal_modulation_ref, patch
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")


@torch.no_grad()
def jitter(model: nn.Module, scale: float = 0.05) -> None:
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)


def hf_classifier(**kwargs):
    config = transformers.FocalNetConfig(embed_dim=16, depths=[1, 2], focal_levels=[2, 3], focal_windows=[3, 5],
                                         num_labels=5, **kwargs)
    model = transformers.FocalNetForImageClassification(config).eval()
    jitter(model)
    return model


def modulations(model):
    return [m for m in model.modules() if isinstance(m, FocalModulation)]


@pytest.mark.parametrize("flags", [
    {},
    dict(use_post_layernorm_in_modulation=True, normalize_modulator=True, use_layerscale=True,
         use_post_layernorm=True),
])
def test_patch_hf_model_keeps_outputs(flags):
    torch.manual_seed(0)
    model = hf_classifier(**flags)
    x = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        expected = model(x).logits
    assert patch(model) == 3
    assert len(modulations(model)) == 3
    assert all(m.layout == "nhwc" and m.backend == "auto" for m in modulations(model))
    assert not any(type(m).__name__ == "FocalNetModulation" for m in model.modules())
    with torch.no_grad():
        assert rel_err(model(x).logits, expected) < 1e-5
        assert patch(model) == 0
        assert rel_err(model(x).logits, expected) < 1e-5


def test_patch_keeps_dtype_mode_and_trains():
    torch.manual_seed(0)
    model = hf_classifier(drop_path_rate=0.0).double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    expected = model(x).logits
    assert patch(model, backend="reference") == 3
    for m in modulations(model):
        assert m.training and m.backend == "reference"
        assert all(p.dtype == torch.float64 for p in m.parameters())
    out = model(x).logits
    assert rel_err(out, expected) < 1e-12
    out.sum().backward()
    for m in modulations(model):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_patch_rejects_bad_arguments():
    model = hf_classifier()
    with pytest.raises(ValueError, match="backend"):
        patch(model, backend="fastest")
    with pytest.raises(TypeError, match="model"):
        patch("not a model")
    with pytest.raises(ValueError, match="focal_modulation_from"):
        patch(model.focalnet.encoder.stages[0].layers[0].modulation)
    assert patch(nn.Linear(3, 3)) == 0


class OfficialLayoutModulation(nn.Module):
    """A stand-in with the official module's attribute names and NHWC layout (f is a Linear)."""

    def __init__(self, dim, kernel_sizes=(3, 5)):
        super().__init__()
        self.f = nn.Linear(dim, 2 * dim + len(kernel_sizes) + 1)
        self.h = nn.Conv2d(dim, dim, 1)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.normalize_modulator = False
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in kernel_sizes)

    def forward(self, x):
        C, L = x.shape[-1], len(self.focal_layers)
        q, ctx, gates = torch.split(self.f(x), (C, C, L + 1), -1)
        weights = [layer[0].weight for layer in self.focal_layers]
        return self.proj(focal_modulation_ref(q, ctx, gates, weights, self.h.weight, self.h.bias))


def test_patch_official_layout_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), OfficialLayoutModulation(8), nn.Sequential(OfficialLayoutModulation(8)))
    x = torch.randn(2, 6, 5, 8)
    with torch.no_grad():
        expected = model(x)
        assert patch(model) == 2
        assert isinstance(model[1], FocalModulation) and isinstance(model[2][0], FocalModulation)
        assert model[1].layout == "nhwc"
        assert rel_err(model(x), expected) < 1e-6
        assert patch(model) == 0


def test_patch_timm_model():
    try:
        import timm
    except Exception as exc:  # missing, or its torchvision cannot load with this torch
        pytest.skip(f"timm is not importable here: {exc}")
    torch.manual_seed(0)
    model = timm.create_model("focalnet_tiny_srf", pretrained=False, num_classes=10).eval()
    jitter(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert patch(model) == 12
        assert all(m.layout == "nchw" for m in modulations(model))
        assert rel_err(model(x), expected) < 1e-5
        assert patch(model) == 0
