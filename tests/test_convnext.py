"""ConvNeXt: the dwconv + LayerNorm op and its dispatch, HF transformers parity, build_convnext."""

import pytest
import torch

import focalfast
from focalfast import BackendUnavailableError, build_convnext, convnext_output_size
from focalfast.models import ConvNeXt, convnext_from_hf_config, load_convnext_weights
from focalfast.ops.dwconv_layernorm import dwconv_layernorm, dwconv_layernorm_ref
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")

def op_inputs(B=2, H=9, W=11, C=12, k=7, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(0)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_(requires_grad)

    x = randn(B, C, H, W).permute(0, 2, 3, 1).detach().requires_grad_(requires_grad)  # channels-last view
    return dict(x_nhwc=x, conv_weight=randn(C, 1, k, k, scale=1 / k), conv_bias=randn(C, scale=0.1),
                ln_weight=1 + randn(C, scale=0.1), ln_bias=randn(C, scale=0.1), eps=1e-6)


def dwconv_then_channel_norm(x_nhwc, conv_weight, conv_bias, ln_weight, ln_bias, eps):
    """The same function written the ConvNeXt paper's way: NCHW conv, statistics over channels."""
    y = torch.nn.functional.conv2d(x_nhwc.permute(0, 3, 1, 2).contiguous(), conv_weight, conv_bias,
                                   padding=conv_weight.shape[-1] // 2, groups=conv_weight.shape[0])
    mean = y.mean(1, keepdim=True)
    var = ((y - mean) ** 2).mean(1, keepdim=True)
    y = (y - mean) / torch.sqrt(var + eps) * ln_weight[:, None, None] + ln_bias[:, None, None]
    return y.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# dwconv_layernorm op


@pytest.mark.parametrize("k", [3, 7])
def test_reference_matches_channels_first_formulation(k):
    args = op_inputs(k=k)
    out = dwconv_layernorm(**args, backend="reference")
    assert out.shape == args["x_nhwc"].shape
    assert rel_err(out, dwconv_then_channel_norm(**args)) < 1e-12
    args32 = {n: (v.float() if torch.is_tensor(v) else v) for n, v in args.items()}
    assert rel_err(dwconv_layernorm_ref(**args32), dwconv_then_channel_norm(**args)) < 1e-5


def test_reference_gradients():
    args = op_inputs(B=1, H=5, W=4, C=3, k=3, requires_grad=True)
    tensors = [args[n] for n in ("x_nhwc", "conv_weight", "conv_bias", "ln_weight", "ln_bias")]
    assert torch.autograd.gradcheck(lambda *t: dwconv_layernorm_ref(*t, eps=args["eps"]), tensors)
    target = torch.randn(args["x_nhwc"].shape, dtype=torch.float64)
    grads = torch.autograd.grad((dwconv_layernorm(**args, backend="auto") * target).sum(), tensors)
    expected = torch.autograd.grad((dwconv_then_channel_norm(**args) * target).sum(), tensors)
    for g, e in zip(grads, expected):
        assert rel_err(g, e) < 1e-10


def test_dispatch():
    args = op_inputs()
    expected = dwconv_layernorm_ref(**args)
    assert torch.equal(dwconv_layernorm(**args, backend="auto"), expected)  # reference on CPU
    previous = focalfast.get_backend()
    focalfast.set_backend("reference")
    try:
        assert torch.equal(dwconv_layernorm(**args, backend=None), expected)
    finally:
        focalfast.set_backend(previous)
    with pytest.raises(BackendUnavailableError, match="CUDA C\\+\\+"):
        dwconv_layernorm(**args, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        dwconv_layernorm(**args, backend="fast")


def test_triton_backend_matches_reference():
    args = op_inputs(B=1, H=6, W=5, C=8, dtype=torch.float32)
    if torch.cuda.is_available():
        args = {n: (v.cuda() if torch.is_tensor(v) else v) for n, v in args.items()}
    out = dwconv_layernorm(**args, backend="triton")
    assert rel_err(out, dwconv_layernorm_ref(**args)) < 1e-5


def test_op_input_errors():
    args = op_inputs()
    with pytest.raises(ValueError, match="conv_weight"):
        dwconv_layernorm(**{**args, "conv_weight": args["conv_weight"][:, :, :6, :6]})
    with pytest.raises(ValueError, match="ln_bias"):
        dwconv_layernorm(**{**args, "ln_bias": args["ln_bias"][:-1]})
    with pytest.raises(ValueError, match="x_nhwc"):
        dwconv_layernorm(**{**args, "x_nhwc": args["x_nhwc"][0]})
    with pytest.raises(ValueError, match="conv_bias"):
        dwconv_layernorm(**{**args, "conv_bias": args["conv_bias"].float()})
    with pytest.raises(TypeError, match="ln_weight"):
        dwconv_layernorm(**{**args, "ln_weight": None})
    with pytest.raises(ValueError, match="eps"):
        dwconv_layernorm(**{**args, "eps": 0.0})


# --------------------------------------------------------------------------------------------
# HF transformers parity


@torch.no_grad()
def jitter(model, scale=0.05):
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)


def hf_convnext_config(**kwargs):
    return transformers.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 2, 1], image_size=32, **kwargs)


def test_hf_classification_parity():
    torch.manual_seed(0)
    config = hf_convnext_config(num_labels=10, layer_scale_init_value=0.3)
    hf = transformers.ConvNextForImageClassification(config).eval()
    jitter(hf)
    ours = convnext_from_hf_config(config).eval()
    assert ours.norm.eps == config.layer_norm_eps == 1e-12
    load_convnext_weights(ours, hf.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x).logits) < 1e-5
        ours.stages[1].blocks[0].dwconv.weight.add_(0.01)  # the comparison can fail
        assert rel_err(ours(x), hf(x).logits) > 1e-3


def test_hf_base_model_and_gradients():
    torch.manual_seed(0)
    config = hf_convnext_config(layer_scale_init_value=0.0, drop_path_rate=0.0)
    hf = transformers.ConvNextModel(config).eval()
    jitter(hf)
    ours = ConvNeXt(depths=[1, 1, 2, 1], dims=[8, 16, 32, 64], layer_scale_init=0.0, head_norm_eps=1e-12).eval()
    assert all(block.gamma is None for stage in ours.stages for block in stage.blocks)
    load_convnext_weights(ours, hf.state_dict())
    x = torch.randn(2, 3, 40, 56, requires_grad=True)
    x_hf = x.detach().clone().requires_grad_()
    target = torch.randn(2, 64)
    (ours(x) * target).sum().backward()
    (hf(x_hf).pooler_output * target).sum().backward()
    assert rel_err(x.grad, x_hf.grad) < 1e-5
    theirs = hf.encoder.stages[2].layers[1]
    mine = ours.stages[2].blocks[1]
    for a, b in [(mine.dwconv.weight, theirs.dwconv.weight), (mine.norm.weight, theirs.layernorm.weight),
                 (mine.pwconv1.weight, theirs.pwconv1.weight)]:
        assert rel_err(a.grad, b.grad) < 1e-5


def test_load_errors():
    model = ConvNeXt(depths=[1, 1], dims=[8, 16], num_classes=3)
    state = model.state_dict()
    del state["stages.1.blocks.0.gamma"]
    with pytest.raises(ValueError, match=r"missing keys 1 \[stages\.1\.blocks\.0\.gamma\]"):
        load_convnext_weights(model, state)


# --------------------------------------------------------------------------------------------
# build_convnext / convnext_output_size


def test_default_build_is_convnext_tiny():
    with torch.device("meta"):
        ours = build_convnext(num_classes=1000)
        hf = transformers.ConvNextForImageClassification(transformers.ConvNextConfig(num_labels=1000))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    assert [len(s.blocks) for s in ours.stages] == [3, 3, 9, 3] and ours.dims == (96, 192, 384, 768)
    assert ours.stages[0].blocks[0].dwconv.kernel_size == (7, 7)


def test_trains_under_autocast():
    """The fused-op boundary casts to the autocast dtype, as the conv and LayerNorm it replaces do."""
    torch.manual_seed(0)
    model = build_convnext(image_size=32, patch_size=4, depths=[1, 1], dims=[8, 16], num_classes=3)
    images = torch.randn(2, 3, 32, 32)
    expected = model(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images)
    assert rel_err(logits.float(), expected) < 5e-2
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("options", [
    dict(),
    dict(num_classes=7),
    dict(image_size=48, patch_size=2, in_channels=1, depths=[1, 2], dims=[6, 10]),
    dict(image_size=32, patch_size=8, depths=[2], dims=[12], num_classes=3, dropout=0.2,
         layer_scale_init=0.0, drop_path_rate=0.1, backend="reference"),
])
def test_build_shapes_and_output_size(options):
    torch.manual_seed(0)
    options = {**dict(image_size=32, depths=[1, 1, 1, 1], dims=[4, 8, 12, 16]), **options}
    model = build_convnext(**options).eval()
    x = torch.randn(2, options.get("in_channels", 3), options["image_size"], options["image_size"])
    out = model(x)
    assert out.shape == (2, convnext_output_size(**options))
    assert out.shape[1] == (options.get("num_classes") or options["dims"][-1])
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_dropout_and_drop_path_only_in_training():
    torch.manual_seed(0)
    model = build_convnext(image_size=16, depths=[2, 2], dims=[4, 8], num_classes=5, dropout=0.5,
                           drop_path_rate=0.5, layer_scale_init=1.0)
    x = torch.randn(4, 3, 16, 16)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))


@pytest.mark.parametrize("options, name", [
    (dict(image_size=30, patch_size=4), "patch_size"),
    (dict(patch_size=0), "patch_size"),
    (dict(image_size=0), "image_size"),
    (dict(image_size=16, patch_size=4), "image_size"),  # 4x4 stem map, 3 downsamplings need 8
    (dict(in_channels=0), "in_channels"),
    (dict(depths=[]), "depths"),
    (dict(depths=[3, 0, 9, 3]), r"depths\[1\]"),
    (dict(dims=[96, 192, 384]), "dims"),
    (dict(dims=[96, -1, 384, 768]), r"dims\[1\]"),
    (dict(num_classes=0), "num_classes"),
    (dict(dropout=1.0), "dropout"),
    (dict(layer_scale_init=-1.0), "layer_scale_init"),
    (dict(backend="fast"), "backend"),
])
def test_build_errors_name_the_option(options, name):
    for fn in (build_convnext, convnext_output_size):
        with pytest.raises(ValueError, match=name):
            fn(**options)
