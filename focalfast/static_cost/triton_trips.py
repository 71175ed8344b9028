"""Source-loop trip counts of a Triton launch, by running its kernel's Python body on scalars.

Loop bounds in a Triton kernel are scalars: program ids, scalar arguments, constexprs and
integer arithmetic on them. ``loop_counts(launch)`` runs the kernel's own Python function (and
every ``@triton.jit`` function it calls) once per program of the grid with ``triton.language``
replaced by a stand-in in which program ids and integer arguments are Python integers and every
tensor operation yields an inert placeholder. Each ``range`` / ``tl.range`` loop (not
``tl.static_range``, which is unrolled at compile time) counts the iterations it runs.

A loop is identified by its ``LoopKey`` (``loop_map``; two copies of one loop in an unrolled
``tl.static_range`` are ordinals 0 and 1). The counts are totals over all
programs: ``iterations[key]`` is how often the loop's body ran, ``entries[key]`` how often the
loop was entered.
"""

from __future__ import annotations

import itertools
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import triton.language as tl
from triton.runtime.jit import JITFunction

from focalfast.static_cost.loop_map import LoopKey, normalise
from focalfast.static_cost.triton_launches import TritonLaunch

@dataclass
class LoopCounts:
    """Per source loop, summed over the grid: body executions, entries, and entries by trip count."""

    programs: int
    iterations: Counter = field(default_factory=Counter)
    entries: Counter = field(default_factory=Counter)
    trips: Dict[LoopKey, Counter] = field(default_factory=dict)  # key -> {trip count: entries}


class DataDependentControlFlow(RuntimeError):
    """A branch or loop bound depends on tensor values: no static trip count exists."""


# ------------------------------------------------------------------------- scalar stand-ins
class Opaque:
    """A tensor value: every operation on it gives another placeholder."""

    __slots__ = ()

    def __getattr__(self, name):
        return OPAQUE

    def __call__(self, *args, **kwargs):
        return OPAQUE

    def __getitem__(self, item):
        return OPAQUE

    def __bool__(self):
        raise DataDependentControlFlow("a branch depends on a tensor value")

    def __index__(self):
        raise DataDependentControlFlow("a loop bound depends on a tensor value")

    __int__ = __index__


def _opaque_op(self, *args):
    return OPAQUE


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "lshift", "rshift", "and", "or", "xor",
              "matmul"):
    setattr(Opaque, f"__{_name}__", _opaque_op)
    setattr(Opaque, f"__r{_name}__", _opaque_op)
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "invert", "abs"):
    setattr(Opaque, f"__{_name}__", _opaque_op)
Opaque.__hash__ = object.__hash__
OPAQUE = Opaque()


class Scalar(int):
    """A runtime integer scalar of the kernel (program id, argument): an int with ``.to()`` that
    remembers which program-id axes it depends on. Using it for control flow (a comparison, a
    truth value, a loop bound) adds those axes to ``INFLUENCE``."""

    def __new__(cls, value, axes=frozenset()):
        obj = super().__new__(cls, value)
        obj.axes = axes
        return obj

    def to(self, *args, **kwargs):
        return self


INFLUENCE: set = set()  # program-id axes that reached control flow in the current trace


def _axes(*values) -> frozenset:
    return frozenset().union(*(getattr(v, "axes", frozenset()) for v in values))


def _scalar_op(name):
    def op(self, *args):
        result = getattr(int, name)(self, *args)
        return Scalar(result, _axes(self, *args)) if type(result) is int else result

    return op


def _scalar_test(name):
    def test(self, *args):
        INFLUENCE.update(_axes(self, *args))
        return getattr(int, name)(self, *args)

    return test


for _name in ("add", "sub", "mul", "floordiv", "mod", "lshift", "rshift", "and", "or", "xor"):
    for _n in (f"__{_name}__", f"__r{_name}__"):
        setattr(Scalar, _n, _scalar_op(_n))
for _n in ("__neg__", "__pos__", "__abs__"):
    setattr(Scalar, _n, _scalar_op(_n))
for _n in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__bool__", "__index__", "__int__"):
    setattr(Scalar, _n, _scalar_test(_n))
Scalar.__hash__ = int.__hash__


def _int_or_opaque(fn):
    def wrapped(*args, **kwargs):
        if all(isinstance(a, int) for a in args):
            return Scalar(fn(*(int.__int__(a) for a in args)), _axes(*args))
        return OPAQUE

    return wrapped


class _Language(types.ModuleType):
    """``triton.language`` on scalars; anything not listed is a tensor operation (a placeholder)."""

    def __init__(self, tracer: "_Tracer"):
        super().__init__("triton.language (scalar stand-in)")
        self.program_id = lambda axis: Scalar(tracer.pid[int(axis)], frozenset([int(axis)]))
        self.num_programs = lambda axis: Scalar(tracer.grid[int(axis)])
        self.cdiv = _int_or_opaque(lambda a, b: -(-a // b))
        self.minimum = _int_or_opaque(min)
        self.maximum = _int_or_opaque(max)
        self.static_range = lambda *args, **kwargs: range(*(int(a) for a in args))
        self.range = tracer.range
        self.constexpr = lambda value=None: value
        for name in ("static_assert", "static_print", "device_assert", "device_print", "debug_barrier"):
            setattr(self, name, lambda *args, **kwargs: None)

    def where(self, cond, a, b):
        if isinstance(cond, bool) and isinstance(a, int) and isinstance(b, int):
            return a if cond else b
        return OPAQUE

    def __getattr__(self, name):
        return OPAQUE


# --------------------------------------------------------------------------------- tracing
@dataclass
class _Active:
    key: Optional[LoopKey]
    children: Counter = field(default_factory=Counter)  # stack -> loops entered this iteration


class _Tracer:
    def __init__(self, kernel: JITFunction, grid):
        self.grid = grid
        self.pid = (0, 0, 0)
        self.counts = LoopCounts(0)
        self.language = _Language(self)
        self.codes = set()
        self.globals_cache: Dict[int, dict] = {}
        self.active: List[_Active] = []
        self.kernel = self.shadow(kernel)

    def shadow(self, jit_fn: JITFunction):
        """The Python function of ``jit_fn`` with stand-in globals."""
        fn = jit_fn.fn
        self.codes.add(fn.__code__)
        return types.FunctionType(fn.__code__, self._globals(fn.__globals__), fn.__name__, fn.__defaults__,
                                  fn.__closure__)

    def _globals(self, original: dict) -> dict:
        key = id(original)
        if key not in self.globals_cache:
            replaced = dict(original)
            self.globals_cache[key] = replaced
            for name, value in original.items():
                if value is tl:
                    replaced[name] = self.language
                elif isinstance(value, JITFunction):
                    replaced[name] = _LazyShadow(self, value)
            replaced["range"] = self.range
        return self.globals_cache[key]

    def range(self, *args, **kwargs):
        bounds = [int(a) for a in args]  # records the axes of Scalar bounds; Opaque ones raise
        stack = []
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code in self.codes:
                stack.append((frame.f_code.co_filename, frame.f_lineno))
            frame = frame.f_back
        stack = normalise(reversed(stack))
        parent = self.active[-1]
        ordinal = parent.children[stack]
        parent.children[stack] += 1
        key = LoopKey(parent.key, stack, ordinal)
        values = range(*bounds)
        self.counts.entries[key] += 1
        self.counts.trips.setdefault(key, Counter())[len(values)] += 1
        return self._iterate(key, values)

    def _iterate(self, key: LoopKey, values: range):
        active = _Active(key)
        self.active.append(active)
        try:
            for v in values:
                active.children.clear()
                self.counts.iterations[key] += 1
                yield Scalar(v)
        finally:
            self.active.pop()

    def run_program(self, pid, args: dict, weight: int, counts: LoopCounts):
        self.pid, self.active = pid, [_Active(None)]
        self.counts = LoopCounts(0)
        self.kernel(**args)
        for key, n in self.counts.iterations.items():
            counts.iterations[key] += n * weight
        for key, n in self.counts.entries.items():
            counts.entries[key] += n * weight
        for key, trips in self.counts.trips.items():
            total = counts.trips.setdefault(key, Counter())
            for trip, n in trips.items():
                total[trip] += n * weight

    def run(self, args: dict) -> LoopCounts:
        """Counts over the grid: programs that differ only along program-id axes that never reach
        control flow behave alike, so one of them stands for all (exact: the axes that do are
        found while tracing, and the sweep restarts when a new one shows up)."""
        INFLUENCE.clear()
        while True:
            known = frozenset(INFLUENCE)
            axes = [range(g) if a in known else range(1) for a, g in enumerate(self.grid)]
            weight = 1
            for a, g in enumerate(self.grid):
                weight *= 1 if a in known else g
            counts = LoopCounts(self.grid[0] * self.grid[1] * self.grid[2])
            for pid in itertools.product(*axes):
                self.run_program(pid, args, weight, counts)
                if not INFLUENCE <= known:
                    break
            if INFLUENCE <= known:
                return counts


class _LazyShadow:
    """A called ``@triton.jit`` function, shadowed on first call."""

    def __init__(self, tracer: _Tracer, jit_fn: JITFunction):
        self.tracer, self.jit_fn, self.fn = tracer, jit_fn, None

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            self.fn = self.tracer.shadow(self.jit_fn)
        return self.fn(*args, **kwargs)


def _scalar_argument(param, value):
    if param.is_constexpr:
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return Scalar(value)
    if isinstance(value, float):
        return value
    return OPAQUE  # tensors (pointers) and anything else


def loop_counts(launch: TritonLaunch) -> LoopCounts:
    """Iterations and entries of every source loop of ``launch``, summed over its grid."""
    tracer = _Tracer(launch.fn, launch.grid)
    args = {p.name: _scalar_argument(p, launch.args[p.name]) for p in launch.fn.params}
    return tracer.run(args)
