"""A cheap forgetting measure needing no benchmark download: cross-entropy on held-out source text.

Measure it on the base model (inside :func:`lorabench.evaluation.adapter_disabled`, or before
``Variant.apply``) and on the fine-tuned model; the rise is how much general language modelling was lost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.tasks.base import Example
from lorabench.train import IGNORE_INDEX, collate, pad_right, tokenize_examples


def mean_token_cross_entropy(
    model: nn.Module, tokenizer, texts: list[str], batch_size: int, max_length: int, device: str
) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of ``texts``.

    Each text is truncated to ``max_length`` tokens; the mean weighs tokens, not texts or batches, and
    padding never counts, so the value does not depend on ``batch_size``. Runs in eval mode under
    ``torch.no_grad`` and restores the model's mode, so it is deterministic and safe mid-training.
    """
    if not texts:
        raise ValueError("mean_token_cross_entropy needs at least one text")
    encoded = [tokenizer(text, truncation=True, max_length=max_length).input_ids for text in texts]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(encoded), batch_size):
                loss_sum, tokens = _batch_loss(model, encoded[start : start + batch_size], device)
                total += loss_sum
                count += tokens
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no text has two or more tokens, so there is nothing to predict")
    return total / count


def _batch_loss(model: nn.Module, sequences: list[list[int]], device: str) -> tuple[float, int]:
    """Summed cross-entropy and number of predicted tokens for one right-padded batch."""
    # The pad id is irrelevant (masked out), so any tokenizer works, with or without a pad token.
    batch = pad_right(sequences, 0, device)
    input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    logits = model(**batch).logits[:, :-1].float()
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="sum")
    return float(loss), int((targets != -100).sum())


def answer_cross_entropy(
    model: nn.Module, tokenizer, sets: dict[str, list[Example]], batch_size: int, device: torch.device | str
) -> dict[str, float]:
    """Per set of examples: the mean cross-entropy (nats per token) of each answer and its eos given its prompt,
    under teacher forcing, as training scores them (:func:`lorabench.train.tokenize_examples`).

    A graded forgetting measure of a source task: it rises as the model's belief in the right answer falls, long
    before, and long after, the greedy answer stops matching. Every set's examples share batches (one forward per
    batch); the mean weighs tokens and ignores padding, so it does not depend on ``batch_size``.
    """
    return stacked_answer_cross_entropy(model, tokenizer, sets, batch_size, device, 1)[0]


def stacked_answer_cross_entropy(
    model: nn.Module,
    tokenizer,
    sets: dict[str, list[Example]],
    batch_size: int,
    device: torch.device | str,
    copies: int,
) -> list[dict[str, float]]:
    """:func:`answer_cross_entropy` of each of ``copies`` members of a stacked model (:mod:`lorabench.stack`: each
    batch repeated once per member), in one pass."""
    names = [name for name, examples in sets.items() for _ in examples]
    rows = tokenize_examples(tokenizer, [example for examples in sets.values() for example in examples])
    totals = [dict.fromkeys(sets, 0.0) for _ in range(copies)]
    counts = dict.fromkeys(sets, 0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = collate(rows[start : start + batch_size], tokenizer.pad_token_id, device)
                labels = batch.pop("labels")[:, 1:]
                logits = model(**{key: value.repeat(copies, 1) for key, value in batch.items()}).logits[:, :-1]
                tokens = (labels != IGNORE_INDEX).sum(1).tolist()
                for name, n in zip(names[start : start + batch_size], tokens, strict=True):
                    counts[name] += n
                for total, part in zip(totals, logits.float().chunk(copies), strict=True):
                    losses = F.cross_entropy(part.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
                    for name, loss in zip(names[start : start + batch_size], losses.sum(1).tolist(), strict=True):
                        total[name] += loss
    finally:
        model.train(was_training)
    return [{name: total[name] / counts[name] for name in sets} for total in totals]
