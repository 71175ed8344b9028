"""FocalNet models: registry, parameter counts, weights, HF transformers (and timm) parity, heads."""

import pytest
import torch

from focalfast.models import (
    VARIANTS,
    FocalNet,
    FocalNetBackbone,
    FocalNetConfig,
    FocalNetForMaskedImageModeling,
    convert_focalnet_state_dict,
    create,
    detect_focalnet_source,
    get_config,
    list_models,
    load_focalnet_weights,
)
from focalfast.modules.focal_modulation import FocalModulation
from focalfast.testing import rel_err

transformers = pytest.importorskip("transformers")

PUBLISHED = [
    "focalnet_tiny_srf", "focalnet_tiny_lrf", "focalnet_small_srf", "focalnet_small_lrf",
    "focalnet_base_srf", "focalnet_base_lrf", "focalnet_large_fl3", "focalnet_large_fl4",
    "focalnet_xlarge_fl3", "focalnet_xlarge_fl4", "focalnet_huge_fl3", "focalnet_huge_fl4",
    "focalnet_tiny_iso", "focalnet_small_iso", "focalnet_base_iso",
]


def hf_config(config: FocalNetConfig, **kwargs):
    """An HF transformers FocalNetConfig with the architecture of ``config``."""
    return transformers.FocalNetConfig(
        embed_dim=config.embed_dim, depths=list(config.depths), focal_levels=list(config.focal_levels),
        focal_windows=list(config.focal_windows), patch_size=config.patch_size,
        num_channels=config.in_channels, use_conv_embed=config.use_conv_embed,
        use_layerscale=config.use_layerscale, layerscale_value=config.layerscale_value,
        use_post_layernorm=config.use_postln, use_post_layernorm_in_modulation=config.use_postln_in_modulation,
        normalize_modulator=config.normalize_modulator, drop_path_rate=config.drop_path_rate, **kwargs)


@torch.no_grad()
def jitter(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Perturb every parameter, so zero biases and unit LayerNorms cannot hide a mapping error."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * scale)


# --------------------------------------------------------------------------------------------
# Registry


def test_registry_has_every_published_variant():
    assert sorted(PUBLISHED) == list_models()


@pytest.mark.parametrize("name, expected", [
    ("focalnet_tiny_srf", 28_427_116),
    ("focalnet_tiny_lrf", 28_647_928),
    ("focalnet_small_srf", 49_891_216),
    ("focalnet_base_lrf", 88_749_768),
])
def test_parameter_counts(name, expected):
    with torch.device("meta"):
        model = create(name, num_classes=1000)
    assert next(model.parameters()).is_meta
    assert sum(p.numel() for p in model.parameters()) == expected


def test_variant_architectures():
    """Spot checks against the official configs."""
    large4, huge3 = VARIANTS["focalnet_large_fl4"], VARIANTS["focalnet_huge_fl3"]
    base_iso = VARIANTS["focalnet_base_iso"]
    assert large4.dims == (192, 384, 768, 1536) and large4.focal_levels == (4,) * 4
    assert large4.use_conv_embed and large4.use_layerscale and large4.use_postln and large4.normalize_modulator
    assert huge3.embed_dim == 352 and huge3.use_postln_in_modulation and not huge3.normalize_modulator
    assert VARIANTS["focalnet_xlarge_fl3"].focal_windows == (5,) * 4
    assert base_iso.depths == (12,) and base_iso.patch_size == 16 and base_iso.use_postln
    assert not VARIANTS["focalnet_tiny_iso"].use_layerscale
    with torch.device("meta"):
        model = create("focalnet_huge_fl4", num_classes=0)
    modulation = model.layers[2].blocks[0].modulation
    assert modulation.kernel_sizes == [3, 5, 7, 9] and hasattr(modulation, "ln")
    assert model.patch_embed.proj.kernel_size == (7, 7) and model.layers[0].downsample.proj.kernel_size == (3, 3)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="focalnet_tiny_srf"):
        create("focalnet_tiny_sfr")
    with pytest.raises(ValueError, match="name"):
        get_config("resnet50")


def test_bad_overrides_and_options():
    with pytest.raises(ValueError, match="unknown FocalNetConfig field"):
        get_config("focalnet_tiny_srf", depth=(1, 1))
    with pytest.raises(ValueError, match="focal_levels"):
        FocalNetConfig(depths=(1, 1), focal_levels=(2, 2, 2))
    with pytest.raises(ValueError, match="depths"):
        FocalNetConfig(depths=())
    with pytest.raises(ValueError, match="focal_windows"):
        FocalNetConfig(focal_windows=4)
    with pytest.raises(ValueError, match="backend"):
        FocalNet(FocalNetConfig(embed_dim=8, depths=(1,)), backend="fast")
    with pytest.raises(ValueError, match="images"):
        FocalNet(FocalNetConfig(embed_dim=8, depths=(1,)))(torch.randn(1, 4, 8, 8))


def test_backend_reaches_every_modulation():
    model = create("focalnet_tiny_srf", embed_dim=8, backend="reference")
    modulations = [m for m in model.modules() if isinstance(m, FocalModulation)]
    assert len(modulations) == 12 and all(m.backend == "reference" for m in modulations)


def test_official_initialisation():
    torch.manual_seed(0)
    model = FocalNet(FocalNetConfig(embed_dim=32, depths=(1, 1)), num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            # trunc_normal_(std=0.02) as in the official code (its cut-off, +-2, is absolute)
            assert 0.015 < module.weight.std() < 0.025 and abs(module.weight.mean()) < 0.005
            assert torch.all(module.bias == 0)
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)


def test_drop_path_in_training_only():
    torch.manual_seed(0)
    model = FocalNet(FocalNetConfig(embed_dim=8, depths=(2, 2), drop_path_rate=0.5), num_classes=4)
    x = torch.randn(8, 3, 16, 16)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))
    block = model.layers[1].blocks[1]
    assert block.drop_path.p == 0.5 and model.layers[0].blocks[0].drop_path.p == 0.0
    branch = torch.ones(4000, 1, 1, 1)
    kept = block.drop_path(branch).flatten()
    assert set(kept.unique().tolist()) <= {0.0, 2.0} and abs(kept.mean().item() - 1.0) < 0.1


# --------------------------------------------------------------------------------------------
# HF transformers parity


@pytest.mark.slow
@pytest.mark.parametrize("name, size, batch", [
    ("focalnet_tiny_srf", 64, 2),
    ("focalnet_tiny_lrf", 64, 2),
    ("focalnet_small_srf", 32, 1),
    ("focalnet_small_lrf", 32, 1),
])
def test_hf_classification_parity(name, size, batch):
    torch.manual_seed(0)
    hc = hf_config(get_config(name), num_labels=1000, image_size=size)
    hf = transformers.FocalNetForImageClassification(hc).eval()
    jitter(hf)
    config = FocalNetConfig.from_hf(hc)
    assert config == get_config(name)
    ours = FocalNet(config, num_classes=1000).eval()
    load_focalnet_weights(ours, hf.state_dict())
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x).logits) < 1e-5


@pytest.mark.slow
def test_hf_parity_every_flag_any_input_size():
    """Conv embedding, layer scale, post-norm, post-norm in modulation, normalised modulator,
    per-stage levels and windows; sizes that are not multiples of the strides (both pad)."""
    torch.manual_seed(0)
    config = FocalNetConfig(embed_dim=16, depths=(1, 1, 2, 1), focal_levels=(2, 3, 2, 3),
                            focal_windows=(3, 5, 3, 1), use_conv_embed=True, use_layerscale=True,
                            layerscale_value=0.5, use_postln=True, use_postln_in_modulation=True,
                            normalize_modulator=True)
    hf = transformers.FocalNetForImageClassification(hf_config(config, num_labels=7)).eval()
    jitter(hf)
    ours = FocalNet(config, num_classes=7).eval()
    load_focalnet_weights(ours, hf.state_dict(), source="hf")
    for shape in [(37, 50), (33, 29), (64, 64)]:
        x = torch.randn(2, 3, *shape)
        with torch.no_grad():
            assert rel_err(ours(x), hf(x).logits) < 1e-5, shape


def test_hf_parity_isotropic():
    """A single-stage (isotropic, base_iso-like: layer scale + post-norm) FocalNet with patch 16."""
    torch.manual_seed(0)
    config = get_config("focalnet_base_iso", embed_dim=24, depths=(3,), layerscale_value=0.5)
    hf = transformers.FocalNetForImageClassification(hf_config(config, num_labels=4)).eval()
    jitter(hf)
    ours = FocalNet(config, num_classes=4).eval()
    load_focalnet_weights(ours, hf.state_dict())
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x).logits) < 1e-5


def test_hf_parity_gradients():
    torch.manual_seed(0)
    config = FocalNetConfig(embed_dim=16, depths=(1, 2), focal_levels=3, use_layerscale=True, layerscale_value=0.3)
    hf = transformers.FocalNetForImageClassification(hf_config(config, num_labels=5)).eval()
    jitter(hf)
    ours = FocalNet(config, num_classes=5).eval()
    load_focalnet_weights(ours, hf.state_dict())
    x = torch.randn(2, 3, 24, 20)
    target = torch.randn(2, 5)
    x_ours, x_hf = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ours(x_ours) * target).sum().backward()
    (hf(x_hf).logits * target).sum().backward()
    assert rel_err(x_ours.grad, x_hf.grad) < 1e-5
    hf_block = hf.focalnet.encoder.stages[1].layers[1]
    block = ours.layers[1].blocks[1]
    pairs = [(block.modulation.f.weight, hf_block.modulation.projection_in.weight),
             (block.modulation.focal_layers[2][0].weight, hf_block.modulation.focal_layers[2][0].weight),
             (block.modulation.h.weight, hf_block.modulation.projection_context.weight),
             (block.gamma_1, hf_block.gamma_1), (ours.patch_embed.proj.weight,
                                                  hf.focalnet.embeddings.patch_embeddings.projection.weight)]
    for mine, theirs in pairs:
        assert rel_err(mine.grad, theirs.grad) < 1e-5


def test_hf_masked_image_modeling_parity():
    torch.manual_seed(0)
    config = FocalNetConfig(embed_dim=16, depths=(1, 2), focal_levels=(2, 3))
    hc = hf_config(config, image_size=32, encoder_stride=config.stride)
    hf = transformers.FocalNetForMaskedImageModeling(hc).eval()
    jitter(hf)
    ours = FocalNetForMaskedImageModeling(FocalNetConfig.from_hf(hc), encoder_stride=hc.encoder_stride).eval()
    load_focalnet_weights(ours, hf.state_dict())
    x = torch.randn(2, 3, 32, 32)
    mask = torch.rand(2, 64) < 0.5
    ref = hf(x, bool_masked_pos=mask)
    out = ours(x, mask.reshape(2, 8, 8))
    assert rel_err(out.loss, ref.loss) < 1e-5
    assert rel_err(out.reconstruction, ref.reconstruction) < 1e-5
    out.loss.backward()
    assert ours.mask_token.grad is not None and ours.mask_token.grad.abs().sum() > 0
    assert ours(x).loss is None
    with pytest.raises(ValueError, match="bool_masked_pos"):
        ours(x, mask[:, :10])


def test_backbone_stage_maps_match_hf():
    torch.manual_seed(0)
    config = FocalNetConfig(embed_dim=16, depths=(1, 2, 1), focal_levels=(2, 3, 2))
    hf = transformers.FocalNetModel(hf_config(config)).eval()
    jitter(hf)
    backbone = FocalNetBackbone(config).eval()
    load_focalnet_weights(backbone, hf.state_dict())
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        hidden, dims = hf.embeddings(x)
        refs = []
        for stage in hf.encoder.stages:
            hidden, before, out_dims = stage(hidden, dims)
            refs.append(before.reshape(2, *dims, -1).permute(0, 3, 1, 2))
            dims = out_dims[-2:]
        maps = backbone(x)
    assert [m.shape[1] for m in maps] == backbone.out_channels == [16, 32, 64]
    assert backbone.strides == [4, 8, 16]
    for mine, ref in zip(maps, refs):
        assert mine.shape == ref.shape and rel_err(mine, ref) < 1e-5
    assert len(FocalNetBackbone(config, out_indices=[2])(x)) == 1
    with pytest.raises(ValueError, match="out_indices"):
        FocalNetBackbone(config, out_indices=[3])


# --------------------------------------------------------------------------------------------
# Weights: files, wrappers, errors


def small_variant(**kwargs):
    return create("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), **kwargs)


def test_pretrained_files(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = small_variant(num_classes=10)
    jitter(source)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "official.pth")
    save_file(source.state_dict(), str(tmp_path / "weights.safetensors"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = source.eval()(x)
        for file in ("official.pth", "weights.safetensors"):
            loaded = small_variant(num_classes=10, pretrained=tmp_path / file).eval()
            assert torch.equal(loaded(x), expected)
        features = small_variant(num_classes=0, pretrained=str(tmp_path / "official.pth")).eval()
        assert torch.equal(features(x), source.forward_features(x))


def test_pretrained_hf_safetensors(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = get_config("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1))
    hf = transformers.FocalNetForImageClassification(hf_config(config, num_labels=3)).eval()
    jitter(hf)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "hf.safetensors"))
    ours = small_variant(num_classes=3, pretrained=tmp_path / "hf.safetensors").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(ours(x), hf(x).logits) < 1e-5


def test_weight_errors_name_the_keys(tmp_path):
    model = small_variant(num_classes=10)
    state = model.state_dict()
    broken = dict(state)
    del broken["layers.0.blocks.0.norm1.weight"]
    broken["layers.0.blocks.0.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys 1 \[layers\.0\.blocks\.0\.norm1\.weight\]") as info:
        load_focalnet_weights(model, broken)
    assert "unexpected keys 1 [layers.0.blocks.0.extra]" in str(info.value)
    with pytest.raises(ValueError, match="head.weight: shape"):
        load_focalnet_weights(small_variant(num_classes=5), state)
    missing, unexpected = load_focalnet_weights(model, broken, strict=False)
    assert missing == ["layers.0.blocks.0.norm1.weight"] and unexpected == ["layers.0.blocks.0.extra"]
    with pytest.raises(ValueError, match="official, timm or HF"):
        load_focalnet_weights(model, {"conv.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="pretrained"):
        small_variant(pretrained=tmp_path / "nope.pth")
    (tmp_path / "weights.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors"):
        small_variant(pretrained=tmp_path / "weights.npz")
    with pytest.raises(TypeError, match="model"):
        load_focalnet_weights(torch.nn.Linear(2, 2), state)


def timm_names(state, use_postln):
    """focalfast/official names -> timm's current ones (stage-leading downsampling, 1x1 convs)."""
    import re

    out = {}
    for key, value in state.items():
        key = key.replace("patch_embed.", "stem.").replace("head.", "head.fc.")
        key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", key)
        key = re.sub(r"gamma_(\d)", r"ls\1.gamma", key).replace("modulation.ln.", "modulation.norm.")
        if use_postln:
            key = re.sub(r"\.norm([12])\.", r".norm\1_post.", key)
        if re.search(r"(modulation\.(f|proj)|mlp\.fc[12])\.weight$", key):
            value = value[:, :, None, None]
        out[key] = value
    return out


def test_timm_names_convert_back():
    torch.manual_seed(0)
    config = FocalNetConfig(embed_dim=8, depths=(1, 2, 1), use_layerscale=True, use_postln=True,
                            use_postln_in_modulation=True)
    model = FocalNet(config, num_classes=3)
    state = model.state_dict()
    timm_state = timm_names(state, use_postln=True)
    assert "layers.1.downsample.proj.weight" in timm_state and "layers.0.blocks.0.norm1_post.weight" in timm_state
    assert detect_focalnet_source(timm_state) == "timm"
    converted = convert_focalnet_state_dict(timm_state)
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[k], state[k]) for k in state)


# --------------------------------------------------------------------------------------------
# timm parity (timm is not importable on CPU-only CI; the GPU image has it)


def _timm():
    try:
        import timm
    except Exception as exc:  # missing, or its torchvision cannot load with this torch
        pytest.skip(f"timm is not importable here: {exc}")
    return timm


def test_timm_parity_and_patch():
    timm = _timm()
    from focalfast import patch

    torch.manual_seed(0)
    reference = timm.create_model("focalnet_tiny_srf", pretrained=False).eval()
    jitter(reference)
    ours = create("focalnet_tiny_srf", num_classes=1000).eval()
    load_focalnet_weights(ours, reference.state_dict(), source="auto")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        assert rel_err(ours(x), expected) < 1e-5
        assert patch(reference) == 12
        assert patch(reference) == 0
        assert rel_err(reference(x), expected) < 1e-5


def _plain_block_forward(block, x):
    """The block written with ordinary autograd (no recomputation), drawing drop-path masks in the same order."""
    def residual(x, branch, gamma):
        return x + block.drop_path(branch if gamma is None else gamma * branch)

    if block.use_postln:
        x = residual(x, block.norm1(block.modulation(x)), block.gamma_1)
        return residual(x, block.norm2(block.mlp(x)), block.gamma_2)
    x = residual(x, block.modulation(block.norm1(x)), block.gamma_1)
    return residual(x, block.mlp(block.norm2(x)), block.gamma_2)


@pytest.mark.parametrize("layerscale,postln,drop", [(False, False, 0.0), (True, False, 0.0), (True, True, 0.0),
                                                   (False, False, 0.2)])
def test_lean_block_equals_plain_autograd_float64(layerscale, postln, drop):
    """The block's recomputing MLP, LayerNorm + f, residual and drop path give autograd's values and
    gradients (with dropout: the plain residual path)."""
    from focalfast.models.block import FocalNetBlock

    torch.manual_seed(0)
    block = FocalNetBlock(16, focal_level=2, focal_window=3, drop=drop, drop_path=0.5, use_layerscale=layerscale,
                          layerscale_value=0.7, use_postln=postln).double().train()
    for p in block.parameters():  # non-trivial LayerNorm affine and biases
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(4, 6, 5, 16, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(4, 6, 5, 16, dtype=torch.float64)
    results = []
    for forward in (block, lambda x: _plain_block_forward(block, x)):
        torch.manual_seed(1)
        out = forward(x)
        grads = torch.autograd.grad(out, [x, *block.parameters()], grad_out)
        results.append((out, grads))
    (out, grads), (out_ref, grads_ref) = results
    assert rel_err(out, out_ref) < 1e-13
    for name, g, g_ref in zip(["x"] + [n for n, _ in block.named_parameters()], grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-12, name


def test_lean_block_saved_bytes_by_storage():
    """Per image under bf16 autocast with the fused op, a pre-norm block keeps x (float32), the
    LayerNorms' mean and 1/std, f's output, the op's [C] vectors, proj's input and fc1's output:
    (18C + 2L + 18) bytes per pixel + 8C, against (34C + 2L + 18) + 8C for autograd on the plain block."""
    from focalfast.memory_plan import SavedTensors, cuda_autocast_policy
    from focalfast.models.block import FocalNetBlock

    C, L, H, W = 16, 2, 5, 4
    block = FocalNetBlock(C, focal_level=L, focal_window=3, drop_path=0.2, backend="triton").train()

    def saved(forward, batch):
        x = torch.randn(batch, H, W, C, requires_grad=True)
        counter = SavedTensors(exclude=list(block.parameters()))
        with cuda_autocast_policy(), torch.autocast("cpu", torch.bfloat16), counter:
            out = forward(x)
        nbytes = counter.nbytes
        out.float().sum().backward()
        return nbytes

    def per_image(forward):
        return saved(forward, 3) - saved(forward, 2)  # parameter casts cancel

    lean, plain = per_image(block), per_image(lambda x: _plain_block_forward(block, x))
    assert lean == H * W * (18 * C + 2 * L + 18) + 8 * C + 2 * 2
    assert plain == H * W * (34 * C + 2 * L + 18) + 8 * C + 2 * 2


@pytest.mark.parametrize("mode", ["mlp", "blocks", "stage"])
def test_set_checkpointing_keeps_values_gradients_and_state_dict(mode):
    """Every mode recomputes in backward and changes nothing else; "none" restores the plain model."""
    from focalfast.models import set_checkpointing

    torch.manual_seed(0)
    model = create("focalnet_tiny_srf", num_classes=5, embed_dim=8, depths=(1, 2), focal_levels=2,
                   focal_windows=3, drop_path_rate=0.0).double()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    calls = []
    modulation = model.layers[1].blocks[1].modulation
    modulate = modulation._modulate  # what every forward of the modulation runs (plain or with the norm fused)

    def counting_modulate(projected):
        calls.append(1)
        return modulate(projected)

    modulation._modulate = counting_modulate
    results = []
    for current in (mode, "none"):
        set_checkpointing(model, current)
        calls.clear()
        out = model(images)
        results.append((out, torch.autograd.grad(out.sum(), list(model.parameters())), len(calls)))
    (out, grads, calls_mode), (out_ref, grads_ref, calls_none) = results
    assert calls_none == 1 and calls_mode == (1 if mode == "mlp" else 2)  # "mlp" recomputes no modulation
    assert rel_err(out, out_ref) < 1e-13
    assert all(rel_err(g, g_ref) < 1e-12 for g, g_ref in zip(grads, grads_ref))
    assert list(model.state_dict()) == list(create("focalnet_tiny_srf", num_classes=5, embed_dim=8, depths=(1, 2),
                                                    focal_levels=2, focal_windows=3).state_dict())
    with pytest.raises(ValueError, match="mode"):
        set_checkpointing(model, "everything")


def test_set_checkpointing_names_what_a_model_lacks():
    from focalfast import build_convnext
    from focalfast.models import set_checkpointing

    convnext = build_convnext(depths=(1, 1), dims=(8, 16), num_classes=3)
    set_checkpointing(convnext, "blocks")
    with pytest.raises(ValueError, match="no FocalNet MLPs"):
        set_checkpointing(convnext, "mlp")
    with pytest.raises(ValueError, match="no blocks"):
        set_checkpointing(torch.nn.Linear(2, 2), "stage")
