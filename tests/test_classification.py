"""Classification tasks (sentiment on an encoder): labels, batches, argmax accuracy, the head every variant
trains, and the paraphrase-retrieval probe of sentence-embedding forgetting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lorabench.evaluation.embeddings import paraphrase_retrieval, sentence_embeddings
from lorabench.evaluation.exact_match import accuracy
from lorabench.job import TrainJob
from lorabench.models import load, target_weights, task_head
from lorabench.records import bad_runs_note
from lorabench.runner import run_job
from lorabench.tasks.hub import HubTask
from lorabench.train import collate, tokenize_examples
from lorabench.variants import registry
from tests import fixtures_hub
from tests.jobs import job_runs

LABELS = ("negative", "positive")
TARGETS = ["query", "value", "dense"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classification")
    return {
        "model": fixtures_hub.save_tiny_bert(root / "tiny-bert"),
        "sentiment": fixtures_hub.write_jsonl(root / "sentiment.jsonl", fixtures_hub.SENTIMENT_ROWS),
        "pairs": fixtures_hub.write_jsonl(root / "pairs.jsonl", fixtures_hub.PARAPHRASE_ROWS),
    }


def _task_fields(assets: dict[str, Path], **overrides) -> dict:
    data = str(assets["sentiment"])
    return {
        "name": "sentiment",
        "data_files": {"train": data, "test": data},
        "prompt": "{text}",
        "target": "{label}",
        "labels": list(LABELS),
        "validation_size": 2,
    } | overrides


def test_classification_examples_answer_with_a_label(assets: dict[str, Path]) -> None:
    task = HubTask.from_dict(_task_fields(assets))
    test = task.split("test")
    assert [(e.prompt, e.answer) for e in test] == [(r["text"], r["label"]) for r in fixtures_hub.SENTIMENT_ROWS]
    assert task.score("positive", test[0]) == (test[0].answer == "positive")


def test_a_target_outside_the_labels_is_named(assets: dict[str, Path]) -> None:
    task = HubTask.from_dict(_task_fields(assets, labels=["negative", "neutral"]))
    with pytest.raises(ValueError, match=r"target 'positive' is not one of field 'labels'"):
        task.split("test")


@pytest.mark.parametrize("labels", [["positive"], [0, 1], ["a", "a"]])
def test_labels_must_be_two_or_more_distinct_strings(assets: dict[str, Path], labels: list) -> None:
    with pytest.raises(ValueError, match="field 'labels' needs two or more distinct strings"):
        HubTask.from_dict(_task_fields(assets, labels=labels))


def test_classification_batches_carry_special_tokens_and_class_indices(assets: dict[str, Path]) -> None:
    _, tokenizer = load(assets["model"], labels=LABELS)
    examples = HubTask.from_dict(_task_fields(assets)).split("test")[:3]
    rows = tokenize_examples(tokenizer, examples, labels=LABELS)
    for (ids, label), example in zip(rows, examples, strict=True):
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert label == LABELS.index(example.answer)
    batch = collate(rows, tokenizer.pad_token_id, torch.device("cpu"))
    assert batch["labels"].tolist() == [label for _, label in rows]
    assert batch["attention_mask"].sum(1).tolist() == [len(ids) for ids, _ in rows]


@pytest.mark.parametrize("always", LABELS)
def test_accuracy_is_the_share_of_examples_whose_argmax_is_their_label(assets: dict[str, Path], always: str) -> None:
    model, tokenizer = load(assets["model"], labels=LABELS)
    classifier = model.classifier
    with torch.no_grad():  # a head that predicts `always` for every input
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([float(label == always) for label in LABELS]))
    task = HubTask.from_dict(_task_fields(assets))
    examples = task.split("test")
    share = sum(example.answer == always for example in examples) / len(examples)
    assert accuracy(model, tokenizer, task, examples, 5, torch.device("cpu")) == pytest.approx(share)


def test_the_head_is_the_new_classifier_and_nothing_of_the_backbone(assets: dict[str, Path]) -> None:
    model, _ = load(assets["model"], labels=LABELS)
    head = task_head(model)
    assert {id(p) for p in head} == {id(p) for p in model.classifier.parameters()}


def _job(assets: dict[str, Path], variant: str) -> dict:
    """A one-point job of ``variant`` on the sentiment task; its record goes under the working directory."""
    return {
        "model": "tiny-bert",
        "checkpoint": str(assets["model"]),
        "dtype": "float32",
        "device": "cpu",
        "alpha": 4,
        "dropout": 0.0,
        "target_modules": TARGETS,
        "source_tasks": [],
        "hub_tasks": {"sentiment": _task_fields(assets)},
        "forgetting": {"paraphrase_retrieval": {"pairs": str(assets["pairs"]), "batch_size": 3}},
        "data": {"seed": 0, "train": 1, "validation": 1, "test": 1, "min_len": 3, "max_len": 6},
        "eval_batch_size": 8,
        "variant_modules": [],
        "save_adapters": False,
        "train": {"steps": 3, "batch_size": 4, "weight_decay": 0.0, "log_every": 1, "eval_at": [2], "replay": 0.0},
        **job_runs("tiny-bert", [(variant, 2, "sentiment", 0.01, 0)], optimizers={variant: "adamw"}),
    }


@pytest.mark.parametrize("variant", [name for name, cls in registry().items() if cls.in_default_grid])
def test_every_variant_trains_its_adapter_and_the_new_head(
    assets: dict[str, Path], tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = TrainJob.from_dict(_job(assets, variant))
    run_job(job)
    record = json.loads(Path(job.points[0].record).read_text())
    assert record["status"] == "ok", record["error"]
    model, _ = load(assets["model"], labels=LABELS)
    head = sum(p.numel() for p in task_head(model))
    cls = registry()[variant]
    if cls.uses_rank:
        shapes = [tuple(w.shape) for w in target_weights(model, TARGETS).values()]
        adapter = sum(cls.trainable_parameters(m, n, 2) for m, n in shapes)
        assert record["parameters"]["trainable"] == adapter + head
    else:
        assert record["parameters"]["trainable"] == sum(p.numel() for p in model.parameters())
    extra = record["extra"]
    drop = extra["paraphrase_retrieval_before"] - extra["paraphrase_retrieval_after"]
    assert record["forgetting"]["per_task"] == {"paraphrase_retrieval": pytest.approx(drop)}
    assert 0 <= record["target"]["accuracy_before"] <= 1 and 0 <= record["target"]["accuracy_after"] <= 1


def test_save_adapters_keeps_each_run_s_adapter_and_it_reloads_onto_the_base(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel

    monkeypatch.chdir(tmp_path)
    run_job(TrainJob.from_dict(_job(assets, "peft_lora") | {"save_adapters": True}))
    record = tmp_path / "results" / "runs" / "tiny-bert" / "sentiment" / "peft_lora" / "r2" / "lr0.01" / "seed0.json"
    assert json.loads(record.read_text())["hyperparameters"]["save_adapters"] is True
    saved = tmp_path / "results" / "adapters" / "tiny-bert" / "sentiment" / "peft_lora" / "r2" / "lr0.01" / "seed0"
    base, _ = load(assets["model"], labels=LABELS)
    reloaded = PeftModel.from_pretrained(base, str(saved))
    assert any("lora_B" in name and parameter.abs().sum() > 0 for name, parameter in reloaded.named_parameters())


def test_identical_pairs_are_always_retrieved_and_mismatched_ones_never(assets: dict[str, Path]) -> None:
    model, tokenizer = load(assets["model"], labels=LABELS)
    texts = [row["a"] for row in fixtures_hub.PARAPHRASE_ROWS]
    assert paraphrase_retrieval(model, tokenizer, list(zip(texts, texts, strict=True)), 2, "cpu") == 1.0
    rotated = texts[1:] + texts[:1]  # every sentence paired with another one: its true partner is never there
    assert paraphrase_retrieval(model, tokenizer, list(zip(texts, rotated, strict=True)), 2, "cpu") == 0.0


def test_embeddings_do_not_depend_on_padding_or_batch(assets: dict[str, Path]) -> None:
    model, tokenizer = load(assets["model"], labels=LABELS)
    texts = [row["text"] for row in fixtures_hub.SENTIMENT_ROWS]
    one_by_one = sentence_embeddings(model, tokenizer, texts, 1, "cpu")
    batched = sentence_embeddings(model, tokenizer, texts, 5, "cpu")
    assert torch.allclose(one_by_one, batched, atol=1e-5)
    assert torch.allclose(one_by_one.norm(dim=-1), torch.ones(len(texts)))


def test_a_task_whose_data_file_is_missing_fails_its_own_runs_naming_the_file(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = _job(assets, "lora")
    gone = str(tmp_path / "gone.jsonl")
    job["hub_tasks"]["moved"] = _task_fields(assets, name="moved", data_files={"train": gone, "test": gone})
    job["points"].append(job["points"][0] | {"task": "moved"})
    sentiment, moved = (Path(point.record) for point in TrainJob.from_dict(job).points)
    run_job(TrainJob.from_dict(job))
    failed = json.loads(moved.read_text())
    assert failed["status"] == "failed" and gone in failed["error"] and "hub name" not in failed["error"]
    assert json.loads(sentiment.read_text())["status"] == "ok"
    note = bad_runs_note([sentiment, moved])
    assert note.startswith("lorabench: 1 failed of 2 runs") and "seed0.json: task 'moved': missing" in note
