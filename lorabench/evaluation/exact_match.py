"""Task accuracy: exact match of greedy generation (the embedded suite's accuracy and forgetting measure), or
for a classification task the share of examples whose argmax class is their label."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from lorabench.tasks.base import Example, Task
from lorabench.train import pad_right


@torch.inference_mode()
def greedy_answers(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), decoded without special tokens."""
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        batch = batch.to(device)
        generated = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


@torch.inference_mode()
def predicted_labels(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    labels: tuple[str, ...],
    batch_size: int,
    device: torch.device,
) -> list[str]:
    """The argmax class name of a sequence-classification ``model`` for every example's prompt."""
    prompts = tokenizer([example.prompt for example in examples])["input_ids"]
    predicted: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = pad_right(prompts[start : start + batch_size], tokenizer.pad_token_id, device)
        logits = model(**batch).logits
        predicted.extend(labels[index] for index in logits.argmax(-1).tolist())
    return predicted


def accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: list[Example],
    batch_size: int,
    device: torch.device,
) -> float:
    """Fraction of ``examples`` whose greedy answer (or predicted label) the task scores as a match."""
    was_training = model.training
    model.eval()
    if task.labels is not None:
        generated = predicted_labels(model, tokenizer, examples, task.labels, batch_size, device)
    else:
        prompts = [example.prompt for example in examples]
        generated = greedy_answers(model, tokenizer, prompts, task.max_new_tokens, batch_size, device)
    model.train(was_training)
    hits = sum(task.score(text, example) for text, example in zip(generated, examples, strict=True))
    return hits / len(examples)
