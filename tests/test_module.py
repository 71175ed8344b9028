"""FocalModulation: weight converters, layouts, capture and backend selection."""

import pytest
import torch

import focalfast
from focalfast import FocalModulation, load_modulation_state_dict
from focalfast.convert import detect_modulation_source, modulation_state_dict
from focalfast.testing import rel_err


def make(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("use_postln_in_modulation", True)
    m = FocalModulation(8, focal_level=3, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.5)
    return m


def timm_state_dict(m):
    """Our weights laid out the way timm stores them (1x1 convs, ``norm``)."""
    sd = {}
    for key, value in m.state_dict().items():
        head, _, rest = key.partition(".")
        if head in ("f", "proj") and rest == "weight":
            value = value[:, :, None, None]
        sd[f"{'norm' if head == 'ln' else head}.{rest}"] = value
    return sd


def hf_state_dict(m):
    names = {"f": "projection_in", "h": "projection_context", "proj": "projection_out", "ln": "layernorm"}
    return {names.get(k.split(".")[0], k.split(".")[0]) + k[k.index("."):]: v for k, v in m.state_dict().items()}


@pytest.mark.parametrize("source, convert", [("official", lambda m: m.state_dict()),
                                             ("timm", timm_state_dict), ("hf", hf_state_dict)])
def test_state_dicts_of_every_source_load(source, convert):
    src, dst = make(seed=1), make(seed=2)
    sd = convert(src)
    assert detect_modulation_source(sd) == source
    load_modulation_state_dict(dst, sd)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    assert rel_err(dst(x), src(x)) < 1e-12


def test_nchw_layout_is_the_same_function():
    nhwc = make(seed=3)
    nchw = make(seed=4, layout="nchw")
    nchw.load_state_dict(nhwc.state_dict())
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    out = nchw(x.permute(0, 3, 1, 2))
    assert out.shape == (2, 8, 5, 7)
    assert rel_err(out.permute(0, 2, 3, 1), nhwc(x)) < 1e-12


def test_mismatched_state_dict_lists_missing_and_unexpected_keys():
    m = make()
    sd = hf_state_dict(make(use_postln_in_modulation=False))
    sd["projection_extra.weight"] = torch.zeros(1)
    with pytest.raises(focalfast.WeightsError) as info:
        load_modulation_state_dict(m, sd)
    message = str(info.value)
    assert "ln.weight" in message and "ln.bias" in message and "projection_extra.weight" in message


def test_mismatched_shapes_name_the_key():
    m = make()
    sd = make().state_dict()
    sd["focal_layers.2.0.weight"] = torch.zeros(8, 1, 5, 5)
    with pytest.raises(focalfast.WeightsError, match=r"focal_layers\.2\.0\.weight: shape \(8, 1, 5, 5\)"):
        load_modulation_state_dict(m, sd)


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="source"):
        modulation_state_dict({}, source="keras")


def test_capture_is_off_by_default_and_records_gates_and_modulator_when_on():
    m = make(use_postln_in_modulation=False)
    x = torch.randn(2, 5, 7, 8, dtype=torch.float64)
    m(x)
    assert m.gates is None and m.modulator is None
    m.capture = True
    out = m(x)
    assert m.gates.shape == (2, 4, 5, 7) and m.modulator.shape == (2, 8, 5, 7)
    assert not m.gates.requires_grad and not m.modulator.requires_grad
    # out = proj(q * modulator): the captured modulator reproduces the output
    q = m.f(x)[..., :8]
    recomputed = m.proj(q * m.modulator.permute(0, 2, 3, 1))
    assert rel_err(recomputed, out) < 1e-12


@pytest.mark.parametrize("kwargs, name", [
    (dict(dim=True), "dim"), (dict(dim=8, focal_level=False), "focal_level"),
    (dict(dim=8, focal_window=4), "focal_window"), (dict(dim=8, focal_factor=True), "focal_factor"),
    (dict(dim=8, layout="nhcw"), "layout"), (dict(dim=8, backend="fastest"), "backend"),
])
def test_constructor_rejects_bad_arguments_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        FocalModulation(**kwargs)


def test_forward_rejects_bad_input_naming_it():
    m = FocalModulation(8, layout="nchw")
    with pytest.raises(ValueError, match=r"x: expected shape \[B, C, H, W\] with C = 8"):
        m(torch.randn(2, 5, 7, 8))
    with pytest.raises(ValueError, match="x: every dimension"):
        m(torch.randn(0, 8, 7, 5))
    with pytest.raises(TypeError, match="x: expected a floating-point"):
        m(torch.ones(2, 8, 3, 3, dtype=torch.int64))


def test_default_backend_is_process_wide_and_auto_is_reference_on_cpu():
    assert focalfast.get_backend() == "auto"
    assert focalfast.backends.resolve(None, "cpu") == "reference"
    focalfast.set_backend("reference")
    try:
        assert focalfast.get_backend() == "reference"
        assert focalfast.backends.resolve(None, "cpu") == "reference"
    finally:
        focalfast.set_backend("auto")


def test_cuda_backend_on_cpu_tensors_says_why():
    m = make(backend="cuda")
    with pytest.raises(focalfast.BackendUnavailableError, match="CUDA tensors"):
        m(torch.randn(1, 3, 3, 8, dtype=torch.float64))


def test_autocast_runs_the_op_in_the_autocast_dtype():
    m = FocalModulation(8, focal_level=2)
    x = torch.randn(2, 5, 7, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), m(x)) < 2e-2
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
