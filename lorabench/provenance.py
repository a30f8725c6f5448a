"""Which code produced a result: the git commit, whether the checkout had uncommitted edits, and a hash of the
source files a job runs.

The hash covers the code (not comments or docstrings) of the files a job's numbers depend on and nothing else, so
the Snakefile passes it as a tracked param: an edit to a variant's module re-runs that variant's train jobs, an edit
to training code they share re-runs every train job, and an edit to the report or the grid expansion (whose output,
the job's settings, is tracked itself) re-runs none. Records carry the same hash, computed by the job itself.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import os
import subprocess
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
RECORD_SCHEMA = PACKAGE / "record.schema.json"
"""Read by every train job when it writes a record: part of the code a train job runs."""


def pretrain_code() -> str:
    """Hash of the code a pretrain job runs: ``lorabench/pretrain.py`` and the package modules it imports."""
    return _digest(_imports_closure({PACKAGE / "pretrain.py"}))


@cache
def train_code(*variants: type) -> str:
    """Hash of the code a train job of ``variants`` (registered classes) runs: ``lorabench/runner.py``, the modules
    defining each variant and its ancestors (wherever they live: a user's variant module counts like the package's),
    the package modules all of these import, and the record schema; not other variants' modules."""
    defining = variant_source_files(*variants)
    return _digest(_imports_closure({PACKAGE / "runner.py", *defining}) | {RECORD_SCHEMA})


def report_code() -> str:
    """Hash of the code the aggregate and report rules run (``lorabench/report``, ``aggregate.py`` and what they
    import): their tracked param, so an edit re-draws the report without re-training anything."""
    report = {PACKAGE / "aggregate.py", *(PACKAGE / "report").glob("*.py")}
    return _digest(_imports_closure(report))


def cost_code(*variants: type) -> str:
    """Hash of the code the cost stage runs: ``lorabench/cost.py``, the modules defining ``variants`` and the
    references it always measures (``peft_lora``, ``lora``), and the package modules these import."""
    from lorabench.variants import get

    defining = variant_source_files(*variants, get("peft_lora"), get("lora"))
    return _digest(_imports_closure({PACKAGE / "cost.py", *defining}))


def variant_source_files(*variants: type) -> set[Path]:
    """The files defining ``variants`` (registered classes) and their ancestors that are variants too."""
    from lorabench.variants import Variant

    return {
        Path(inspect.getsourcefile(cls)).resolve()
        for variant in variants
        for cls in variant.__mro__
        if issubclass(cls, Variant)
    }


def _imports_closure(files: set[Path]) -> frozenset[Path]:
    """``files`` and every package module they import, directly or not; imports inside functions count too.

    Read from the source (``ast``), not from what happens to be imported: the variant registry imports every
    variant module, and a train job must not depend on the others' code.
    """
    return _closure(frozenset(files))


@cache
def _closure(files: frozenset[Path]) -> frozenset[Path]:
    """Computed once per set of files and process: the Snakefile hashes the code of every train job, and a large
    grid's jobs share a handful of variant sets (parsing per job made a 10,000-job dry run take minutes)."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += [found for name in _imported_names(path) if (found := _module_file(name)) is not None]
    return frozenset(seen)


@cache
def _imported_names(path: Path) -> list[str]:
    """Every module a file's import statements name, with their parent packages (whose ``__init__`` runs too)."""
    names = []
    for node in ast.walk(ast.parse(_content(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # the package imports absolutely
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]  # a name may be a module
    return [".".join(name.split(".")[:end]) for name in names for end in range(1, name.count(".") + 2)]


def _module_file(name: str) -> Path | None:
    """The package file of module ``name`` (``lorabench.x.y``), or None for other modules and non-module names."""
    package, *parts = name.split(".")
    if package != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts)
    return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.is_file()), None)


@cache
def _digest(files: frozenset[Path]) -> str:
    """SHA-256 over the files' names and code (:func:`_code`), in a fixed order; names are relative to the package
    so moving the checkout changes nothing (a file outside it, e.g. a user's variant module, counts by name)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=_label):
        digest.update(_label(path).encode() + b"\0" + _code(path) + b"\0")
    return digest.hexdigest()


@cache
def _code(path: Path) -> bytes:
    """What a file does: a Python module's syntax tree without its docstrings (comments, blank lines and layout are
    not in a syntax tree), so editing those re-runs nothing; any other file's bytes. No code here reads a
    docstring (``__doc__``) of a module a job runs, which would make a docstring part of what the job does."""
    if path.suffix != ".py":
        return _content(path)
    tree = ast.parse(_content(path))
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            statements = getattr(node, field, None)
            if isinstance(statements, list) and statements and isinstance(statements[0], ast.stmt):
                kept = [statement for statement in statements if not _is_string_statement(statement)]
                setattr(node, field, kept or [ast.Pass()])
    return ast.dump(tree).encode()


def _is_string_statement(statement: ast.stmt) -> bool:
    """A bare string: a docstring, or an attribute's docstring under its assignment; it does nothing."""
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _label(path: Path) -> str:
    return str(path.relative_to(PACKAGE)) if path.is_relative_to(PACKAGE) else path.name


@cache
def _content(path: Path) -> bytes:
    """Read once per process: a grid of many jobs hashes the same files for each of them."""
    return path.read_bytes()


@cache
def git_state() -> dict[str, str | bool | None]:
    """``commit`` (HEAD of the checkout holding the package) and ``dirty`` (files differ from it or are new, e.g.
    an uncommitted variant module; ignored files such as results do not count).

    Outside a git checkout (an installed wheel, a container) the commit is ``LORABENCH_COMMIT`` if set, and
    ``dirty`` is None: unknown, the code hash still says what ran.
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=PACKAGE).stdout

    try:
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(git("status", "--porcelain").strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("LORABENCH_COMMIT"), "dirty": None}
