"""Run records: one JSON file per grid point, written atomically, valid against record.schema.json."""

from __future__ import annotations

import json
import os
import platform
import socket
from collections import Counter
from functools import cache
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

import lorabench
from lorabench.image import container
from lorabench.provenance import git_state

SCHEMA_VERSION = 1


@cache
def validator() -> Any:
    """The record schema's validator, built once: writing and aggregating records share it."""
    import jsonschema

    schema = json.loads(files("lorabench").joinpath("record.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(record: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` naming the offending field when ``record`` is malformed."""
    import jsonschema

    if (problem := jsonschema.exceptions.best_match(validator().iter_errors(record))) is not None:
        raise problem


def write(record: dict[str, Any], path: Path) -> None:
    """Validate, then write via a temporary file and rename, so a killed job never leaves half a record."""
    validate(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=1, allow_nan=False))
    os.replace(partial, path)


NOTE_SHOWN = 10
"""Runs named one by one in :func:`bad_runs_note`; the rest are counted."""


def bad_runs_note(paths: list[Path]) -> str | None:
    """The pipeline's last words when some of ``paths`` (the grid's records) failed or diverged: how many, the
    first :data:`NOTE_SHOWN` with the reason, and where to read more; None when every written record is ``ok``."""
    bad = {path: record for path in paths if path.exists() and (record := _unless_ok(path)) is not None}
    if not bad:
        return None
    counts = Counter(record["status"] for record in bad.values())
    lines = [
        f"lorabench: {', '.join(f'{n} {status}' for status, n in sorted(counts.items()))} of {len(paths)} runs. "
        "Each record says why (`error` when failed, `divergence` when diverged); reports/results.csv has a "
        "`status` column, reports/status.png shows them, and results/logs/train/ has each job's log.",
        *(f"  {record['status']}: {path}: {_reason(record)}" for path, record in list(bad.items())[:NOTE_SHOWN]),
    ]
    if len(bad) > NOTE_SHOWN:
        lines.append(f"  ... and {len(bad) - NOTE_SHOWN} more")
    return "\n".join(lines)


def _unless_ok(path: Path) -> dict[str, Any] | None:
    """The record at ``path`` unless it is ``ok``: the status sits in its first lines, so an ``ok`` record of a
    large grid is not parsed whole."""
    with path.open() as file:
        if '"status": "ok"' in file.read(1024):
            return None
    record = json.loads(path.read_text())
    return None if record["status"] == "ok" else record


def _reason(record: dict[str, Any]) -> str:
    """One line: the divergence rule, or the failure's explanation."""
    divergence = record.get("divergence")
    return run_reason(divergence and divergence["step"], divergence and divergence["reason"], record["error"])


def run_reason(divergence_step: object, divergence_reason: object, error: object) -> str:
    """Why a run is not ``ok``, in one line: ``step N: <divergence rule>`` for a diverged run, else the error's
    line that says what went wrong (a traceback's last line: the exception)."""
    if isinstance(divergence_reason, str):
        return f"step {int(divergence_step)}: {divergence_reason}"  # a float in a table column with gaps
    if not isinstance(error, str) or not error.strip():
        return "(no reason recorded)"
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0].strip()


def environment(device_info: dict[str, Any], code_sha256: str) -> dict[str, Any]:
    """Versions, device, commit and the hash of the code that ran (:mod:`lorabench.provenance`), so a reader can
    tell exactly what produced a number."""
    return {
        **device_info,
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "peft": metadata.version("peft"),
        "python": platform.python_version(),
        "lorabench": lorabench.__version__,  # the code that ran, installed or not (a checkout on PYTHONPATH)
        **git_state(),
        "code_sha256": code_sha256,
        "container": container(),
        "hostname": socket.gethostname(),
    }
