"""Compile a captured Triton launch for sm_90a exactly as Triton's launcher would on an H100.

The specialisation (argument types, pointer alignment, integer divisibility by 16 and ``== 1``)
comes from Triton's own binder built for a ``GPUTarget("cuda", 90, 32)`` backend, and the
signature, constexprs and attributes from ``JITFunction._pack_args``: the same functions
``JITFunction.run`` calls before it compiles. Cubins are cached (``cubin_cache``) by a hash of
the kernel source (with every function it calls), the specialisation and the options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from focalfast.static_cost.cubin_cache import cached_cubin
from focalfast.static_cost.triton_launches import TritonLaunch
from focalfast.static_cost.triton_line_info import keep_inlining_chains

TARGET = GPUTarget("cuda", 90, 32)
# Compilation knobs JITFunction.run passes as options: Triton 3.6 has the first, 3.9 both.
_RUN_KNOBS = ("instrumentation_mode", "fpsan_homomorphic_casts")


@dataclass
class Cubin:
    """A compiled kernel: the cubin file, the kernel's symbol and the threads of one block."""

    path: Path
    symbol: str
    threads: int
    dynamic_smem: int  # bytes of dynamic shared memory per block
    source: str  # where the kernel comes from, for the report


def _specialise(launch: TritonLaunch):
    """``(signature, constexprs, attrs, options)`` as ``JITFunction.run`` computes them for sm_90."""
    fn = launch.fn
    backend = make_backend(TARGET)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs = dict(launch.options)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for knob in _RUN_KNOBS:  # what this Triton version's JITFunction.run adds to the options
        if hasattr(knobs.compilation, knob):
            kwargs[knob] = getattr(knobs.compilation, knob)
    bound, specialization, options = binder(*launch.positional, **launch.keywords, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, kwargs


def compile_triton_launch(launch: TritonLaunch) -> Cubin:
    """The sm_90a cubin of ``launch`` (compiled once per specialisation, then read from the cache)."""
    signature, constexprs, attrs, kwargs = _specialise(launch)
    code = launch.fn.fn.__code__  # where the kernel is: its line info names it
    key = json.dumps([launch.fn.cache_key, code.co_filename, code.co_firstlineno, signature, sorted((str(k), repr(v)) for k, v in constexprs.items()),
                      sorted((str(k), repr(v)) for k, v in attrs.items()), sorted(kwargs.items()),
                      triton.__version__, TARGET.arch, keep_inlining_chains.__name__])

    def build(cubin: Path) -> dict:
        # Triton's own cache keys on the code, not on where it is: its cubin could carry the line
        # info of an identical kernel in another file. Compile afresh (this cache keeps the result).
        with knobs.compilation.scope(), knobs.runtime.scope():
            knobs.compilation.always_compile = True
            knobs.runtime.add_stages_inspection_hook = keep_inlining_chains
            compiled = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=TARGET,
                                      options=kwargs)
        cubin.write_bytes(compiled.asm["cubin"])
        return {"symbol": compiled.metadata.name, "num_warps": compiled.metadata.num_warps,
                "shared": compiled.metadata.shared}

    folder, meta = cached_cubin("triton", launch.name, key, build)
    return Cubin(folder / "kernel.cubin", meta["symbol"], 32 * meta["num_warps"], meta["shared"],
                 f"{launch.fn.fn.__module__}.{launch.name}")
