"""Registers, stack, local and shared memory of a kernel (cuobjdump) and its residency on an sm_90 SM.

sm_90 limits per SM: 65536 registers (allocated per warp in units of 256, i.e. registers per
thread rounded up to a multiple of 8), 228 KB of shared memory with 1 KB reserved per resident
block, 2048 threads (64 warps) and 32 blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from focalfast.static_cost.toolchain import run_tool

SM90_REGISTERS = 65536
SM90_SHARED_BYTES = 228 * 1024
SM90_RESERVED_SHARED_PER_BLOCK = 1024
SM90_THREADS = 2048
SM90_BLOCKS = 32

_USAGE = re.compile(r"Function ([^:\s]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


@dataclass(frozen=True)
class Resources:
    registers: int  # per thread
    stack_bytes: int  # per thread
    local_bytes: int  # per thread: spills and local arrays
    static_smem: int  # bytes per block
    dynamic_smem: int  # bytes per block, from the launch
    threads: int  # per block

    @property
    def smem_bytes(self) -> int:
        return self.static_smem + self.dynamic_smem

    @property
    def warps(self) -> int:
        return -(-self.threads // 32)

    def blocks_per_sm(self) -> int:
        """Resident blocks per SM under the sm_90 register, shared-memory, thread and block limits."""
        regs_per_warp = -(-max(self.registers, 1) * 32 // 256) * 256
        by_regs = SM90_REGISTERS // (regs_per_warp * self.warps)
        by_smem = SM90_SHARED_BYTES // (self.smem_bytes + SM90_RESERVED_SHARED_PER_BLOCK)
        return max(0, min(by_regs, by_smem, SM90_THREADS // (32 * self.warps), SM90_BLOCKS))


def resources(cubin: Path, symbol: str, threads: int, dynamic_smem: int) -> Resources:
    """Resources of ``symbol`` in ``cubin`` (``cuobjdump --dump-resource-usage``)."""
    text = run_tool("cuobjdump", "--dump-resource-usage", str(cubin))
    for name, reg, stack, shared, local in _USAGE.findall(text):
        if name == symbol:
            return Resources(int(reg), int(stack), int(local), int(shared), dynamic_smem, threads)
    raise ValueError(f"cuobjdump reports no function {symbol!r} in {cubin}")
