"""The training loop shared by pretraining and every fine-tuning run, with its measurements."""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from lorabench.measure import PeakMemory, StepClock, account_after_first_step, saved_activation_bytes
from lorabench.tasks.base import Example

IGNORE_INDEX = -100
DIVERGENCE_FACTOR = 4.0
"""A step's loss above this multiple of the first step's loss means the run blew up."""
UNIFORM_REACHED = 0.98
"""A loss at or above this share of ln|V| (|V| outputs: vocabulary or classes) is no better than a uniform guess."""
UNIFORM_CLEARLY_BELOW = 0.8
"""The uniform-guess rule applies to runs whose first loss is below this share of ln|V|: a new classification head
starts at the uniform guess, and its noise around it is not divergence."""
ENDING_SHARE = 0.1
"""The share of the last steps whose mean loss is the run's end (:func:`ended_above_start`): a mean over several
steps, so one noisy batch neither flags nor clears a run."""
ENDED_ABOVE_FACTOR = 1.2
"""A run whose loss ends above this multiple of its first step's got worse (:func:`ended_above_start`). Not 1: a
run that barely learns ends near its start, and batch noise puts it above: the smoke grid's 48 runs (12 steps of 16
examples, where nothing learns) end at up to 1.079x (resampled on gpt2-tiny), 10 of them above 1x; a run that a
learning rate made worse ends further up (an audit saw lora at lr 1e6 end at 1.37x, recorded ok)."""


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    """``adamw``, or ``sgd`` (plain, no momentum: what docs/variants.md's expected updates assume)."""
    log_every: int = 10
    max_length: int | None = None
    """Truncate longer examples (hub datasets); None keeps every token."""
    eval_at: tuple[int, ...] = ()
    """Step counts after which :func:`train` calls its ``evaluate`` (those below ``steps``; the final evaluation,
    after the last step, is the caller's)."""
    replay: float = 0.0
    """Share of each batch drawn from the replayed (source) examples (:func:`replay_count` of them)."""


@dataclass(frozen=True)
class Divergence:
    """Where and why a run diverged (:func:`divergence`); training stops at that step."""

    step: int
    loss: float
    reason: str


@dataclass
class TrainOutcome:
    status: str = "ok"
    """``ok``, or ``diverged`` (see :attr:`divergence`)."""
    divergence: Divergence | None = None
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    clock: StepClock | None = None
    memory: PeakMemory | None = None
    peak_mb: float | None = None
    train_seconds: float = 0.0
    """Wall-clock of the training loop, the mid-training evaluations (:attr:`eval_seconds`) left out."""
    eval_seconds: float = 0.0
    """Wall-clock of the mid-training evaluations (``TrainSettings.eval_at``)."""
    account: dict[str, int] = field(default_factory=dict)
    """Bytes of what training holds: ``saved_activations`` (before the loop), then ``trainable_parameters``,
    ``gradients`` and ``optimizer_state`` (at the first optimizer step; absent if training stopped before it)."""


TokenizedExample = tuple[list[int], list[int] | int]
"""``(input ids, labels)`` of one example. Generation: ``prompt + answer + eos`` with per-token labels masked
on the prompt. Classification: the prompt with the tokenizer's special tokens, and the class index."""


def tokenize_examples(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[TokenizedExample]:
    """Every example tokenized once, in batched calls: per-step tokenization was ~20% of a tiny run's time.

    With ``labels`` (a classification task) each answer becomes its index in ``labels``.
    """
    if labels is not None:
        prompts = tokenizer([example.prompt for example in examples])["input_ids"]
        return [
            (ids[:max_length], labels.index(example.answer)) for ids, example in zip(prompts, examples, strict=True)
        ]
    prompts = tokenizer([example.prompt for example in examples], add_special_tokens=False)["input_ids"]
    answers = tokenizer([example.answer for example in examples], add_special_tokens=False)["input_ids"]
    tokenized = []
    for prompt, answer in zip(prompts, answers, strict=True):
        answer = answer + [tokenizer.eos_token_id]
        tokenized.append(((prompt + answer)[:max_length], ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]))
    return tokenized


def pad_right(sequences: Sequence[list[int]], pad_token_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """``input_ids`` right-padded to the longest sequence and the ``attention_mask`` that hides the padding.

    Right, not left: an encoder's (BERT's) absolute positions then start at 0 for every sequence.
    """
    width = max(len(ids) for ids in sequences)
    input_ids = torch.tensor([list(ids) + [pad_token_id] * (width - len(ids)) for ids in sequences], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in sequences], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


def collate(rows: Sequence[TokenizedExample], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A right-padded batch: the loss on the answer and eos only, or on the class (an ``int`` label)."""
    batch = pad_right([ids for ids, _ in rows], pad_token_id, device)
    if isinstance(rows[0][1], int):
        labels = [label for _, label in rows]
    else:
        width = batch["input_ids"].shape[1]
        labels = [labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in rows]
    return batch | {"labels": torch.tensor(labels, device=device)}


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    device: torch.device,
    max_length: int | None = None,
    labels: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """One training batch of ``examples`` (:func:`tokenize_examples`, :func:`collate`)."""
    return collate(tokenize_examples(tokenizer, examples, max_length, labels), tokenizer.pad_token_id, device)


def make_optimizer(params: list[torch.nn.Parameter] | list[dict], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW, or plain SGD for variants whose theory is stated for SGD (resampled: E[update] = -2 lr G).

    ``params``: parameters, or parameter groups (a variant's :meth:`~lorabench.variants.Variant.parameter_groups`).
    """
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; use adamw or sgd")


def replay_count(settings: TrainSettings) -> int:
    """Replayed examples per batch: ``round(replay x batch_size)``, the rest of the batch is the target task's."""
    return round(settings.replay * settings.batch_size)


def train(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    after_step: Callable[[torch.nn.Module, torch.optim.Optimizer], None] = lambda model, optimizer: None,
    before_step: Callable[[torch.nn.Module, int], None] = lambda model, step: None,
    description: str = "train",
    labels: Sequence[str] | None = None,
    parameter_groups: list[dict] | None = None,
    evaluate: Callable[[int], None] = lambda steps_done: None,
    replay: Sequence[TokenizedExample] = (),
) -> TrainOutcome:
    """The settings' optimizer on ``parameter_groups`` (default: the parameters that require grad); measures
    every step and the phase's peak memory.

    ``labels``: the class names of a classification task (a sequence-classification model), else None.
    ``evaluate(steps_done)``: called after each step count of ``settings.eval_at`` below ``settings.steps``; its
    time is kept out of the step times and ``train_seconds`` (it is ``eval_seconds``) and its memory out of the peak.
    ``replay``: rows of the tasks the model should keep (the source tasks' train splits), tokenized by the caller
    (:func:`tokenize_examples`, once per job: a run draws few of them); each batch mixes in :func:`replay_count`
    of them, drawn by a generator of their own seeded from ``seed``, so the batches depend on the seed and the
    settings only and every variant of a seed sees the same ones.
    """
    optimizer = make_optimizer(parameter_groups or [p for p in model.parameters() if p.requires_grad], settings)
    sampler, replay_sampler = random.Random(seed), random.Random(f"replay:{seed}")
    tokenized = tokenize_examples(tokenizer, examples, settings.max_length, labels)
    replayed = replay_count(settings)
    if replayed and not replay:
        raise ValueError(f"replay {settings.replay} asks for {replayed} replayed examples per batch; none were given")
    replay_rows = list(replay) if replayed else []
    outcome = TrainOutcome(clock=StepClock(device), memory=PeakMemory(device))
    model.train()
    outcome.account["saved_activations"] = _saved_activations(
        model, tokenized + replay_rows, settings.batch_size, tokenizer.pad_token_id, device
    )
    account_after_first_step(optimizer, outcome.account)
    outcome.memory.start()
    loop_clock = StepClock(device)
    loop_clock.start()
    progress = tqdm(range(settings.steps), desc=description, file=sys.stderr, mininterval=2.0, ascii=True)
    initial = math.nan
    step_losses = []
    for step in progress:
        rows = sampler.choices(tokenized, k=settings.batch_size - replayed)
        batch = collate(rows + replay_sampler.choices(replay_rows, k=replayed), tokenizer.pad_token_id, device)
        outcome.clock.start()
        output = model(**batch)
        loss = output.loss.item()
        step_losses.append(loss)
        if step == 0:
            initial = loss
        if reason := divergence(loss, initial, math.log(output.logits.shape[-1])):
            outcome.status, outcome.divergence = "diverged", Divergence(step, loss, reason)
            _log_loss(outcome, step, loss)
            break
        output.loss.backward()
        before_step(model, step)  # a variant's transform_gradients: what the optimizer applies
        optimizer.step()
        after_step(model, optimizer)  # before zero_grad: AdaLoRA's rank allocation reads the gradients
        optimizer.zero_grad(set_to_none=True)
        outcome.clock.stop()
        if step % settings.log_every == 0 or step == settings.steps - 1:
            _log_loss(outcome, step, loss)
            progress.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if step + 1 in settings.eval_at and step + 1 < settings.steps:
            _evaluate_aside(outcome, evaluate, step + 1, device)
    progress.close()
    if outcome.status == "ok" and (reason := ended_above_start(step_losses)):
        outcome.status = "diverged"
        outcome.divergence = Divergence(len(step_losses) - 1, step_losses[-1], reason)
    loop_clock.stop()
    outcome.train_seconds = loop_clock.step_seconds[0] - outcome.eval_seconds
    outcome.peak_mb = outcome.memory.peak_mb()
    return outcome


def _evaluate_aside(
    outcome: TrainOutcome, evaluate: Callable[[int], None], steps_done: int, device: torch.device
) -> None:
    """``evaluate(steps_done)`` with its time and peak memory kept out of training's, and the random state restored
    after it, so a run's training is the same whatever its ``eval_at``."""
    outcome.memory.pause()
    clock = StepClock(device)
    clock.start()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        evaluate(steps_done)
    clock.stop()
    outcome.eval_seconds += clock.step_seconds[0]
    outcome.memory.resume()


def longest_batch(tokenized: Sequence[TokenizedExample], batch_size: int) -> list[TokenizedExample]:
    """``batch_size`` rows of the longest examples, repeated if there are fewer (the loop draws with replacement):
    the widest batch a step can draw, whatever the seed."""
    longest = sorted(tokenized, key=lambda row: len(row[0]), reverse=True)
    return [longest[i % len(longest)] for i in range(batch_size)]


def _saved_activations(
    model: torch.nn.Module,
    tokenized: Sequence[TokenizedExample],
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
) -> int:
    """Activation bytes of one forward on :func:`longest_batch`, a fixed shape so the count is the same for every
    seed; the random state is restored, so dropout draws in training are those of a run without the count."""
    batch = collate(longest_batch(tokenized, batch_size), pad_token_id, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return saved_activation_bytes(model, lambda: model(**batch).loss)


def divergence(loss: float, initial: float, uniform: float) -> str | None:
    """Why a step's ``loss`` means the run diverged, or None: it is not finite; it is above
    :data:`DIVERGENCE_FACTOR` x the ``initial`` (first step's) loss; or it is back at the ``uniform`` guess's loss
    ln|V| (within :data:`UNIFORM_REACHED`) from an initial loss clearly below it (:data:`UNIFORM_CLEARLY_BELOW`).

    The last rule catches blow-ups that saturate instead of overflowing: LoRA at lr 1e30 ends with equal logits,
    exactly ln|V|, which can be under 4x its initial loss.
    """
    if not math.isfinite(loss):
        return f"loss {loss} is not finite"
    if loss > DIVERGENCE_FACTOR * initial:
        return f"loss {loss:.4g} > {DIVERGENCE_FACTOR:g} x the initial loss {initial:.4g}"
    if loss >= UNIFORM_REACHED * uniform and initial < UNIFORM_CLEARLY_BELOW * uniform:
        return f"loss {loss:.4g} is back at the uniform guess ln|V| = {uniform:.4g} from the initial loss {initial:.4g}"
    return None


def _ending(losses: Sequence[float]) -> float:
    """Mean loss of the last :data:`ENDING_SHARE` of ``losses`` (at least the last one)."""
    tail = losses[-max(1, round(ENDING_SHARE * len(losses))) :]
    return sum(tail) / len(tail)


def ended_above_start(losses: Sequence[float]) -> str | None:
    """Why a finished run whose every step passed :func:`divergence` still diverged, or None: its training loss
    ended (:func:`_ending`) above :data:`ENDED_ABOVE_FACTOR` x its first step's, so training made the model worse
    (an audit saw LoRA at lr 1e6 go 2.00 -> 2.74, each step under 4x the first). A run that learns ends well
    below (the default grid's 264 reference runs: at most 0.27x the first loss)."""
    if len(losses) < 2 or (ending := _ending(losses)) <= ENDED_ABOVE_FACTOR * losses[0]:
        return None
    return (
        f"the training loss ended at {ending:.4g} (mean of its last steps), above {ENDED_ABOVE_FACTOR:g} x the "
        f"first step's {losses[0]:.4g}"
    )


def _log_loss(outcome: TrainOutcome, step: int, loss: float) -> None:
    outcome.steps.append(step)
    outcome.losses.append(loss)
