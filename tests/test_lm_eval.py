"""lm-eval on the in-memory tiny Llama and its PEFT wrapper, with a local multiple-choice task folder.

The harness's number is checked against an independent log-likelihood computation on the same model,
so a harness that silently loaded other weights (or ignored the adapter) would fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_hub import MULTIPLE_CHOICE_ROWS, MULTIPLE_CHOICE_TASK, save_tiny_llama, write_multiple_choice_task
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorabench.evaluation import adapter_disabled
from lorabench.evaluation.lm_eval import lm_eval_scores, main_metric


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    return save_tiny_llama(root / "model"), write_multiple_choice_task(root / "tasks")


@pytest.fixture()
def tokenizer(assets):
    return AutoTokenizer.from_pretrained(assets[0])


def _base(assets):
    return AutoModelForCausalLM.from_pretrained(assets[0])


def _peft(assets):
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(1)  # a seed whose adapter changes the tiny task's acc_norm
    return get_peft_model(_base(assets), config)


def _scores(model, tokenizer, assets) -> dict[str, float]:
    return lm_eval_scores(model, tokenizer, [MULTIPLE_CHOICE_TASK], str(assets[1]), None, 4, "cpu")


@torch.no_grad()
def _reference_acc_norm(model, tokenizer) -> float:
    """acc_norm by hand: argmax of (sum log p(" choice" | question)) / len(choice), as lm-eval defines it."""
    hits = []
    for row in MULTIPLE_CHOICE_ROWS:
        context = tokenizer(row["question"]).input_ids
        scores = []
        for choice in row["choices"]:
            whole = tokenizer(row["question"] + " " + choice).input_ids
            logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            scores.append(sum(float(logits[i - 1, whole[i]]) for i in range(len(context), len(whole))) / len(choice))
        hits.append(int(np.argmax(scores)) == row["label"])
    return float(np.mean(hits))


def test_base_model_score_matches_a_hand_computed_acc_norm_and_leaves_caller_state_alone(assets, tokenizer):
    model = _base(assets)
    tokenizer.pad_token = None  # lm-eval would set one on the object it gets
    torch.manual_seed(11)
    expected_draw = torch.rand(1)
    torch.manual_seed(11)
    scores = _scores(model, tokenizer, assets)
    assert torch.rand(1) == expected_draw, "lm-eval's reseeding must not leak into the training stream"
    assert tokenizer.pad_token is None
    assert scores == {MULTIPLE_CHOICE_TASK: pytest.approx(_reference_acc_norm(model, tokenizer))}


def test_peft_model_is_scored_with_its_adapter_and_without_it_inside_adapter_disabled(assets, tokenizer):
    model = _peft(assets)
    model.train()
    with adapter_disabled(model):
        before = _scores(model, tokenizer, assets)[MULTIPLE_CHOICE_TASK]
        expected_before = _reference_acc_norm(model, tokenizer)
    after = _scores(model, tokenizer, assets)[MULTIPLE_CHOICE_TASK]
    expected_after = _reference_acc_norm(model, tokenizer)
    assert expected_before != expected_after, "the planted adapter should change the tiny task's answers"
    assert (before, after) == (pytest.approx(expected_before), pytest.approx(expected_after))
    assert before == pytest.approx(_reference_acc_norm(_base(assets), tokenizer))
    assert model.training, "the caller's train mode must survive evaluation"


def test_adapter_disabled_refuses_a_plain_model(assets):
    with pytest.raises(TypeError, match="not a PEFT model"):
        with adapter_disabled(_base(assets)):
            pass


@pytest.mark.parametrize(
    "result, expected",
    [
        ({"acc,none": 0.5, "acc_norm,none": 0.75, "acc_norm_stderr,none": 0.1}, 0.75),
        ({"alias": "winogrande", "acc,none": 0.6, "acc_stderr,none": 0.1}, 0.6),
        ({"exact_match,strict-match": 0.2, "exact_match,flexible-extract": 0.3}, 0.2),
    ],
)
def test_main_metric_prefers_acc_norm_then_acc_then_exact_match(result, expected):
    assert main_metric("t", result) == expected


def test_main_metric_names_the_task_when_none_is_reported():
    with pytest.raises(ValueError, match="'t' reports none of"):
        main_metric("t", {"bleu,none": 3.0})
