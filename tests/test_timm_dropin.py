"""A patched timm FocalNet stays a timm FocalNet: outputs, names and 1x1-conv parameter layout,
state-dict round trip with unpatched timm, TorchScript, FX feature extraction (forward and
backward), torch.export with dynamic sizes, meta tensors; and focalnet_large_fl4 from timm
weights agrees with timm.

timm's torchvision does not load beside the CPU torch of the main CI environment, so these tests
skip there; ``.ci/run`` runs this file again in a second venv with torch 2.14.1 + torchvision + timm.
"""

import copy
import io

import pytest
import torch
from torch import nn
from torch.export import Dim

from focalfast import patch, unpatch
from focalfast.models import create, focalnet_state_dict_for_timm
from focalfast.patch import PatchedModulation
from focalfast.testing import rel_err

try:
    import timm
    from timm.models._features_fx import create_feature_extractor, get_graph_node_names
    from timm.models.focalnet import FocalModulation as TimmFocalModulation
    from timm.models.focalnet import FocalNet as TimmFocalNet
except Exception as exc:  # missing, or its torchvision cannot load beside this torch
    pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc}); .ci/run runs this file in "
                "its timm venv", allow_module_level=True)


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def small_timm(**kwargs):
    """A small timm FocalNet: two stages, 2 and 3 focal levels, every optional layer on."""
    kwargs = {**dict(embed_dim=16, depths=(1, 2), focal_levels=(2, 3), focal_windows=(3, 5), num_classes=5,
                     use_post_norm=True, use_post_norm_in_modulation=True, normalize_modulator=True,
                     layerscale_value=1e-1, drop_path_rate=0.0), **kwargs}
    return randomised(TimmFocalNet(**kwargs))


def pair(**kwargs):
    """(patched, unpatched) copies of one small timm model."""
    unpatched = small_timm(**kwargs)
    model = copy.deepcopy(unpatched)
    assert patch(model, backend="reference") == 3
    return model, unpatched


def test_patch_registered_model_keeps_outputs_names_and_layout():
    model = randomised(timm.create_model("focalnet_tiny_srf", pretrained=False, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    with torch.no_grad():
        expected = model(x)
        assert patch(model) == 12
        assert patch(model) == 0
        assert rel_err(model(x), expected) < 1e-5
    for m in model.modules():
        if isinstance(m, PatchedModulation):
            assert isinstance(m, TimmFocalModulation) and isinstance(m.f, nn.Conv2d)
            assert m.f.weight.dim() == 4 and m.proj.weight.shape[2:] == (1, 1)  # 1x1 convs, as timm's
    assert all(p is params[name] for name, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    assert unpatch(model) == 12
    assert not any(isinstance(m, PatchedModulation) for m in model.modules())


def test_state_dict_round_trips_with_unpatched_timm():
    model, _ = pair()
    x = torch.randn(2, 3, 48, 40)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    plain = small_timm(normalize_modulator=True)
    plain.load_state_dict(torch.load(buffer), strict=True)
    with torch.no_grad():
        assert rel_err(plain(x), model(x)) < 1e-6


def test_training_gradients_match_unpatched_timm():
    model, unpatched = pair()
    model.double().train()
    unpatched.double().train()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    model(x).square().sum().backward()
    unpatched(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), unpatched.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-10, name


def test_script_whole_model():
    model, unpatched = pair()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        assert rel_err(scripted(x), unpatched(x)) < 1e-6


def test_fx_feature_extraction_forward_and_backward():
    model, unpatched = pair()
    model.train()
    unpatched.train()
    train_nodes, _ = get_graph_node_names(model)
    extractor = create_feature_extractor(model, return_nodes=[train_nodes[-1]])
    reference = create_feature_extractor(unpatched, return_nodes=[train_nodes[-1]])
    x = torch.randn(2, 3, 32, 32)
    (out,) = extractor(x).values()
    (expected,) = reference(x).values()
    assert rel_err(out, expected) < 1e-6
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), unpatched.parameters()):
        assert rel_err(p.grad, q.grad) < 1e-4, name


def test_export_with_dynamic_batch_and_image_size():
    model, unpatched = pair()
    shapes = ({0: Dim("batch"), 2: 8 * Dim("h8", min=2), 3: 8 * Dim("w8", min=2)},)
    exported = torch.export.export(model, (torch.randn(2, 3, 32, 40),), dynamic_shapes=shapes)
    for size in ((1, 3, 16, 64), (3, 3, 48, 24)):
        x = torch.randn(size)
        with torch.no_grad():
            assert rel_err(exported.module()(x), unpatched(x)) < 1e-6, size


def test_meta_tensors():
    with torch.device("meta"):
        model = timm.create_model("focalnet_tiny_srf", pretrained=False, num_classes=10)
    assert patch(model, backend="triton") == 12  # meta runs the reference whatever the backend
    out = model(torch.randn(2, 3, 64, 64, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 10)
    assert model.forward_features(torch.randn(1, 3, 64, 64, device="meta")).shape == (1, 768, 2, 2)


def test_large_fl4_from_timm_weights_agrees_with_timm():
    settings = dict(embed_dim=8, depths=(1, 1, 1, 1))
    reference = small_timm(focal_levels=(4,) * 4, focal_windows=(3,) * 4, use_overlap_down=True, use_post_norm=True,
                           use_post_norm_in_modulation=False, normalize_modulator=False, layerscale_value=1e-4,
                           num_classes=3, **settings)
    ours = create("focalnet_large_fl4", num_classes=3, pretrained=reference.state_dict(), **settings).eval()
    assert ours.config.normalize_modulator is False
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(ours(x), reference(x)) < 1e-5
    # and our weights written back in timm's names load strictly into timm
    back = small_timm(focal_levels=(4,) * 4, focal_windows=(3,) * 4, use_overlap_down=True, use_post_norm=True,
                      use_post_norm_in_modulation=False, normalize_modulator=False, layerscale_value=1e-4,
                      num_classes=3, **settings)
    back.load_state_dict(focalnet_state_dict_for_timm(ours), strict=True)
    with torch.no_grad():
        assert rel_err(back(x), reference(x)) < 1e-6
