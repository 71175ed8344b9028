"""The schedule tuner of the Triton chain kernels, run in Triton's interpreter on the tiny shape."""

import json
import os

import pytest
import torch

from focalfast.ops.triton import tune_chain

pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="the CPU check of the tuner (on a GPU, scripts/gpu_all.sh runs the real search)",
)


@pytest.mark.slow
def test_tuner_times_and_cross_checks_schedules(tmp_path, capsys):
    out = tmp_path / "tune.json"
    code = tune_chain.main(["--dtype", "fp32", "--max-configs", "2", "--warmup", "0", "--rounds", "1",
                            "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["pass_"], r["option"] == {}) for r in rows] == [
        ("forward", True), ("forward", False), ("backward", True), ("backward", False)]
    assert all(r["agrees"] and r["ms"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "tiny forward" in printed and "tiny backward" in printed and "(default)" in printed


def test_a_schedule_that_computes_something_else_is_flagged(monkeypatch, capsys):
    real = tune_chain._runner

    def wrong_unless_default(args, backward, interpret, schedule):
        run = real(args, backward, interpret, schedule)
        return run if not schedule else (lambda: [t * 1.01 for t in run()])

    monkeypatch.setattr(tune_chain, "_runner", wrong_unless_default)
    code = tune_chain.main(["--dtype", "fp32", "--max-configs", "2", "--passes", "forward", "--warmup", "0",
                            "--rounds", "1"])
    assert code == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_candidates_are_distinct_schedules_default_first():
    options = tune_chain.candidates(56, 56, 96, (3, 5), True, 128, 132)
    assert options[0] == {} and len(options) > 5
    from focalfast.ops.triton.chain_schedule import chain_schedule

    schedules = [chain_schedule(56, 56, 96, (3, 5), True, interpret=False, batch=128, sm_count=132, **o)
                 for o in options]
    assert len(set(schedules)) == len(schedules)
