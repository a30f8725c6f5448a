# The Snakemake glue: the grid loaded from `config` (validated, the schema's defaults filled in), the
# wildcard constraints, and the paths and input functions the rules read from it. The expansion itself is
# lorabench/grid.py, the checks lorabench/checks.py, what each job runs lorabench/stages.py.
import json
import os
import re
import sys
from pathlib import Path

from lorabench import stages
from lorabench.checks import SAFE_NAME, ConfigError, config_file_problem, load_grid
from lorabench.grid import MODELS, RECORD_LIST, generated_files
from lorabench.job import RECORD
from lorabench.integrity import checkpoint_problem, record_problem, set_aside_if_damaged
from lorabench.records import bad_runs_note
from lorabench.report import report_flags

for _configfile in workflow.configfiles:  # what Snakemake's YAML loader lets pass: a key given twice, an alias bomb
    if problem := config_file_problem(_configfile):
        raise WorkflowError(f"config error: {problem}")

try:
    GRID = load_grid(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None
for _warning in GRID.warnings:  # doubtful but not wrong (device cuda with no CUDA visible here)
    print(f"config warning at {_warning}", file=sys.stderr)


def write_record_list(path):
    """The grid's record paths, one a line, for the aggregate (too many for a command line in a large grid);
    written only when they changed, so an unchanged grid leaves the file, and the aggregate, as they are."""
    text = "".join(f"{point.record}\n" for point in GRID.points())
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")  # renamed into place: a reader never sees half a list
        partial.write_text(text)
        os.replace(partial, path)


write_record_list(Path(RECORD_LIST))


wildcard_constraints:  # names: the pattern the checks hold every model, variant and target task name to
    model=SAFE_NAME.pattern,
    variant=SAFE_NAME.pattern,
    task=SAFE_NAME.pattern,
    rank=r"\d+",
    lr=r"[0-9.e+-]+",
    seed=r"-?\d+",


def model_wildcard(*sources):
    """A regex matching exactly the models given by one of `sources`: the rules building checkpoints share one
    output pattern, results/models/{model}, and this constraint tells Snakemake which rule builds which."""
    names = [re.escape(model) for model in GRID.models_given_as(*sources)]
    return "|".join(names) if names else "(?!)"  # (?!) never matches: no model of that kind


def job_outputs():
    """The train rule's outputs: record paths with a wildcard per unbatched axis, the batched axes' values fixed."""
    wildcards = {axis: "{%s}" % axis for axis in GRID.unbatched()}
    return [RECORD.format(**wildcards, **values) for values in GRID.job_shape()]


def job_file(folder, suffix):
    """One file per train job under results/<folder>/train/ (its log, its benchmark), named by its wildcards."""
    name = os.path.join(*(f"{axis}{{{axis}}}" for axis in GRID.unbatched()))
    return f"results/{folder}/train/{name}{suffix}"


def job_records():
    """The first record of each train job: the aggregate's record inputs, which bring every train job into the DAG.

    One target per job, not per grid point: Snakemake matches each target against all of the train rule's output
    patterns (one per batched point), so a target per point cost points x batch size matches (5,000 seeds over
    the smoke grid: 120,000 x 5,000). `missing_records` covers the records that are not targets.
    """
    return [records[0] for records in GRID.records_by_job()]


CHECK_OUTPUTS = workflow.is_main_process and not any(Path(".snakemake/locks").glob("*"))
"""Whether damaged checkpoints and records are set aside (lorabench/integrity.py): not in a job's own parse of the
Snakefile, nor while another run holds the lock (a checkpoint it is writing would look cut short)."""


def damaged(path, problem_of, rerun):
    """Whether the checkpoint or record at `path` was damaged and has been set aside, so that it is missing now."""
    return CHECK_OUTPUTS and set_aside_if_damaged(Path(path), problem_of, rerun)


for _model in GRID.models_given_as("architecture", "gguf", "package"):  # built here: a damaged one is rebuilt
    damaged(MODELS.format(model=_model), checkpoint_problem, "so the rule that builds it runs again")


def missing_records():
    """The first missing (or damaged, now set aside) record of each train job that lacks one: a target of the rule
    `all`, so a deleted record re-runs its job (Snakemake re-runs a job for a missing output only if something
    requests it); a finished record the job kept (lorabench/kept.py) is restored, not trained again."""
    rerun = "so its train job runs again"
    missing = (
        [record for record in records if damaged(record, record_problem, rerun) or not Path(record).exists()]
        for records in GRID.records_by_job()
    )
    return [records[0] for records in missing if records]


def checkpoint_input(wildcards):
    """The train rule's model input: the built or cached checkpoint, nothing for a `path` model."""
    return [MODELS.format(model=wildcards.model)] if GRID.is_built(wildcards.model) else []


def data_input(wildcards):
    """The train rule's generated data: that of the job's generated tasks (its task, or all if tasks are batched)."""
    tasks = [wildcards.task] if "task" in dict(wildcards) else GRID.target_tasks()
    return [path for task in tasks if task in GRID.generators() for path in generated_files(task).values()]


def local_input(wildcards):
    """The train rule's local files: the job's hub tasks' data files, the held-out texts, the paraphrase pairs and
    the lm-eval include folder's task files, so that editing one re-runs the jobs that read it."""
    tasks = [wildcards.task] if "task" in dict(wildcards) else GRID.target_tasks()
    return GRID.job_input_files(tasks)


def train_job(wildcards):
    """The train job at `wildcards` as JSON: a tracked param, so a changed setting re-runs exactly its jobs."""
    return stages.train_job(GRID, dict(wildcards), config["device"]).to_json()


def train_code(wildcards):
    """The hash of the code the job runs: a tracked param, so a code edit re-runs exactly the jobs that run it."""
    return stages.train_job_code(GRID, dict(wildcards))


def pretrain_settings(wildcards):
    """The pretrain job's settings as JSON: a tracked param, so a changed setting re-runs it."""
    return stages.pretrain_job(GRID, wildcards.model).to_json()


def generator(wildcards):
    """The task's `generator` entry as JSON."""
    return json.dumps(GRID.generators()[wildcards.task], sort_keys=True)


def model_source(wildcards):
    """How the model is given (`gguf` or `package` for the cache_model rule)."""
    return GRID.model_source(wildcards.model)


def note_bad_runs():
    """The pipeline's last lines name the grid's failed and diverged runs (it still exits 0: they are results)."""
    if note := bad_runs_note([Path(point.record) for point in GRID.points()]):
        print(note, file=sys.stderr)


def reported(name):
    """A report output, with the category, caption and labels the report package declares for it."""
    return report(f"reports/{name}", **report_flags(name))
