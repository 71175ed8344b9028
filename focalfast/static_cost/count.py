"""Dynamic warp-instruction counts of one kernel launch: SASS blocks x how often they run.

Every warp of a block (program) runs the same instruction stream, so a basic block outside every
loop runs ``warps x blocks`` times, and a block whose innermost loop is source loop ``key`` runs
``warps x iterations[key]`` times (iterations summed over the grid; ``warps`` per block). A loop
header whose test sits at the top (it has an exit edge and is not the latch) runs once more per
entry. Predicated instructions issue whether or not their predicate holds, so all count.
A branch inside a loop body (other than an inner loop) is counted as taken every iteration: the
total is an upper bound where loop bodies branch (e.g. code versioned by the compiler for
different trip counts). ``warp_instructions_min`` counts, inside loops, only the blocks every
iteration runs (those that dominate each back edge): a lower bound. Where both agree, the count
is exact up to the trip counts. With ``branch_share`` (the CUDA counts: how often each ``if`` of a
loop body was taken, ``branch_map``) a block that not every iteration runs counts, in both, the
share of the iterations that took its branch, where it lies under a counted branch, and a block
that only leads into an inner loop (its set-up, skipped when a warp has no iteration of it) the
share of the iterations that entered that loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from focalfast.static_cost.classify import CLASSES, instruction_class
from focalfast.static_cost.loop_map import LoopMatch
from focalfast.static_cost.sass import Sass


@dataclass
class LoopCost:
    """One SASS loop: where it is, which source loop it is and how often its body ran."""

    address: int
    source: Optional[str]  # e.g. "depthwise_conv.py:57" (None: no source loop matched)
    instructions: int  # static instructions of the body (inner loops included)
    own_instructions: int  # static instructions in the body but in no inner loop
    iterations_per_block: float  # body executions per block (program), averaged over the grid
    warp_instructions: float  # own_instructions x executions x warps, summed over the grid


@dataclass
class KernelCost:
    warp_instructions: float
    by_class: Dict[str, float]
    by_detail: Dict[str, float]
    loops: List[LoopCost] = field(default_factory=list)
    static_instructions: int = 0
    unmapped_loops: int = 0
    unrolled_loop_instructions: float = 0.0  # in loops ptxas unrolled (counted by estimate, see loop_map)
    warp_instructions_min: float = 0.0  # inside loops only the blocks every iteration runs


def kernel_cost(sass: Sass, mapping: Dict[int, Optional[LoopMatch]], trips: Dict, blocks: int,
                warps: int, branch_share: Optional[Callable[[list, object, object], Optional[float]]] = None
                ) -> KernelCost:
    """Counts of one launch of ``blocks`` blocks of ``warps`` warps.

    ``mapping``: SASS loop header -> source loop (``loop_map.map_loops``); ``trips``: per source
    loop key, ``{trip count: entries}`` summed over the grid. A SASS loop with no source loop
    counts as running once per run of its parent (reported in ``unmapped_loops``).
    ``branch_share(instructions, loop key, inner loop key)``: the share of the loop's iterations that
    run a block of a loop body that not every iteration runs (None: unknown); ``inner loop key``: the
    source loop the block only leads into (else None).
    """
    all_loops = sass.loops()
    loops = {lp.header: lp for lp in all_loops}
    innermost = sass.innermost_loop(all_loops)

    def runs(block_index: int) -> float:
        loop = innermost[block_index]
        while loop is not None and mapping.get(loop.header) is None:
            loop = loop.parent
        if loop is None:
            return float(blocks)
        match = mapping[loop.header]
        key_trips = trips.get(match.key, {})
        n = match.executions(key_trips)
        header = sass.blocks[loop.header]
        top_tested = any(s not in loop.blocks for s in header.successors) and loop.header not in header.successors
        if block_index == loop.header and top_tested:
            n += sum(key_trips.values())
        return float(n)

    dom = sass.dominators()

    def every_iteration(block_index: int) -> bool:
        loop = innermost[block_index]
        if loop is None:
            return True
        latches = [b for b in loop.blocks if loop.header in sass.blocks[b].successors]
        return all(block_index in dom[latch] for latch in latches)

    def leads_into(block_index: int, loop) -> Optional[object]:
        """The source loop of the loop directly inside ``loop`` that ``block_index`` only leads into."""
        seen = set()
        while block_index not in seen and len(sass.blocks[block_index].successors) == 1:
            seen.add(block_index)
            block_index = sass.blocks[block_index].successors[0]
            inner = loops.get(block_index)
            if inner is not None and inner.parent is loop:
                match = mapping.get(block_index)
                return match.key if match is not None else None
            if innermost[block_index] is not loop:
                return None
        return None

    def share(block_index: int) -> Optional[float]:
        loop = innermost[block_index]
        if branch_share is None or loop is None or mapping.get(loop.header) is None:
            return None
        return branch_share(sass.blocks[block_index].instructions, mapping[loop.header].key,
                            leads_into(block_index, loop))

    certain = 0.0
    by_class: Counter = Counter({c: 0.0 for c in CLASSES})
    by_detail: Counter = Counter()
    own: Counter = Counter()  # loop header -> warp-instructions of blocks whose innermost loop it is
    total = 0.0
    for block in sass.blocks:
        count = runs(block.index) * warps
        known = None if every_iteration(block.index) else share(block.index)
        if known is not None:
            count *= known
        if count == 0:
            continue
        for ins in block.instructions:
            cls, detail = instruction_class(ins)
            by_class[cls] += count
            by_detail[detail] += count
        total += count * len(block.instructions)
        if known is not None or every_iteration(block.index):
            certain += count * len(block.instructions)
        if innermost[block.index] is not None:
            own[innermost[block.index].header] += count * len(block.instructions)
    costs = []
    for header, loop in sorted(loops.items(), key=lambda kv: sass.blocks[kv[0]].start):
        match = mapping.get(header)
        body = [sass.blocks[b] for b in loop.blocks]
        own_blocks = [b for b in body if innermost[b.index] is loop]
        costs.append(LoopCost(
            address=sass.blocks[header].start,
            source=match.describe() if match is not None else None,
            instructions=sum(len(b.instructions) for b in body),
            own_instructions=sum(len(b.instructions) for b in own_blocks),
            iterations_per_block=match.executions(trips.get(match.key, {})) / blocks if match is not None else 0.0,
            warp_instructions=own[header],
        ))
    unrolled = sum(own[h] for h, m in mapping.items() if m is not None and m.unroll > 1)
    return KernelCost(total, dict(by_class), dict(by_detail), costs, len(sass.instructions()),
                      sum(1 for k in mapping.values() if k is None), unrolled, certain)
