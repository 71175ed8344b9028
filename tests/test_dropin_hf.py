"""A patched HF transformers FocalNet stays an HF FocalNet: save_pretrained -> plain transformers
load round-trips, and adapters that name HF's submodules still apply."""

import pytest
import torch
from torch import nn

from focalfast import patch
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")


def hf_classifier():
    config = transformers.FocalNetConfig(embed_dim=16, depths=[1, 2], focal_levels=[2, 3], focal_windows=[3, 5],
                                         num_labels=5, use_post_layernorm_in_modulation=True,
                                         normalize_modulator=True)
    model = transformers.FocalNetForImageClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_save_pretrained_of_a_patched_model_loads_in_plain_transformers(tmp_path):
    torch.manual_seed(0)
    model = hf_classifier()
    x = torch.randn(2, 3, 40, 36)
    assert patch(model) == 3
    with torch.no_grad():
        expected = model(x).logits
    model.save_pretrained(tmp_path)
    plain, info = transformers.FocalNetForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert not any(type(m).__module__.startswith("focalfast") for m in plain.modules())
    with torch.no_grad():
        assert rel_err(plain.eval()(x).logits, expected) < 1e-6
    # and back: the plain file loads into a patched model with the same keys
    again = transformers.FocalNetForImageClassification.from_pretrained(tmp_path).eval()
    patch(again)
    with torch.no_grad():
        assert rel_err(again(x).logits, expected) < 1e-6


class LowRankAdapter(nn.Module):
    """LoRA-style: the wrapped Linear plus a low-rank update (what PEFT puts on target_modules)."""

    def __init__(self, base: nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.up.weight, std=0.1)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def add_adapters(model, targets=("projection_in", "projection_out")):
    """Wrap every submodule whose name ends with one of ``targets``, as PEFT's target_modules does."""
    wrapped = 0
    for name, module in list(model.named_modules()):
        for target in targets:
            child = getattr(module, target, None)
            if isinstance(child, nn.Linear):
                setattr(module, target, LowRankAdapter(child))
                wrapped += 1
    return wrapped


def test_adapters_on_hf_names_resolve_and_apply_after_patching():
    torch.manual_seed(0)
    model = hf_classifier()
    twin = hf_classifier()
    twin.load_state_dict(model.state_dict())
    patch(model)
    torch.manual_seed(1)
    assert add_adapters(model) == 6
    torch.manual_seed(1)
    assert add_adapters(twin) == 6
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, expected = model(x).logits, twin(x).logits
        assert rel_err(out, expected) < 1e-6
        # the adapters change the output, so the patched forward did run through them
        patch(twin)
        for m in twin.modules():
            if isinstance(m, LowRankAdapter):
                m.up.weight.zero_()
        assert rel_err(twin(x).logits, out) > 1e-3
