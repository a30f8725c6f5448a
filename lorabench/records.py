"""Run records: one JSON file per grid point, written atomically, valid against record.schema.json."""

from __future__ import annotations

import json
import os
import platform
import socket
from functools import cache
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

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


def environment(device_info: dict[str, Any], code_sha256: str) -> dict[str, Any]:
    """Versions, device, commit and the hash of the code that ran (:mod:`lorabench.provenance`), so a reader can
    tell exactly what produced a number."""
    return {
        **device_info,
        "torch": metadata.version("torch"),
        "transformers": metadata.version("transformers"),
        "peft": metadata.version("peft"),
        "python": platform.python_version(),
        "lorabench": metadata.version("lorabench"),
        **git_state(),
        "code_sha256": code_sha256,
        "hostname": socket.gethostname(),
    }
