"""The training loop's batches: tokenized once up front, identical to tokenizing each example alone."""

from __future__ import annotations

import torch

from lorabench.models import character_tokenizer
from lorabench.tasks.algorithmic import AlgorithmicTask
from lorabench.train import IGNORE_INDEX, collate, tokenize_examples


def test_batched_tokenization_equals_one_example_at_a_time() -> None:
    tokenizer = character_tokenizer()
    examples = AlgorithmicTask("reverse", seed=0, sizes=(50, 1, 1)).split("train")
    for (ids, labels), example in zip(tokenize_examples(tokenizer, examples), examples, strict=True):
        prompt = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert ids == prompt + answer
        assert labels == [IGNORE_INDEX] * len(prompt) + answer


def test_collate_pads_right_and_masks_padding_out_of_the_loss() -> None:
    rows = [([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8], [8])]
    batch = collate(rows, pad_token_id=0, device=torch.device("cpu"))
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_max_length_truncates_ids_and_labels_alike() -> None:
    tokenizer = character_tokenizer()
    examples = AlgorithmicTask("copy", seed=1, sizes=(20, 1, 1)).split("train")
    for ids, labels in tokenize_examples(tokenizer, examples, max_length=4):
        assert len(ids) == len(labels) == 4
