"""Weights: create() follows the weights' library where a variant differs (focalnet_large_fl4),
one strict loader and one error type (focalfast.WeightsError) everywhere, files named in errors."""

import pytest
import torch

import focalfast
from focalfast import WeightsError
from focalfast.run_checkpoint import CheckpointError
from focalfast.models import (FocalNet, FocalNetConfig, convert_focalnet_state_dict, create,
                              detect_focalnet_source, focalnet_state_dict_for_timm)
from focalfast.testing import rel_err

SMALL = dict(embed_dim=8, depths=(1, 1, 1, 1), num_classes=3)


def random_large_fl4(normalize_modulator):
    torch.manual_seed(0)
    model = create("focalnet_large_fl4", normalize_modulator=normalize_modulator, **SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def hf_layout(state):
    """Our state dict under HF transformers' top-level prefix (enough for source detection)."""
    return {f"focalnet.{k}": v for k, v in state.items()}


def test_timm_export_is_the_inverse_of_the_timm_import():
    torch.manual_seed(0)
    for config in (FocalNetConfig(embed_dim=8, depths=(1, 2, 1), use_layerscale=True, use_postln=True,
                                  use_postln_in_modulation=True, use_conv_embed=True),
                   FocalNetConfig(embed_dim=8, depths=(1, 1))):
        model = FocalNet(config, num_classes=3)
        timm_state = focalnet_state_dict_for_timm(model)
        assert detect_focalnet_source(timm_state) == "timm"
        assert timm_state["layers.1.downsample.proj.weight"].shape == model.layers[0].downsample.proj.weight.shape
        back = convert_focalnet_state_dict(timm_state)
        assert back.keys() == model.state_dict().keys()
        assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_large_fl4_follows_the_library_of_its_weights():
    x = torch.randn(1, 3, 32, 32)
    as_timm = random_large_fl4(normalize_modulator=False)  # what timm's focalnet_large_fl4 computes
    as_official = random_large_fl4(normalize_modulator=True)
    with torch.no_grad():
        # the setting matters: the same weights give other logits
        assert rel_err(as_timm(x), as_official(x)) > 1e-3
        from_timm = create("focalnet_large_fl4", pretrained=focalnet_state_dict_for_timm(as_timm), **SMALL).eval()
        assert from_timm.config.normalize_modulator is False
        assert torch.equal(from_timm(x), as_timm(x))
        from_official = create("focalnet_large_fl4", pretrained=as_official.state_dict(), **SMALL).eval()
        assert from_official.config.normalize_modulator is True
        assert torch.equal(from_official(x), as_official(x))
        # an explicit setting wins over the table
        forced = create("focalnet_large_fl4", pretrained=focalnet_state_dict_for_timm(as_timm),
                        normalize_modulator=True, **SMALL)
        assert forced.config.normalize_modulator is True


def test_large_fl4_refuses_weights_that_do_not_say():
    hf_state = hf_layout(random_large_fl4(normalize_modulator=False).state_dict())
    with pytest.raises(WeightsError, match=r"focalnet_large_fl4 .*normalize_modulator.*hf weights do not say"):
        create("focalnet_large_fl4", pretrained=hf_state, **SMALL)
    model = create("focalnet_large_fl4", pretrained=hf_state, normalize_modulator=False, **SMALL)
    assert model.config.normalize_modulator is False
    # variants without such a difference load any library's weights as before
    tiny = create("focalnet_tiny_srf", pretrained=hf_layout(create("focalnet_tiny_srf", **SMALL).state_dict()),
                  **SMALL)
    assert tiny.config.normalize_modulator is False


def test_every_weight_loader_raises_weights_error(tmp_path):
    from focalfast.run_checkpoint import Checkpoint, load_model_state

    model = create("focalnet_tiny_srf", **SMALL)
    broken = dict(model.state_dict())
    broken.pop("norm.weight")
    with pytest.raises(WeightsError, match=r"missing keys 1 \[norm\.weight\]"):
        focalfast.models.load_focalnet_weights(model, broken)
    layer = focalfast.FocalModulation(8)
    with pytest.raises(WeightsError, match=r"unexpected keys 1 \[extra\]"):
        focalfast.load_modulation_state_dict(layer, {**layer.state_dict(), "extra": torch.zeros(1)})
    convnext = focalfast.build_convnext(num_classes=3, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    with pytest.raises(WeightsError, match="missing keys"):
        focalfast.models.load_convnext_weights(convnext, {})
    checkpoint = Checkpoint(str(tmp_path / "run.safetensors"), {f"model.{k}": v for k, v in broken.items()},
                            {"config": {"model": "focalnet_tiny_srf"}})
    with pytest.raises(CheckpointError, match=r"another architecture.*missing keys 1 \[norm\.weight\]") as info:
        load_model_state(model, checkpoint)
    assert isinstance(info.value, WeightsError)


def test_truncated_safetensors_error_names_the_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in create("focalnet_tiny_srf", **SMALL).state_dict().items()}, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match=r"pretrained: cannot read '.*weights\.safetensors' as a safetensors"):
        create("focalnet_tiny_srf", pretrained=path, **SMALL)
