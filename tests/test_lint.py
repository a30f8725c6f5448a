"""The code and the workflow keep one style, checked by the tools whose settings are in pyproject.toml: ruff (lint and
format) for the Python, snakefmt for the Snakefile and its rules. A failure prints what to run to mend it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.pipeline import REPO

WORKFLOW = ["Snakefile", *sorted(str(path.relative_to(REPO)) for path in (REPO / "workflow/rules").glob("*.smk"))]


@pytest.mark.parametrize(
    ("check", "mend"),
    [
        (["ruff", "check", "."], "ruff check --fix ."),
        (["ruff", "format", "--check", "."], "ruff format ."),
        (["snakefmt", "--check", *WORKFLOW], "snakefmt Snakefile workflow/rules"),
    ],
    ids=["ruff-check", "ruff-format", "snakefmt"],
)
def test_the_code_and_workflow_keep_their_style(check: list[str], mend: str) -> None:
    result = subprocess.run([sys.executable, "-m", *check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}{result.stderr[-3000:]}\nto mend: {mend}"
