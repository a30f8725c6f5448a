"""What each job of the pipeline runs: a train job (:class:`TrainJob`) of grid points (:class:`GridPoint`) and their
variants (:class:`GridVariant`), a pretrain job (:class:`PretrainJob`) and the cost stage (:class:`CostJob`).
:mod:`lorabench.stages` builds them from the grid; each rule passes its job to the ``lorabench`` command as JSON
(``to_json``) and the command reads it back (``from_json``). These types live here, not in :mod:`lorabench.grid`, so
that the code a train job runs (its hash re-runs it when edited) holds them and not the grid's expansion.

The JSON is the rule's tracked param, so its text (keys sorted) decides which jobs re-run: a field added here
re-runs every job of that kind once. Every setting comes from the validated config, whose schema fills the
defaults; no setting has a default of its own here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from lorabench.train import TrainSettings

if TYPE_CHECKING:
    from lorabench.variants import Variant

RUNS = "results/runs"
RUN_ID = "{model}/{task}/{variant}/r{rank}/lr{lr}/seed{seed}"
"""A run's name: its record's path under :data:`RUNS`, and the record's ``run_id``."""
RECORD = RUNS + "/" + RUN_ID + ".json"
"""A record's path, as a template (the train rule's outputs fill it with wildcards); :func:`record_path` fills it."""


@dataclass(frozen=True)
class GridVariant:
    """One variant of the grid, as every stage reads it: its grid name, the registered variant it runs (``uses``),
    that variant's own options, its optimizer, and the learning rates and ranks the grid sweeps it over.

    Built once per config (:meth:`Grid.variants`); train jobs and the cost stage carry it as JSON."""

    name: str
    uses: str
    options: dict[str, Any]
    optimizer: str
    lrs: tuple[float, ...]
    ranks: tuple[int, ...]
    """The grid's ranks, or ``(0,)`` for a method without a rank (full fine-tuning, PEFT's IA3)."""

    @property
    def cls(self) -> type[Variant]:
        """The registered variant class it runs."""
        from lorabench.variants import get

        return get(self.uses)

    def run_settings(self) -> dict[str, Any]:
        """What each run of it depends on besides its own rank and lr: not the sweep (``lrs``, ``ranks``), so the
        kept store keeps a finished run when the sweep widens (:func:`lorabench.kept.key`)."""
        return {"name": self.name, "uses": self.uses, "options": self.options, "optimizer": self.optimizer}

    def build(
        self,
        rank: int,
        alpha: float,
        target_modules: Iterable[str],
        *,
        seed: int = 0,
        dropout: float = 0.0,
        total_steps: int | None = None,
    ) -> Variant:
        """The variant built as a run at ``rank`` builds it: the one place a config's variant becomes an
        :class:`~lorabench.variants.AdapterSpec` (runs, checks and the cost stage all come here)."""
        from lorabench.variants import AdapterSpec

        return self.cls(
            AdapterSpec(
                rank=rank,
                alpha=alpha,
                target_modules=tuple(target_modules),
                seed=seed,
                dropout=dropout,
                options=self.options,
                total_steps=total_steps,
            )
        )

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> GridVariant:
        """Read back from JSON (lists become tuples)."""
        return cls(**fields | {"lrs": tuple(fields["lrs"]), "ranks": tuple(fields["ranks"])})


def record_path(model: str, task: str, variant: str, rank: int, lr: float, seed: int) -> str:
    """The path of one run's record (:data:`RECORD`), its lr written as :func:`format_lr` writes it."""
    return f"{RUNS}/{run_id(model, task, variant, rank, lr, seed)}.json"


def run_id(model: str, task: str, variant: str, rank: int, lr: float, seed: int) -> str:
    """A run's name (:data:`RUN_ID`): its record's path under :data:`RUNS`, and the record's ``run_id``."""
    return RUN_ID.format(model=model, task=task, variant=variant, rank=rank, lr=format_lr(lr), seed=seed)


@dataclass(frozen=True)
class GridPoint:
    """One grid point: a model, target task, variant (by grid name), rank, learning rate and seed; it writes one
    record, at :attr:`record`."""

    model: str
    task: str
    variant: str
    rank: int
    lr: float
    seed: int

    @property
    def record(self) -> str:
        return record_path(self.model, self.task, self.variant, self.rank, self.lr, self.seed)

    @property
    def run_id(self) -> str:
        return run_id(self.model, self.task, self.variant, self.rank, self.lr, self.seed)


def format_lr(lr: float) -> str:
    """A learning rate as it appears in record paths and wildcards (6 significant digits)."""
    return f"{lr:g}"


class JsonJob:
    """JSON out and back for the jobs: keys sorted, so equal jobs give equal text (a rule's tracked param)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, job: dict[str, Any]) -> Any:
        return cls(**job)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class JobTraining:
    """The training loop's settings shared by every point of a job (config ``train``); each point adds its own
    learning rate and its variant's optimizer (:meth:`settings`)."""

    steps: int
    batch_size: int
    weight_decay: float
    log_every: int
    eval_at: tuple[int, ...]
    """Step counts after which a run evaluates mid-training (config ``train.eval_at``)."""
    replay: float

    def settings(self, lr: float, optimizer: str) -> TrainSettings:
        """The training loop's settings of one run of the job."""
        return TrainSettings(lr=lr, optimizer=optimizer, **asdict(self))


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
class TrainJob(JsonJob):
    """Everything one train job needs: the model and how to load it, the settings its points share, the tasks
    and forgetting measures, its variants, and its grid points (each writes its own record)."""

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
    variants: dict[str, GridVariant]
    """The job's points' variants, by grid name, without their sweep (``lrs``, ``ranks`` empty): each point carries its
    own lr and rank, and a wider sweep changes no finished job's settings."""
    points: tuple[GridPoint, ...]
    stack: bool = False
    """Config ``jobs.stack``: points that differ only in learning rate train as one computation
    (:mod:`lorabench.stack`). Defaults to False here only so that jobs written before it existed still load."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"forgetting": self.forgetting.to_dict()}

    @classmethod
    def from_dict(cls, job: dict[str, Any]) -> TrainJob:
        sequences = {"target_modules", "source_tasks", "variant_modules"}
        return cls(
            **{
                **{key: tuple(value) if key in sequences else value for key, value in job.items()},
                "forgetting": Forgetting.from_dict(job["forgetting"]),
                "train": JobTraining(**job["train"] | {"eval_at": tuple(job["train"]["eval_at"])}),
                "variants": {name: GridVariant.from_dict(fields) for name, fields in job["variants"].items()},
                "points": tuple(GridPoint(**point) for point in job["points"]),
            }
        )

    def variant(self, point: GridPoint) -> GridVariant:
        """``point``'s variant, as the grid runs it."""
        return self.variants[point.variant]


@dataclass(frozen=True)
class PretrainJob(JsonJob):
    """Everything the pretrain job of an embedded model needs (:mod:`lorabench.pretrain`)."""

    architecture: dict[str, Any]
    source_tasks: list[str]
    data: dict[str, int]
    """Config ``data``: the embedded tasks' seed, split sizes and lengths."""
    seed: int
    train: dict[str, Any]
    """Config ``pretrain``'s steps, batch_size and lr."""
    eval_batch_size: int


@dataclass(frozen=True)
class CostJob(JsonJob):
    """What the cost stage measures (:mod:`lorabench.cost`): config ``cost`` and every variant of the grid at its
    ranks, with its optimizer and options."""

    shapes: dict[str, dict[str, int]]
    """Shape set name -> its token counts (``cpu_tokens``, ``cuda_tokens``)."""
    rounds: int
    warmup: int
    target_ranks: list[int]
    target_halfwidth: float
    max_rounds: int
    max_seconds: float
    profile_cpu_peak: bool
    device: str
    alpha: float
    dtype: str
    variant_modules: list[str]
    variants: tuple[GridVariant, ...]

    @classmethod
    def from_dict(cls, job: dict[str, Any]) -> CostJob:
        return cls(**job | {"variants": tuple(GridVariant.from_dict(variant) for variant in job["variants"])})
