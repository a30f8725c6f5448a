"""The grid: a validated configuration expanded into its variants, grid points, train jobs and record paths.

:func:`lorabench.checks.load_grid` validates a config (the schema fills its defaults) and builds the
:class:`Grid`; ``workflow/rules/common.smk`` turns the grid into the rules' outputs and inputs, and
:mod:`lorabench.stages` builds what each rule's job runs. The config is read as validated: every default comes
from the schema, so nothing here has a second copy of one.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lorabench.job import GridPoint, GridVariant, format_lr

RECORD_LIST = "results/records.txt"
"""The grid's record paths, one a line: what the aggregate reads (written by ``workflow/rules/common.smk``)."""
DATA = "results/data/{task}"
MODELS = "results/models/{model}"
BATCHABLE = ("variant", "rank", "lr", "task", "seed")
"""Grid axes a train job may run inside one process (config ``jobs.batch``); the model is always the job's own."""
GRID_SETTINGS = ("uses", "lrs", "optimizer")
"""Per-variant config keys the grid and the training loop read; every other key is the variant's own option."""
MODEL_SOURCES = ("architecture", "path", "gguf", "package")
FILE_BUILDERS = ("json", "parquet", "csv", "text", "arrow")
"""``datasets`` builders whose ``data_files`` are local files; with any other ``dataset`` (a hub name) they are
files inside that dataset's repository."""
INCLUDE_SUFFIXES = (".yaml", ".yml", ".json", ".jsonl", ".csv", ".txt", ".parquet", ".py")
"""Files of an lm-eval ``include_path`` folder a task may read: task definitions, their data and helpers."""


@dataclass(frozen=True)
class LocalFile:
    """A local file (or folder) the train jobs read, named in the config at ``field``; ``task``: the target task
    that reads it (``None``: every job, a forgetting measure). Paths are relative to the working directory."""

    field: str
    path: str
    task: str | None = None
    folder: bool = False


def variant_options(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ``variants`` entry's own options: the entry without the grid's settings for it (:data:`GRID_SETTINGS`)."""
    return {key: value for key, value in entry.items() if key not in GRID_SETTINGS}


def generated_files(task: str) -> dict[str, str]:
    """Where the ``generate_data`` rule writes a generated task's data: split -> JSONL file."""
    return {split: f"{DATA.format(task=task)}/{split}.jsonl" for split in ("train", "test")}


@dataclass
class Grid:
    """The expansion of one validated config (:func:`lorabench.checks.load_grid`)."""

    config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    """What the checks found doubtful but not wrong (``device: cuda`` with no CUDA visible here): printed, not
    refused."""

    # variants

    def variant_names(self) -> list[str]:
        """The grid's variant names: ``all`` is every registered variant in the default grid plus the config's own."""
        from lorabench.variants import registry

        registered, chosen = registry(), self.config["grid"]["variants"]
        if chosen != "all":
            return chosen
        in_all = [name for name, cls in registered.items() if cls.in_default_grid]
        return [*in_all, *(name for name in self.config["variants"] if name not in registered)]

    def uses(self, name: str) -> str:
        """The registered variant grid name ``name`` runs: its entry's ``uses``, else itself (read before the
        checks have shown that it is registered)."""
        return self.config["variants"].get(name, {}).get("uses", name)

    def variants(self) -> dict[str, GridVariant]:
        """Grid name -> the variant as the grid runs it; built once, after the checks of its entry."""
        return self._variants

    @cached_property
    def _variants(self) -> dict[str, GridVariant]:
        return {name: self._grid_variant(name) for name in self.variant_names()}

    def _grid_variant(self, name: str) -> GridVariant:
        from lorabench.variants import get

        entry, uses = self.config["variants"].get(name, {}), self.uses(name)
        cls, options = get(uses), variant_options(entry)
        return GridVariant(
            name=name,
            uses=uses,
            options=options,
            # the entry's own, else the one its variant declares (what its maths assumes), else ``train.optimizer``
            optimizer=entry.get("optimizer", cls.optimizer or self.config["train"]["optimizer"]),
            lrs=tuple(entry.get("lrs", self.config["grid"]["lrs"])),
            ranks=tuple(self.config["grid"]["ranks"]) if cls.ranked(options) else (0,),
        )

    # tasks

    def target_tasks(self) -> list[str]:
        """Names of the target tasks: embedded names as given, hub tasks by their mapping key."""
        return [entry if isinstance(entry, str) else next(iter(entry)) for entry in self.config["tasks"]["target"]]

    def _task_entries(self) -> dict[str, dict[str, Any]]:
        """Target task name -> its config fields, for the target entries that are mappings."""
        return {
            name: fields
            for entry in self.config["tasks"]["target"]
            if isinstance(entry, dict)
            for name, fields in entry.items()
        }

    def hub_tasks(self) -> dict[str, dict[str, Any]]:
        """Target task name -> HubTask fields (``name`` included), for the target entries that are mappings.

        A task with a ``generator`` reads the files its ``generate_data`` rule writes (:func:`generated_files`).
        """
        return {
            name: {key: value for key, value in fields.items() if key != "generator"}
            | {"name": name}
            | ({"data_files": generated_files(name)} if "generator" in fields else {})
            for name, fields in self._task_entries().items()
        }

    def generators(self) -> dict[str, dict[str, Any]]:
        """Target task name -> its ``generator`` entry, for the tasks whose data the pipeline generates."""
        return {name: fields["generator"] for name, fields in self._task_entries().items() if "generator" in fields}

    def local_files(self) -> list[LocalFile]:
        """Every local file the train jobs read: the hub tasks' local ``data_files`` (a generated task's are the
        pipeline's own), ``forgetting.heldout_ce.texts``, ``forgetting.paraphrase_retrieval.pairs`` and the folder
        ``forgetting.lm_eval.include_path``. Checked before any job; the train rule's inputs, so an edit re-runs."""
        files = []
        for index, entry in enumerate(self.config["tasks"]["target"]):
            if not isinstance(entry, dict):
                continue
            name, fields = next(iter(entry.items()))
            if "generator" in fields:
                continue
            for prefix, source in (("", fields), ("train_source/", fields.get("train_source") or {})):
                if source.get("dataset") in (None, *FILE_BUILDERS) and isinstance(source.get("data_files"), dict):
                    files += [
                        LocalFile(f"tasks/target/{index}/{name}/{prefix}data_files/{split}", path, name)
                        for split, path in source["data_files"].items()
                        if isinstance(path, str)
                    ]
        forgetting = self.config["forgetting"]
        if "heldout_ce" in forgetting:
            files.append(LocalFile("forgetting/heldout_ce/texts", forgetting["heldout_ce"]["texts"]))
        if "paraphrase_retrieval" in forgetting:
            files.append(
                LocalFile("forgetting/paraphrase_retrieval/pairs", forgetting["paraphrase_retrieval"]["pairs"])
            )
        if (include := forgetting.get("lm_eval", {}).get("include_path")) is not None:
            files.append(LocalFile("forgetting/lm_eval/include_path", include, folder=True))
        return files

    def job_input_files(self, tasks: Iterable[str]) -> list[str]:
        """The local files a train job of target ``tasks`` reads (:meth:`local_files`; data files matched by a glob
        pattern, an include folder's task files), as the train rule's inputs."""
        tasks, paths = set(tasks), []
        for local in self.local_files():
            if local.task is not None and local.task not in tasks:
                continue
            if local.folder:
                paths += sorted(
                    str(path)
                    for path in Path(local.path).rglob("*")
                    if path.is_file() and path.suffix in INCLUDE_SUFFIXES
                )
            elif glob.has_magic(local.path):
                paths += sorted(glob.glob(local.path, recursive=True))
            else:
                paths.append(local.path)
        return list(dict.fromkeys(paths))

    def classification_tasks(self) -> list[str]:
        """Target tasks with ``labels``: trained and scored through a sequence-classification head."""
        return [name for name, fields in self.hub_tasks().items() if fields.get("labels") is not None]

    # models

    def model_source(self, model: str) -> str:
        """How ``model`` is given: ``architecture``, ``gguf``, ``package`` (built by a rule) or ``path`` (as is)."""
        return next(key for key in MODEL_SOURCES if key in self.config["models"][model])

    def models_given_as(self, *sources: str) -> list[str]:
        """The models given by one of ``sources`` (:data:`MODEL_SOURCES`)."""
        return [model for model in self.config["models"] if self.model_source(model) in sources]

    def is_built(self, model: str) -> bool:
        return self.model_source(model) != "path"

    def checkpoint(self, model: str) -> str:
        """Where the train job loads ``model`` from: the output of its rule (pretrain, cache_model), or ``path``."""
        return MODELS.format(model=model) if self.is_built(model) else self.config["models"][model]["path"]

    def dtype(self, model: str) -> str:
        """The model's own ``dtype``, else the config's."""
        return self.config["models"][model].get("dtype", self.config["dtype"])

    # points and jobs

    def points(self) -> list[GridPoint]:
        return self._points

    @cached_property
    def _points(self) -> list[GridPoint]:
        """Built once: every train job's parameters and the aggregate's inputs read this list."""
        return [
            GridPoint(model, task, variant.name, rank, lr, seed)
            for model in self.config["models"]
            for variant in self.variants().values()
            for rank in variant.ranks
            for lr in variant.lrs
            for task in self.target_tasks()
            for seed in self.config["grid"]["seeds"]
        ]

    def batched(self) -> list[str]:
        """The axes each job runs inside one process, in :data:`BATCHABLE` order."""
        return [axis for axis in BATCHABLE if axis in self.config["jobs"]["batch"]]

    def unbatched(self) -> list[str]:
        """The axes that tell jobs apart: the train rule's wildcards."""
        return ["model", *(axis for axis in BATCHABLE if axis not in self.batched())]

    def jobs(self) -> dict[tuple[str, ...], list[GridPoint]]:
        """The grid points of each train job, keyed by the job's wildcard values (:meth:`unbatched`)."""
        return self._jobs

    @cached_property
    def _jobs(self) -> dict[tuple[str, ...], list[GridPoint]]:
        """Built once, since every job's params look their points up (a scan per job would be quadratic)."""
        jobs: dict[tuple[str, ...], list[GridPoint]] = {}
        for point in self.points():
            jobs.setdefault(tuple(_wildcard_value(point, axis) for axis in self.unbatched()), []).append(point)
        return jobs

    def job_points(self, wildcards: dict[str, str]) -> list[GridPoint]:
        return self.jobs()[tuple(wildcards[axis] for axis in self.unbatched())]

    def job_shapes(self) -> set[tuple[tuple[str, ...], ...]]:
        """The batched axes' values of each job, as they appear in record paths; a valid grid has one shape,
        since one Snakemake rule needs the same outputs for every job (:func:`lorabench.checks.check_batching`)."""
        return {
            tuple(tuple(_wildcard_value(point, axis) for axis in self.batched()) for point in points)
            for points in self.jobs().values()
        }

    def job_shape(self) -> list[dict[str, str]]:
        """The batched axes' values every job runs, one mapping per point of a job."""
        shape = next(iter(self.job_shapes()), ())
        return [dict(zip(self.batched(), values, strict=True)) for values in shape]

    def records_by_job(self) -> list[list[str]]:
        """The grid's record paths, grouped by the train job that writes them."""
        return self._records_by_job

    @cached_property
    def _records_by_job(self) -> list[list[str]]:
        return [[point.record for point in points] for points in self.jobs().values()]


def _wildcard_value(point: GridPoint, axis: str) -> str:
    """A point's value on ``axis`` as the train rule's wildcard (and its record path) spells it."""
    return format_lr(point.lr) if axis == "lr" else str(getattr(point, axis))
