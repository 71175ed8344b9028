"""Instruction classes of the report: what a SASS opcode spends its issue slot on.

``instruction_class(ins)`` gives ``(class, detail)``; detail names the memory width (e.g.
``LDG.128``) for loads and stores and the opcode otherwise. Classes:

    fma        FFMA, HFMA2, DFMA (fused multiply-adds on the FMA pipes)
    fp_other   other floating-point arithmetic: FADD, FMUL, FMNMX, FSETP, FSEL, HADD2, ...
    tensor     HGMMA, HMMA, IMMA, ... (tensor cores)
    global_load, global_store, shared_load, shared_store, local_load, local_store, atomic
    const_load LDC, ULDC (constant bank)
    integer    integer, address, predicate and move: IMAD, IADD3, LEA, LOP3, ISETP, SEL, MOV, S2R, ...
               (and ``HFMA2.MMA R, -RZ, RZ, ...``, which only moves a constant)
    sync       shuffles, votes, barriers, fences, warpgroup and convergence: SHFL, BAR, BSSY, ...
    convert    F2F, F2FP, I2F, F2I, I2I, FRND
    mufu       MUFU (special functions: ex2, rcp, rsq, ...)
    control    BRA, EXIT, CALL, RET, NOP
    other      anything else
"""

from __future__ import annotations

import re
from typing import Tuple

from focalfast.static_cost.sass import Instruction

CLASSES = ("fma", "fp_other", "tensor", "global_load", "global_store", "shared_load", "shared_store",
           "local_load", "local_store", "atomic", "const_load", "integer", "sync", "convert", "mufu", "control",
           "other")

_FMA = {"FFMA", "FFMA32I", "HFMA2", "HFMA2_32I", "DFMA", "FFMA2"}
_FP_OTHER = {"FADD", "FADD32I", "FMUL", "FMUL32I", "FMNMX", "FSETP", "FSET", "FSEL", "FCHK", "FSWZADD", "HADD2",
             "HADD2_32I", "HMUL2", "HMUL2_32I", "HMNMX2", "HSETP2", "HSET2", "DADD", "DMUL", "DSETP", "DMNMX",
             "FADD2", "FMUL2"}
_TENSOR = {"HGMMA", "HMMA", "IMMA", "BMMA", "DMMA", "QGMMA", "IGMMA", "BGMMA", "UTCHMMA", "UTCQMMA"}
_MEMORY = {
    "LDG": "global_load", "LD": "global_load", "LDGSTS": "global_load", "UBLKCP": "global_load", "UTMALDG": "global_load",
    "LDGDEPBAR": "sync",
    "STG": "global_store", "ST": "global_store", "UTMASTG": "global_store",
    "LDS": "shared_load", "LDSM": "shared_load",
    "STS": "shared_store", "STSM": "shared_store",
    "LDL": "local_load", "STL": "local_store",
    "ATOM": "atomic", "ATOMG": "atomic", "ATOMS": "atomic", "RED": "atomic", "REDG": "atomic", "REDUX": "sync",
}
_CONST = {"LDC", "ULDC"}
_INTEGER = {"IMAD", "IMAD32I", "IADD3", "IADD", "IADD32I", "IMUL", "IMUL32I", "LEA", "LOP3", "LOP", "LOP32I", "SHF",
            "SHL", "SHR", "ISETP", "IMNMX", "VIMNMX", "IABS", "PLOP3", "P2R", "R2P", "SEL", "MOV", "MOV32I", "PRMT",
            "S2R", "S2UR", "CS2R", "R2UR", "POPC", "FLO", "BREV", "BMSK", "SGXT", "IDP", "VIADD", "VIADDMNMX", "ICMP",
            "IMNMX", "LEPC", "PSETP", "PMTRIG", "SHFL_IDX"}
_SYNC = {"SHFL", "BAR", "BSSY", "BSYNC", "WARPSYNC", "DEPBAR", "MEMBAR", "ERRBAR", "SYNCS", "WARPGROUP", "VOTE",
         "VOTEU", "MATCH", "NANOSLEEP", "ARRIVES", "FENCE", "CCTL", "CCTLL", "ELECT", "UCGABAR_ARV", "UCGABAR_WAIT",
         "WARPGROUPSET", "BMOV", "B2R", "R2B"}
_CONVERT = {"F2F", "F2FP", "I2F", "F2I", "I2I", "FRND", "I2FP", "F2IP", "HF2F"}
_CONTROL = {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "NOP", "KILL", "YIELD", "BPT", "ACQBULK"}

_WIDTH = re.compile(r"\.(128|64|32|U8|S8|U16|S16)\b")


def memory_width(opcode: str) -> str:
    """Bits per thread of a load or store: 32 unless a modifier says otherwise."""
    match = _WIDTH.search(opcode)
    if not match:
        return "32"
    return {"U8": "8", "S8": "8", "U16": "16", "S16": "16"}.get(match.group(1), match.group(1))


def instruction_class(ins: Instruction) -> Tuple[str, str]:
    """``(class, detail)`` of one instruction (detail: e.g. ``LDG.128`` or ``FFMA``)."""
    base = ins.base
    if ins.opcode == "HFMA2.MMA" and "-RZ, RZ" in ins.text:
        return "integer", "MOV(HFMA2.MMA)"  # ptxas's idiom for moving a constant into a register
    if base.startswith("U") and base not in _SYNC | _TENSOR | _MEMORY.keys() | _CONST and base[1:] in _INTEGER:
        return "integer", base  # the uniform datapath: UIADD3, UIMAD, UMOV, ...
    if base in _FMA:
        return "fma", base
    if base in _FP_OTHER:
        return "fp_other", base
    if base in _TENSOR:
        return "tensor", base
    if base in _MEMORY:
        cls = _MEMORY[base]
        if cls in ("sync",):
            return cls, base
        width = "x4" if base == "LDSM" and ".X4" in ins.opcode.upper() else memory_width(ins.opcode)
        return cls, f"{base}.{width}"
    if base in _CONST:
        return "const_load", base
    if base in _INTEGER or base in {"UMOV", "USEL", "ULOP3", "UIADD3", "UIMAD", "USHF", "UISETP", "ULEA", "UPRMT",
                                    "UFLO", "UPOPC", "UBREV", "UP2UR", "UR2UP", "UPLOP3", "UBMSK", "USGXT", "UIMNMX",
                                    "UVIADD"}:
        return "integer", base
    if base in _SYNC:
        return "sync", base
    if base in _CONVERT:
        return "convert", base
    if base == "MUFU":
        return "mufu", base
    if base in _CONTROL:
        return "control", base
    return "other", base
