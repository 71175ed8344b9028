"""Match SASS loops to source loops through line info.

A source loop is a ``LoopKey``: its parent loop's key, its source stack (call sites from the
kernel down to the ``for`` statement, each as the first line of its statement) and its ordinal
among the loops with that stack entered in one iteration of the parent (the unrolled copies of a
loop inside a compile-time unrolled loop are ordinals 0, 1, ...). SASS loops are matched
outermost first: a SASS loop is, among the source loops directly inside its parent's source
loop, the one whose ``for`` statement holds most of its instructions (by their inlining stacks;
line info is not exact, so a majority decides among siblings). SASS loops with one source stack
under one parent are numbered in address order, the order the compiler lays unrolled copies out.

ptxas may unroll a loop with a run-time trip count n by u and finish with a remainder loop: two
SASS loops for one source loop. The first then runs ``n // u`` times, the second ``n % u``; u is
the ratio of their instructions from the loop body's lines.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from focalfast.static_cost.sass import Instruction, Loop, Sass

Location = Tuple[str, int]
MIN_FRACTION = 0.2  # a SASS loop with fewer of its instructions in any source loop is no source loop


@dataclass(frozen=True)
class LoopKey:
    parent: Optional["LoopKey"]
    stack: Tuple[Location, ...]
    ordinal: int

    def describe(self) -> str:
        file, line = self.stack[-1]
        return f"{file.rsplit('/', 1)[-1]}:{line}" + (f"#{self.ordinal}" if self.ordinal else "")


@dataclass(frozen=True)
class LoopMatch:
    """The source loop of a SASS loop; ``unroll`` > 1 for a loop ptxas unrolled (``remainder``:
    the loop that runs the last ``n % unroll`` iterations)."""

    key: LoopKey
    unroll: int = 1
    remainder: bool = False
    copies: int = 1  # SASS copies of the loop made by unrolling an enclosing loop: each runs 1/copies

    def executions(self, trips: Dict[int, float]) -> float:
        """Body executions of this SASS loop, given source trip counts ``{n: entries}``."""
        if self.remainder:
            return sum(e * (n % self.unroll) for n, e in trips.items()) / self.copies
        return sum(e * (n // self.unroll) for n, e in trips.items()) / self.copies

    def describe(self) -> str:
        text = self.key.describe()
        if self.unroll > 1:
            text += f" (remainder of unroll x{self.unroll})" if self.remainder else f" (unrolled x{self.unroll})"
        if self.copies > 1:
            text += f" (one of {self.copies} unrolled copies)"
        return text


@functools.lru_cache(maxsize=None)
def _statement_spans(file: str) -> Tuple[Tuple[int, int], ...]:
    """(first, last) lines of the Python statements of ``file`` (empty for other files)."""
    if not file.endswith(".py"):
        return ()
    try:
        with open(file) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError):
        return ()
    return tuple((n.lineno, n.end_lineno) for n in ast.walk(tree) if isinstance(n, ast.stmt))


@functools.lru_cache(maxsize=None)
def statement_start(file: str, line: int) -> int:
    """First line of the innermost Python statement of ``file`` containing ``line`` (else ``line``)."""
    best = None
    for start, end in _statement_spans(file):
        if start <= line <= end and (best is None or end - start <= best[1] - best[0]):
            best = (start, end)
    return best[0] if best else line


@functools.lru_cache(maxsize=None)
def _source_lines(file: str) -> Tuple[str, ...]:
    try:
        with open(file) as f:
            return tuple(f.read().splitlines())
    except OSError:
        return ()


def _cxx_loop_end(file: str, start: int) -> int:
    """Last line of the C/C++ loop whose header starts at line ``start``: after the parenthesised
    header, the matching ``}`` of a braced body or the ``;`` ending a single statement."""
    lines = _source_lines(file)
    depth_paren = depth_brace = 0
    header_done = False
    for n in range(start - 1, len(lines)):
        text = lines[n].split("//", 1)[0]
        for ch in text:
            if not header_done:
                if ch == "(":
                    depth_paren += 1
                elif ch == ")":
                    depth_paren -= 1
                    header_done = depth_paren == 0
                continue
            if ch == "{":
                depth_brace += 1
            elif ch == "}":
                depth_brace -= 1
                if depth_brace == 0:
                    return n + 1
            elif ch == ";" and depth_brace == 0:
                return n + 1
    return start


@functools.lru_cache(maxsize=None)
def statement_end(file: str, start: int) -> int:
    """Last line of the loop statement of ``file`` starting at ``start`` (its body's end)."""
    if not file.endswith(".py"):
        return _cxx_loop_end(file, start)
    ends = [end for s, end in _statement_spans(file) if s == start]
    return max(ends) if ends else start


def normalise(stack: Iterable[Location]) -> Tuple[Location, ...]:
    """Each location of a stack as the first line of its statement."""
    return tuple((f, statement_start(f, n)) for f, n in stack)


def _inside(stack: Tuple[Location, ...], loop_stack: Tuple[Location, ...]) -> bool:
    """Whether an instruction's (normalised) stack lies in the loop ``loop_stack``: the loop's call
    sites appear in order, and a frame after them lies in the loop statement (a key without call
    sites, as the CUDA counts give, matches at any depth)."""
    at = 0
    for site in loop_stack[:-1]:
        try:
            at = stack.index(site, at) + 1
        except ValueError:
            return False
    loop_file, loop_line = loop_stack[-1]
    end = statement_end(loop_file, loop_line)
    return any(f == loop_file and loop_line <= n <= end for f, n in stack[at:])


def _loop_instructions(sass: Sass, loop: Loop) -> list:
    return [ins for b in sorted(loop.blocks) for ins in sass.blocks[b].instructions]


def _fraction(located, loop_stack) -> float:
    return sum(_inside(st, loop_stack) for st in located) / max(len(located), 1)


def source_stack(instructions: Iterable[Instruction], parent: Optional[LoopKey], keys) -> Optional[tuple]:
    """The stack of the source loop a SASS loop runs: among the loops directly inside ``parent``
    (None: the kernel's top level), the one holding most of its instructions (None when none
    holds MIN_FRACTION)."""
    located = [normalise(ins.stack) for ins in instructions if ins.stack]
    candidates = {k.stack for k in keys if k.parent == parent}
    scored = sorted(((_fraction(located, st), st) for st in candidates), reverse=True)
    if not scored or scored[0][0] < MIN_FRACTION:
        return None
    return scored[0][1]


def _common_child(own_lists: list, parent: LoopKey, keys) -> Optional[LoopKey]:
    """The loop directly inside ``parent`` that holds most of the own instructions of every one of
    several SASS loops: they are copies of it, made by unrolling ``parent``."""
    for child in (k for k in keys if k.parent == parent):
        if all(_fraction([normalise(i.stack) for i in own if i.stack], child.stack) >= 0.5 for own in own_lists):
            return child
    return None


def _body_instructions(instructions, stack) -> int:
    """Instructions from the body of the ``for`` statement ``stack`` (not from the ``for`` line)."""
    located = [normalise(ins.stack) for ins in instructions if ins.stack]
    return sum(1 for st in located if _inside(st, stack) and stack[-1] not in st)


def map_loops(sass: Sass, keys: Iterable[LoopKey]) -> Dict[int, Optional[LoopMatch]]:
    """SASS loop header block -> its source loop (None where no source loop matches)."""
    keys = set(keys)
    loops = sass.loops()
    innermost = sass.innermost_loop(loops)
    mapped: Dict[int, Optional[LoopMatch]] = {}
    by_slot: Dict[tuple, list] = {}  # (SASS parent loop, source stack) -> SASS loops, in address order

    def own(loop):
        return [i for b in sorted(loop.blocks) if innermost[b] is loop for i in sass.blocks[b].instructions]

    for loop in loops:  # outer loops first, address order within a depth
        ancestor = loop.parent
        while ancestor is not None and mapped.get(ancestor.header) is None:
            ancestor = ancestor.parent
        parent = mapped[ancestor.header] if ancestor is not None else None
        parent_key = parent.key if parent is not None else None
        copies = parent.copies if parent is not None else 1  # inside one of several copies: a share
        stack = source_stack(_loop_instructions(sass, loop), parent_key, keys)
        mapped[loop.header] = None
        if stack is None:
            continue
        siblings = by_slot.setdefault((ancestor.header if ancestor is not None else None, stack), [])
        siblings.append(loop)
        key = LoopKey(parent_key, stack, len(siblings) - 1)
        if key in keys:
            mapped[loop.header] = LoopMatch(key, copies=copies)
            continue
        first = LoopKey(parent_key, stack, 0)
        if first not in keys or LoopKey(parent_key, stack, 1) in keys:
            continue
        copied = _common_child([own(sib) for sib in siblings], first, keys)
        if copied is not None:  # the source loop was unrolled: the SASS loops are copies of its child
            for sibling in siblings:
                mapped[sibling.header] = LoopMatch(copied, copies=copies * len(siblings))
        elif len(siblings) == 2:
            main_body = _body_instructions(_loop_instructions(sass, siblings[0]), stack)
            rest_body = _body_instructions(_loop_instructions(sass, loop), stack)
            unroll = max(2, round(main_body / max(rest_body, 1)))
            mapped[siblings[0].header] = LoopMatch(first, unroll, copies=copies)
            mapped[loop.header] = LoopMatch(first, unroll, remainder=True, copies=copies)
    return mapped
