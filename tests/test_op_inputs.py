"""Bad input to the op and the module gives a clear error naming the argument, never a wrong answer."""

import pytest
import torch

import focalfast
from focalfast import FocalModulation, focal_modulation
from focalfast.testing import random_focal_inputs


def inputs(**overrides):
    args = random_focal_inputs(2, 5, 6, 8, (3, 5))
    args.update(overrides)
    return args


def test_valid_inputs_run():
    assert focal_modulation(**inputs()).shape == (2, 5, 6, 8)


@pytest.mark.parametrize(
    "name, value, error, words",
    [
        ("q", torch.randn(5, 6, 8), ValueError, ["q", "[B, H, W, C]"]),
        ("ctx", torch.randn(2, 5, 6, 7), ValueError, ["ctx", "(2, 5, 6, 8)"]),
        ("gates", torch.randn(2, 5, 6, 2), ValueError, ["gates", "L + 1", "(2, 5, 6, 3)"]),
        ("h_weight", torch.randn(8, 7), ValueError, ["h_weight", "(8, 8)"]),
        ("h_bias", torch.randn(7), ValueError, ["h_bias", "(8,)"]),
        ("weights", [torch.randn(8, 1, 3, 3), torch.randn(8, 1, 4, 4)], ValueError, ["weights[1]", "odd"]),
        ("weights", [torch.randn(8, 3, 3), torch.randn(8, 1, 5, 5)], ValueError, ["weights[0]", "[C, 1, k, k]"]),
        ("weights", [], TypeError, ["weights", "non-empty"]),
        ("q", torch.randint(0, 5, (2, 5, 6, 8)), TypeError, ["q", "floating-point", "int64"]),
        ("ctx", torch.randn(2, 5, 6, 8, dtype=torch.float64), ValueError, ["ctx", "dtype", "float64"]),
        ("q", [[1.0]], TypeError, ["q", "torch.Tensor"]),
        ("ctx", torch.randn(2, 5, 6, 8, device="meta"), ValueError, ["ctx", "device"]),
    ],
)
def test_bad_op_input(name, value, error, words):
    with pytest.raises(error) as info:
        focal_modulation(**inputs(**{name: value}))
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("shape", [(0, 5, 6, 8), (2, 0, 6, 8), (2, 5, 0, 8)])
def test_zero_size_dimensions(shape):
    B, H, W, C = shape
    args = inputs(q=torch.randn(shape), ctx=torch.randn(shape), gates=torch.randn(B, H, W, 3))
    with pytest.raises(ValueError, match="non-zero"):
        focal_modulation(**args)


def test_zero_channels():
    args = inputs(q=torch.randn(2, 5, 6, 0))
    with pytest.raises(ValueError, match="q"):
        focal_modulation(**args)


def test_h_weight_as_1x1_conv_is_accepted():
    args = inputs()
    expected = focal_modulation(**args)
    args["h_weight"] = args["h_weight"][:, :, None, None]
    torch.testing.assert_close(focal_modulation(**args), expected, rtol=0, atol=0)


def test_nan_in_input_comes_out_as_nan():
    args = inputs()
    ctx = args["ctx"].clone()
    ctx[1, 2, 3, 4] = float("nan")
    out = focal_modulation(**dict(args, ctx=ctx))
    assert out[1].isnan().any(), "NaN in image 1 vanished"
    assert not out[0].isnan().any(), "NaN leaked into another image"


@pytest.mark.parametrize(
    "x, words",
    [
        (torch.randn(2, 5, 6, 7), ["x", "C = 8", "(2, 5, 6, 7)"]),
        (torch.randn(5, 6, 8), ["x", "[B, H, W, C]"]),
    ],
)
def test_bad_module_input(x, words):
    with pytest.raises(ValueError) as info:
        FocalModulation(8)(x)
    for word in words:
        assert word in str(info.value)


def test_module_rejects_integer_input():
    with pytest.raises(TypeError):
        FocalModulation(8)(torch.ones(1, 3, 3, 8, dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(dim=0), "dim"),
        (dict(dim=8, focal_level=0), "focal_level"),
        (dict(dim=8, focal_window=4), "focal_window"),
        (dict(dim=8, focal_factor=3), "focal_factor"),
        (dict(dim=8, layout="nwhc"), "layout"),
    ],
)
def test_bad_module_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FocalModulation(**kwargs)


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="backend"):
        focal_modulation(**inputs(), backend="fastest")
    with pytest.raises(ValueError, match="backend"):
        focalfast.set_backend("cudnn")


def test_module_rejects_empty_input():
    with pytest.raises(ValueError, match="x: every dimension must be non-zero"):
        FocalModulation(8)(torch.ones(0, 3, 3, 8))
