"""focalfast.patch / unpatch: HF transformers and official focal modulations run on the fused op in
place, keep their class, names, parameters and attributes, and come back unchanged.
(timm: tests/test_timm_dropin.py.)"""

import copy
import io

import pytest
import torch
from torch import nn

import focalfast
from focalfast import FocalModulation, patch, unpatch
from focalfast.patch import PatchedModulation
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")
from transformers.models.focalnet.modeling_focalnet import FocalNetModulation  # noqa: E402

ALL_FLAGS = dict(use_post_layernorm_in_modulation=True, normalize_modulator=True, use_layerscale=True,
                 use_post_layernorm=True)


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


def patched(model):
    return [m for m in model.modules() if isinstance(m, PatchedModulation)]


@pytest.mark.parametrize("flags", [{}, ALL_FLAGS])
def test_patch_hf_model_keeps_outputs_names_and_parameters(flags):
    torch.manual_seed(0)
    model = hf_classifier(**flags)
    x = torch.randn(2, 3, 40, 36)
    names = [name for name, _ in model.named_modules()]
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x).logits
    assert patch(model) == 3
    modulations = patched(model)
    assert len(modulations) == 3
    for m in modulations:
        assert isinstance(m, FocalNetModulation) and type(m).__name__ == "FocalNetModulation"
        assert m.backend == "auto" and "backend='auto'" in repr(m)
        assert m.use_post_layernorm_in_modulation == flags.get("use_post_layernorm_in_modulation", False)
        assert isinstance(m.projection_in, nn.Linear) and isinstance(m.projection_context, nn.Conv2d)
    # the same modules and the very same parameter tensors under the same names: nothing copied
    assert [name for name, _ in model.named_modules()] == names
    assert all(p is params[name] for name, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert rel_err(model(x).logits, expected) < 1e-6
        assert patch(model) == 0
        assert rel_err(model(x).logits, expected) < 1e-6


def test_patched_model_trains_like_the_unpatched_one():
    torch.manual_seed(0)
    model = hf_classifier(drop_path_rate=0.0, **ALL_FLAGS).double().train()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert patch(model, backend="reference") == 3
    assert all(m.training and m.backend == "reference" for m in patched(model))
    out, expected = model(x).logits, twin(x).logits
    assert rel_err(out, expected) < 1e-12
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad is not None and rel_err(p.grad, q.grad) < 1e-10, name


def test_unpatch_restores_the_library_class_with_trained_weights():
    torch.manual_seed(0)
    model = hf_classifier(**ALL_FLAGS)
    x = torch.randn(2, 3, 32, 32)
    patch(model, backend="reference")
    jitter(model)  # "training" while patched
    with torch.no_grad():
        expected = model(x).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert unpatch(model) == 3 and unpatch(model) == 0
    for m in model.modules():
        if isinstance(m, FocalNetModulation):
            assert type(m) is FocalNetModulation and "backend" not in m.__dict__
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert rel_err(model(x).logits, expected) < 1e-6


def test_patched_model_pickles_and_deep_copies():
    torch.manual_seed(0)
    model = hf_classifier()
    patch(model, backend="reference")
    x = torch.randn(1, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    for twin in (torch.load(buffer, weights_only=False), copy.deepcopy(model)):
        assert len(patched(twin)) == 3 and all(m.backend == "reference" for m in patched(twin))
        with torch.no_grad():
            assert torch.equal(twin(x).logits, model(x).logits)


def test_patch_a_modulation_itself_and_set_the_backend_again():
    torch.manual_seed(0)
    modulation = hf_classifier().focalnet.encoder.stages[0].layers[0].modulation
    x = torch.randn(2, 5, 4, 16)
    with torch.no_grad():
        expected = modulation(x)
        assert patch(modulation, backend="reference") == 1
        assert rel_err(modulation(x), expected) < 1e-6
        assert patch(modulation, backend="auto") == 0 and modulation.backend == "auto"


def test_patch_rejects_bad_arguments():
    model = hf_classifier()
    with pytest.raises(ValueError, match="backend"):
        patch(model, backend="fastest")
    with pytest.raises(TypeError, match="model"):
        patch("not a model")
    with pytest.raises(TypeError, match="model"):
        unpatch(None)
    assert patch(nn.Linear(3, 3)) == 0
    assert patch(FocalModulation(8)) == 0  # already focalfast's


def test_patch_refuses_what_the_fused_op_does_not_compute_and_changes_nothing():
    model = hf_classifier()
    model.focalnet.encoder.stages[1].layers[1].modulation.focal_layers[2][1] = nn.GELU(approximate="tanh")
    with pytest.raises(ValueError, match=r"stages\.1\.layers\.1\.modulation\.focal_layers\.2: .*exact nn\.GELU"):
        patch(model)
    assert patched(model) == []
    model = hf_classifier()
    model.focalnet.encoder.stages[0].layers[0].modulation.activation = nn.SiLU()
    with pytest.raises(ValueError, match=r"stages\.0\.layers\.0\.modulation\.activation: .*exact GELU .*SiLU"):
        patch(model)
    assert patched(model) == []


class OfficialModulation(nn.Module):
    """A stand-in with the official module's attributes and forward ([B, H, W, C], f a Linear)."""

    def __init__(self, dim, focal_level=2, focal_window=3, use_postln_in_modulation=False, normalize_modulator=False):
        super().__init__()
        self.dim, self.focal_level = dim, focal_level
        self.use_postln_in_modulation, self.normalize_modulator = use_postln_in_modulation, normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, 1)
        self.act = nn.GELU()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        self.focal_layers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in (2 * level + focal_window for level in range(focal_level)))
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)

    def forward(self, x):
        C, L = self.dim, self.focal_level
        q, ctx, gates = torch.split(self.f(x).permute(0, 3, 1, 2), (C, C, L + 1), 1)
        ctx_all = 0
        for level in range(L):
            ctx = self.focal_layers[level](ctx)
            ctx_all = ctx_all + ctx * gates[:, level:level + 1]
        ctx_all = ctx_all + self.act(ctx.mean((2, 3), keepdim=True)) * gates[:, L:]
        if self.normalize_modulator:
            ctx_all = ctx_all / (L + 1)
        out = (q * self.h(ctx_all)).permute(0, 2, 3, 1)
        if self.use_postln_in_modulation:
            out = self.ln(out)
        return self.proj_drop(self.proj(out))


def test_patch_official_modulations():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), OfficialModulation(8),
                          nn.Sequential(OfficialModulation(8, 3, use_postln_in_modulation=True, normalize_modulator=True)))
    jitter(model, 0.3)
    x = torch.randn(2, 6, 5, 8)
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        assert patch(model) == 2
        assert isinstance(model[1], OfficialModulation) and isinstance(model[2][0], OfficialModulation)
        assert list(model.state_dict()) == keys
        assert rel_err(model(x), expected) < 1e-6
        assert patch(model) == 0
        assert unpatch(model) == 2
        assert type(model[1]) is OfficialModulation and not hasattr(model[1], "layout")
        assert rel_err(model(x), expected) < 1e-6


def test_focal_modulation_from_still_converts_to_focalfasts_layer():
    torch.manual_seed(0)
    modulation = hf_classifier(**ALL_FLAGS).focalnet.encoder.stages[1].layers[0].modulation
    ours = focalfast.focal_modulation_from(modulation, backend="reference")
    assert isinstance(ours, FocalModulation) and ours.normalize_modulator
    x = torch.randn(2, 4, 3, 32)
    with torch.no_grad():
        assert rel_err(ours(x), modulation(x)) < 1e-6
