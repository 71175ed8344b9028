"""Re-run the README's cheap commands and check the numbers it claims for them.

    python scripts/check_readme.py            # every check below; exit 1 on any mismatch
    python scripts/check_readme.py demo       # or only: demo, training, plan

``demo``: every ``python -m focalfast demo ...`` command of the README's bash blocks exits 0.
``training``: every ``focalfast train ...`` command whose comment claims ``NN.N% validation
accuracy`` reaches exactly that (the run is deterministic), in a temporary ``--out``.
``plan``: every ``focalfast plan ...`` command prints the table that follows it in the README,
line for line (minutes per command on 2 CPU cores: not part of the test suite).
Commands run with this checkout's focalfast (``python -m focalfast``), from the repository root.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
ACCURACY_CLAIM = re.compile(r"(\d+(?:\.\d+)?)% validation accuracy")


class Command(NamedTuple):
    """A command of a README bash block (continuation lines joined) and its ``#`` comment."""

    line: int
    env: dict
    argv: List[str]
    comment: str


def readme_commands(readme: Path = REPO / "README.md") -> List[Command]:
    """The commands of every ```bash block, with leading ``NAME=value`` words split off into ``env``."""
    commands, in_bash, pending, start = [], False, "", 0
    for number, text in enumerate(readme.read_text().splitlines(), 1):
        if text.startswith("```"):
            in_bash = text.strip() == "```bash"
            continue
        if not in_bash:
            continue
        code, _, comment = text.partition(" #")
        if not pending:
            start = number
        if code.rstrip().endswith("\\"):
            pending += code.rstrip()[:-1] + " "
            continue
        words, pending = shlex.split(pending + code), ""
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words:
            commands.append(Command(start, env, words, comment.strip()))
    return commands


def focalfast_argv(argv: List[str]) -> Optional[List[str]]:
    """``argv`` as this checkout's ``python -m focalfast ...``; None if it is no focalfast command."""
    if argv[:1] == ["focalfast"]:
        return [sys.executable, "-m", "focalfast", *argv[1:]]
    if argv[:3] == ["python", "-m", "focalfast"]:
        return [sys.executable, *argv[1:]]
    return None


def run(command: Command, argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, env=dict(os.environ, **command.env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def check_demo() -> List[str]:
    """Run each README demo command; returns the failures (empty: all passed)."""
    failures = []
    for command in readme_commands():
        argv = focalfast_argv(command.argv)
        if argv is None or argv[3:4] != ["demo"]:
            continue
        result = run(command, argv)
        status = "ok" if result.returncode == 0 else f"exit code {result.returncode}"
        print(f"README.md:{command.line}: {shlex.join(command.argv)}: {status}")
        if result.returncode != 0:
            failures.append(f"README.md:{command.line}: {status}\n{result.stdout[-3000:]}")
    return failures


def check_training() -> List[str]:
    """Run each README training command that claims an accuracy; returns the mismatches."""
    failures = []
    for command in readme_commands():
        argv, claim = focalfast_argv(command.argv), ACCURACY_CLAIM.search(command.comment)
        if argv is None or claim is None or argv[3:4] != ["train"]:
            continue
        with tempfile.TemporaryDirectory() as out:
            args = argv[:]
            if "--out" in args:
                args[args.index("--out") + 1] = out
            else:
                args += ["--out", out]
            result = run(command, args + ["--no-progress"])
            if result.returncode != 0:
                failures.append(f"README.md:{command.line}: exit code {result.returncode}\n{result.stdout[-3000:]}")
                continue
            accuracy = json.loads((Path(out) / "summary.json").read_text())["val_acc"] * 100
        decimals = len(claim.group(1).partition(".")[2])
        measured = f"{accuracy:.{decimals}f}"
        print(f"README.md:{command.line}: claims {claim.group(1)}% validation accuracy, the command gives "
              f"{measured}%")
        if measured != claim.group(1):
            failures.append(f"README.md:{command.line}: claims {claim.group(1)}%, the command gives {measured}%")
    return failures


def plan_tables(readme: Path = REPO / "README.md") -> List[Tuple[List[Command], List[str]]]:
    """The README's bash blocks of ``focalfast plan`` commands that a table follows (blank lines
    between allowed), each with that table (its ``|`` lines): header, rule, then every command's rows."""
    lines = readme.read_text().splitlines()
    blocks = {}
    for command in readme_commands(readme):
        if command.argv[:2] == ["focalfast", "plan"]:
            block_end = next(i for i in range(command.line, len(lines)) if lines[i].startswith("```"))
            blocks.setdefault(block_end, []).append(command)
    pairs = []
    for block_end, commands in blocks.items():
        start = next((i for i in range(block_end + 1, len(lines)) if lines[i].strip()), len(lines))
        end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
        if end > start:
            pairs.append((commands, lines[start:end]))
    return pairs


def check_plan() -> List[str]:
    """Run the README's ``focalfast plan`` commands (minutes each): each table is what they print."""
    failures = []
    for commands, table in plan_tables():
        printed, problems = [], []
        for command in commands:
            result = run(command, focalfast_argv(command.argv))
            rows = [text for text in result.stdout.splitlines() if text.startswith("|")]
            if result.returncode != 0 or rows[:2] != table[:2]:
                problems.append(f"{shlex.join(command.argv)}: exit code {result.returncode}\n{result.stdout[-3000:]}")
            printed += rows[2:]
        same = not problems and printed == table[2:]
        print(f"README.md:{commands[0].line}: {len(commands)} plan command(s): "
              f"{'the same table' if same else 'a DIFFERENT table'}")
        if not same:
            failures.append(f"README.md:{commands[0].line}: the README has\n" + "\n".join(table)
                            + "\nthe commands printed the rows\n" + "\n".join(printed) + "\n" + "\n".join(problems))
    return failures


CHECKS = {"demo": check_demo, "training": check_training, "plan": check_plan}


def main(argv: Optional[List[str]] = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(CHECKS)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        print(f"check_readme: unknown check {unknown}; expected some of {list(CHECKS)}", file=sys.stderr)
        return 2
    failures = [failure for name in names for failure in CHECKS[name]()]
    for failure in failures:
        print(f"MISMATCH {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
