"""The reference op and FocalModulation are the same function as HF transformers' FocalNetModulation.

Weights are mapped from HF modules with fresh random values; outputs and the gradients of the
input and of every weight are compared, in float64 and in float32.
"""

import itertools

import pytest
import torch
from torch import nn

from focalfast import focal_modulation_from
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")
from transformers import FocalNetConfig, FocalNetModel  # noqa: E402
from transformers.models.focalnet.modeling_focalnet import FocalNetModulation  # noqa: E402

# (batch, height, width): odd, single pixel, smaller than the largest kernel, batch 1 and > 1
SHAPES = [(1, 7, 9), (2, 1, 1), (2, 4, 5), (3, 6, 6)]
HF_TO_OURS = {"projection_in": "f", "projection_context": "h", "projection_out": "proj", "layernorm": "ln"}


def hf_modulation(dim, window, level, normalize, postln, dtype):
    config = FocalNetConfig(
        focal_windows=[window], focal_levels=[level], normalize_modulator=normalize,
        use_post_layernorm_in_modulation=postln,
    )
    module = FocalNetModulation(config, index=0, dim=dim).to(dtype)
    with torch.no_grad():  # fresh random values everywhere, also where HF initialises constants
        for p in module.parameters():
            p.normal_(0.0, 0.5 if p.dim() > 1 else 0.2)
    return module


def ours_name(hf_name: str) -> str:
    head, _, rest = hf_name.partition(".")
    return f"{HF_TO_OURS.get(head, head)}.{rest}"


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "level, window, normalize, postln",
    list(itertools.product([1, 2, 3, 4], [3, 5, 9], [False, True], [False, True])),
)
def test_modulation_matches_hf(level, window, normalize, postln, dtype, tol):
    torch.manual_seed(1000 * level + 10 * window + 2 * normalize + postln)
    dim = 8
    theirs = hf_modulation(dim, window, level, normalize, postln, dtype)
    ours = focal_modulation_from(theirs, backend="reference")
    assert ours.kernel_sizes == [2 * l + window for l in range(level)]
    for batch, height, width in SHAPES:
        x = torch.randn(batch, height, width, dim, dtype=dtype)
        x_theirs = x.clone().requires_grad_()
        x_ours = x.clone().requires_grad_()
        out_theirs = theirs(x_theirs)
        out_ours = ours(x_ours)
        assert rel_err(out_ours, out_theirs) < tol
        upstream = torch.randn_like(out_theirs)
        theirs.zero_grad()
        ours.zero_grad()
        (out_theirs * upstream).sum().backward()
        (out_ours * upstream).sum().backward()
        assert rel_err(x_ours.grad, x_theirs.grad) < tol
        ours_params = dict(ours.named_parameters())
        for name, p in theirs.named_parameters():
            grad = ours_params[ours_name(name)].grad
            assert rel_err(grad.reshape(p.shape), p.grad) < tol, name


def test_swapping_every_modulation_in_hf_model_keeps_its_output():
    torch.manual_seed(0)
    config = FocalNetConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 2], focal_levels=[2, 3],
        focal_windows=[3, 3], normalize_modulator=True, use_post_layernorm_in_modulation=True,
    )
    model = FocalNetModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).last_hidden_state
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FocalNetModulation):
                setattr(parent, name, focal_modulation_from(child, backend="reference"))
                swapped += 1
    assert swapped == 3
    assert not any(isinstance(m, FocalNetModulation) for m in model.modules())
    with torch.no_grad():
        got = model(images).last_hidden_state
    assert rel_err(got, expected) < 1e-6


def test_reference_does_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys, torch, focalfast\n"
        "m = focalfast.FocalModulation(8, focal_level=2)\n"
        "m(torch.randn(1, 5, 5, 8)).sum().backward()\n"
        "assert not any(k.split('.')[0] in ('transformers', 'timm') for k in sys.modules), 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_is_an_nn_module_with_official_keys():
    from focalfast import FocalModulation

    m = FocalModulation(8, focal_window=3, focal_level=2, use_postln_in_modulation=True)
    assert isinstance(m, nn.Module)
    assert set(m.state_dict()) == {
        "f.weight", "f.bias", "h.weight", "h.bias", "proj.weight", "proj.bias", "ln.weight", "ln.bias",
        "focal_layers.0.0.weight", "focal_layers.1.0.weight",
    }
    assert m.state_dict()["focal_layers.1.0.weight"].shape == (8, 1, 5, 5)
    assert m.state_dict()["h.weight"].shape == (8, 8, 1, 1)
