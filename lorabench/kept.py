"""Finished records kept where Snakemake cannot delete them, so an interrupted or failed job loses none.

A train job runs many grid points, and Snakemake removes all of a failed or interrupted job's outputs (its
records) and re-runs the whole job. So each finished record is also written under ``results/kept/``, named by a
key of everything it depends on: the job's settings, the point's own, the hash of the code that ran and the size
and modification time of every input file the pipeline gave the job (a rebuilt checkpoint or an edited data file
changes it). The re-run job copies a kept record back into place instead of training that point again.

Only ``ok`` and ``diverged`` records are kept: both follow from the key alone, while a ``failed`` one may be
the machine's fault (memory, a missing file) and is tried again. Deleting ``results/kept`` forces retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema

from lorabench import records
from lorabench.job import GridPoint, TrainJob

KEPT_STATUSES = ("ok", "diverged")


def inputs_fingerprint(inputs: Iterable[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of every file of ``inputs`` (folders walked), in a fixed order."""
    files = []
    for name in inputs:
        path = Path(name)
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files += [(str(p), (stat := p.stat()).st_size, stat.st_mtime_ns) for p in found if p.exists()]
    return files


def key(job: TrainJob, point: GridPoint, code: str, fingerprint: list[tuple[str, int, int]]) -> str:
    """SHA-256 of what ``point``'s record depends on; the job's other points and variants are left out, and of its
    own variant only what a run depends on (not the sweep), so a point keeps its key whatever it is batched with."""
    settings = {key: value for key, value in job.to_dict().items() if key not in ("points", "variants")}
    text = json.dumps(
        {
            "job": settings,
            "point": asdict(point),
            "variant": job.variant(point).run_settings(),
            "code": code,
            "inputs": fingerprint,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def kept_path(point: GridPoint, point_key: str) -> Path:
    """``results/kept/<the record's path under results/runs>/<key>.json``."""
    return Path(point.record.replace("/runs/", "/kept/", 1)).with_suffix("") / f"{point_key}.json"


def keep(record: dict[str, Any], point: GridPoint, point_key: str) -> None:
    """Write ``record`` to the kept store (when its status is kept), then to its place under ``results/runs``."""
    if record["status"] in KEPT_STATUSES:
        records.write(record, kept := kept_path(point, point_key))
        place(kept, Path(point.record))
    else:
        records.write(record, Path(point.record))


def restore(point: GridPoint, point_key: str) -> dict[str, Any] | None:
    """Put ``point``'s kept record back in place and return it; None when there is none, or it does not load or
    validate (then the point trains again and a fresh record replaces it)."""
    kept = kept_path(point, point_key)
    try:
        record = json.loads(kept.read_text())
        records.validate(record)
    except (OSError, ValueError, jsonschema.ValidationError):  # missing, cut short, or not a record: retrain
        return None
    place(kept, Path(point.record))
    return record


def place(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` with its modification time, through a temporary file and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".json.partial")
    shutil.copy2(source, partial)
    os.replace(partial, target)
