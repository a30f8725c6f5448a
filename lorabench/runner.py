"""One train job: the grid points of one model that its config ``jobs.batch`` runs in one process (by default
every variant, rank, learning rate and task of one seed).

Each grid point loads its model afresh, is measured, and writes its own record as soon as it ends.
A grid point that raises or diverges is recorded with that status instead of stopping the job, so
one bad run never takes the grid down; a finished record is also kept where Snakemake does not delete it
(:mod:`lorabench.kept`), so a job re-run after an interrupt or failure trains only the points it lacks.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from lorabench import kept, records, stack
from lorabench.devices import device_info, select_device
from lorabench.evaluation.exact_match import Scores, scores, stacked_scores
from lorabench.evaluation.perplexity import stacked_answer_cross_entropy
from lorabench.evaluation.weights import base_vectors, weight_forgetting
from lorabench.job import Forgetting, GridPoint, TrainJob
from lorabench.measure import storage_addresses, variant_state_bytes
from lorabench.models import load, target_weights, task_head
from lorabench.pretrain import embedded_tasks
from lorabench.provenance import train_code
from lorabench.tasks.base import Task
from lorabench.train import TokenizedExample, TrainOutcome, encode_batch, tokenize_examples, train
from lorabench.variants import load_modules
from lorabench.variants.base import Variant

log = logging.getLogger(__name__)


def run_job(job: TrainJob, threads: int | None = None, inputs: list[str] | None = None) -> None:
    """Run every grid point of ``job`` (built by :func:`lorabench.stages.train_job`) on ``threads`` CPU threads.

    A target task whose data cannot be loaded fails its own points only, naming the missing files; a base model
    that cannot be loaded or measured fails every point. Either way each point gets a record that says why.
    ``inputs``: the files the pipeline gave the job; given, finished records are kept and a point with a kept
    record for the same settings, code and inputs is restored instead of trained (:mod:`lorabench.kept`).
    """
    load_modules(list(job.variant_modules))  # the user's variants: registered here as on the host
    keys = _kept_keys(job, inputs) if inputs is not None else {}
    todo = [point for point in job.points if not _restored(point, keys)]  # the job's code hash stays the whole job's
    if not todo:
        return
    if threads:
        torch.set_num_threads(threads)
    device = select_device(job.device)
    tasks = _job_tasks(job)
    unloadable = _unloadable_targets(job, tasks)
    tasks = {name: task for name, task in tasks.items() if name not in unloadable}
    points = [point for point in todo if point.task not in unloadable]
    _record_failures(job, [p for p in todo if p.task in unloadable], device, unloadable.get)
    if not points:
        return
    try:
        base = _measure_base(job, tasks, device, points[0].task)
    except Exception:  # e.g. a hub name not resolvable here: every point gets a failed record that says so
        error = f"{_model_problem(job.checkpoint)}:\n{traceback.format_exc(limit=-8)}"
        _record_failures(job, points, device, lambda task: error)
        return
    for group in _stacks(points) if job.stack else [[point] for point in points]:
        ran = (
            run_stack(job, group, tasks, base, device)
            if len(group) > 1
            else [run_point(job, group[0], tasks, base, device)]
        )
        for point, record in zip(group, ran, strict=True):
            if keys:
                kept.keep(record, point, keys[point.record])
            else:
                records.write(record, Path(point.record))
            log.info("%s: %s", record["run_id"], record["status"])


def _stacks(points: list[GridPoint]) -> list[list[GridPoint]]:
    """``points`` grouped by all but learning rate (config ``jobs.stack``), in the job's order. One seed: its
    points draw the same batches, so the stack's batch is each one's, unpadded (padding a member's rows to another
    seed's longer ones would change the rounding of its attention)."""
    groups: dict[tuple, list[GridPoint]] = {}
    for point in points:
        groups.setdefault((point.variant, point.rank, point.task, point.seed), []).append(point)
    return list(groups.values())


def _kept_keys(job: TrainJob, inputs: list[str]) -> dict[str, str]:
    """Each point's record path -> its key in the kept store (:func:`lorabench.kept.key`)."""
    code, fingerprint = _job_code(job), kept.inputs_fingerprint(inputs)
    return {point.record: kept.key(job, point, code, fingerprint) for point in job.points}


def _restored(point: GridPoint, keys: dict[str, str]) -> bool:
    """Whether ``point``'s kept record was put back in place (then it is not trained again)."""
    if point.record not in keys or (record := kept.restore(point, keys[point.record])) is None:
        return False
    log.info(
        "%s: %s, restored from %s (trained before)",
        record["run_id"],
        record["status"],
        kept.kept_path(point, keys[point.record]),
    )
    return True


def _record_failures(job: TrainJob, points: list[GridPoint], device: torch.device, error: Callable[[str], str]) -> None:
    """A ``failed`` record for each of ``points``, with ``error(task)`` as the reason."""
    for point in points:
        record = _empty_record(job, point, None, device)
        record["error"] = error(point.task)
        log.error("%s failed: %s", record["run_id"], record["error"])
        records.write(record, Path(point.record))


def _model_problem(checkpoint: str) -> str:
    """Why the base model could not be used, as far as can be told without the traceback."""
    where = (
        "a folder here"
        if Path(checkpoint).is_dir()
        else "not a folder here (relative to the working directory), so read as a hub name, which needs network or "
        "the Hugging Face cache"
    )
    return f"the base model {checkpoint!r} ({where}) could not be loaded or measured"


def _unloadable_targets(job: TrainJob, tasks: dict[str, Task]) -> dict[str, str]:
    """Target task -> why its data cannot be loaded (missing files named first), for the job's tasks that fail."""
    problems = {}
    for name in dict.fromkeys(point.task for point in job.points):
        try:
            tasks[name].split("train")  # loads every split of a hub task; an embedded task generates its own
        except Exception as error:
            files = (job.hub_tasks.get(name, {}).get("data_files") or {}).values()
            missing = [path for path in files if not Path(path).exists()]
            where = f"missing data file(s) {missing} (relative to {Path.cwd()})" if missing else "data not loadable"
            problems[name] = f"task {name!r}: {where}: {type(error).__name__}: {error}"
    return problems


def _job_tasks(job: TrainJob) -> dict[str, Task]:
    """The source tasks and the target tasks of this job's points: embedded by name, hub tasks from their fields."""
    from lorabench.tasks.hub import HubTask

    hub = job.hub_tasks
    targets = list(dict.fromkeys(point.task for point in job.points))
    embedded = [name for name in [*job.source_tasks, *targets] if name not in hub]
    tasks: dict[str, Task] = {task.name: task for task in embedded_tasks(list(dict.fromkeys(embedded)), job.data)}
    tasks |= {name: HubTask.from_dict(fields) for name, fields in hub.items() if name in targets}
    return tasks


def _forgetting_measures(
    settings: Forgetting, model: torch.nn.Module, tokenizer, device: torch.device
) -> dict[str, float]:
    """The config's ``forgetting`` measures of ``model`` as it is now: ``lm_eval__<task>``, ``heldout_ce`` and
    ``paraphrase_retrieval``."""
    measured: dict[str, float] = {}
    if lm_eval := settings.lm_eval:
        from lorabench.evaluation.lm_eval import lm_eval_scores

        scores = lm_eval_scores(
            model, tokenizer, list(lm_eval.tasks), lm_eval.include_path, lm_eval.limit, lm_eval.batch_size, str(device)
        )
        measured |= {f"lm_eval__{task}": score for task, score in scores.items()}
    if heldout := settings.heldout_ce:
        from lorabench.evaluation.perplexity import mean_token_cross_entropy

        texts = heldout_texts(heldout.texts, heldout.n)
        measured["heldout_ce"] = mean_token_cross_entropy(
            model, tokenizer, texts, heldout.batch_size, heldout.max_length, str(device)
        )
    if retrieval := settings.paraphrase_retrieval:
        from lorabench.evaluation.embeddings import paraphrase_retrieval, read_pairs

        measured["paraphrase_retrieval"] = paraphrase_retrieval(
            model, tokenizer, read_pairs(retrieval.pairs), retrieval.batch_size, str(device)
        )
    return measured


def heldout_texts(path: str, n: int) -> list[str]:
    """The first ``n`` texts of a .jsonl file (field ``text``) or a text file (one per non-empty line)."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if path.endswith(".jsonl"):
        lines = [json.loads(line)["text"] for line in lines]
    return lines[:n]


def _prefixed(measured: dict[str, float], when: str) -> dict[str, float]:
    """``lm_eval__<task>`` -> ``lm_eval_<when>__<task>``; ``heldout_ce`` -> ``heldout_ce_<when>`` (flat extras)."""
    return {
        (f"lm_eval_{when}__{key.removeprefix('lm_eval__')}" if key.startswith("lm_eval__") else f"{key}_{when}"): value
        for key, value in measured.items()
    }


LOSS_MEASURES = ("heldout_ce",)
"""Forgetting measures where lower is better, in nats per token: their increase is a part of the graded
cross-entropy measure (:func:`forgetting_of`); every other measure is a score in [0, 1]."""


def _benchmark_drops(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Every score measure (``lm_eval__<task>``, ``paraphrase_retrieval``) -> before - after: forgetting on a
    benchmark, like a source task's accuracy drop, so real-model configs (no source tasks) get the same
    ``forgetting`` columns, figures and sentences. Losses rise instead (:func:`_cross_entropies`)."""
    return {key: before[key] - after[key] for key in after if key not in LOSS_MEASURES and key in before}


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a model (:func:`_evaluate`): the target's accuracy and every forgetting measure's scores."""

    target: dict[str, Scores]
    """Split (``test``, ``validation``) -> the target task's scores; for the base model instead, every generation
    task (source and target) -> its test scores."""
    source: dict[str, Scores]
    """Source task -> its test split's exact-match and per-character accuracy."""
    source_ce: dict[str, float]
    """Source task -> mean token cross-entropy of its test answers under teacher forcing (nats)."""
    benchmarks: dict[str, float]
    """The config's ``forgetting`` measures (:func:`_forgetting_measures`)."""


def _evaluate(
    job: TrainJob, model: torch.nn.Module, tokenizer, tasks: dict[str, Task], target: Task | None, device: torch.device
) -> Evaluation:
    """Every measure of ``model`` as it is now, the generation of all splits and tasks in shared batches; with
    ``target`` None (the base model) every generation task's test split instead of the target's two splits. The
    model's train/eval mode is restored: mid-training evaluations hand it back to training as they found it."""
    return evaluate_members(job, model, [model], tokenizer, tasks, target, device)[0]


def evaluate_members(
    job: TrainJob,
    model: torch.nn.Module,
    members: list[torch.nn.Module],
    tokenizer,
    tasks: dict[str, Task],
    target: Task | None,
    device: torch.device,
) -> list[Evaluation]:
    """:func:`_evaluate` of each of ``members``, whose generation and answer cross-entropy ``model`` computes in one
    pass for all (a :mod:`lorabench.stack` host, or the one member itself); the config's ``forgetting`` measures
    are taken of each member alone."""
    sources = {name: tasks[name] for name in job.source_tasks}
    sets: dict = {(name, "test"): (task, task.split("test")) for name, task in sources.items()}
    if target is None:
        sets |= {(name, "test"): (task, task.split("test")) for name, task in tasks.items() if task.labels is None}
    else:
        sets |= {(None, split): (target, target.split(split)) for split in ("test", "validation")}
    examples = {name: task.split("test") for name, task in sources.items()}
    copies = len(members)
    was_training = model.training
    try:
        scored = stacked_scores(model, tokenizer, sets, job.eval_batch_size, device, copies)
        source_ce = (
            stacked_answer_cross_entropy(model, tokenizer, examples, job.eval_batch_size, device, copies)
            if examples
            else [{}] * copies
        )
        benchmarks = [
            _forgetting_measures(job.forgetting, member, tokenizer, device) if job.forgetting else {}
            for member in members
        ]
    finally:
        model.train(was_training)
    return [_evaluation(sources, target, *each) for each in zip(scored, source_ce, benchmarks, strict=True)]


def _evaluation(
    sources: dict[str, Task],
    target: Task | None,
    scored: dict,
    source_ce: dict[str, float],
    benchmarks: dict[str, float],
) -> Evaluation:
    if target is None:
        target_scores = {name: value for (name, _), value in scored.items()}
    else:
        target_scores = {split: scored[None, split] for split in ("test", "validation")}
    return Evaluation(target_scores, {name: scored[name, "test"] for name in sources}, source_ce, benchmarks)


@dataclass(frozen=True)
class BaseMeasures:
    """What every grid point of a job compares against, measured once on the base model, and the rows it replays."""

    evaluation: Evaluation
    """Its ``target`` maps every generation task to its test scores (a classification task's is its point's: the
    head is new)."""
    uniform_ce: float
    """ln |V|: the cross-entropy of a uniform guess over the model's vocabulary, the answer cross-entropy at which
    nothing of a source task is left (the graded measure's ceiling)."""
    weights: dict[str, torch.Tensor]
    """The targeted layers' weights, ``(m, n)``, on the CPU: the reference of weight-space forgetting."""
    weight_vectors: dict[str, torch.Tensor]
    """:attr:`weights`' left singular vectors (:func:`lorabench.evaluation.weights.base_vectors`), on the CPU:
    computed before the job's first run, so every run's CPU peak RSS holds them alike."""
    replay: list[TokenizedExample]
    """The source tasks' train examples, tokenized once per job (a run draws a few hundred of them): the pool of
    ``train.replay``; empty when it is 0."""

    def accuracy(self, task: str) -> float | None:
        scored = self.evaluation.target.get(task)
        return None if scored is None else scored.accuracy


@contextmanager
def _logged(what: str) -> Iterator[None]:
    """Log ``what`` as it starts and with its duration as it ends: an evaluation can take minutes (lm-eval tasks,
    large splits) while the training progress bar stands still, and the job log should show the job alive."""
    started = time.perf_counter()
    log.info("%s started", what)
    yield
    log.info("%s done in %.1f s", what, time.perf_counter() - started)


def _measure_base(job: TrainJob, tasks: dict[str, Task], device: torch.device, warm_up: str) -> BaseMeasures:
    """Measure the base model once per job: the numbers are the same for all of its points.

    Also runs one forward and backward pass, so one-time start-up allocations (autograd engine,
    kernels' workspaces) land before the first grid point's measured training, not inside it.
    """
    first = tasks[warm_up]
    model, tokenizer = load(job.checkpoint, dtype=getattr(torch, job.dtype), labels=first.labels)
    model.to(device)
    examples = first.split("train")[: job.train.batch_size]
    model(**encode_batch(tokenizer, examples, device, labels=first.labels)).loss.backward()
    model.zero_grad(set_to_none=True)
    weights = {name: w.cpu() for name, w in target_weights(model, list(job.target_modules)).items()}
    with _logged("base model: evaluation"):
        evaluation = _evaluate(job, model, tokenizer, tasks, None, device)
    pool = [example for name in job.source_tasks for example in tasks[name].split("train")] if job.train.replay else []
    return BaseMeasures(
        evaluation,
        math.log(model.config.vocab_size),
        weights,
        base_vectors(weights),
        tokenize_examples(tokenizer, pool) if pool else [],
    )


def forgetting_of(base: BaseMeasures, after: Evaluation) -> dict[str, Any]:
    """The record's ``forgetting``: exact-match drops per source task and benchmark drops (``per_task``, ``mean``),
    and the graded measures (``graded``): per-character accuracy drop, and cross-entropy increase (each source
    task's answers, and the held-out text where the config measures it: ``heldout_ce``). Each measure carries its
    ``ceiling``, its mean when everything is forgotten (score 0; a uniform guess over the vocabulary for a
    cross-entropy), against which the report judges whether a measure is saturated."""
    before = base.evaluation
    exact = {name: before.source[name].accuracy - scored.accuracy for name, scored in after.source.items()}
    exact |= _benchmark_drops(before.benchmarks, after.benchmarks)
    exact_ceiling = [before.source[name].accuracy for name in after.source]
    exact_ceiling += [before.benchmarks[key] for key in exact if key not in after.source]
    chars = {name: before.source[name].char_accuracy - scored.char_accuracy for name, scored in after.source.items()}
    ce_before, ce_after = _cross_entropies(before), _cross_entropies(after)
    ce = {name: value - ce_before[name] for name, value in ce_after.items() if name in ce_before}
    return {
        **_measure(exact, exact_ceiling),
        "graded": {
            "char_accuracy_drop": _measure(chars, [before.source[name].char_accuracy for name in chars]),
            "ce_increase": _measure(ce, [base.uniform_ce - ce_before[name] for name in ce]),
        },
    }


def _cross_entropies(evaluation: Evaluation) -> dict[str, float]:
    """Each source task's answer cross-entropy and each :data:`LOSS_MEASURES` measured (nats per token)."""
    losses = {key: evaluation.benchmarks[key] for key in LOSS_MEASURES if key in evaluation.benchmarks}
    return evaluation.source_ce | losses


def _measure(per_task: dict[str, float], ceilings: list[float]) -> dict[str, Any]:
    """``mean`` and ``ceiling`` (means over the tasks; None without any) and ``per_task``."""
    return {"mean": _mean(list(per_task.values())), "per_task": per_task, "ceiling": _mean(ceilings)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_point(
    job: TrainJob, point: GridPoint, tasks: dict[str, Task], base: BaseMeasures, device: torch.device
) -> dict[str, Any]:
    """Train one grid point and return its record; exceptions become a ``failed`` record."""
    record = _started_record(job, point, base, device)
    try:
        _train_and_measure(job, point, tasks, device, record, base)
    except Exception:  # recorded, not raised: one broken run must not take the rest of the grid down
        _failed(record)
    return record


def _failed(record: dict[str, Any]) -> None:
    """Mark ``record`` failed with the exception being handled."""
    record["status"] = "failed"
    record["error"] = traceback.format_exc(limit=-8)
    log.exception("%s failed", record["run_id"])


@dataclass
class Prepared:
    """A grid point's model, adapted and ready to train (:func:`prepare_point`), and what its record needs later."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    variant: Variant
    target: Task
    before: set[int]
    """Storage addresses of the model before the variant applied: the rest is the variant's state."""
    trajectory: list[tuple[int, Evaluation]]


def prepare_point(
    job: TrainJob, point: GridPoint, tasks: dict[str, Task], device: torch.device, record: dict[str, Any]
) -> Prepared:
    """Load ``point``'s model, seeded, and apply its variant; fills the record's parameter counts."""
    target = tasks[point.task]
    torch.manual_seed(point.seed)  # before loading: it also draws a classification task's new head
    model, tokenizer = load(job.checkpoint, dtype=getattr(torch, job.dtype), labels=target.labels)
    model.to(device)

    if target.labels is not None:  # base backbone under this point's new head: what its training starts from
        record["target"]["accuracy_before"] = scores(
            model, tokenizer, {0: (target, target.split("test"))}, job.eval_batch_size, device
        )[0].accuracy
    variant = job.variant(point).build(
        point.rank, job.alpha, job.target_modules, seed=point.seed, dropout=job.dropout, total_steps=job.train.steps
    )
    head = task_head(model) if target.labels is not None else []
    before = storage_addresses([*model.parameters(), *model.buffers()])
    model = variant.apply(model).to(device)
    for parameter in head:  # new, so trained by every variant (variants freeze what they do not adapt)
        parameter.requires_grad_(True)
    record["parameters"] = {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }
    return Prepared(model, tokenizer, variant, target, before, [])


def _started_record(job: TrainJob, point: GridPoint, base: BaseMeasures, device: torch.device) -> dict[str, Any]:
    record = _empty_record(job, point, base, device)
    record["extra"] |= _prefixed(base.evaluation.benchmarks, "before")
    return record


def run_stack(
    job: TrainJob, points: list[GridPoint], tasks: dict[str, Task], base: BaseMeasures, device: torch.device
) -> list[dict[str, Any]]:
    """Train ``points`` (one variant, rank, task and seed; their learning rates differ) as one computation
    (:mod:`lorabench.stack`) and return their records, each marked ``timing.stacked_members``. Points that cannot be
    stacked exactly, or a stack that raises, run alone instead (:func:`run_point`), saying why in the log."""
    started = [_started_record(job, point, base, device) for point in points]
    try:
        if tasks[points[0].task].labels is not None:
            raise _Unstackable("a classification target: its loss and scores are not the stack's")
        runs, members = [], []
        for point, record in zip(points, started, strict=True):
            runs.append(run := prepare_point(job, point, tasks, device, record))
            members.append(
                stack.Member(
                    run.model,
                    run.variant,
                    job.train.settings(point.lr, job.variant(point).optimizer),
                    point.seed,
                    run.variant.parameter_groups(run.model, point.lr),
                )
            )
        if problem := stack.stack_problem(members):
            raise _Unstackable(problem)
        _train_stacked(job, runs, members, tasks, base, device)
    except _Unstackable as reason:
        log.info("%s: run alone, not stacked: %s", ", ".join(r["run_id"] for r in started), reason)
        return [run_point(job, point, tasks, base, device) for point in points]
    except Exception:  # a stack must never cost a grid point its record: each runs alone instead
        log.exception("the stack of %s failed; its points run alone", ", ".join(r["run_id"] for r in started))
        return [run_point(job, point, tasks, base, device) for point in points]
    for point, record, run, member in zip(points, started, runs, members, strict=True):
        try:
            finish_point(job, point, record, base, run, member.outcome)
        except Exception:  # as in run_point: this member's record says so, the others are unharmed
            _failed(record)
        record["timing"]["stacked_members"] = len(points)
    return started


class _Unstackable(Exception):
    """Why points of a job run alone though ``jobs.stack`` is set."""


def _train_stacked(
    job: TrainJob,
    runs: list[Prepared],
    members: list[stack.Member],
    tasks: dict[str, Task],
    base: BaseMeasures,
    device: torch.device,
) -> None:
    """Train and evaluate the stack, every evaluation (mid-training and final) in one pass for all members."""
    host = stack.build_host(members)
    tokenizer, target = runs[0].tokenizer, runs[0].target

    def evaluate(steps_done: int, active: list[int]) -> None:
        stack.set_active(host, active)
        with _logged(f"a stack of {len(active)}: evaluation after step {steps_done}"):
            evaluations = evaluate_members(job, host, [runs[i].model for i in active], tokenizer, tasks, target, device)
        for index, evaluation in zip(active, evaluations, strict=True):
            runs[index].trajectory.append((steps_done, evaluation))

    stack.train_stack(host, members, tokenizer, target.split("train"), device, evaluate, base.replay)
    if finished := [index for index, member in enumerate(members) if member.outcome.status == "ok"]:
        evaluate(job.train.steps, finished)


def _train_and_measure(
    job: TrainJob,
    point: GridPoint,
    tasks: dict[str, Task],
    device: torch.device,
    record: dict[str, Any],
    base: BaseMeasures,
) -> None:
    run = prepare_point(job, point, tasks, device, record)

    def evaluate(steps_done: int) -> None:  # of the model as it is when called
        with _logged(f"{record['run_id']}: evaluation after step {steps_done}"):
            run.trajectory.append((steps_done, _evaluate(job, run.model, run.tokenizer, tasks, run.target, device)))

    outcome = train(
        run.model,
        run.tokenizer,
        run.target.split("train"),
        job.train.settings(point.lr, job.variant(point).optimizer),
        point.seed,
        device,
        after_step=run.variant.after_step,
        before_step=run.variant.transform_gradients,
        description=record["run_id"],
        labels=run.target.labels,
        parameter_groups=run.variant.parameter_groups(run.model, point.lr),
        evaluate=evaluate,
        replay=base.replay,
    )
    if outcome.status == "ok":
        evaluate(job.train.steps)
    finish_point(job, point, record, base, run, outcome)


def finish_point(
    job: TrainJob, point: GridPoint, record: dict[str, Any], base: BaseMeasures, run: Prepared, outcome: TrainOutcome
) -> None:
    """Fill ``record`` from a trained point: its training, and when it ended ``ok``, its final evaluation (the
    last of ``run.trajectory``), forgetting and what its variant adds."""
    model, variant = run.model, run.variant
    outcome.account["variant_state"] = variant_state_bytes(model, run.before)
    _record_training(record, outcome)
    record["trajectory"] = _trajectory(base, run.trajectory)
    if outcome.status != "ok":
        return
    record["extra"] |= variant.record_extra(model)
    if job.save_adapters:
        variant.save(model, adapter_directory(point.record))
    final = run.trajectory[-1][1]
    record["target"]["accuracy_after"] = final.target["test"].accuracy
    record["extra"]["validation_accuracy"] = final.target["validation"].accuracy
    for name, scored in final.source.items():
        record["source"][name] |= {
            "accuracy_after": scored.accuracy,
            "char_accuracy_after": scored.char_accuracy,
            "ce_after": final.source_ce[name],
        }
    record["forgetting"] = forgetting_of(base, final)
    if job.forgetting:
        record["extra"] |= _prefixed(final.benchmarks, "after")
    record["extra"] |= _weight_forgetting(base, variant.merge(model), list(job.target_modules))


def _trajectory(base: BaseMeasures, points: list[tuple[int, Evaluation]]) -> dict[str, list]:
    """The record's ``trajectory``: target accuracy (validation, test) and each forgetting measure's mean after
    each evaluated step count, in training order."""
    forgetting = [forgetting_of(base, evaluation) for _, evaluation in points]
    return {
        "step": [steps for steps, _ in points],
        "target_validation": [evaluation.target["validation"].accuracy for _, evaluation in points],
        "target_test": [evaluation.target["test"].accuracy for _, evaluation in points],
        "forgetting": [measured["mean"] for measured in forgetting],
        "forgetting_char": [measured["graded"]["char_accuracy_drop"]["mean"] for measured in forgetting],
        "forgetting_ce": [measured["graded"]["ce_increase"]["mean"] for measured in forgetting],
    }


def adapter_directory(record: str) -> Path:
    """Where ``train.save_adapters`` keeps a run's trained state: its record's path under ``results/adapters``."""
    return Path(record.replace("/runs/", "/adapters/", 1)).with_suffix("")


def _weight_forgetting(base: BaseMeasures, merged: torch.nn.Module, target_modules: list[str]) -> dict[str, float]:
    """Intruder dimensions and effective rank of dW, averaged over the adapted layers (see evaluation.weights)."""
    tuned = {name: w.cpu() for name, w in target_weights(merged, target_modules).items()}
    measured = weight_forgetting(base.weights, tuned, vectors=base.weight_vectors)
    return {key: measured[key] for key in ("intruder_dimensions_mean", "delta_effective_rank_mean")}


def _record_training(record: dict[str, Any], outcome: TrainOutcome) -> None:
    record["status"] = outcome.status
    if (diverged := outcome.divergence) is not None:
        record["divergence"] = {
            "step": diverged.step,
            "loss": _finite_or_none(diverged.loss),
            "reason": diverged.reason,
        }
    record["loss_curve"] = {"step": outcome.steps, "loss": [_finite_or_none(x) for x in outcome.losses]}
    record["timing"] = {
        "method": outcome.clock.method,
        "train_seconds": outcome.train_seconds,
        "eval_seconds": outcome.eval_seconds,
        **outcome.clock.summary(),
        "steps_done": len(outcome.clock.step_seconds),
    }
    record["memory"] = {
        "method": outcome.memory.method,
        "peak_mb": outcome.peak_mb,
        "baseline_mb": outcome.memory.baseline_mb,
        "account": _memory_account(outcome.account),
    }


ACCOUNT_PARTS = ("trainable_parameters", "gradients", "optimizer_state", "saved_activations", "variant_state")


def _memory_account(counted: dict[str, int]) -> dict[str, int] | None:
    """The byte counts of :data:`ACCOUNT_PARTS` and their total; None when training stopped before its first
    optimizer step."""
    if not all(part in counted for part in ACCOUNT_PARTS):
        return None
    return {part: counted[part] for part in ACCOUNT_PARTS} | {"total": sum(counted[part] for part in ACCOUNT_PARTS)}


def _finite_or_none(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def _job_code(job: TrainJob) -> str:
    """The hash of the code this job runs, for every variant of its points: the train rule's ``code`` param (computed
    once per process by :func:`lorabench.provenance.train_code`; every record of the job carries it)."""
    return train_code(*(job.variants[name].cls for name in sorted({point.variant for point in job.points})))


def _empty_record(job: TrainJob, point: GridPoint, base: BaseMeasures | None, device: torch.device) -> dict[str, Any]:
    before = base.evaluation if base else Evaluation({}, {}, {}, {})
    source = {
        name: {
            "accuracy_before": before.source[name].accuracy,
            "accuracy_after": None,
            "char_accuracy_before": before.source[name].char_accuracy,
            "char_accuracy_after": None,
            "ce_before": before.source_ce[name],
            "ce_after": None,
        }
        if name in before.source
        else {"accuracy_before": None, "accuracy_after": None}
        for name in job.source_tasks
    }
    variant = job.variant(point)
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": point.run_id,
        "status": "failed",
        "error": None,
        "divergence": None,
        "grid": asdict(point),
        "hyperparameters": {
            "alpha": job.alpha,
            "dropout": job.dropout,
            "target_modules": list(job.target_modules),
            "data": job.data,
            "checkpoint": job.checkpoint,
            "dtype": job.dtype,
            "eval_batch_size": job.eval_batch_size,
            "uses": variant.uses,
            "variant_options": variant.options,
            "train": asdict(job.train) | {"optimizer": variant.optimizer},
            "variant_modules": list(job.variant_modules),
            "save_adapters": job.save_adapters,
        },
        "parameters": {"trainable": None, "total": None},
        "timing": {
            "method": "perf_counter",
            "train_seconds": None,
            "step_ms_median": None,
            "step_ms_mean": None,
            "steps_done": 0,
        },
        "memory": {"method": "cpu_peak_rss", "peak_mb": None, "baseline_mb": None, "account": None},
        "loss_curve": {"step": [], "loss": []},
        "target": {
            "task": point.task,
            "accuracy_before": base.accuracy(point.task) if base else None,
            "accuracy_after": None,
        },
        "source": source,
        "forgetting": {"mean": None, "per_task": {}},
        "extra": {},
        "environment": records.environment(device_info(device), _job_code(job)),
    }
