"""``largest_fitting``: the largest integer whose measured peak fits a budget, in few measurements."""

from __future__ import annotations

from typing import Callable, Dict


def _predict(points: Dict[int, int], lo: int, hi: int, budget: int, power: int) -> int:
    """The k where ``a + b * k**power`` through the two measured points nearest the boundary meets
    ``budget`` (the peak of a step grows like the batch, or like the square of the resolution)."""
    known = sorted(points)
    left = [k for k in known if k <= lo] or known[:1]
    right = [k for k in known if k >= hi] or known[-1:]
    k1, k2 = left[-1], right[0]
    if k1 == k2:
        k1, k2 = (known[-2], known[-1]) if k2 == known[-1] else (known[0], known[1])
    p1, p2 = points[k1], points[k2]
    slope = (p2 - p1) / (k2 ** power - k1 ** power)
    if slope <= 0:
        return hi - 1 if hi <= known[-1] * 2 else known[-1] * 2
    return int(max(0.0, (budget - p1) / slope + k1 ** power) ** (1.0 / power))


def largest_fitting(peak_of: Callable[[int], int], budget: int, start: int, limit: int, power: int = 1) -> int:
    """The largest ``k`` in ``[1, limit]`` with ``peak_of(k) <= budget`` (0 if none), for a
    ``peak_of`` that grows with ``k``. Measures ``start``, a second point, then where the secant
    through the nearest measurements meets the budget (bisecting when two probes in a row land on
    the same side), until the boundary is pinned: typically four to six calls."""
    if not 1 <= start <= limit:
        raise ValueError(f"start: expected 1 <= start <= limit = {limit}, got {start}")
    points: Dict[int, int] = {}
    lo, hi = 0, limit + 1  # lo fits (0: nothing does), hi does not

    def probe(k: int) -> None:
        nonlocal lo, hi
        points[k] = peak_of(k)
        if points[k] <= budget:
            lo = max(lo, k)
        else:
            hi = min(hi, k)

    probe(start)
    second = min(2 * start, limit) if lo == start else max(1, start // 2)
    if second != start:
        probe(second)
    sides = []  # whether each probe fitted
    while hi - lo > 1:
        if len(points) < 2:  # start is 1 or the limit
            probe(lo + 1 if lo else 1)
            continue
        candidate = min(max(_predict(points, lo, hi, budget, power), lo + 1), hi - 1)
        if hi <= limit and len(sides) >= 2 and sides[-1] == sides[-2]:  # the secant crawls from one side
            candidate = (lo + hi) // 2
        probe(candidate)
        sides.append(points[candidate] <= budget)
    return lo
