"""The README's quick start, run as written: its command lines are read from README.md and each one runs, text
unchanged, through bash in a fresh copy of the working tree (the files git tracks or would track), as a new user
types it after cloning.

What is made cheap, outside the command text, and why:
- the packages: the copy's ``.venv`` is prepared before the command runs, with a ``.pth`` file that puts this test
  environment's site-packages on its path (minus lorabench itself and pip), and a ``.venv/bin/snakemake`` script as
  pip writes one. The command's ``python3 -m venv .venv`` then installs pip into it, and its ``pip install`` runs in
  full, offline (``PIP_NO_INDEX=1``, without build isolation): every requirement is already satisfied, and pip
  installs the copy's lorabench (editable) into ``.venv``. Downloading torch would take minutes and a network.
- the grids: ``workflow/config/preview.yaml`` and ``default.yaml`` in the copy are rewritten to a few runs of a few
  steps each (:func:`tiny`: their own models, tasks and settings, one or two variants, one seed, no cost stage), the
  files the commands read (``snakemake --cores all`` reads ``default.yaml`` as the README says). The full grids take
  minutes to hours; ``reports/reference/`` records what they give.

The quick start's test command is what ``.ci/run`` runs (checked here verbatim), so CI runs it as written; running
the suite from inside the suite would not terminate. The recovery command of "Interrupted runs and damaged files"
runs as written after the quick start.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from tests.pipeline import REPO, fresh_copy

PREVIEW_VARIANTS, DEFAULT_VARIANTS = ["lora"], ["lora", "frozen_a"]


def readme_commands(section: str = "Quick start") -> list[str]:
    """The command lines of a README.md section: its indented code blocks, in order."""
    text = (REPO / "README.md").read_text().split(f"\n## {section}\n")[1].split("\n## ")[0]
    return [line.strip() for line in text.splitlines() if line.startswith("    ") and line.strip()]


def command(*fragments: str, section: str = "Quick start") -> str:
    """The one command of the README's ``section`` that contains every fragment."""
    found = [line for line in readme_commands(section) if all(fragment in line for fragment in fragments)]
    assert len(found) == 1, f"README's {section} has {len(found)} commands with {fragments}: {readme_commands(section)}"
    return found[0]


def test_the_quick_start_has_the_preview_the_default_grid_and_the_tests():
    assert len(readme_commands()) == 3
    command("--configfile workflow/config/preview.yaml")
    command("snakemake --cores all && snakemake --report reports/report.html")
    command("python -m pytest")


def test_the_quick_starts_test_command_is_what_ci_runs():
    assert command("python -m pytest") in (REPO / ".ci" / "run").read_text()


def tiny(config: dict, variants: list[str]) -> dict:
    """``config`` shrunk to a few runs of a few steps: same models, tasks and settings otherwise; its data and
    pretraining shrink alike in every config, so the preview's pretrained model is still the default grid's."""
    config = copy.deepcopy(config)
    config["data"] |= {"train": 300, "validation": 16, "test": 32}
    config["pretrain"] |= {"steps": 30}
    config["train"] |= {"steps": 6, "log_every": 2, "eval_at": [3, 6]}
    config["grid"] |= {"variants": variants, "seeds": [0]}
    config["variants"] = {
        name: {**config["variants"][name], "lrs": config["variants"][name]["lrs"][:1]} for name in variants
    }
    config["cost"] = {"enabled": False}
    return config


def prepare_venv(tree: Path, scratch: Path) -> None:
    """``tree/.venv`` seeing this environment's packages (lorabench and pip excepted) through a ``.pth`` file, with the
    ``snakemake`` script pip would have written; the README's ``python3 -m venv .venv`` keeps both."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    shared = scratch / "site-packages"
    shared.mkdir()
    for entry in site_packages.iterdir():
        if not re.fullmatch(r"(__editable__[._])?(lorabench|pip)([-_]\d.*)?|.*\.pth", entry.name):
            (shared / entry.name).symlink_to(entry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tree / ".venv")], check=True)
    venv_site = next((tree / ".venv" / "lib").glob("python3*/site-packages"))
    (venv_site / "test-environment.pth").write_text(f"{shared}\n")
    (script,) = [entry for entry in metadata.entry_points(group="console_scripts") if entry.name == "snakemake"]
    module, function = script.value.split(":")
    (tree / ".venv" / "bin" / "snakemake").write_text(
        f"#!{tree / '.venv' / 'bin' / 'python'}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    )
    (tree / ".venv" / "bin" / "snakemake").chmod(0o755)


def user_environment(scratch: Path) -> dict[str, str]:
    """A shell as a new user has it: ``python3`` is this Python's interpreter (not its venv), no venv active, nothing
    on PYTHONPATH; pip offline (see the module's docstring)."""
    python = scratch / "bin"
    python.mkdir()
    (python / "python3").symlink_to(os.path.realpath(sys.executable))
    path = [entry for entry in os.environ["PATH"].split(os.pathsep) if Path(entry) != Path(sys.prefix) / "bin"]
    environment = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return environment | {
        "PATH": os.pathsep.join([str(python), *path]),
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",
    }


def run_as_written(line: str, tree: Path, environment: dict[str, str]) -> str:
    result = subprocess.run(["bash", "-c", line], cwd=tree, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, f"{line}\nfailed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


@pytest.mark.e2e
def test_the_quick_start_runs_as_written(tmp_path: Path):
    tree, scratch = fresh_copy(tmp_path / "lorabench"), tmp_path / "scratch"
    scratch.mkdir()
    prepare_venv(tree, scratch)
    environment = user_environment(scratch)
    for name, variants in (("preview", PREVIEW_VARIANTS), ("default", DEFAULT_VARIANTS)):
        config = tree / "workflow" / "config" / f"{name}.yaml"
        config.write_text(yaml.safe_dump(tiny(yaml.safe_load(config.read_text()), variants)))

    preview = run_as_written(command("--configfile workflow/config/preview.yaml"), tree, environment)
    assert "Successfully installed lorabench" in preview
    assert re.search(r"rule pretrain\b", preview)
    assert (tree / "reports" / "summary.md").is_file() and (tree / "reports" / "forgetting_vs_accuracy.png").is_file()

    default = run_as_written(command("snakemake --report reports/report.html"), tree, environment)
    assert not re.search(r"rule pretrain\b", default), "the default grid built the preview's model again"
    results = (tree / "reports" / "results.csv").read_text()
    assert all(f",{variant}," in results for variant in DEFAULT_VARIANTS)
    assert (tree / "reports" / "report.html").stat().st_size > 100_000

    # the recovery after an interrupt (tests/test_interrupts.py kills a job before it), in the shell the quick start
    # left (its venv active): after a finished run it releases nothing and re-runs nothing
    activated = environment | {
        "VIRTUAL_ENV": str(tree / ".venv"),
        "PATH": os.pathsep.join([str(tree / ".venv" / "bin"), environment["PATH"]]),
    }
    recovery = run_as_written(command("--unlock", section="Interrupted runs and damaged files"), tree, activated)
    assert "Nothing to be done" in recovery
