"""What one train job runs: built by :meth:`lorabench.grid.Grid.train_job`, passed by the train rule to
``lorabench train --job`` as JSON (:meth:`TrainJob.to_json`) and read back by :meth:`TrainJob.from_json`.

The JSON is the train rule's tracked param, so its text (keys sorted) decides which jobs re-run: a field added
here re-runs every job once. Every setting comes from the validated config, whose schema fills the defaults;
no setting has a default of its own here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from lorabench.train import TrainSettings


@dataclass(frozen=True)
class JobPoint:
    """One grid point of a job: its variant (grid name, the registered variant it runs, that variant's options
    and optimizer), rank, target task, learning rate, seed, and the record it writes."""

    variant: str
    uses: str
    variant_options: dict[str, Any]
    optimizer: str
    rank: int
    task: str
    lr: float
    seed: int
    record: str


@dataclass(frozen=True)
class JobTraining:
    """The training loop's settings shared by every point of a job (config ``train``); each point adds its own
    learning rate and optimizer (:meth:`for_point`)."""

    steps: int
    batch_size: int
    weight_decay: float
    log_every: int
    eval_at: tuple[int, ...]
    """Step counts after which a run evaluates mid-training (config ``train.eval_at``)."""
    replay: float

    def for_point(self, point: JobPoint) -> TrainSettings:
        return TrainSettings(lr=point.lr, optimizer=point.optimizer, **asdict(self))


@dataclass(frozen=True)
class LmEval:
    """Config ``forgetting.lm_eval``: lm-eval tasks scored before and after fine-tuning."""

    tasks: tuple[str, ...]
    include_path: str | None
    limit: int | None
    batch_size: int


@dataclass(frozen=True)
class HeldoutCE:
    """Config ``forgetting.heldout_ce``: mean token cross-entropy on the first ``n`` texts of a file."""

    texts: str
    n: int
    max_length: int
    batch_size: int


@dataclass(frozen=True)
class ParaphraseRetrieval:
    """Config ``forgetting.paraphrase_retrieval``: top-1 retrieval of each sentence's paraphrase."""

    pairs: str
    batch_size: int


@dataclass(frozen=True)
class Forgetting:
    """Config ``forgetting``: the measures beyond the source tasks; ``None``: a measure the config does not ask for."""

    lm_eval: LmEval | None = None
    heldout_ce: HeldoutCE | None = None
    paraphrase_retrieval: ParaphraseRetrieval | None = None

    @classmethod
    def from_dict(cls, entries: dict[str, dict[str, Any]]) -> Forgetting:
        lm_eval, heldout, retrieval = (entries.get(name) for name in ("lm_eval", "heldout_ce", "paraphrase_retrieval"))
        return cls(
            lm_eval=LmEval(**lm_eval | {"tasks": tuple(lm_eval["tasks"])}) if lm_eval else None,
            heldout_ce=HeldoutCE(**heldout) if heldout else None,
            paraphrase_retrieval=ParaphraseRetrieval(**retrieval) if retrieval else None,
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The measures asked for, as in the config (absent ones left out, not ``null``)."""
        return {field.name: asdict(value) for field in fields(self) if (value := getattr(self, field.name)) is not None}

    def __bool__(self) -> bool:
        return bool(self.to_dict())


@dataclass(frozen=True)
class TrainJob:
    """Everything one train job needs: the model and how to load it, the settings its points share, the tasks
    and forgetting measures, and its grid points (each writes its own record)."""

    model: str
    checkpoint: str
    """Where the model is loaded from: a built or cached checkpoint folder, or the config's ``path``."""
    dtype: str
    device: str
    alpha: float
    dropout: float
    target_modules: tuple[str, ...]
    source_tasks: tuple[str, ...]
    hub_tasks: dict[str, dict[str, Any]]
    """Target task name -> its HubTask fields, for this job's tasks that are not embedded."""
    forgetting: Forgetting
    data: dict[str, int]
    """Config ``data``: the embedded tasks' seed, split sizes and lengths."""
    eval_batch_size: int
    variant_modules: tuple[str, ...]
    save_adapters: bool
    train: JobTraining
    points: tuple[JobPoint, ...]
    stack: bool = False
    """Config ``jobs.stack``: points that differ only in learning rate train as one computation
    (:mod:`lorabench.stack`). Defaults to False here only so that jobs written before it existed still load."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"forgetting": self.forgetting.to_dict()}

    def to_json(self) -> str:
        """Keys sorted, so equal jobs give equal text (the train rule's tracked param)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, job: dict[str, Any]) -> TrainJob:
        sequences = {"target_modules", "source_tasks", "variant_modules"}
        return cls(**{
            **{key: tuple(value) if key in sequences else value for key, value in job.items()},
            "forgetting": Forgetting.from_dict(job["forgetting"]),
            "train": JobTraining(**job["train"] | {"eval_at": tuple(job["train"]["eval_at"])}),
            "points": tuple(JobPoint(**point) for point in job["points"]),
        })

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls.from_dict(json.loads(text))
