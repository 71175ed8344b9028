"""``focalfast bench`` on CPU, the roofline counts and the timing helpers."""

import json

import pytest
import torch
from PIL import Image

from focalfast import bench, cli, roofline, timing
from focalfast.roofline import Ceilings, OpShape

# docs/design.md, "Where the time goes": FocalNet-T stage 1, B=128, 56x56, C=96, three levels (k = 3, 5, 7).
DESIGN_SHAPE = OpShape(128, 56, 56, 96, (3, 5, 7))
PIXELS = 128 * 56 * 56  # 401,408
PARAMS = 96 * (9 + 25 + 49) + 96 * 96 + 96  # 17,280: kernels, h_weight, h_bias


def test_design_shape_counts():
    # "One C-sized tensor is 38.5 M elements (154 MB fp32, 77 MB bf16)."
    assert DESIGN_SHAPE.pixels * DESIGN_SHAPE.channels == 38_535_168
    assert DESIGN_SHAPE.parameters == PARAMS == 17_280
    # forward: read q, ctx (96 each), gates (4), write out (96) per pixel, plus the parameters
    assert roofline.op_bytes(DESIGN_SHAPE, torch.float32, "forward") == (PIXELS * 292 + PARAMS) * 4 == 468_913_664
    assert roofline.op_bytes(DESIGN_SHAPE, torch.bfloat16, "forward") == 234_456_832
    # backward: read q, ctx, gates, dout; write dq, dctx, dgates; read parameters, write their grads
    assert roofline.op_bytes(DESIGN_SHAPE, torch.float32, "backward") == (PIXELS * 488 + 2 * PARAMS) * 4 == 783_686_656
    assert roofline.op_bytes(DESIGN_SHAPE, torch.float32, "forward_backward") == 468_913_664 + 783_686_656


def test_design_shape_flops():
    n = 38_535_168
    forward = roofline.op_flops(DESIGN_SHAPE, "forward")
    # 2 * (9 + 25 + 49) conv, 2 * 4 gated sum, pool + bias + q*: 177 per element; h: 2 * 96
    assert (forward.vector, forward.gemm) == (n * 177, n * 192) == (6_820_724_736, 7_398_752_256)
    backward = roofline.op_flops(DESIGN_SHAPE, "backward")
    # 6 * 83 convs (recompute, input and weight grads), 4 * 4 gate terms, 3: 517; GEMMs 3 * 192
    assert (backward.vector, backward.gemm) == (n * 517, n * 576) == (19_922_681_856, 22_196_256_768)
    both = roofline.op_flops(DESIGN_SHAPE, "forward_backward")
    assert both.total == forward.total + backward.total


def test_floor_seconds():
    ceilings = Ceilings(bandwidth=3.0e12, fp32_flops=60e12, bf16_gemm_flops=800e12)
    # fp32: the GEMM shares the FMA units; (6.82 + 7.40) GFLOP / 60 TFLOP/s = 237 us > 156 us of memory
    fp32 = roofline.floor_seconds(DESIGN_SHAPE, torch.float32, "forward", ceilings)
    assert fp32 == pytest.approx((6_820_724_736 + 7_398_752_256) / 60e12, rel=1e-12)
    # bf16: vector work 114 us on the FMA units > 78 us of memory > 9 us of tensor-core GEMM
    bf16 = roofline.floor_seconds(DESIGN_SHAPE, torch.bfloat16, "forward", ceilings)
    assert bf16 == pytest.approx(6_820_724_736 / 60e12, rel=1e-12)
    memory_only = roofline.floor_seconds(DESIGN_SHAPE, torch.float32, "forward", Ceilings(bandwidth=3.0e12))
    assert memory_only == pytest.approx(468_913_664 / 3.0e12, rel=1e-12)
    with pytest.raises(ValueError, match="pass_"):
        roofline.op_bytes(DESIGN_SHAPE, torch.float32, "sideways")


def test_input_set_count():
    l2 = 50 * 2**20
    assert timing.input_set_count(10 * 2**20, l2) == 8  # 20 needed, capped
    assert timing.input_set_count(100 * 2**20, l2) == 2
    assert timing.input_set_count(400 * 2**20, l2) == 1
    assert timing.input_set_count(10 * 2**20, 0) == 1  # CPU: no L2 to defeat


def test_measure_rotates_input_sets_after_warmup():
    seen = []
    result = timing.measure(lambda x: seen.append(x), [(0,), (1,), (2,)], warmup=2, rounds=5, device="cpu")
    assert seen == [0, 1, 0, 1, 2, 0, 1]
    assert len(result.times) == 5 and result.median >= 0 and result.min <= result.median
    with pytest.raises(ValueError, match="rounds"):
        timing.measure(lambda: None, [()], warmup=0, rounds=0, device="cpu")


@pytest.mark.parametrize("largest", [224, 256, 480, 672, 2048, 4096])
def test_largest_fitting_finds_the_boundary(largest):
    probed = []

    def fits(resolution):
        probed.append(resolution)
        return resolution <= largest

    assert bench.largest_fitting(fits, start=224, multiple=32, limit=4096) == largest
    assert all(r % 32 == 0 and r <= 4096 for r in probed) and len(probed) <= 12


def test_largest_fitting_edges():
    assert bench.largest_fitting(lambda r: False, 224, 32, 4096) is None
    assert bench.largest_fitting(lambda r: True, 224, 32, 1000) == 992  # capped at the limit
    with pytest.raises(ValueError, match="start"):
        bench.largest_fitting(lambda r: True, 230, 32, 4096)


def test_op_workload_returns_every_gradient():
    shape = OpShape(1, 6, 7, 8, (3, 5))
    workload = bench.op_workload("eager", shape, torch.float32, "cpu", backward=True)
    q, ctx, gates, weights, h_weight, h_bias, grad_out = workload.input_sets[0]
    # q, ctx, gates are views of one f output, pixel stride 2C + L + 1, as in the module
    assert q.stride(2) == ctx.stride(2) == gates.stride(2) == 2 * 8 + 3
    grads = workload.step(*workload.input_sets[0])
    assert len(grads) == 3 + len(weights) + 2
    assert all(g.shape == t.shape for g, t in zip(grads, [q, ctx, gates, *weights, h_weight, h_bias]))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_focalfast_bench_cpu_tiny_suite(tmp_path, capsys):
    rc = cli.main(["bench", "--suite", "tiny", "--rounds", "2", "--warmup", "1", "--no-progress",
                   "--out-dir", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("case"))
    for column in ("time ms", "x eager", "x compiled", "GB/s", "% roofline", "peak MiB"):
        assert column in header
    assert "not GPU numbers" in printed

    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["format"] == bench.JSON_FORMAT
    env = report["environment"]
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__ and env["commit"] and env["date"]
    rows = {(r["kind"], r["pass"], r["variant"]): r for r in report["results"]}
    for kind, pass_ in (("op", "forward"), ("op", "forward_backward"), ("module", "forward_backward")):
        eager = rows[(kind, pass_, "eager")]
        assert eager["status"] == "ok" and eager["median_ms"] > 0 and eager["speedup_vs_eager"] == 1.0
        # never the Triton interpreter, never torch.compile on CPU
        assert rows[(kind, pass_, "triton")]["status"] == "skipped"
        assert "interpreter" in rows[(kind, pass_, "triton")]["reason"]
        assert rows[(kind, pass_, "compiled")]["status"] == "skipped"
    op = rows[("op", "forward", "eager")]
    shape = OpShape(**{k: tuple(v) if k == "kernel_sizes" else v for k, v in op["op_shape"].items()})
    assert op["bytes"] == roofline.op_bytes(shape, torch.float32, "forward")
    assert op["achieved_gbps"] == pytest.approx(op["bytes"] / (op["median_ms"] / 1e3) / 1e9)
    train = rows[("train", "train_step", "eager")]
    if bench.model_unavailable_reason() is None:
        assert train["status"] == "ok" and train["images_per_s"] > 0
    else:
        assert train["status"] == "skipped"

    assert (tmp_path / "bench.md").read_text().count("| op fwd | tiny | fp32 | eager |") == 1
    with Image.open(tmp_path / "bench.png") as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_bench_rejects_unknown_variant(tmp_path):
    with pytest.raises(SystemExit, match="--variants"):
        cli.main(["bench", "--variants", "eager,warp", "--out-dir", str(tmp_path)])
