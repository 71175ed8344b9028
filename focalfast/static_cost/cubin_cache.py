"""The cache of compiled cubins and their disassembly, under ``toolchain.cache_dir()``.

An entry is a folder named by a hash of what was compiled (source, specialisation, options,
compiler) holding ``kernel.cubin``, ``kernel.sass`` (``nvdisasm -g -gi -c``: line info with the
inlining chain) and ``meta.json``. The line info names source files and lines, which a hash of
the kernel's code alone does not pin down (code can move within a file), so an entry also
records a hash of every source file its line info names, and is rebuilt when one changed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Callable

from focalfast.static_cost.toolchain import cache_dir, run_tool

_FILE = re.compile(r'"([^"]+)", line \d+')


def _file_hash(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return ""


def _fresh(meta: dict) -> bool:
    return "sources" in meta and all(_file_hash(f) == h for f, h in meta["sources"].items())


def cached_cubin(kind: str, name: str, key: str, build: Callable[[Path], dict]) -> tuple:
    """``(folder, meta)`` of the entry for ``key``; ``build(cubin_path)`` compiles on a miss and
    returns the metadata to keep (e.g. the kernel symbol, threads, dynamic shared memory)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    folder = cache_dir() / f"{kind}-{name[:60]}-{digest}"
    meta_path = folder / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if _fresh(meta):
            return folder, meta
    folder.mkdir(parents=True, exist_ok=True)
    meta = build(folder / "kernel.cubin")
    sass = run_tool("nvdisasm", "-g", "-gi", "-c", str(folder / "kernel.cubin"))
    (folder / "kernel.sass").write_text(sass)
    meta["sources"] = {f: _file_hash(f) for f in sorted(set(_FILE.findall(sass)))}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)
    return folder, meta
