"""Held-out cross-entropy: matches transformers' own loss, ignores padding, and sees the adapter switch."""

from __future__ import annotations

import math

import pytest
import torch
from fixtures_hub import CORPUS, save_tiny_llama
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorabench.evaluation import adapter_disabled
from lorabench.evaluation.perplexity import mean_token_cross_entropy

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France. Water boils at 100 degrees.", "12 + 30 = 42"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("perplexity"))


@pytest.fixture()
def model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir)


@pytest.fixture()
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


def _ce(model, tokenizer, texts=TEXTS, batch_size=2, max_length=64) -> float:
    return mean_token_cross_entropy(model, tokenizer, texts, batch_size, max_length, "cpu")


def test_single_text_equals_transformers_loss(model, tokenizer):
    ids = tokenizer(TEXTS[1], return_tensors="pt").input_ids
    with torch.no_grad():
        expected = float(model(input_ids=ids, labels=ids).loss)
    assert _ce(model, tokenizer, [TEXTS[1]]) == pytest.approx(expected, rel=1e-5)


def test_mean_weighs_tokens_and_ignores_padding_so_batch_size_does_not_matter(model, tokenizer):
    lengths = [len(tokenizer(t).input_ids) - 1 for t in TEXTS]
    per_text = [_ce(model, tokenizer, [t]) for t in TEXTS]
    token_weighted = sum(ce * n for ce, n in zip(per_text, lengths, strict=True)) / sum(lengths)
    for batch_size in (1, 2, 3):
        assert _ce(model, tokenizer, batch_size=batch_size) == pytest.approx(token_weighted, rel=1e-5)


def test_untrained_model_is_near_uniform_and_repeatable(model, tokenizer):
    value = _ce(model, tokenizer)
    assert value == _ce(model, tokenizer)
    assert abs(value - math.log(len(tokenizer))) < 0.5


def test_max_length_truncates(model, tokenizer):
    assert _ce(model, tokenizer, [CORPUS[1]], max_length=4) != _ce(model, tokenizer, [CORPUS[1]], max_length=64)


def test_adapter_disabled_gives_the_base_value_and_mode_is_restored(model, model_dir, tokenizer):
    base_value = _ce(model, tokenizer)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(0)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config)
    tuned.train()
    with adapter_disabled(tuned):
        before = _ce(tuned, tokenizer)
    after = _ce(tuned, tokenizer)
    assert before == pytest.approx(base_value, rel=1e-6)
    assert abs(after - before) > 1e-3
    assert tuned.training


def test_texts_without_a_predicted_token_are_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="nothing to predict"):
        _ce(model, tokenizer, ["a"], max_length=1)
