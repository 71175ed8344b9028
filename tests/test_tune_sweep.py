"""focalfast.ops.cuda.tune_sweep: the CUDA sweep's schedule search, run on the host path at the tiny shape (on a GPU
the same code times the real shapes), its candidates, and the cross-check that flags a schedule computing
something else."""

import json

import pytest
import torch

from focalfast.bench.shapes import TINY_SHAPE, stage_shape
from focalfast.ops.cuda import focal_modulation as cuda_op
from focalfast.ops.cuda import tune_sweep

CPU = torch.device("cpu")
QUICK = ["--dtype", "fp32", "--max-configs", "3", "--warmup", "0", "--rounds", "1", "--no-progress"]


def test_tuner_times_and_cross_checks_schedules(ext, tmp_path, capsys):
    out = tmp_path / "tune_sweep.json"
    assert tune_sweep.main(QUICK + ["--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["pass_"], r["option"] == {}) for r in rows] == [
        ("forward", True), ("forward", False), ("forward", False),
        ("backward", True), ("backward", False), ("backward", False)]
    assert all(r["agrees"] and r["ms"] > 0 for r in rows)
    assert len({r["schedule"] for r in rows if r["pass_"] == "backward"}) == 3
    printed = capsys.readouterr().out
    assert "tiny forward" in printed and "tiny backward" in printed and "(default)" in printed


def test_a_schedule_that_computes_something_else_is_flagged(ext, monkeypatch, capsys):
    """A backward whose forced 4-pixel strip got its gate gradients 1% wrong is a mismatch, and the exit code says so."""
    real = cuda_op._Kernels.reduce_sum

    def wrong_with_forced_strip(self, partial, scale=1.0):
        return real(self, partial, scale * (1.01 if cuda_op.SWEEP_BWD_STRIP == 4 else 1.0))

    monkeypatch.setattr(cuda_op._Kernels, "reduce_sum", wrong_with_forced_strip)
    monkeypatch.setattr(tune_sweep, "candidates", lambda shape, backward, device, limit=None: [
        {}, dict(SWEEP_BWD_STRIP=4)])
    assert tune_sweep.main(QUICK + ["--passes", "backward"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_candidates_are_distinct_schedules_that_fit_default_first(ext, monkeypatch):
    monkeypatch.setattr(cuda_op, "SWEEP_SMEM_BYTES", 227 * 1024)
    shape = stage_shape("T", 1)  # 56x56, C = 96: context_bwd takes 8 channels and 8-pixel items
    fwd = tune_sweep.candidates(shape, False, CPU)
    bwd = tune_sweep.candidates(shape, True, CPU)
    assert fwd[0] == {} and bwd[0] == {}
    assert not any("SWEEP_BWD_STRIP" in o for o in fwd) and dict(SWEEP_BWD_STRIP=4) in bwd
    assert dict(SWEEP_BWD_STRIP=8) not in bwd  # the default's own strip
    for backward, options in ((False, fwd), (True, bwd)):
        schedules = [tune_sweep.resolved(shape, backward, CPU, o) for o in options]
        assert None not in schedules and len(set(schedules)) == len(schedules)
    # 32-channel backward blocks of this shape need more shared memory than a block may have: not a candidate
    assert dict(SWEEP_CHUNKS=(32,)) not in bwd and tune_sweep.resolved(shape, True, CPU, dict(SWEEP_CHUNKS=(32,))) is None
    assert tune_sweep.resolved(TINY_SHAPE, True, CPU, dict(SWEEP_BWD_STRIP=4))[2] == 4


def test_overrides_are_restored_and_checked():
    before = (cuda_op.SWEEP_CHUNKS, cuda_op.SWEEP_BAND_ROWS, cuda_op.SWEEP_BWD_STRIP)
    with pytest.raises(RuntimeError):
        with tune_sweep.schedule_overrides(dict(SWEEP_CHUNKS=(8,), SWEEP_BWD_STRIP=4)):
            assert (cuda_op.SWEEP_CHUNKS, cuda_op.SWEEP_BWD_STRIP) == ((8,), 4)
            raise RuntimeError("a failing candidate")
    assert (cuda_op.SWEEP_CHUNKS, cuda_op.SWEEP_BAND_ROWS, cuda_op.SWEEP_BWD_STRIP) == before
    with pytest.raises(ValueError, match="SWEEP_STRIPS"):
        with tune_sweep.schedule_overrides(dict(SWEEP_STRIPS=4)):
            pass
