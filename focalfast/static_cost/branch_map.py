"""Branches of loop bodies: which counted C++ ``if`` a SASS block runs under, and how often it runs.

The CUDA count build counts, per source loop, how often the condition of each ``if`` (file, line) in
its body held and how often not (``csrc/loop_counter.h``). A SASS block of that loop's body that
not every iteration runs is attributed, by its instructions' line info, to the innermost branch
(the then or the else part of one of those ``if`` statements) among those holding at least half as
many of them as the branch holding most (the compiler sinks code from before a branch into it); it
runs that branch's share of the loop's iterations. A block under no counted branch keeps the
bounds of ``count`` (main: every iteration, min: none). The share is per item of the loop (a thread
or an ``FF_FOR_EACH`` item); a warp runs the block when any of its lanes does, so the count is
exact for conditions that are uniform over a warp (rows, levels, launch arguments).
"""

from __future__ import annotations

import functools
from typing import Dict, Iterable, Optional, Tuple

from focalfast.static_cost.loop_map import Location, _source_lines, normalise

Span = Tuple[int, int]  # first and last line


def _code(file: str) -> Tuple[str, Tuple[int, ...]]:
    """The file's text without ``//`` comments, and the offset where each line starts."""
    text, starts = [], []
    at = 0
    for line in _source_lines(file):
        starts.append(at)
        code = line.split("//", 1)[0] + "\n"
        text.append(code)
        at += len(code)
    return "".join(text), tuple(starts)


class _Scanner:
    def __init__(self, text: str):
        self.text = text

    def skip_space(self, i: int) -> int:
        while i < len(self.text) and self.text[i].isspace():
            i += 1
        return i

    def word_at(self, i: int, word: str) -> bool:
        end = i + len(word)
        return self.text.startswith(word, i) and (end >= len(self.text) or not (self.text[end].isalnum()
                                                                                 or self.text[end] == "_"))

    def scan_to(self, i: int, stop: str) -> int:
        """Index just past the first ``stop`` character at bracket depth 0 from ``i`` (``stop`` = ")}]":
        the bracket closing the one at ``i``)."""
        depth = 0
        for j in range(i, len(self.text)):
            if self.text[j] in "({[":
                depth += 1
            elif self.text[j] in ")}]":
                depth -= 1
            if depth == 0 and self.text[j] in stop:
                return j + 1
        return len(self.text)

    def matching(self, i: int) -> int:
        """Index just past the bracket closing the one at ``i``."""
        return self.scan_to(i, ")}]")

    def statement_end(self, i: int) -> int:
        """Index just past the statement starting at ``i`` (a block, an if/for/while, or up to ``;``)."""
        i = self.skip_space(i)
        if self.text.startswith("{", i):
            return self.matching(i)
        for keyword in ("if", "for", "while", "switch"):
            if self.word_at(i, keyword):
                j = self.skip_space(i + len(keyword))
                if keyword == "if" and self.word_at(j, "constexpr"):
                    j = self.skip_space(j + len("constexpr"))
                end = self.statement_end(self.matching(j))
                if keyword == "if":
                    k = self.skip_space(end)
                    if self.word_at(k, "else"):
                        end = self.statement_end(k + len("else"))
                return end
        return self.scan_to(i, ";")


@functools.lru_cache(maxsize=None)
def branch_spans(file: str, line: int) -> Tuple[Optional[Span], Optional[Span]]:
    """The line spans of the then part (from the ``if`` line) and the else part (None where there is
    none) of the first ``if`` statement on ``line`` of ``file``; (None, None) if there is no ``if``."""
    text, starts = _code(file)
    if not 0 < line <= len(starts):
        return None, None
    scan = _Scanner(text)
    end_of_line = starts[line] if line < len(starts) else len(text)
    at = next((i for i in range(starts[line - 1], end_of_line)
               if scan.word_at(i, "if") and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_"))), None)
    if at is None:
        return None, None

    def line_of(offset: int) -> int:
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if starts[mid] <= offset else (lo, mid - 1)
        return lo + 1

    then_end = scan.statement_end(scan.matching(scan.skip_space(at + 2)))
    k = scan.skip_space(then_end)
    other = None
    if scan.word_at(k, "else"):
        other = (line_of(k), line_of(scan.statement_end(k + 4) - 1))
    return (line, line_of(then_end - 1)), other


def branch_share(instructions: Iterable, branches: Dict[Location, Tuple[float, float]]) -> Optional[float]:
    """The share of its loop's iterations that run a block of ``instructions``: that of the innermost
    counted branch holding at least half as many of them as the one holding most (None if none holds any). ``branches``: the loop's
    ``if`` statements, (file, line) -> (share of iterations taking the then part, the else part).
    Innermost: the branch met deepest in the instructions' call stacks (an ``if`` in an inlined helper
    lies inside the ``if`` around its call), then the shortest span (nested ``if`` statements of one function)."""
    located = [normalise(ins.stack) for ins in instructions if ins.stack]
    held = []  # (instructions inside, deepest frame, span length, share) per branch holding any
    for (file, line), shares in branches.items():
        for span, share in zip(branch_spans(file, line), shares):
            if span is None:
                continue
            depths = [max((d for d, (f, n) in enumerate(stack) if f == file and span[0] <= n <= span[1]), default=-1)
                      for stack in located]
            inside = sum(d >= 0 for d in depths)
            if inside:
                held.append((inside, max(depths), span[1] - span[0], share))
    if not held:
        return None
    most = max(inside for inside, _, _, _ in held)
    return min((-depth, length, share) for inside, depth, length, share in held if inside * 2 >= most)[2]
