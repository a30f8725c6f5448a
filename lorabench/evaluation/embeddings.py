"""Forgetting of an encoder's sentence embeddings: paraphrase retrieval with mean-pooled hidden states.

A sentence-embedding model (all-MiniLM-L6-v2) fine-tuned as a classifier may keep its accuracy on the
new task and lose what it was for: putting sentences that mean the same close together. The probe embeds
both sides of shipped paraphrase pairs the way sentence-transformers does (mean of the last hidden states
over real tokens, then unit length) and counts how often a sentence's nearest neighbour among all the
other side's sentences is its own paraphrase. Measured on the base model and on the fine-tuned one, the
drop is forgetting; it needs only hidden states, so it works for any model and any variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lorabench.train import pad_right


def read_pairs(path: str | Path) -> list[tuple[str, str]]:
    """``(a, b)`` paraphrase pairs from a JSONL file with fields ``a`` and ``b``."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    return [(row["a"], row["b"]) for row in map(json.loads, lines)]


def paraphrase_retrieval(
    model: nn.Module, tokenizer, pairs: list[tuple[str, str]], batch_size: int, device: str
) -> float:
    """Top-1 retrieval accuracy over both directions (a -> b and b -> a); chance is ``1 / len(pairs)``."""
    if len(pairs) < 2:
        raise ValueError("paraphrase retrieval needs two or more pairs")
    first = sentence_embeddings(model, tokenizer, [a for a, _ in pairs], batch_size, device)
    second = sentence_embeddings(model, tokenizer, [b for _, b in pairs], batch_size, device)
    similarity = first @ second.T
    truth = torch.arange(len(pairs))
    hits = (similarity.argmax(1) == truth).sum() + (similarity.argmax(0) == truth).sum()
    return hits.item() / (2 * len(pairs))


@torch.no_grad()
def sentence_embeddings(model: nn.Module, tokenizer, texts: list[str], batch_size: int, device: str) -> torch.Tensor:
    """Unit-length mean-pooled last hidden states, ``(len(texts), hidden)``, float32 on the CPU.

    Eval mode (no dropout) for the call, the model's mode restored after; padding never enters the mean.
    """
    was_training = model.training
    model.eval()
    try:
        pooled = [
            _mean_pooled(model, tokenizer, texts[i : i + batch_size], device) for i in range(0, len(texts), batch_size)
        ]
    finally:
        model.train(was_training)
    return F.normalize(torch.cat(pooled), dim=-1)


def _mean_pooled(model: nn.Module, tokenizer, texts: list[str], device: str) -> torch.Tensor:
    batch = pad_right(tokenizer(texts)["input_ids"], 0, device)  # any pad id: masked out of attention and the mean
    hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return ((hidden * weights).sum(1) / weights.sum(1)).cpu()
