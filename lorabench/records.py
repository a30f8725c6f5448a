"""Run records: one JSON file per grid point, written atomically, valid against record.schema.json."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

import lorabench
from lorabench.image import container

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


@cache
def commit() -> str | None:
    """The working tree's git commit; in a container without git, the one the launching Snakefile passed on."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LORABENCH_COMMIT")
    return out.stdout.strip()


def environment(device_info: dict[str, Any]) -> dict[str, Any]:
    """Versions, device and commit, so a reader can tell exactly what produced a number."""
    return {
        **device_info,
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "peft": metadata.version("peft"),
        "python": platform.python_version(),
        "lorabench": lorabench.__version__,  # the code that ran, installed or not (a checkout on PYTHONPATH)
        "commit": commit(),
        "container": container(),
        "hostname": socket.gethostname(),
    }
