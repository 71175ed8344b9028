"""Inlining chains kept through Triton builds whose PTX drops them (``triton_line_info``)."""

from focalfast.static_cost.sass import parse_sass
from focalfast.static_cost.triton_line_info import decode_chain, encode_chain, flatten_inlined_locations

LLIR = """define void @k() !dbg !5 {
  ret void, !dbg !9
}
!1 = !DIFile(filename: "kernel.py", directory: "/src")
!2 = !DIFile(filename: "/lib/helper.py", directory: "")
!5 = distinct !DISubprogram(name: "k", scope: !1, file: !1, line: 3, unit: !0)
!6 = distinct !DILexicalBlockFile(scope: !5, file: !2, discriminator: 0)
!7 = !DILocation(line: 20, column: 4, scope: !6, inlinedAt: !8)
!8 = !DILocation(line: 11, column: 8, scope: !5)
!9 = !DILocation(line: 41, column: 2, scope: !6, inlinedAt: !7)
!10 = !DILocation(line: 12, column: 1, scope: !5)
"""


def test_chain_round_trip():
    frames = [("/src/kernel.py", 11), ("/lib/helper.py", 20)]
    assert decode_chain(encode_chain(frames, "/lib/helper.py"), 41) == tuple(frames) + (("/lib/helper.py", 41),)
    assert decode_chain("/src/kernel.py", 7) == (("/src/kernel.py", 7),)


def test_flatten_spells_out_the_chain():
    out = flatten_inlined_locations(LLIR)
    assert "inlinedAt" not in out
    assert "!10 = !DILocation(line: 12, column: 1, scope: !5)" in out  # not inlined: unchanged
    encoded = encode_chain([("/src/kernel.py", 11), ("/lib/helper.py", 20)], "/lib/helper.py")
    assert f'!DIFile(filename: "{encoded}", directory: "")' in out
    line = next(t for t in out.splitlines() if t.startswith("!9 = "))
    scope = line.split("scope: ")[1].rstrip(")")
    assert f"{scope} = distinct !DILexicalBlockFile(scope: !5," in out  # the kernel's own scope
    assert flatten_inlined_locations(LLIR.replace(", inlinedAt: !8", "").replace(", inlinedAt: !7", "")) \
        == LLIR.replace(", inlinedAt: !8", "").replace(", inlinedAt: !7", "")


def test_sass_reads_encoded_chains():
    encoded = encode_chain([("/src/kernel.py", 11)], "/lib/helper.py")
    text = "\n".join([
        ".text.k:",
        f'\t//## File "{encoded}", line 41',
        "        /*0000*/                   FFMA R1, R2, R3, R4 ;",
        '\t//## File "/src/kernel.py", line 12',
        "        /*0010*/                   EXIT ;",
    ])
    sass = parse_sass(text, "k")
    first, second = sass.instructions()
    assert first.stack == (("/src/kernel.py", 11), ("/lib/helper.py", 41))
    assert second.stack == (("/src/kernel.py", 12),)
