"""Damaged outputs are found before they are trusted: a checkpoint or record cut short (a full disk, a kill during
a copy) is set aside when the Snakefile is parsed, so Snakemake sees it missing and runs the job that writes it
again, instead of every later job failing on it or the aggregate stopping on it.

The checks are cheap, so a grid of 100,000 records pays little: a safetensors file's size against its header, a
record's first and last bytes (records are written whole, through a rename, so a cut shows at the end).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

DAMAGED = ".damaged"
"""Suffix of a damaged file or folder set aside (the previous one set aside at that path is replaced)."""


def safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file at ``path`` cannot be whole, or None: its size must be 8 + the header's length +
    the end of the last tensor the header lists."""
    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        end = max((entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError) as error:
        return f"unreadable safetensors header ({type(error).__name__}: {error})"
    if (size := path.stat().st_size) != 8 + length + end:
        return f"{size} bytes where its header needs {8 + length + end} (cut short?)"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be used, or None: a weights file cut short, or a JSON file (config,
    tokenizer) that does not parse."""
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors" and (problem := safetensors_problem(path)):
            return f"{path.name}: {problem}"
        if path.suffix == ".json":
            try:
                json.loads(path.read_bytes())
            except (OSError, ValueError) as error:
                return f"{path.name}: not valid JSON ({error})"
    return None


def record_problem(path: Path) -> str | None:
    """Why the record at ``path`` is not whole, or None: a record is one JSON object, so it starts with ``{`` and
    ends with ``}``; only those bytes are read."""
    try:
        with path.open("rb") as file:
            first = file.read(1)
            file.seek(max(0, path.stat().st_size - 16))
            last = file.read().rstrip()[-1:]
    except OSError as error:
        return f"unreadable ({error})"
    if (first, last) != (b"{", b"}"):
        return "not a whole JSON object (cut short?)"
    return None


def set_aside_if_damaged(path: Path, problem_of: Callable[[Path], str | None], rerun: str) -> bool:
    """Rename ``path`` to ``<path>.damaged`` when ``problem_of(path)`` finds it damaged, saying so on stderr with
    ``rerun`` (which job writes it again); False when it is missing or sound."""
    if not path.exists() or (problem := problem_of(path)) is None:
        return False
    aside = path.with_name(path.name + DAMAGED)
    if aside.is_dir():
        shutil.rmtree(aside)
    os.replace(path, aside)
    print(f"lorabench: {path} is damaged: {problem}; moved to {aside}, {rerun}", file=sys.stderr)
    return True
