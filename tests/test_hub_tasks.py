"""HubTask on local JSON/Parquet files: prompts, splits, answer extraction and clear config errors."""

from __future__ import annotations

import json

import pytest
from fixtures_hub import MATH_ROWS, write_math_json, write_math_parquet

from lorabench.tasks.base import Example
from lorabench.tasks.hub import HubTask, answers_match


@pytest.fixture(scope="module")
def math_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("math")
    return {
        kind: {
            "train": str(write(folder / f"train.{suffix}")),
            "test": str(write(folder / f"test.{suffix}", MATH_ROWS[:4])),
        }
        for kind, suffix, write in [("json", "jsonl", write_math_json), ("parquet", "parquet", write_math_parquet)]
    }


def _task(math_files, **fields) -> HubTask:
    return HubTask.from_dict({"name": "gsm8k_local", "data_files": math_files["json"], "validation_size": 3} | fields)


def test_local_json_gives_gsm8k_style_examples(math_files):
    task = _task(math_files)
    test = task.split("test")
    assert test[0] == Example("Question: What is 1 plus 2?\nAnswer:", " 1 + 2 = 3.\n#### 3")
    assert [len(task.split(s)) for s in ("train", "validation", "test")] == [7, 3, 4]


def test_held_out_validation_is_disjoint_from_train_and_seeded(math_files):
    task = _task(math_files)
    train, validation = task.split("train"), task.split("validation")
    assert not set(train) & set(validation)
    everything = {Example(f"Question: {r['question']}\nAnswer:", f" {r['answer']}") for r in MATH_ROWS}
    assert set(train) | set(validation) == everything
    assert _task(math_files).split("validation") == validation
    assert _task(math_files, seed=1).split("validation") != validation


def test_parquet_files_load_like_json(math_files):
    parquet = HubTask.from_dict({"name": "p", "data_files": math_files["parquet"], "validation_size": 3})
    assert parquet.split("test") == _task(math_files).split("test")


def test_max_examples_takes_a_seeded_subsample_in_source_order(math_files):
    task = _task(math_files, max_examples={"train": 4})
    train = task.split("train")
    assert len(train) == 4
    full = _task(math_files).split("train")
    assert [full.index(e) for e in train] == sorted(full.index(e) for e in train)


@pytest.mark.parametrize(
    "generated, correct",
    [
        (" 1 + 2 = 3.\n#### 3", True),
        (" so #### 3\n\nQuestion: What is 9 plus 9?\nAnswer: #### 18", True),
        (" The answer is: 3", True),
        (" 1 + 2 makes 3.0", True),
        (" #### 4", False),
        (" no idea", False),
    ],
)
def test_score_extracts_the_answer_from_generation(math_files, generated, correct):
    task = _task(math_files)
    assert task.score(generated, task.split("test")[0]) is correct


def test_thousands_separator_in_reference_matches_plain_number(math_files):
    task = _task(math_files)
    reference = Example("Question: What is 100 plus 900?\nAnswer:", " 100 + 900 = 1000.\n#### 1,000")
    assert task.score("#### 1000", reference)


@pytest.mark.parametrize(
    "guess, reference, same",
    [
        ("1,000", "1000", True),
        ("3.0", "3", True),
        ("$42.", "42", True),
        ("-2/89", "-4/178", True),
        ("3.5", "3", False),
        ("x + 1", "x  + 1", True),
        ("x+1", "x + 2", False),
    ],
)
def test_answers_match_normalises_numbers(guess, reference, same):
    assert answers_match(guess, reference) is same


def test_first_line_fallback_for_symbolic_answers(math_files):
    task = _task(math_files, answer_patterns=[], fallback="first_line", target=" {answer}")
    assert task.extract_answer(" 7 - 3*sqrt(13)\nQuestion: next") == "7 - 3*sqrt(13)"


def test_custom_template_and_pattern(math_files):
    task = _task(math_files, prompt="Q: {question} A:", answer_patterns=[r"=\s*(\d+)"], fallback="none")
    example = task.split("test")[0]
    assert example.prompt == "Q: What is 1 plus 2? A:"
    assert task.score("1 + 2 = 3", example) and not task.score("3", example)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"promt": "x"}, r"unknown field\(s\) \['promt'\]"),
        ({"max_new_tokens": "many"}, "field 'max_new_tokens' must be int"),
        ({"answer_patterns": ["####"]}, r"field 'answer_patterns\[0\]'"),
        ({"answer_patterns": ["(unclosed"]}, r"field 'answer_patterns\[0\]'"),
        ({"fallback": "guess"}, "field 'fallback' must be one of"),
        ({"max_examples": {"dev": 3}}, "field 'max_examples' has unknown splits"),
        ({"splits": {"test": None}}, "field 'splits' must map"),
    ],
)
def test_bad_fields_are_named(math_files, fields, message):
    with pytest.raises(ValueError, match=message):
        _task(math_files, **fields)


def test_template_naming_a_missing_column_is_named_at_load(math_files):
    task = _task(math_files, prompt="Question: {query}\nAnswer:")
    with pytest.raises(ValueError, match="field 'prompt' uses column 'query'"):
        task.split("train")


def test_split_name_not_in_source_is_named(math_files):
    task = _task(math_files, splits={"validation": "dev"})
    with pytest.raises(ValueError, match=r"field 'splits' names \['dev'\]"):
        task.split("train")


def test_unparseable_reference_is_named_at_load(math_files):
    task = _task(math_files, answer_patterns=[r"@@(\d+)"], fallback="none")
    with pytest.raises(ValueError, match="no answer found in target"):
        task.split("test")


def test_missing_source_is_named():
    with pytest.raises(ValueError, match="give 'dataset'"):
        HubTask.from_dict({"name": "t"})


def test_train_source_trains_on_one_dataset_and_tests_on_another(math_files, tmp_path):
    metamath = tmp_path / "metamath.jsonl"
    metamath.write_text(
        "".join(
            json.dumps({"query": f"What is {a} times 2?", "response": f"{a} * 2 = {2 * a}. The answer is: {2 * a}"})
            + "\n"
            for a in range(6)
        )
    )
    task = HubTask.from_dict(
        {
            "name": "metamath_to_gsm8k",
            "data_files": {"test": math_files["json"]["test"]},
            "train_source": {
                "data_files": {"train": str(metamath)},
                "prompt": "Question: {query}\nAnswer:",
                "target": " {response}",
                "validation_size": 2,
            },
        }
    )
    train, validation, test = (task.split(s) for s in ("train", "validation", "test"))
    assert (len(train), len(validation)) == (4, 2)
    assert all(e.prompt.endswith("times 2?\nAnswer:") for e in train + validation)
    assert test == _task(math_files).split("test")
    assert task.score("The answer is: 3", test[0]) and task.score("... #### 3", test[0])


def test_bad_train_source_field_is_named_at_construction(math_files):
    with pytest.raises(ValueError, match=r"task 'gsm8k_local.train_source': unknown field\(s\) \['promt'\]"):
        _task(math_files, train_source={"data_files": math_files["json"], "promt": "x"})
