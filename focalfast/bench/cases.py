"""The suites: which cases (workload kind, pass, shape, dtype, variants) run, in which order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from focalfast.bench.shapes import (
    DTYPE_NAMES,
    HIGH_RES_BATCH,
    HIGH_RESOLUTIONS,
    STAGE_BATCH,
    op_shapes,
    train_shapes,
)
from focalfast.bench.variants import FUSED, TRAIN_VARIANTS, VARIANTS
from focalfast.bench.workloads import PASS_LABELS, Workload, module_workload, op_workload, train_workload
from focalfast.roofline import OpShape


@dataclass
class Case:
    """One row group of the table: a workload at one shape and dtype, across variants."""

    kind: str  # "op" | "module" | "train"
    pass_: str
    shape_name: str
    dtype: torch.dtype
    variants: tuple
    op_shape: Optional[OpShape] = None
    resolution: int = 0
    batch: int = 0

    def workload(self, variant: str, device, model_name: str) -> Workload:
        backward = self.pass_ == "forward_backward"
        if self.kind == "op":
            return op_workload(variant, self.op_shape, self.dtype, device, backward, self.shape_name)
        if self.kind == "module":
            return module_workload(variant, self.op_shape, self.dtype, device, backward, self.shape_name)
        return train_workload(variant, self.resolution, self.batch, self.dtype, device, model_name)

    @property
    def label(self) -> str:
        return "memory" if self.kind == "memory" else f"{self.kind} {PASS_LABELS[self.pass_]}"

    def row(self, variant: str) -> dict:
        """The identifying fields of a result row."""
        row = {"kind": self.kind, "pass": self.pass_, "shape": self.shape_name, "dtype": DTYPE_NAMES[self.dtype],
               "variant": variant, "status": "ok"}
        if self.op_shape is not None:
            row["op_shape"] = dataclasses.asdict(self.op_shape)
        if self.kind == "train":
            row.update(resolution=self.resolution, batch=self.batch)
        return row


RUN_ORDER = ("eager",) + FUSED + ("timm", "compiled")


EXPECTED_SECONDS = {("train", "compiled"): 180, ("op", "compiled"): 40, ("module", "compiled"): 40,
                    ("memory", None): 60, ("train", None): 20}


def suite_cases(suite: str, dtypes: list, variants: list) -> list:
    """The cases of a suite, most important first (a time budget cuts the tail).

    tiny     op fwd / fwd+bwd, module fwd+bwd at a tiny shape; a 64px training step (fp32)
    default  op at FocalNet-T stages 1 and 3, module at stage 1, training step at 224 (batch 128)
    full     default, then every T/S/B stage shape, stage 1 at 384-1024 px, three levels, the
             module at every T stage, and training steps at 224-1024 px (batch 16, no compile)

    Every suite also holds a "memory" case (the largest training resolution under a memory cap,
    eager against fused, bf16 if asked for), run where ``--kinds`` names it (full suite: default).
    """
    def ordered(names, allowed):
        return tuple(v for v in RUN_ORDER if v in names and v in allowed)

    op_variants = ordered(variants, VARIANTS)
    train_variants = ordered(variants, TRAIN_VARIANTS)
    cases = []

    def op_cases(names, shapes, passes=("forward_backward", "forward"), kind="op"):
        for name in names:
            for pass_ in passes:
                for dtype in dtypes:
                    cases.append(Case(kind, pass_, name, dtype, op_variants, op_shape=shapes[name]))

    def train_cases(pairs, allowed, train_dtypes):
        for resolution, batch in pairs:
            for dtype in train_dtypes:
                cases.append(Case("train", "train_step", f"{resolution}px B{batch}", dtype,
                                  tuple(v for v in train_variants if v in allowed),
                                  resolution=resolution, batch=batch))

    def memory_case():
        dtype = torch.bfloat16 if torch.bfloat16 in dtypes else dtypes[0]
        cases.append(Case("memory", "train_step", "largest resolution", dtype,
                          ordered(variants, ("eager",) + FUSED)))

    if suite == "tiny":
        shapes = op_shapes("tiny")
        op_cases(["tiny"], shapes)
        op_cases(["tiny"], shapes, passes=("forward_backward",), kind="module")
        train_cases(train_shapes("tiny"), TRAIN_VARIANTS, [torch.float32])
        memory_case()
        return cases
    if suite not in ("default", "full"):
        raise ValueError(f"suite: expected tiny, default or full, got {suite!r}")
    shapes = op_shapes("full")
    train_dtypes = sorted(dtypes, key=lambda d: d != torch.bfloat16)  # mixed precision first
    op_cases(["T.s1"], shapes)
    train_cases([(224, STAGE_BATCH)], TRAIN_VARIANTS, train_dtypes)
    memory_case()
    op_cases(["T.s3"], shapes)
    op_cases(["T.s1"], shapes, passes=("forward_backward",), kind="module")
    if suite == "default":
        return cases
    op_cases(["T.s2", "T.s4"] + [f"B.s{s}" for s in (1, 2, 3, 4)], shapes)
    op_cases([f"T.s1@{r}" for r in HIGH_RESOLUTIONS] + ["T.s1.lrf"], shapes)
    op_cases(["T.s2", "T.s3", "T.s4"], shapes, passes=("forward_backward",), kind="module")
    train_cases([(r, HIGH_RES_BATCH) for r in (224,) + HIGH_RESOLUTIONS],
                ("eager",) + FUSED + ("timm",), train_dtypes)
    return cases
