"""SASS of a cubin as basic blocks with source locations, its control-flow graph and natural loops.

``disassemble(cubin, symbol)`` runs ``nvdisasm -g -gi -c`` (line info with the inlining chain)
and returns a ``Sass``: instructions in address order, each with its opcode, predicate and source
stack (outermost call first), grouped into basic blocks with successor edges. ``loops()`` finds
the natural loops (a back edge ``u -> h`` with ``h`` dominating ``u``; loops with one header are
merged) and nests them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from focalfast.static_cost.toolchain import run_tool
from focalfast.static_cost.triton_line_info import decode_chain

Location = Tuple[str, int]  # (file, line)

_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')  # the first location of a ``//##`` line
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_\w+):")
_TARGET = re.compile(r"`\((\.L_\w+)\)")
_FUNCTION = re.compile(r"^\.text\.(\S+):")

# Opcodes after which the next instruction is not reached from this one (unless predicated).
_NO_FALLTHROUGH = ("EXIT", "RET", "BRA", "JMP", "BRX", "JMX", "KILL")
_BRANCHES = ("BRA", "JMP", "BRX", "JMX", "CALL")


@dataclass
class Instruction:
    address: int
    text: str  # opcode with modifiers and operands, predicate removed
    predicate: Optional[str]
    stack: Tuple[Location, ...]  # source locations, outermost call first ((): no line info)

    @property
    def opcode(self) -> str:
        """The full opcode with modifiers, e.g. ``LDG.E.128``."""
        return self.text.split()[0] if self.text else ""

    @property
    def base(self) -> str:
        """The opcode without modifiers, e.g. ``LDG``."""
        return self.opcode.split(".")[0]


@dataclass
class Block:
    index: int
    instructions: List[Instruction]
    successors: List[int] = field(default_factory=list)

    @property
    def start(self) -> int:
        return self.instructions[0].address


@dataclass
class Loop:
    """A natural loop: ``header`` block and the ``blocks`` of its body (header included)."""

    header: int
    blocks: frozenset
    parent: Optional["Loop"] = None
    children: List["Loop"] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth


@dataclass
class Sass:
    symbol: str
    blocks: List[Block]

    def instructions(self) -> List[Instruction]:
        return [i for b in self.blocks for i in b.instructions]

    def loops(self) -> List[Loop]:
        """Natural loops, outermost first and in address order within a nesting level."""
        return _natural_loops(self.blocks)

    def dominators(self) -> List[set]:
        """Per block, the blocks on every path from the entry to it (itself included)."""
        return _dominators(self.blocks, reachable(self.blocks))

    def innermost_loop(self, loops: List[Loop]) -> Dict[int, Optional[Loop]]:
        """Block index -> the innermost of ``loops`` (from ``loops()``) containing it (None: no loop)."""
        inner: Dict[int, Optional[Loop]] = {b.index: None for b in self.blocks}
        for loop in sorted(loops, key=lambda lp: lp.depth):
            for b in loop.blocks:
                inner[b] = loop
        return inner


def _parse_stack(comment_lines: List[str]) -> Tuple[Location, ...]:
    """Source stack from the ``//## File ...`` lines before an instruction: each line starts with
    one frame of the inlining chain, innermost first (or a whole chain, ``triton_line_info``)."""
    chain = []
    for text in comment_lines:
        match = _FILE_LINE.search(text)
        if match:
            chain.extend(reversed(decode_chain(match.group(1), int(match.group(2)))))
    return tuple(reversed(chain))


def parse_sass(text: str, symbol: str) -> Sass:
    """Basic blocks of function ``symbol`` in ``nvdisasm -g -gi -c`` output."""
    instructions: List[Instruction] = []
    labels: Dict[str, int] = {}  # label -> index of the next instruction
    pending: List[str] = []
    inside = False
    for line in text.splitlines():
        func = _FUNCTION.match(line.strip())
        if func:
            inside = func.group(1) == symbol
            continue
        if not inside:
            continue
        stripped = line.strip()
        if stripped.startswith("//##"):
            pending.append(stripped)
            continue
        label = _LABEL.match(stripped)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTR.match(line)
        if not match:
            continue
        body = match.group(2).strip()
        predicate = None
        if body.startswith("@"):
            predicate, body = body.split(None, 1)
        stack = _parse_stack(pending) if pending else (instructions[-1].stack if instructions else ())
        pending = []
        instructions.append(Instruction(int(match.group(1), 16), body, predicate, stack))
    if not instructions:
        raise ValueError(f"no SASS for function {symbol!r} in the disassembly")
    return Sass(symbol, _blocks(instructions, labels))


def _blocks(instructions: List[Instruction], labels: Dict[str, int]) -> List[Block]:
    leaders = {0} | set(labels.values())
    for i, ins in enumerate(instructions):
        if ins.base in _BRANCHES or ins.base in _NO_FALLTHROUGH:
            leaders.add(i + 1)
    leaders = sorted(x for x in leaders if x < len(instructions))
    block_of = {start: n for n, start in enumerate(leaders)}
    blocks = []
    for n, start in enumerate(leaders):
        end = leaders[n + 1] if n + 1 < len(leaders) else len(instructions)
        blocks.append(Block(n, instructions[start:end]))
    for n, block in enumerate(blocks):
        last = block.instructions[-1]
        successors = []
        if last.base in _BRANCHES:
            for target in _TARGET.findall(last.text):
                successors.append(block_of[labels[target]])
        falls = last.base not in _NO_FALLTHROUGH or last.predicate is not None
        if falls and n + 1 < len(blocks):
            successors.append(n + 1)
        block.successors = list(dict.fromkeys(successors))
    return blocks


def reachable(blocks: List[Block]) -> set:
    """Indices of the blocks reachable from the entry (the trailing ``BRA`` self-loop is not)."""
    seen, stack = set(), [0]
    while stack:
        x = stack.pop()
        if x not in seen:
            seen.add(x)
            stack.extend(blocks[x].successors)
    return seen


def _dominators(blocks: List[Block], live: set) -> List[set]:
    n = len(blocks)
    preds = [[] for _ in range(n)]
    for b in blocks:
        if b.index in live:
            for s in b.successors:
                preds[s].append(b.index)
    dom = [set(live) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for i in sorted(live - {0}):
            new = set.intersection(*(dom[p] for p in preds[i])) | {i}
            if new != dom[i]:
                dom[i], changed = new, True
    return dom


def _natural_loops(blocks: List[Block]) -> List[Loop]:
    live = reachable(blocks)
    dom = _dominators(blocks, live)
    preds: Dict[int, List[int]] = {b.index: [] for b in blocks}
    for b in blocks:
        for s in b.successors:
            preds[s].append(b.index)
    bodies: Dict[int, set] = {}
    for b in blocks:
        if b.index not in live:
            continue
        for h in b.successors:
            if h in dom[b.index]:  # back edge b -> h
                body = bodies.setdefault(h, {h})
                stack = [b.index]
                while stack:
                    x = stack.pop()
                    if x not in body:
                        body.add(x)
                        stack.extend(preds[x])
    loops = [Loop(h, frozenset(body)) for h, body in bodies.items()]
    loops.sort(key=lambda lp: (-len(lp.blocks), lp.header))
    for i, loop in enumerate(loops):
        enclosing = [o for o in loops[:i] if loop.blocks < o.blocks or (loop.blocks <= o.blocks and o is not loop)]
        if enclosing:
            loop.parent = min(enclosing, key=lambda o: len(o.blocks))
            loop.parent.children.append(loop)
    for loop in loops:
        loop.children.sort(key=lambda c: c.header)
    return sorted(loops, key=lambda lp: (lp.depth, lp.header))


def disassemble(cubin: Path, symbol: str) -> Sass:
    """The SASS of ``symbol`` in ``cubin``, with line info (``kernel.sass`` beside a cached cubin)."""
    cached = cubin.with_suffix(".sass")
    text = cached.read_text() if cached.exists() else run_tool("nvdisasm", "-g", "-gi", "-c", str(cubin))
    return parse_sass(text, symbol)
