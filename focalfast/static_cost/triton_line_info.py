"""Inlining chains in the line info of Tritons whose PTX drops them (Triton 3.6).

The SASS loop map (``loop_map``) tells source loops apart by the call sites that lead to them, which
nvdisasm prints from the PTX ``.loc ... inlined_at`` directives. Triton 3.6's LLVM keeps the chain
in its LLVM IR (``!DILocation(..., inlinedAt: !n)``) but writes only the innermost frame to PTX.
For such builds ``keep_inlining_chains`` re-runs the PTX stage on LLVM IR in which every inlined
location names a file that spells out its whole chain (``encode_chain``); ``decode_chain`` turns
that file name back into frames. The code is unchanged: only debug locations differ.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

CHAIN_PREFIX = "inlined-chain:"  # file names made by encode_chain start with this
_FRAME_SEP = ";"
_LINE_SEP = "@"

_NODE = re.compile(r"^!(\d+) = (distinct )?!(\w+)\((.*)\)$", re.MULTILINE)
_FIELD = re.compile(r"(\w+): (!\d+|\"[^\"]*\"|[-\w|]+)")


def encode_chain(frames: List[Tuple[str, int]], inner_file: str) -> str:
    """A file name holding the call sites ``frames`` (outermost first) and the innermost file."""
    return CHAIN_PREFIX + _FRAME_SEP.join([f"{f}{_LINE_SEP}{n}" for f, n in frames] + [inner_file])


def decode_chain(file: str, line: int) -> Tuple[Tuple[str, int], ...]:
    """The frames (outermost first) of a location ``file:line``: one frame unless ``file`` came
    from ``encode_chain``."""
    if not file.startswith(CHAIN_PREFIX):
        return ((file, line),)
    *sites, inner = file[len(CHAIN_PREFIX):].split(_FRAME_SEP)
    frames = [(f, int(n)) for f, n in (s.rsplit(_LINE_SEP, 1) for s in sites)]
    return tuple(frames) + ((inner, line),)


def flatten_inlined_locations(llir: str) -> str:
    """``llir`` with each ``DILocation`` that has an ``inlinedAt`` replaced by one in the outermost
    frame's scope whose file is ``encode_chain`` of the chain (a ``DILexicalBlockFile``)."""
    nodes: Dict[str, Tuple[str, Dict[str, str]]] = {}
    for match in _NODE.finditer(llir):
        nodes["!" + match.group(1)] = (match.group(3), dict(_FIELD.findall(match.group(4))))
    if not any(kind == "DILocation" and "inlinedAt" in fields for kind, fields in nodes.values()):
        return llir
    next_id = max(int(n[1:]) for n in nodes) + 1

    def file_of(scope: str) -> str:
        fields = nodes[nodes[scope][1]["file"]][1]
        name, folder = fields["filename"].strip('"'), fields.get("directory", '""').strip('"')
        return name if name.startswith("/") or not folder else f"{folder}/{name}"

    added: List[str] = []
    scopes: Dict[Tuple[str, str], str] = {}  # (outer scope, encoded file) -> new scope node

    def chain_scope(outer_scope: str, encoded: str) -> str:
        nonlocal next_id
        if (outer_scope, encoded) not in scopes:
            file_id, scope_id = f"!{next_id}", f"!{next_id + 1}"
            next_id += 2
            added.append(f'{file_id} = !DIFile(filename: "{encoded}", directory: "")')
            added.append(f"{scope_id} = distinct !DILexicalBlockFile(scope: {outer_scope}, file: {file_id}, "
                         "discriminator: 0)")
            scopes[outer_scope, encoded] = scope_id
        return scopes[outer_scope, encoded]

    def rewrite(match: re.Match) -> str:
        kind, fields = match.group(3), dict(_FIELD.findall(match.group(4)))
        if kind != "DILocation" or "inlinedAt" not in fields:
            return match.group(0)
        sites, site = [], fields["inlinedAt"]
        while site:
            site_fields = nodes[site][1]
            sites.append((file_of(site_fields["scope"]), int(site_fields["line"]), site_fields["scope"]))
            site = site_fields.get("inlinedAt")
        sites.reverse()  # outermost first
        encoded = encode_chain([(f, n) for f, n, _ in sites], file_of(fields["scope"]))
        scope = chain_scope(sites[0][2], encoded)
        return f"!{match.group(1)} = !DILocation(line: {fields['line']}, column: {fields.get('column', '0')}, " \
               f"scope: {scope})"

    return _NODE.sub(rewrite, llir) + "\n" + "\n".join(added) + "\n"


def keep_inlining_chains(*args):
    """A Triton ``add_stages_inspection_hook``: where the PTX stage drops ``inlined_at`` from LLVM IR
    that has inlining chains, run it again on ``flatten_inlined_locations`` of that IR.

    Called as ``(backend, stages, options, language, capability)``; newer Tritons also call it
    without arguments for a ``(cache key, hash)`` pair."""
    if not args:
        return "keep_inlining_chains", "keep_inlining_chains"
    stages = args[1]
    make_ptx = stages["ptx"]

    def ptx(src, metadata):
        text = make_ptx(src, metadata)
        if "inlined_at" in text or "inlinedAt" not in src:
            return text
        return make_ptx(flatten_inlined_locations(src), metadata)

    stages["ptx"] = ptx
