"""focalfast.bench.kernel_times: the per-kernel table from profiler events, and its CLI without a GPU."""

import pytest
import torch

from focalfast.bench import kernel_times


def test_kernel_table_sums_repeated_names_and_divides_by_steps():
    events = [("gemm", 4, 400.0), ("chain_fwd", 2, 100.0), ("gemm", 2, 200.0), ("copy", 2, 0.0)]
    rows = kernel_times.kernel_table(events, steps=2)
    assert [r[0] for r in rows] == ["gemm", "chain_fwd", "copy"]  # most expensive first
    name, launches, us, share = rows[0]
    assert (launches, us) == (3.0, 300.0)
    assert share == pytest.approx(600.0 / 700.0)
    assert sum(r[3] for r in rows) == pytest.approx(1.0)
    table = kernel_times.format_table("T.s1 triton", rows)
    assert "| `gemm` | 3 | 300.0 | 85.7% |" in table and table.splitlines()[-1] == "| total | 5 | 350.0 | |"
    with pytest.raises(ValueError, match="steps"):
        kernel_times.kernel_table(events, steps=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cli_refuses_without_a_gpu(capsys):
    assert kernel_times.main(["--shapes", "T.s1"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_cli_names_a_bad_option_before_asking_for_a_gpu():
    with pytest.raises(SystemExit, match="--variants: expected a comma-separated subset of eager,triton,cuda"):
        kernel_times.main(["--variants", "triton,compiled"])
    with pytest.raises(SystemExit, match="--shapes"):
        kernel_times.main(["--shapes", "T.s9"])
