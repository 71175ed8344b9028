"""The CUDA backend's kernels for one case: launches, loop counts, cubins, counts per element.

The real launch code (``focalfast.ops.cuda.focal_modulation``'s forward and backward) runs twice
on uninitialised CPU tensors under ``ShapeOnly`` (PyTorch operators are recorded, not computed),
with the count build of the extension (``cuda_count_build``) and the SM count patched:

1. with ``set_record_launches``: every launcher records its kernel body, blocks, threads and
   dynamic shared memory instead of running (``Stream::record``);
2. with ``set_host_sample(B)``: the host path runs each launch's first 1/B of threads or blocks
   (image 0: every kernel orders its threads and blocks image-major) and the loop counters give
   the trip counts of every source loop, scaled by B; a sweep's counts by its blocks over the
   blocks run (the same where a block has one image; where context_bwd stacks images, the blocks
   run are whole stacks, and a ragged last stack counts as a whole one: an overcount).

Warp-level counts from host counts (``_keys``): code that every thread of a block runs (the
sweeps' row and level loops, run once per block on the host) runs once per warp; an
``FF_FOR_EACH`` runs its items in warp-passes, counted exactly; code inside an item or a grid
kernel's thread runs once per warp-pass, assuming the lanes of a warp run the same trip counts.
A branch of a loop body runs the share of the loop's iterations that took it (``branch_map``).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from focalfast.ops.cuda import extension
from focalfast.static_cost.cases import Case, op_inputs
from focalfast.static_cost.branch_map import branch_share
from focalfast.static_cost.count import kernel_cost
from focalfast.static_cost.cuda_compile import kernel_symbol
from focalfast.static_cost.cuda_count_build import count_extension
from focalfast.static_cost.kernel_record import KernelRecord
from focalfast.static_cost.loop_map import LoopKey, _source_lines, map_loops
from focalfast.static_cost.resources import resources
from focalfast.static_cost.sass import disassemble
from focalfast.static_cost.shape_only import ShapeOnly

THREAD_DISTRIBUTING = "FF_FOR_EACH"  # the sweeps' macro that spreads items over a block's threads
ONE_ITEM_A_THREAD = "FF_FOR_EACH_ITEM"  # context_bwd's items: a loop on the host, an `if` on the GPU
HOST_LAUNCH_LOOP = "Op::run("  # the host path's loop over a launch's threads or blocks


@dataclass
class CudaLaunch:
    name: str  # Op::kName
    op: str  # the kernel body's C++ type
    blocks: int
    threads: int
    smem_bytes: int
    sample: int = 1  # host counts cover 1/sample of the launch
    counts: dict = field(default_factory=dict)  # the loop counter tree of the host run

    @property
    def kernel(self) -> str:
        return self.op.replace("focalfast::", "").replace("(anonymous namespace)::", "")


@contextlib.contextmanager
def _count_build_launch_code(sm_count: int):
    """The CUDA launch code with the count build as its extension and ``sm_count`` SMs."""
    from focalfast.ops.cuda import extension
    from focalfast.ops.cuda import focal_modulation as cuda_op

    module, lib = count_extension()
    saved = extension.load, cuda_op._sm_count
    extension.load, cuda_op._sm_count = (lambda: module), (lambda device: sm_count)
    try:
        yield cuda_op, module, lib
    finally:
        extension.load, cuda_op._sm_count = saved


def _run_op(cuda_op, inputs: dict, direction: str, pooled_mean):
    """The backend's forward, or its backward (``inputs["grad_out"]``), on ``inputs``."""
    args = {k: v for k, v in inputs.items() if k != "grad_out"}
    if direction == "fwd":
        return cuda_op._forward(**args, normalize_modulator=False)
    return cuda_op._backward(inputs["grad_out"], **args, pooled_mean=pooled_mean, normalize_modulator=False)


def capture(case: Case, sm_count: int, host_sample: bool = True) -> Dict[str, Tuple[List[CudaLaunch], list]]:
    """``{"fwd": (launches, torch ops), "bwd": ...}`` with loop counts attached to each launch
    (``host_sample``: counted on image 0 and scaled by B; False: every image, for checks)."""
    inputs = op_inputs(case, "cpu")
    inputs["grad_out"] = inputs["q"].new_empty(inputs["q"].shape)
    result = {}
    with _count_build_launch_code(sm_count) as (cuda_op, module, lib):
        pooled_mean = None
        for direction in ("fwd", "bwd"):
            with extension.recorded_launches(module) as records, ShapeOnly() as shapes:
                out = _run_op(cuda_op, inputs, direction, pooled_mean)
            if direction == "fwd":
                pooled_mean = out[1]
            launches = [CudaLaunch(r["name"], r["op"], r["blocks"], r["threads"], r["smem_bytes"]) for r in records]
            sample = case.batch if host_sample else 1
            trees = _count_trees(cuda_op, module, lib, sample, inputs, direction, pooled_mean)
            if [t[0] for t in trees] != [lc.name for lc in launches]:
                raise RuntimeError(f"the counted launches {[t[0] for t in trees]} differ from the recorded "
                                   f"{[lc.name for lc in launches]}")
            for launch, (_, tree) in zip(launches, trees):
                launch.counts, launch.sample = tree, sample
            result[direction] = (launches, shapes.ops)
    return result


def _count_trees(cuda_op, module, lib, sample: int, inputs: dict, direction: str, pooled_mean) -> list:
    """``[(launcher name, loop counter tree)]`` of one op call, each launch on its first 1/sample."""
    trees = []
    original = cuda_op._Kernels.launch

    def counted(self, name, **kwargs):
        lib.ff_loop_counts_reset()
        original(self, name, **kwargs)
        trees.append((name, json.loads(lib.ff_loop_counts_json().decode())))

    cuda_op._Kernels.launch = counted
    module.set_host_sample(sample)
    try:
        with ShapeOnly():
            _run_op(cuda_op, inputs, direction, pooled_mean)
    finally:
        cuda_op._Kernels.launch = original
        module.set_host_sample(1)
    return _split_by_kernel(trees)


def _split_by_kernel(trees: list) -> list:
    """One entry per kernel launch: the host launch loops (``for ... Op::run(...)`` in ``launch`` and
    ``launch_sweep``) of each launcher's tree; other loops there are host set-up code."""
    from focalfast.ops.cuda import extension

    source_dir = os.path.realpath(extension.SOURCE_DIR)
    out = []
    for name, tree in trees:
        for loop in tree["children"]:
            if os.path.dirname(os.path.realpath(loop["file"])) != source_dir:
                raise RuntimeError(f"the count build of {name} counted loops of {loop['file']}, not of the sources "
                                   f"in {source_dir}: its loops would match none in the cubins")
            lines = _source_lines(os.path.realpath(loop["file"]))
            if 0 < loop["line"] <= len(lines) and HOST_LAUNCH_LOOP in lines[loop["line"] - 1]:
                out.append((name, loop))
    return out


def _warp_passes(items: int, threads: int) -> int:
    """Warp-iterations of ``FF_FOR_EACH`` over ``items`` on a block of ``threads``: warp w runs
    ``ceil((items - 32 w) / threads)`` passes (item ``i`` goes to thread ``i % threads``)."""
    return sum(max(0, -(-(items - 32 * w) // threads)) for w in range(-(-threads // 32)))


def _branch_shares(launch: CudaLaunch, warps: int) -> Tuple[dict, dict]:
    """Per source loop key, the shares of its iterations that run a part of its body:
    ``branches[key][(file, line)]``: (then, else) of the body's ``if`` statements;
    ``entered[key][inner key]``: the set-up of an inner loop, which a warp runs when the inner loop
    has an iteration for it (an ``FF_FOR_EACH`` of n items in per-block code: min(warps, ceil(n / 32))
    of the block's warps; a loop inside an item: entries with at least one iteration).
    A loop's branches include those of its ``FF_FOR_EACH_ITEM`` loops (one item a thread: no SASS loop, their
    blocks are the outer loop's), pooled over its copies (a level's phase each: their conditions hold alike but
    for compile-time ones, which are not counted). An `if` met k times an iteration (a line of a lambda over the
    levels: k copies in the SASS) runs each copy in its share of the k meetings."""
    branches: Dict[LoopKey, Dict[Tuple[str, int], Tuple[float, float]]] = {}
    entered: Dict[LoopKey, Dict[LoopKey, float]] = {}

    def walk(node, parent, per_block) -> Dict[Tuple[str, int], list]:
        """The loop's branch counts, (file, line) -> [taken, not taken, iterations of the loop counting them]."""
        file = os.path.realpath(node["file"])
        key = LoopKey(parent, ((file, node["line"]),), node["ordinal"])
        iterations = max(node["iterations"], 1)
        counts: Dict[Tuple[str, int], list] = {}
        for b in node.get("branches", []):
            both = counts.setdefault((os.path.realpath(b["file"]), b["line"]), [0, 0, iterations])
            both[0] += b["taken"]
            both[1] += b["not_taken"]
        one_item: Dict[Tuple[str, int], list] = {}
        entered[key] = {}
        for child in node["children"]:
            lines = _source_lines(os.path.realpath(child["file"]))
            text = lines[child["line"] - 1] if 0 < child["line"] <= len(lines) else ""
            distributing = per_block and THREAD_DISTRIBUTING in text
            child_key = LoopKey(key, ((os.path.realpath(child["file"]), child["line"]),), child["ordinal"])
            runs = sum((min(warps, -(-int(n) // 32)) / warps if distributing else float(int(n) > 0)) * e
                       for n, e in child["trips"].items())
            entered[key][child_key] = runs / iterations
            inner = walk(child, key, per_block and not distributing)
            if ONE_ITEM_A_THREAD in text:
                for at, (taken, not_taken, n) in inner.items():
                    pooled = one_item.setdefault(at, [0, 0, 0])
                    pooled[0], pooled[1], pooled[2] = pooled[0] + taken, pooled[1] + not_taken, pooled[2] + n
        counts.update({at: pooled for at, pooled in one_item.items() if at not in counts})
        branches[key] = {at: (taken / max(n, taken + not_taken), not_taken / max(n, taken + not_taken))
                         for at, (taken, not_taken, n) in counts.items()}
        return counts

    per_block = launch.counts["iterations"] == -(-launch.blocks // launch.sample)
    for child in launch.counts["children"]:
        walk(child, None, per_block)
    return branches, entered


def _keys(launch: CudaLaunch, warps: int) -> Dict[LoopKey, Dict[int, float]]:
    """Source loop key -> trip histogram ``{n: entries}`` scaled so that ``sum(n * entries) * warps``
    is the loop body's warp-level executions over the whole grid.

    Host counts are per block (a sweep's own loops: every warp runs them) or per item (a grid
    kernel's thread, an ``FF_FOR_EACH`` item). An ``FF_FOR_EACH`` of n items runs
    ``_warp_passes(n, threads)`` warp-iterations; a loop inside an item runs once per warp-pass for
    the items of that pass (lanes in lockstep, the same trip count assumed for all of them).
    """
    root = launch.counts  # the host launch loop over image 0's threads or blocks
    per_block = root["iterations"] == -(-launch.blocks // launch.sample)
    scale = launch.blocks / root["iterations"] if per_block else launch.sample  # the launch over the run
    trips: Dict[LoopKey, Dict[int, float]] = {}

    def walk(node, parent, per_item):  # per_item: warp-passes per item above, None for per-block code
        file = os.path.realpath(node["file"])
        lines = _source_lines(file)
        text = lines[node["line"] - 1] if 0 < node["line"] <= len(lines) else ""
        hist = {int(n): e for n, e in node["trips"].items()}
        if per_item is None and THREAD_DISTRIBUTING in text:
            items = sum(n * e for n, e in hist.items())
            passes = sum(_warp_passes(n, launch.threads) * e for n, e in hist.items())
            own, per_item = passes / max(items, 1), passes / max(items, 1)
        else:
            own = 1.0 if per_item is None else per_item
        key = LoopKey(parent, ((file, node["line"]),), node["ordinal"])
        factor = scale * own / (1 if per_item is None else warps)
        trips[key] = {n: e * factor for n, e in hist.items()}
        for child in node["children"]:
            walk(child, key, per_item)

    for child in root["children"]:
        walk(child, None, None if per_block else 1 / 32)
    return trips


def launch_record(launch: CudaLaunch) -> KernelRecord:
    """Compile (cached), disassemble and count one recorded launch."""
    cubin, symbol = kernel_symbol(launch.op)
    sass = disassemble(cubin, symbol)
    warps = -(-launch.threads // 32)
    trips = _keys(launch, warps)
    branches, entered = _branch_shares(launch, warps)

    def share(instructions, key, inner):
        if inner is not None and inner in entered.get(key, {}):
            return entered[key][inner]
        return branch_share(instructions, branches.get(key, {}))

    cost = kernel_cost(sass, map_loops(sass, trips.keys()), trips, launch.blocks, warps, share)
    res = resources(cubin, symbol, launch.threads, launch.smem_bytes)
    return KernelRecord(launch.kernel, f"csrc ({launch.name})", (launch.blocks, 1, 1), res, cost, trips)
