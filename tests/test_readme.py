"""The README's cheap commands run, and the numbers it claims for them are what they print
(``scripts/check_readme.py``)."""

import importlib.util
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
