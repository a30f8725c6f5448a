# lorabench: every LoRA variant over a grid of models x ranks x tasks x learning rates x seeds,
# then one table and one report. Run `snakemake -c all` (embedded CPU default), or pass
# `--configfile workflow/config/<suite>.yaml`; the config is validated before any job runs.
import json
import sys
from pathlib import Path

from lorabench.config import RECORD_LIST, ConfigError, load_grid
from lorabench.provenance import pretrain_code
from lorabench.records import bad_runs_note


if not config:  # a --configfile replaces the embedded default instead of being merged into it
    configfile: Path(workflow.basedir) / "workflow/config/default.yaml"


try:
    GRID = load_grid(config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml")
except ConfigError as error:
    raise WorkflowError(str(error)) from None

GRID.write_record_list(Path(RECORD_LIST))

container: config["container"]


include: "workflow/rules/pretrain.smk"
include: "workflow/rules/assets.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.aggregate.input,
        rules.figures.output,
        GRID.missing_records(),  # a deleted record re-runs its job (one per job that lacks any)
    default_target: True


def note_bad_runs():
    """The pipeline's last lines name the grid's failed and diverged runs (it still exits 0: they are results)."""
    if note := bad_runs_note([Path(point.record) for point in GRID.points()]):
        print(note, file=sys.stderr)


onsuccess:
    note_bad_runs()


onerror:
    note_bad_runs()
