"""The static cost report (``python -m focalfast.static_cost``): structure, trip counts, and that it can fail.

The report compiles for sm_90a, so it runs with TRITON_INTERPRET unset (a subprocess: conftest
sets it for this process). No GPU is needed; Triton's NVIDIA backend and its nvdisasm are.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# One small case: B=1, 10x10, C=24, srf, fp32 views, 4 SMs: the forward chain is cut into bands.
SMALL = dict(batch=1, H=10, W=10, C=24, kernel_sizes=(3, 5), sm_count=4)


def _compiler_env() -> dict:
    """The environment of a subprocess that compiles: TRITON_INTERPRET unset, this checkout first."""
    if "nvidia" not in pytest.importorskip("triton.backends").backends:
        pytest.skip("this Triton has no NVIDIA backend to compile with")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(args, env, timeout=900) -> str:
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout


@pytest.fixture(scope="module")
def triton_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    s = SMALL
    stdout = _run(["-m", "focalfast.static_cost", "--backend", "triton", "--size", f"{s['H']}x{s['W']}x{s['C']}",
                   "--batch", str(s["batch"]), "--levels", "srf", "--dtype", "fp32", "--layout", "views",
                   "--sm-count", str(s["sm_count"]), "--out", str(out), "--name", "small"], _compiler_env())
    return json.loads((out / "small.json").read_text()), (out / "small.md").read_text(), stdout


def test_report_structure(triton_report):
    report, markdown, stdout = triton_report
    assert report["versions"]["triton"] and report["commit"] and report["date"]
    assert "model, not a measurement" in report["model"] and "model, not a measurement" in markdown
    records = report["records"]
    assert [(r["backend"], r["direction"]) for r in records] == [("triton", "fwd"), ("triton", "bwd")]
    s = SMALL
    for rec in records:
        assert rec["elements"] == s["batch"] * s["H"] * s["W"] * s["C"]
        for key in ("stage", "levels", "dtype", "layout", "warp_instr_per_elem", "fma_floor_per_elem",
                    "hbm_floor_bytes", "model_time_us", "kernels"):
            assert key in rec
        assert rec["fma_floor_per_elem"] == pytest.approx({"fwd": 1, "bwd": 3}[rec["direction"]] * 34 / 32)
        assert rec["kernels"], rec
        assert rec["warp_instr_per_elem"] == pytest.approx(sum(k["warp_instr_per_elem"] for k in rec["kernels"]))
        for k in rec["kernels"]:
            assert isinstance(k["kernel"], str) and k["kernel"]
            for key in ("regs", "spill_bytes", "stack_bytes", "smem_bytes", "ctas_per_sm", "warps_per_sm"):
                assert isinstance(k[key], int) and k[key] >= 0, (key, k)
            assert 0 < k["regs"] <= 255 and 1 <= k["ctas_per_sm"] <= 32
            assert k["warp_instr_per_elem"] > 0
            assert sum(k["by_class"].values()) == pytest.approx(k["warp_instr_per_elem"])
            assert k["unmapped_loops"] == 0, k["loops"]
        # the chain's depthwise taps are FMAs: at least one per tap per element, a warp doing 32
        assert rec["by_class"]["fma"] >= rec["fma_floor_per_elem"]
        assert rec["direction"] + " s0 srf fp32 views" in stdout and rec["direction"] in markdown


_INTERPRETER_TRIPS = r"""
import ast, json, sys
from collections import Counter
from pathlib import Path
import torch
import focalfast.ops.triton as backend_pkg
from focalfast.ops.triton import focal_modulation as fm

B, H, W, C, KS, SMS = {batch}, {H}, {W}, {C}, {kernel_sizes}, {sm_count}
FILES = {{str(p) for p in Path(backend_pkg.__file__).parent.glob("*.py")}}
LOOPS = {{}}  # (file, line of a range / tl.range loop) -> its body's lines
for f in FILES:
    for node in ast.walk(ast.parse(Path(f).read_text())):
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
            if ast.unparse(node.iter.func).split(".")[-1] == "range":
                LOOPS[(f, node.lineno)] = (node.body[0].lineno, node.end_lineno)
counts, last = Counter(), {{}}

def local(frame, event, arg):
    # an iteration: a line event on the for line followed by one in its body
    if event == "line":
        key = (frame.f_code.co_filename, last.get(frame))
        if key in LOOPS and LOOPS[key][0] <= frame.f_lineno <= LOOPS[key][1]:
            counts[key] += 1
        last[frame] = frame.f_lineno
    return local

def tracer(frame, event, arg):
    return local if frame.f_code.co_filename in FILES else None

fm._interpret = lambda t: False  # the GPU launch configuration, run by the interpreter
for name, mod in list(sys.modules.items()):
    if name.startswith("focalfast.ops.triton") and hasattr(mod, "sm_count"):
        mod.sm_count = lambda device: SMS
g = torch.Generator().manual_seed(0)
y = torch.randn(B, H, W, 2 * C + len(KS) + 1, generator=g)
q, ctx, gates = torch.split(y, (C, C, len(KS) + 1), dim=-1)
inp = dict(q=q, ctx=ctx, gates=gates, weights=[torch.randn(C, 1, k, k, generator=g) / k for k in KS],
           h_weight=torch.randn(C, C, generator=g) / C ** 0.5, h_bias=torch.randn(C, generator=g))
sys.settrace(tracer)
out, mean, glob = fm.focal_modulation_forward(**inp, normalize_modulator=False)
fm.focal_modulation_backward(torch.randn(out.shape, generator=g), **inp, mean=mean, glob=glob,
                             normalize_modulator=False)
sys.settrace(None)
print("TRIPS", json.dumps({{f"{{f}}:{{n}}": c for (f, n), c in counts.items()}}))
"""


@pytest.mark.slow
def test_trip_counts_match_the_interpreter(triton_report):
    """The report's source-loop trip counts (kernel bodies run on scalars) equal the iterations
    Triton's interpreter runs, traced line by line, at the same launch configuration."""
    report, _, _ = triton_report
    ours = Counter()
    for rec in report["records"]:
        for k in rec["kernels"]:
            for loop in k["source_loops"]:
                ours[f"{loop['file']}:{loop['line']}"] += loop["iterations"]
    env = dict(_compiler_env(), TRITON_INTERPRET="1")
    stdout = _run(["-c", _INTERPRETER_TRIPS.format(**SMALL)], env)
    interpreted = json.loads(stdout.split("TRIPS", 1)[1])
    # a loop that runs no iteration leaves no line in the interpreter's trace
    assert {loop: n for loop, n in ours.items() if n} == interpreted
    assert any(v > 1 for v in ours.values())


_WASTE = r"""
import json, sys, torch, triton, triton.language as tl
from focalfast.static_cost.triton_backend import launch_record
from focalfast.static_cost.triton_launches import capture_triton_launches


@triton.jit
def scale_shift(x, y, n, a, b, one, zero, reps, BLOCK: tl.constexpr):
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(x + offs, mask=offs < n)
        tl.store(y + offs, v * a + b, mask=offs < n)


@triton.jit
def scale_shift_wasteful(x, y, n, a, b, one, zero, reps, BLOCK: tl.constexpr):
    # the same result, with 7 useless multiply-adds per element (one = 1, zero = 0 at run time)
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc = tl.load(x + offs, mask=offs < n) * a + b
        for r in tl.static_range(7):
            acc = acc * one + zero
        tl.store(y + offs, acc, mask=offs < n)


out = {}
for kernel in (scale_shift, scale_shift_wasteful):
    for n in (1 << 15, 1 << 16):
        x = torch.empty(n, device="meta")
        launch, = capture_triton_launches(lambda: kernel[(4,)](x, torch.empty_like(x), n, 2.0, 3.0, 1.0, 0.0, 7,
                                                                BLOCK=1024, num_warps=4))
        cost = launch_record(launch).cost
        out[f"{kernel.fn.__name__}/{n}"] = dict(total=cost.warp_instructions, fma=cost.by_class["fma"])
print("COSTS", json.dumps(out))
"""


@pytest.mark.slow
def test_the_measure_can_fail(tmp_path):
    """A wasteful variant (7 useless FMAs per element) counts clearly more, FMAs exactly as many as
    it runs, and doubling the data doubles the count: trip counts are applied, not ignored."""
    script = tmp_path / "waste.py"
    script.write_text(textwrap.dedent(_WASTE))
    costs = json.loads(_run([str(script)], _compiler_env()).split("COSTS", 1)[1])
    for n in (1 << 15, 1 << 16):
        lean, waste = costs[f"scale_shift/{n}"], costs[f"scale_shift_wasteful/{n}"]
        assert lean["fma"] == n / 32  # one FFMA per element, 32 lanes a warp
        assert waste["fma"] == 8 * n / 32  # 1 + 7 per element
        assert waste["total"] > 2 * lean["total"]
    for name in ("scale_shift", "scale_shift_wasteful"):
        small, large = costs[f"{name}/{1 << 15}"]["total"], costs[f"{name}/{1 << 16}"]["total"]
        assert 1.7 < large / small <= 2.0  # the loop doubles; the code around it does not


# ---------------------------------------------------------------------------------------------- CUDA
_CUDA_SAMPLE_CHECK = r"""
import json, warnings
warnings.filterwarnings("ignore")
from focalfast.static_cost import cuda_backend
from focalfast.static_cost.cases import Case
from focalfast.ops.cuda import focal_modulation as cuda_op

def totals(case, sample_images):
    captured = cuda_backend.capture(case, 4, host_sample=sample_images)
    out = []
    for direction, (launches, _) in captured.items():
        for launch in launches:
            warps = -(-launch.threads // 32)
            branches, entered = cuda_backend._branch_shares(launch, warps)
            shares = {k.describe() + "@" + id_of(k) + " if " + f"{f.rsplit('/', 1)[-1]}:{n}": list(v)
                      for k, by_line in branches.items() for (f, n), v in by_line.items()}
            shares.update({k.describe() + "@" + id_of(k) + " enters " + inner.describe(): [v]
                           for k, by_loop in entered.items() for inner, v in by_loop.items()})
            out.append((direction, launch.name, launch.blocks, launch.threads,
                        {k.describe() + "@" + str(id_of(k)): sum(n * e for n, e in t.items()) * warps
                         for k, t in cuda_backend._keys(launch, warps).items()}, shares))
    return out

def id_of(key):
    return "" if key.parent is None else key.parent.describe() + "/" + id_of(key.parent)

case = Case(0, "srf", "fp32", "views", batch=3, size=(9, 11, 24))
counts = {"sampled": totals(case, True), "full": totals(case, False)}
# context_bwd in stacks of 4 images (8 images, one 32-channel chunk): the sample is band 0's block, half the blocks
# (not an eighth)
cuda_op.SWEEP_BWD_STACK = 4
stacked = Case(0, "srf", "fp32", "views", batch=8, size=(9, 11, 32))
counts.update({"stacked sampled": totals(stacked, True), "stacked full": totals(stacked, False)})
print("COUNTS", json.dumps(counts))
"""


@pytest.mark.slow
def test_cuda_loop_counts_sample_one_image():
    """The CUDA trip counts run each launch on image 0 and scale by B (a sweep's, by its blocks over the blocks
    run); running every image of a 3-image case on the host gives the same warp-level counts, loop by loop, the same
    shares of the loops' iterations that take each branch or enter each inner loop, and the same recorded launches
    (blocks, threads). So does an 8-image case whose backward sweeps stacks of 4 images."""
    if not _cuda_toolchain():
        pytest.skip("nvcc is needed to build the count build of the CUDA extension")
    stdout = _run(["-c", _CUDA_SAMPLE_CHECK], _compiler_env(), timeout=1800)
    counts = json.loads(stdout.split("COUNTS", 1)[1])
    sampled, full = counts["sampled"] + counts["stacked sampled"], counts["full"] + counts["stacked full"]
    assert [s[:4] for s in sampled] == [f[:4] for f in full] and sampled
    assert any(s[1] == "context_bwd" and s[2] == 2 for s in counts["stacked sampled"])  # 2 stacks x 1 chunk
    for s, f in zip(sampled, full):
        assert s[4].keys() == f[4].keys()
        for key in s[4]:
            assert s[4][key] == pytest.approx(f[4][key], rel=1e-9), (s[1], key)
        assert s[5].keys() == f[5].keys()
        for key in s[5]:
            assert s[5][key] == pytest.approx(f[5][key], rel=1e-9), (s[1], key)
    assert any(v[0] not in (0, 1) for s in sampled for v in s[5].values())  # branches of rows and bands


def _cuda_toolchain() -> bool:
    from focalfast.ops.cuda import extension

    return extension.find_nvcc() is not None


@pytest.fixture(scope="module")
def cuda_records(tmp_path_factory):
    """The CUDA report of a small srf case (k 3, 5: the sweeps' compile-time chain FixedChain<3, 2>)."""
    if not _cuda_toolchain():
        pytest.skip("nvcc is needed to compile the CUDA kernels")
    out = tmp_path_factory.mktemp("cuda_static")
    _run(["-m", "focalfast.static_cost", "--backend", "cuda", "--size", "9x11x24", "--batch", "2", "--levels", "srf",
          "--dtype", "bf16", "--layout", "views", "--sm-count", "4", "--out", str(out), "--name", "cuda"],
         _compiler_env(), timeout=1800)
    return json.loads((out / "cuda.json").read_text())["records"]


@pytest.mark.slow
def test_cuda_report_structure(cuda_records):
    records = cuda_records
    assert [(r["backend"], r["direction"]) for r in records] == [("cuda", "fwd"), ("cuda", "bwd")]
    for rec in records:
        assert rec["kernels"]
        assert 0 < rec["warp_instr_per_elem_min"] <= rec["warp_instr_per_elem"]
        assert rec["by_class"]["fma"] > 0
        for k in rec["kernels"]:
            assert 0 < k["regs"] <= 255 and k["smem_bytes"] >= 0 and 1 <= k["ctas_per_sm"] <= 32
            assert sum(k["by_class"].values()) == pytest.approx(k["warp_instr_per_elem"])


def test_a_count_under_the_fma_floor_is_refused():
    """Loops that went uncounted (a count build of other sources) show as a count far below the
    FMA floor: the report refuses it instead of printing a fast kernel."""
    from focalfast.static_cost import model
    from focalfast.static_cost.cases import Case
    from focalfast.static_cost.report import _check_fma_floor

    case = Case(1, "srf", "bf16", "views")
    floor = model.fma_floor_per_elem(case, "fwd")
    _check_fma_floor("cuda", "fwd", case, {"fma": floor, "integer": 5.0})
    with pytest.raises(RuntimeError, match="missed the kernels' loops"):
        _check_fma_floor("cuda", "fwd", case, {"fma": 0.3 * floor, "integer": 5.0})


def test_a_block_takes_the_share_of_the_branch_deepest_in_its_call_stack(tmp_path):
    """A block inlined from a helper's else part runs that part's share of the iterations, not the
    share of a one-line ``if`` around the helper's call (which spans fewer lines but lies outside)."""
    from focalfast.static_cost.branch_map import branch_share
    from focalfast.static_cost.sass import Instruction

    helper, caller = tmp_path / "helper.cuh", tmp_path / "caller.cu"
    helper.write_text("void store(int valid) {\n  if (valid >= 8) {\n    all();\n  } else {\n    some();\n  }\n}\n")
    caller.write_text("void item(bool local) {\n  if (local) store(valid);\n}\n")
    h, c = str(helper), str(caller)
    branches = {(c, 2): (0.9, 0.1), (h, 2): (1.0, 0.0)}
    partial = [Instruction(16 * i, "STG.E.U16 [R2.64], R4", None, ((c, 2), (h, 5))) for i in range(4)]
    whole = [Instruction(16 * i, "STG.E.U16 [R2.64], R4", None, ((c, 2), (h, 3))) for i in range(4)]
    caller_only = [Instruction(0, "IADD3 R1, R2, R3, RZ", None, ((c, 2),))]
    assert branch_share(partial, branches) == 0.0
    assert branch_share(whole, branches) == 1.0
    assert branch_share(caller_only, branches) == 0.9


def test_a_branch_met_every_level_and_a_one_item_phase_take_shares_of_their_meetings(tmp_path):
    """An `if` met once a level in a step (3 SASS copies) runs each copy at its share of the meetings, not 3 times
    it; an item body's `if` (`FF_FOR_EACH_ITEM`: an `if` on the GPU, no SASS loop) counts in the step's body too,
    as a share of the items; a loop of its own (FF_FOR_EACH) keeps its counts to itself."""
    from focalfast.static_cost.cuda_backend import CudaLaunch, _branch_shares
    from focalfast.static_cost.loop_map import LoopKey

    source = tmp_path / "kernel.cu"
    source.write_text("void run() {\n"
                      "  for (int t = 0; t < steps; ++t) {\n"
                      "    each_level([&](auto l) { if (owns(l)) set_up(l); });\n"
                      "    FF_FOR_EACH_ITEM(it, first, s) {\n"
                      "      if (it.x0 + S > W) tail(it);\n"
                      "    }\n"
                      "    FF_FOR_EACH(e, count) {\n"
                      "      if (e < few) entry(e);\n"
                      "    }\n"
                      "  }\n"
                      "}\n")
    f = str(source.resolve())

    def loop(line, iterations, trips, branches, children=()):
        return {"file": f, "line": line, "ordinal": 0, "iterations": iterations, "trips": trips,
                "branches": [{"file": f, "line": at, "taken": t, "not_taken": n} for at, t, n in branches],
                "children": list(children)}

    items = loop(4, 40, {"4": 10}, [(5, 10, 30)])  # 4 items a step, one of them past W
    entries = loop(7, 60, {"6": 10}, [(8, 20, 40)])
    step = loop(2, 10, {"10": 1}, [(3, 27, 3)], [items, entries])  # 3 levels, 27 of 30 owned
    launch = CudaLaunch("k", "K", blocks=1, threads=64, smem_bytes=0, counts={"iterations": 1, "children": [step]})
    branches, _ = _branch_shares(launch, warps=2)
    step_key = LoopKey(None, ((f, 2),), 0)
    assert branches[step_key][(f, 3)] == pytest.approx((0.9, 0.1))
    assert branches[step_key][(f, 5)] == pytest.approx((0.25, 0.75))
    assert (f, 8) not in branches[step_key]
    assert branches[LoopKey(step_key, ((f, 7),), 0)][(f, 8)] == pytest.approx((1 / 3, 2 / 3))


@pytest.mark.slow
def test_cuda_sweep_counts_are_exact_for_a_compile_time_chain(cuda_records):
    """With the level chain fixed at compile time every branch of the sweeps' loop bodies is a
    counted ``if`` or the set-up of an inner loop: the main count (every branch taken) and the lower
    bound (no branch taken) agree, kernel by kernel."""
    sweeps = [k for rec in cuda_records for k in rec["kernels"] if k["kernel"].startswith("Context")]
    assert {k["kernel"].split("<")[0] for k in sweeps} == {"ContextFwd", "ContextBwd"}
    for k in sweeps:
        assert "FixedChain<3, 2>" in k["kernel"]
        assert k["warp_instr_per_elem_min"] == pytest.approx(k["warp_instr_per_elem"], rel=0.02), k["kernel"]
