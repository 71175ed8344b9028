"""The README's cheap commands run, and the numbers it claims for them are what they print
(``scripts/check_readme.py``)."""

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_readme", REPO / "scripts" / "check_readme.py")
check_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_readme)


def test_readme_has_checked_commands():
    """The checks below are not vacuous: the README has demo commands and a training accuracy claim."""
    commands = check_readme.readme_commands()
    argvs = [check_readme.focalfast_argv(c.argv) for c in commands]
    assert any(argv and argv[3:4] == ["demo"] for argv in argvs)
    assert any(argv and argv[3:4] == ["train"] and check_readme.ACCURACY_CLAIM.search(c.comment)
               for argv, c in zip(argvs, commands))


def test_readme_plan_commands_each_have_their_table():
    """``check_readme.py plan`` (too slow for the suite) compares a table with each plan command."""
    tables = check_readme.plan_tables()
    assert sum(len(commands) for commands, _ in tables) >= 5
    for commands, table in tables:
        assert len(table) >= 2 + 2 * len(commands) and table[0].startswith("| backend | checkpoint |"), commands


@pytest.mark.slow
def test_readme_demo_commands_run():
    assert check_readme.check_demo() == []


@pytest.mark.slow
def test_readme_training_accuracy_claim_holds():
    assert check_readme.check_training() == []


def _markdown_rows(text: str, header_start: str) -> list:
    """The body rows (cells stripped) of the first markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_readme_gpu_numbers_are_the_committed_run():
    """Every time and speed-up in the README's Performance table is the committed GPU run's, cell for cell."""
    readme = (REPO / "README.md").read_text()
    performance = readme[readme.index("## Performance"):]
    results_name = re.search(r"benchmarks/results/([\w.-]+\.md)", performance).group(1)
    results = (REPO / "benchmarks" / "results" / results_name).read_text()
    measured = {(case, shape, backend): (ms, speedup)
                for case, shape, dtype, backend, ms, speedup, *_ in _markdown_rows(results, "| case |")
                if dtype == "bf16"}
    rows = _markdown_rows(performance, "| shape | pass |")
    assert len(rows) >= 4
    for shape, pass_, eager, *fused in rows:
        shape, case = shape.split()[0], f"op {pass_}"
        assert eager == measured[(case, shape, "eager")][0], (shape, pass_)
        for backend, cell in zip(("triton", "cuda"), fused):
            ms, speedup = cell.rstrip(")").split(" (")
            assert (ms, speedup) == measured[(case, shape, backend)], (shape, pass_, backend)
