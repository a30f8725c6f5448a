"""Every command a user types fails on a missing or malformed input with one line that says what to do, never a
traceback; ``--help`` describes every argument."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorabench.cli import parser
from tests.pipeline import REPO

REFERENCE = REPO / "reports" / "reference" / "results.csv"


def lorabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorabench.cli", *args], cwd=cwd, capture_output=True, text=True)


def cut_mid_row(folder: Path) -> Path:
    """The reference table cut inside its third row, after that row's third field."""
    header, first, second, third = REFERENCE.read_text().splitlines()[:4]
    path = folder / "cut.csv"
    path.write_text("\n".join([header, first, second, ",".join(third.split(",")[:3])]))
    return path


COLUMNS = len(REFERENCE.read_text().splitlines()[0].split(","))


CASES = {
    "compare without a results file": (["compare"], ["reports/results.csv: no such file", "run the pipeline first"]),
    "compare away from the reference": (
        ["compare", str(REFERENCE)],
        ["reports/reference/results.csv: no such file", "give --reference"],
    ),
    "compare on a table cut mid-row": (
        ["compare", "cut.csv", "--reference", str(REFERENCE)],
        [f"cut.csv: line 4 has 3 fields where the header has {COLUMNS}", "cut short?"],
    ),
    "compare on a CSV of something else": (
        ["compare", "other.csv", "--reference", str(REFERENCE)],
        ["other.csv: no column run_id", "not a results table"],
    ),
    "aggregate a missing record": (
        ["aggregate", "no-such.json", "--out", "out"],
        ["no-such.json: not a readable JSON record", "Run snakemake again"],
    ),
    "aggregate a record cut short": (
        ["aggregate", "cut.json", "--out", "out"],
        ["cut.json: not a readable JSON record", "Run snakemake again"],
    ),
    "report on a missing folder": (
        ["report", "--out", "no-such"],
        ["lorabench report: no-such/results.csv: no such file or folder"],
    ),
}


@pytest.mark.parametrize("args, expected", CASES.values(), ids=CASES.keys())
def test_a_bad_input_gets_one_line_that_says_what_to_do(args: list[str], expected: list[str], tmp_path: Path) -> None:
    cut_mid_row(tmp_path)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    (tmp_path / "cut.json").write_text('{"schema_version": 1, "run_id": "x/y')
    result = lorabench(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(words in result.stderr for words in expected), result.stderr


def test_every_argument_of_every_command_has_help() -> None:
    commands = next(action for action in parser()._actions if action.dest == "command").choices
    for name, command in commands.items():
        for action in command._actions:
            if action.dest != "help":
                assert action.help, f"lorabench {name}: {'/'.join(action.option_strings) or action.dest} has no help"


def test_an_installed_wheel_says_it_needs_the_checkout(tmp_path: Path) -> None:
    """A plain (non-editable) install copies the package only: checking a config names the missing schema and
    the editable install from a clone that fixes it, in one line."""
    source = tmp_path / "source"  # built from a copy: setuptools writes build/ into the folder it builds
    source.mkdir()
    for part in ("pyproject.toml", "README.md", "lorabench"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, source / part)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "wheel"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "wheel").glob("lorabench-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    config = tmp_path / "smoke.yaml"
    config.write_text((REPO / "workflow" / "config" / "smoke.yaml").read_text())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lorabench.cli import main; sys.exit(main(sys.argv[1:]))",
            "check",
            str(config),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "config schema" in result.stderr and "pip install -e ." in result.stderr, result.stderr
    assert str(tmp_path / "site") in result.stderr  # the installed copy answered, not the checkout
