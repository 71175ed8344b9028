"""FocalModulation and patched HF modulations under every tracer a user meets: torch.jit.script,
torch.fx.symbolic_trace, torch.export with dynamic batch and image sizes, meta tensors, and
torch.compile(fullgraph=True) as the first call in a fresh process; each against the eager or
unpatched module. (timm's whole model: tests/test_timm_dropin.py.)"""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn
from torch.export import Dim

from focalfast import FocalModulation, patch
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)
    return module.eval()


def hf_config(**kwargs):
    return transformers.FocalNetConfig(embed_dim=16, depths=[1, 2], focal_levels=[2, 3], focal_windows=[3, 5],
                                       num_labels=5, use_post_layernorm_in_modulation=True,
                                       normalize_modulator=True, **kwargs)


def hf_modulation_pair():
    """(patched, unpatched) copies of one HF FocalNetModulation with random weights, 32 channels."""
    from transformers.models.focalnet.modeling_focalnet import FocalNetModulation

    unpatched = randomised(FocalNetModulation(hf_config(), index=1, dim=32), seed=1)
    patched = copy.deepcopy(unpatched)
    assert patch(patched, backend="reference") == 1
    return patched, unpatched


def official_modulation_pair():
    """(patched, unpatched) copies of the official-module stand-in of tests/test_patch.py."""
    from test_patch import OfficialModulation

    unpatched = randomised(OfficialModulation(8, 3, use_postln_in_modulation=True, normalize_modulator=True), seed=3)
    patched = copy.deepcopy(unpatched)
    assert patch(patched, backend="reference") == 1
    return patched, unpatched


def cases():
    """(name, module under test, oracle, input) with [B, H, W, C] or [B, C, H, W] inputs."""
    ours = randomised(FocalModulation(16, focal_level=3, use_postln_in_modulation=True, normalize_modulator=True))
    nchw = randomised(FocalModulation(16, focal_level=2, layout="nchw"), seed=2)
    return [
        ("nhwc", ours, ours, torch.randn(2, 9, 7, 16)),
        ("nchw", nchw, nchw, torch.randn(2, 16, 9, 7)),
        ("hf", *hf_modulation_pair(), torch.randn(2, 9, 7, 32)),
        ("official", *official_modulation_pair(), torch.randn(2, 9, 7, 8)),
    ]


NAMES = ["nhwc", "nchw", "hf", "official"]


def other_sizes(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Another batch and image size with the same channels."""
    shape = [3, 5, 11]
    return torch.randn(shape[:channel_dim] + [x.shape[channel_dim]] + shape[channel_dim:])


@pytest.mark.parametrize("name", NAMES)
def test_script(name):
    _, module, oracle, x = next(c for c in cases() if c[0] == name)
    scripted = torch.jit.script(module)
    with torch.no_grad():
        assert rel_err(scripted(x), oracle(x)) < 1e-6
    # the scripted module runs the same function on other sizes and keeps the eager module's gradients
    y = other_sizes(x, 1 if name == "nchw" else 3)
    scripted(y).square().sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    oracle.zero_grad()
    oracle(y).square().sum().backward()
    assert all(rel_err(g, p.grad) < 1e-5 for g, p in zip(grads, oracle.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_fx_symbolic_trace(name):
    _, module, oracle, x = next(c for c in cases() if c[0] == name)
    traced = torch.fx.symbolic_trace(module)
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    assert any(getattr(t, "__name__", "") == "modulate" for t in targets)  # the fused op is one node
    with torch.no_grad():
        assert rel_err(traced(x), oracle(x)) < 1e-6
    with pytest.raises(ValueError, match="x: expected shape"):  # the traced graph still checks its input
        traced(x[..., :3] if name != "nchw" else x[:, :3])


@pytest.mark.parametrize("name", NAMES)
def test_export_with_dynamic_batch_and_image_size(name):
    _, module, oracle, x = next(c for c in cases() if c[0] == name)
    spatial = (2, 3) if name == "nchw" else (1, 2)
    dims = {0: Dim("batch"), spatial[0]: Dim("height"), spatial[1]: Dim("width")}
    exported = torch.export.export(module, (x,), dynamic_shapes=({**dims},))
    # no size pinned, none tied to another: three symbols, and any sizes run, 1 and unequal ones included
    assert len(exported.range_constraints) == 3
    channel_dim = 1 if name == "nchw" else 3
    for sizes in ([3, 5, 11], [1, 1, 40], [4, 17, 1]):
        shape = sizes[:channel_dim] + [x.shape[channel_dim]] + sizes[channel_dim:]
        y = torch.randn(shape)
        with torch.no_grad():
            assert rel_err(exported.module()(y), oracle(y)) < 1e-6, shape


@pytest.mark.parametrize("backend", ["auto", "reference", "triton", "cuda"])
def test_meta_tensors_run_on_every_backend_setting(backend):
    for name, module, _, x in cases():
        if hasattr(module, "backend"):
            module.backend = backend
        out = module.to("meta")(x.to("meta"))
        assert out.device.type == "meta" and out.shape == x.shape, name


def test_hf_model_on_meta_and_exported_with_dynamic_batch():
    torch.manual_seed(0)
    unpatched = randomised(transformers.FocalNetForImageClassification(hf_config()))
    model = copy.deepcopy(unpatched)
    assert patch(model) == 3
    meta = copy.deepcopy(model).to("meta")
    assert meta(torch.randn(2, 3, 32, 32, device="meta")).logits.shape == (2, 5)

    class Logits(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, pixels):
            return self.model(pixels).logits

    exported = torch.export.export(Logits(model), (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: Dim("batch")},))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(exported.module()(x), unpatched(x).logits) < 1e-6


FRESH_PROCESS = textwrap.dedent("""
    import copy, torch, transformers, focalfast
    from transformers.models.focalnet.modeling_focalnet import FocalNetModulation
    from focalfast.testing import rel_err

    def check(module, oracle, x):
        x = x.requires_grad_()
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        out = compiled(x)
        out.square().sum().backward()
        grads = [p.grad for p in module.parameters()] + [x.grad]
        x.grad = None
        expected = oracle(x)
        expected.square().sum().backward()
        assert rel_err(out, expected) < 1e-6, rel_err(out, expected)
        assert all(rel_err(g, p) < 1e-5 for g, p in zip(grads, [p.grad for p in oracle.parameters()] + [x.grad]))

    torch.manual_seed(0)
    layer = focalfast.FocalModulation(16, focal_level=3, use_postln_in_modulation=True)
    check(layer, copy.deepcopy(layer), torch.randn(2, 9, 7, 16))  # the first call of the op in this process
    config = transformers.FocalNetConfig(focal_levels=[3], focal_windows=[3], normalize_modulator=True,
                                         use_post_layernorm_in_modulation=True)
    unpatched = FocalNetModulation(config, index=0, dim=16)
    patched = copy.deepcopy(unpatched)
    assert focalfast.patch(patched) == 1
    check(patched, unpatched, torch.randn(2, 9, 7, 16))
    print("fresh-process compile ok")
""")


def test_compile_fullgraph_as_the_first_call_in_a_fresh_process():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fresh-process compile ok" in result.stdout
