"""What the report says about one kernel launch: resources, residency and counts per element."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from focalfast.static_cost.count import KernelCost
from focalfast.static_cost.resources import Resources


@dataclass
class KernelRecord:
    kernel: str  # the kernel's name (Triton function, or CUDA Op name with its template types)
    source: str  # where it comes from
    grid: Tuple[int, int, int]
    resources: Resources
    cost: KernelCost
    trips: Dict = field(default_factory=dict)  # source LoopKey -> {trip count: entries}, over the grid

    @property
    def blocks(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def as_dict(self, elements: int, sm_count: int) -> dict:
        """The JSON record; counts divided by ``elements`` (B * H * W * C)."""
        r = self.resources
        ctas = r.blocks_per_sm()
        slots = max(1, ctas * sm_count)
        waves = -(-self.blocks // slots)
        return {
            "kernel": self.kernel,
            "source": self.source,
            "grid": list(self.grid),
            "threads": r.threads,
            "regs": r.registers,
            "spill_bytes": r.local_bytes,
            "stack_bytes": r.stack_bytes,
            "smem_bytes": r.smem_bytes,
            "static_smem_bytes": r.static_smem,
            "dynamic_smem_bytes": r.dynamic_smem,
            "ctas_per_sm": ctas,
            "warps_per_sm": ctas * r.warps,
            "waves": waves,
            "slot_fill": self.blocks / (waves * slots),
            "static_instructions": self.cost.static_instructions,
            "warp_instr": self.cost.warp_instructions,
            "warp_instr_per_elem": self.cost.warp_instructions / elements,
            "warp_instr_per_elem_min": self.cost.warp_instructions_min / elements,
            "by_class": {k: v / elements for k, v in self.cost.by_class.items()},
            "by_detail": {k: v / elements for k, v in sorted(self.cost.by_detail.items(), key=lambda kv: -kv[1])},
            "unmapped_loops": self.cost.unmapped_loops,
            "unrolled_loop_share": self.cost.unrolled_loop_instructions / max(self.cost.warp_instructions, 1.0),
            "loops": [
                {"address": hex(lp.address), "source": lp.source, "body_instructions": lp.instructions,
                 "own_instructions": lp.own_instructions, "iterations_per_block": lp.iterations_per_block,
                 "warp_instr_per_elem": lp.warp_instructions / elements}
                for lp in self.cost.loops
            ],
            "source_loops": [
                {"file": key.stack[-1][0], "line": key.stack[-1][1], "loop": key.describe(), "depth": _depth(key),
                 "entries": sum(trips.values()), "iterations": sum(n * e for n, e in trips.items())}
                for key, trips in self.trips.items()
            ],
        }


def _depth(key) -> int:
    return 0 if key.parent is None else 1 + _depth(key.parent)
