"""The forgetting probes shipped in workflow/data/probes: well-formed, right, and usable from any folder."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests import fixtures_hub
from tests.pipeline import REPO

PROBES = REPO / "workflow" / "data" / "probes"
ROWS = [json.loads(line) for line in (PROBES / "world_facts.jsonl").read_text().splitlines()]


def test_world_facts_rows_are_well_formed_and_match_the_readme() -> None:
    assert Counter(row["category"] for row in ROWS) == {
        "capital": 40,
        "element": 25,
        "opposite": 20,
        "general": 30,
        "arithmetic": 25,
    }
    assert len({row["question"] for row in ROWS}) == len(ROWS) == 140
    for row in ROWS:
        assert len(row["choices"]) == len(set(row["choices"])) == 4, row
        assert row["label"] in range(4), row
    # the right answer is not always in the same place, so a position bias cannot score well
    assert max(Counter(row["label"] for row in ROWS).values()) < 0.4 * len(ROWS)


def test_world_facts_arithmetic_answers_are_right() -> None:
    operations = {"plus": int.__add__, "minus": int.__sub__, "times": int.__mul__}
    rows = [row for row in ROWS if row["category"] == "arithmetic"]
    for row in rows:
        a, operation, b = re.fullmatch(r"What is (\d+) (plus|minus|times) (\d+)\?", row["question"]).groups()
        assert row["choices"][row["label"]] == str(operations[operation](int(a), int(b))), row


def test_lm_eval_reads_world_facts_with_choices_and_targets() -> None:
    from lm_eval.tasks import TaskManager

    task = TaskManager(include_path=str(PROBES), include_defaults=False).load("world_facts")["tasks"]["world_facts"]
    docs = list(task.test_docs())
    assert len(docs) == len(ROWS)
    for doc, row in zip(docs, ROWS, strict=True):
        assert task.doc_to_text(doc) == f"Question: {row['question']}\nAnswer:"
        assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == row["choices"][row["label"]]


def test_world_facts_scores_a_model_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lorabench.evaluation.lm_eval import lm_eval_scores
    from lorabench.models import load

    model, tokenizer = load(fixtures_hub.save_tiny_llama(tmp_path / "model"))
    monkeypatch.chdir(tmp_path)  # the data file is found beside the task, not in the working directory
    score = lm_eval_scores(model, tokenizer, ["world_facts"], str(PROBES), 20, 8, "cpu")["world_facts"]
    assert score in {k / 20 for k in range(21)}  # a fraction of the 20 questions asked


def test_heldout_text_is_forty_sentences() -> None:
    lines = (PROBES / "heldout.txt").read_text().splitlines()
    assert len(lines) == 40 and all(len(line.split()) >= 12 for line in lines)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sentiment_set_is_balanced_per_domain_and_split_as_its_readme_says() -> None:
    folder = REPO / "workflow" / "data" / "sentiment"
    train, test = _jsonl(folder / "train.jsonl"), _jsonl(folder / "test.jsonl")
    assert (len(train), len(test)) == (280, 200)  # one test review is 0.005 of accuracy
    for rows, per_group in ((train, 14), (test, 10)):
        assert set(Counter((row["domain"], row["label"]) for row in rows).values()) == {per_group}
        assert {row["label"] for row in rows} == {"positive", "negative"}


def test_sentiment_splits_are_disjoint_even_ignoring_case_and_punctuation() -> None:
    folder = REPO / "workflow" / "data" / "sentiment"
    train, test = _jsonl(folder / "train.jsonl"), _jsonl(folder / "test.jsonl")

    def words(row: dict) -> str:
        return " ".join(re.findall(r"[a-z0-9']+", row["text"].lower()))

    train_texts, test_texts = {words(row) for row in train}, {words(row) for row in test}
    assert len(train_texts) == len(train) and len(test_texts) == len(test)
    assert not train_texts & test_texts


def test_paraphrase_pairs_are_distinct_and_reworded() -> None:
    pairs = _jsonl(PROBES / "paraphrases.jsonl")
    sentences = [row[side] for row in pairs for side in ("a", "b")]
    assert len(pairs) == 100 and len(set(sentences)) == 200

    def overlap(row: dict) -> float:
        a, b = (set(re.findall(r"[a-z']+", row[side].lower())) for side in ("a", "b"))
        return len(a & b) / len(a | b)

    # retrieval must need meaning: the pairs share few words (the README's figure is the mean)
    assert sum(map(overlap, pairs)) / len(pairs) == pytest.approx(0.08, abs=0.01)
