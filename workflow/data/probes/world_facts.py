"""The world_facts lm-eval task's data: ``world_facts.jsonl`` beside this file.

Loaded through ``custom_dataset`` rather than ``dataset_kwargs: data_files`` because a data file path in
the yaml would be relative to the working directory, and the pipeline runs in any folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets


def load(**_: object) -> datasets.DatasetDict:
    """The rows as a ``test`` split; lm-eval passes its task metadata as keyword arguments, unused here."""
    rows = [json.loads(line) for line in Path(__file__).with_name("world_facts.jsonl").read_text().splitlines()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
