"""The memory planner: its counters, its search, and fake (full-size) runs against real CPU runs."""

import contextlib
import random

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from focalfast import build_convnext, models
from focalfast.memory_plan import (LiveMemory, SavedTensors, StepPlanner, cuda_autocast_policy,
                                   largest_fitting)
from focalfast.memory_plan.command import parse_bytes
from focalfast.memory_plan.op_bodies import counted_body


def tiny_focalnet(backend):
    return models.create("focalnet_tiny_srf", num_classes=10, embed_dim=16, depths=(1, 2), focal_levels=2, focal_windows=3,
                         drop_path_rate=0.2,
                         backend=backend)


def test_saved_tensors_count_each_storage_once():
    x = torch.randn(1000, requires_grad=True)
    w = torch.randn(1000, requires_grad=True)
    counter = SavedTensors(exclude=[w])
    with counter:
        y = x.sin()            # saves x (4000 bytes)
        z = y * y              # saves y twice: once (4000)
        v = z[:10].exp()       # saves its output, 10 floats (40)
        u = v.sum() * w        # saves w (excluded) and the scalar sum (4)
    assert counter.nbytes == 4000 + 4000 + 40 + 4
    u.sum().backward()  # frees the saved tensors
    del y, z, v, u
    assert counter.nbytes == 4000  # only x is left: counting keeps nothing alive


def test_live_memory_counts_storages_while_they_live():
    a = torch.zeros(100)
    with LiveMemory() as live:
        live.track(a, [None, {"k": a}])
        assert live.now == 400
        b = a + 1
        c = b.view(10, 10)  # a view: no new storage
        assert live.now == 800
        del b
        assert live.now == 800  # c still holds the storage
        del c
        d = torch.empty(3, dtype=torch.bfloat16)
        assert live.now == 406 and live.peak == 800
    with LiveMemory(granularity=512) as live:
        e = torch.empty(3)
        assert live.now == 512
    with pytest.raises(ValueError, match="granularity"):
        LiveMemory(granularity=0)
    del d, e


def _double_body(x: torch.Tensor) -> torch.Tensor:
    scratch = x.new_zeros(1000)  # 4000 bytes, freed when the op returns
    return x * 2 + scratch[:1]


_double = torch.library.custom_op("focalfast_test::double_with_scratch", mutates_args=())(_double_body)
_double.register_fake(lambda x: torch.empty_like(x))


@pytest.mark.parametrize("fake,gpu_sms", [(False, None), (True, None), (True, 132)])
def test_live_memory_runs_op_bodies_to_count_their_scratch(fake, gpu_sms):
    """A custom op is one dispatch: its output is seen (400 bytes). Given its body, the counter also
    sees what the body allocates and frees inside: 4000 bytes of scratch and the 400 of ``x * 2``
    (also when the body runs on meta stand-ins, as for a GPU: its output then counts once)."""
    body = {torch.ops.focalfast_test.double_with_scratch.default: counted_body(_double_body, gpu_sms)}
    with FakeTensorMode() if fake else contextlib.nullcontext():
        x = torch.ones(100)
        for bodies, peak in ((None, 800), (body, 5200)):
            with LiveMemory(bodies=bodies) as live:
                live.track(x)
                y = _double(x)
                assert (live.now, live.peak) == (800, peak)
            assert (y.shape, y.device) == (x.shape, x.device)
    if not fake:
        torch.testing.assert_close(y, x * 2, rtol=0, atol=0)


def test_cuda_autocast_policy_runs_layer_norm_in_float32():
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16):
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16  # CPU's own policy
        with cuda_autocast_policy():
            y = F.layer_norm(x, (8,))
            assert y.dtype == torch.float32 and F.linear(y, torch.randn(4, 8)).dtype == torch.bfloat16
        assert F.layer_norm(x, (8,)).dtype == torch.bfloat16  # restored
    torch.testing.assert_close(y, F.layer_norm(x.float(), (8,)), rtol=0, atol=0)


@pytest.mark.parametrize("power", [1, 2])
def test_largest_fitting_matches_exhaustive_search(power):
    rng = random.Random(power)
    for _ in range(200):
        base, slope, budget = rng.randint(0, 1000), rng.uniform(0.1, 50), rng.randint(0, 300000)
        step = rng.randint(0, 40)
        calls = []

        def peak(k):
            calls.append(k)
            return base + slope * k ** power + step * (k // 7)

        limit = 3000
        got = largest_fitting(peak, budget, start=rng.randint(1, 300), limit=limit, power=power)
        assert got == max((k for k in range(1, limit + 1) if peak(k) <= budget), default=0)
    with pytest.raises(ValueError, match="start"):
        largest_fitting(peak, 10, start=0, limit=5)


def test_parse_bytes():
    assert parse_bytes("40GiB") == 40 << 30 and parse_bytes("80 GB") == 80 * 10**9
    assert parse_bytes("512mib") == 512 << 20 and parse_bytes("1e6") == 10**6
    with pytest.raises(ValueError, match="40GiB"):
        parse_bytes("forty")


def _assert_fake_equals_real(backend, sizes, **options):
    fake = StepPlanner(tiny_focalnet, backend=backend, fake=True, **options)
    real = StepPlanner(tiny_focalnet, backend=backend, fake=False, **options)
    for batch, resolution in sizes:
        measured_fake, measured_real = fake.measure(batch, resolution), real.measure(batch, resolution)
        assert measured_fake == measured_real
        assert measured_real.saved_bytes > 0 and measured_real.peak_bytes > measured_real.state_bytes


def test_fake_step_equals_real_cpu_step():
    """Under FakeTensorMode the planner's bytes are those of a real CPU step, exactly."""
    _assert_fake_equals_real("reference", [(3, 40)])


@pytest.mark.slow
@pytest.mark.parametrize("dtype,amp", [("bf16", True), ("fp32", True), ("bf16", False)])
def test_fake_step_equals_real_cpu_step_in_each_precision(dtype, amp):
    _assert_fake_equals_real("reference", [(1, 32), (2, 64)], dtype=dtype, amp=amp)


def tiny_convnext(backend):
    return build_convnext(depths=(1, 1), dims=(16, 32), num_classes=10, drop_path_rate=0.1, backend=backend)


@pytest.mark.slow
@pytest.mark.parametrize("factory", [tiny_focalnet, tiny_convnext])
def test_fused_fake_step_equals_real_triton_step_on_cpu(factory):
    """The fused backend's plan runs its ops' bodies (the launch code) on fake tensors, kernel launches
    skipped; a real step runs the Triton kernels in the interpreter: the same bytes, peak included
    (the launch code's scratch counted with its lifetime), and the same FLOPs."""
    fake = StepPlanner(factory, backend="fused", fake=True, gpu_sms=None).measure(2, 32)
    real = StepPlanner(factory, backend="fused", fake=False).measure(2, 32)
    assert fake == real


def test_fused_plan_for_a_gpu_sizes_scratch_as_the_gpu_launch_code(monkeypatch):
    """``gpu_sms``: the launch code runs on meta stand-ins with that many SMs; the same bytes as when it
    runs on the step's fake CPU tensors told they are on such a GPU (no interpreter)."""
    from focalfast.ops.triton import focal_modulation as triton_op
    from focalfast.static_cost.triton_launches import patched_sm_count

    gpu = StepPlanner(tiny_focalnet, backend="fused", gpu_sms=40).measure(2, 64)
    interpreter = StepPlanner(tiny_focalnet, backend="fused", gpu_sms=None).measure(2, 64)
    assert gpu.peak_bytes != interpreter.peak_bytes  # at 64 px the interpreter takes larger tiles
    monkeypatch.setattr(triton_op, "_interpret", lambda t: False)
    with patched_sm_count(40):
        told_gpu = StepPlanner(tiny_focalnet, backend="fused", gpu_sms=None).measure(2, 64)
    assert gpu == told_gpu


def test_fused_op_saves_less_than_the_reference():
    saved = {b: StepPlanner(tiny_focalnet, backend=b).saved_bytes_per_image(64) for b in ("reference", "fused")}
    assert saved["fused"] < saved["reference"]


@pytest.mark.slow
def test_full_size_plan_scales_with_batch():
    planner = StepPlanner(lambda backend: models.create("focalnet_tiny_srf", backend=backend), backend="fused")
    one, two = planner.measure(1, 224), planner.measure(2, 224)
    assert one.state_bytes == two.state_bytes > 28_000_000 * 4 * 3  # weights, exp_avg, exp_avg_sq (fp32)
    assert two.saved_bytes - one.saved_bytes == planner.saved_bytes_per_image(224) > 0
    assert two.forward_flops == 2 * one.forward_flops > 2 * 4.0e9  # the GEMMs and convolutions of 4.4 GMACs


def test_planner_rejects_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        StepPlanner(tiny_focalnet, backend="cuda")
    with pytest.raises(ValueError, match="dtype"):
        StepPlanner(tiny_focalnet, dtype="int8")
    with pytest.raises(ValueError, match="mode"):
        StepPlanner(tiny_focalnet, checkpointing="everything")
    with pytest.raises(ValueError, match="batch"):
        StepPlanner(tiny_focalnet).measure(0, 32)


@pytest.mark.slow
def test_plan_command_prints_a_table(capsys):
    from focalfast.cli import main

    assert main(["plan", "--model", "focalnet_tiny_srf", "--batch", "2", "--resolution", "64",
                 "--backend", "fused", "--memory", "1GiB", "--reserve", "0"]) == 0
    out = capsys.readouterr().out
    assert "| fused | none |" in out and out.rstrip().endswith("yes |")


def test_each_checkpointing_mode_keeps_less():
    """Saved bytes per image: none > mlp (fc1's output recomputed) > blocks > stage; and what a
    mode recomputes shows in the step's FLOPs."""
    saved, flops = {}, {}
    for mode in ("none", "mlp", "blocks", "stage"):
        planner = StepPlanner(tiny_focalnet, backend="fused", checkpointing=mode)
        one, two = planner.measure(1, 64), planner.measure(2, 64)
        saved[mode], flops[mode] = two.saved_bytes - one.saved_bytes, two.step_flops / two.forward_flops
        assert planner.measure(2, 64) == two  # no dependence on when Python's garbage collector runs
    assert saved["none"] > saved["mlp"] > saved["blocks"] > saved["stage"]
    # per token of C channels (4C hidden) the "mlp" mode drops fc1's bf16 output: 8C bytes
    tokens = [(64 // 4) ** 2, (64 // 8) ** 2]  # stage 1 (C = 16, 1 block), stage 2 (C = 32, 2 blocks)
    assert saved["none"] - saved["mlp"] == 8 * 16 * tokens[0] + 2 * 8 * 32 * tokens[1]
    assert flops["none"] < flops["mlp"] < flops["blocks"]
