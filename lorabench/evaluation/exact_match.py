"""Task accuracy: exact match of greedy generation (the embedded suite's accuracy and forgetting measure), or
for a classification task the share of examples whose argmax class is their label; and, from the same greedy
answers, per-character accuracy, a graded measure that does not turn one wrong character into 0."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from lorabench.tasks.base import Example, Task
from lorabench.train import pad_right


@torch.inference_mode()
def greedy_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int | list[int],
    batch_size: int,
    device: torch.device,
    copies: int = 1,
) -> list[list[str]]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens, for each of
    ``copies`` members of a stacked model (:mod:`lorabench.stack`: each batch repeated once per member).

    ``max_new_tokens``: one budget, or one per prompt, so prompts of tasks with different budgets share batches;
    each continuation is cut at its own budget, which greedy decoding makes the same as generating only that far.
    """
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else max_new_tokens
    answers: list[list[str]] = [[] for _ in range(copies)]
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        batch = {key: value.repeat(copies, 1) for key, value in batch.to(device).items()}
        limits = budgets[start : start + batch_size]
        generated = model.generate(
            **batch,
            max_new_tokens=max(limits),
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        for copy, rows in zip(answers, new_tokens.chunk(copies), strict=True):
            copy.extend(
                tokenizer.batch_decode(
                    [row[:limit] for row, limit in zip(rows, limits, strict=True)], skip_special_tokens=True
                )
            )
    return answers


@torch.inference_mode()
def predicted_labels(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    labels: tuple[str, ...],
    batch_size: int,
    device: torch.device,
    copies: int = 1,
) -> list[list[str]]:
    """The argmax class name of a sequence-classification ``model`` for every example's prompt, for each of
    ``copies`` stacked members (as :func:`greedy_answers`)."""
    prompts = tokenizer([example.prompt for example in examples])["input_ids"]
    predicted: list[list[str]] = [[] for _ in range(copies)]
    for start in range(0, len(prompts), batch_size):
        batch = pad_right(prompts[start : start + batch_size], tokenizer.pad_token_id, device)
        logits = model(**{key: value.repeat(copies, 1) for key, value in batch.items()}).logits
        for copy, rows in zip(predicted, logits.argmax(-1).chunk(copies), strict=True):
            copy.extend(labels[index] for index in rows.tolist())
    return predicted


def char_accuracy(generated: str, answer: str) -> float:
    """Share of character positions where the stripped ``generated`` text agrees with ``answer``, over the longer of
    the two: 1 only for an exact match, 0.8 for one wrong letter of five; characters missing or extra count wrong."""
    generated = generated.strip()
    width = max(len(generated), len(answer))
    return sum(a == b for a, b in zip(generated, answer, strict=False)) / width if width else 1.0  # lengths may differ


@dataclass(frozen=True)
class Scores:
    """One set of examples scored: exact-match (or label) accuracy and mean per-character accuracy (None for a
    classification task, which generates nothing)."""

    accuracy: float
    char_accuracy: float | None


def scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[Hashable, tuple[Task, list[Example]]],
    batch_size: int,
    device: torch.device,
) -> dict[Hashable, Scores]:
    """:class:`Scores` of every ``(task, examples)`` set; the generation tasks' prompts are generated in shared
    batches (one pass for every split and task: a tiny model's generation costs per call, not per prompt)."""
    return stacked_scores(model, tokenizer, sets, batch_size, device, 1)[0]


def stacked_scores(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    sets: dict[Hashable, tuple[Task, list[Example]]],
    batch_size: int,
    device: torch.device,
    copies: int,
) -> list[dict[Hashable, Scores]]:
    """:func:`scores` of each of ``copies`` members of a stacked model (:mod:`lorabench.stack`), in one pass."""
    was_training = model.training
    model.eval()
    generating = {key: (task, examples) for key, (task, examples) in sets.items() if task.labels is None}
    prompts = [example.prompt for _, examples in generating.values() for example in examples]
    budgets = [task.max_new_tokens for task, examples in generating.values() for _ in examples]
    answers = [iter(each) for each in greedy_answers(model, tokenizer, prompts, budgets, batch_size, device, copies)]
    result: list[dict[Hashable, Scores]] = [{} for _ in range(copies)]
    for key, (task, examples) in sets.items():
        if task.labels is not None:
            predicted = predicted_labels(model, tokenizer, examples, task.labels, batch_size, device, copies)
            for scored, generated in zip(result, predicted, strict=True):
                scored[key] = Scores(_share(task, generated, examples), None)
            continue
        for scored, answered in zip(result, answers, strict=True):
            generated = [next(answered) for _ in examples]
            chars = sum(
                char_accuracy(text, example.answer) for text, example in zip(generated, examples, strict=True)
            ) / len(examples)
            scored[key] = Scores(_share(task, generated, examples), chars)
    model.train(was_training)
    return result


def _share(task: Task, generated: list[str], examples: list[Example]) -> float:
    return sum(task.score(text, example) for text, example in zip(generated, examples, strict=True)) / len(examples)


def accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    batch_size: int,
    device: torch.device,
) -> float:
    """Fraction of ``examples`` whose greedy answer (or predicted label) the task scores as a match."""
    return scores(model, tokenizer, {task.name: (task, examples)}, batch_size, device)[task.name].accuracy
