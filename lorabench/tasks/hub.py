"""Target tasks from ``datasets`` sources: a hub name (``openai/gsm8k``) or local JSON/JSONL/Parquet files.

A task entry in the config is a plain dict; :meth:`HubTask.from_dict` checks it and names any bad field.

Default math format (GSM8K, MetaMathQA and similar):

* prompt ``"Question: {question}\\nAnswer:"`` and target ``" {answer}"``: both are ``str.format``
  templates over the dataset's columns, so MetaMathQA is ``prompt: "Question: {query}\\nAnswer:"``,
  ``target: " {response}"``. The whole target (worked solution included) is the training text.
* Answer extraction, applied alike to the model's generation and to the reference target: the first
  ``answer_patterns`` regex that matches gives its first group (defaults: GSM8K's ``#### 42`` and
  MetaMathQA's ``The answer is: 42``); if none matches, ``fallback`` decides: ``last_number`` (default),
  ``first_line`` (the stripped first line, for symbolic answers such as ``-2/89``), or ``none``.
* Exact match after normalisation: ``$``, thousands commas and a trailing full stop are dropped, and two
  answers that both parse as numbers (integers, decimals, fractions) compare by value, so
  ``"1,000" == "1000"`` and ``"3.0" == "3"``; anything else compares as whitespace-collapsed text.

Splits: ``splits`` maps ``train``/``validation``/``test`` to the source's split names. Many sources (GSM8K)
have no validation split: leave it ``null`` and ``validation_size`` examples are held out from train
(seeded). ``max_examples`` caps each split by a seeded subsample.

Classification (a sentiment set, SST-2): give ``labels``, the class names, and a ``target`` whose text is
one of them, e.g. ``prompt: "{sentence}"``, ``target: "{label}"``, ``labels: [negative, positive]`` (for
integer label columns, ``labels: ["0", "1"]``). The model then gets a sequence-classification head with one
output per label, trains with cross-entropy over the labels and is scored by the accuracy of its argmax;
``answer_patterns``, ``fallback`` and ``max_new_tokens`` do not apply.

Training on one source and testing on another (MetaMathQA -> GSM8K): ``train_source`` holds the fields
that differ for train and validation (``dataset``/``data_files``/``config``/``splits`` start afresh, the
rest is inherited unless given, e.g. MetaMathQA's ``prompt`` and ``target``); test and scoring stay
this task's.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, fields
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorabench.tasks.base import Example

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

SPLITS = ("train", "validation", "test")
DEFAULT_SPLITS = {"train": "train", "validation": None, "test": "test"}
SOURCE_FIELDS = ("dataset", "data_files", "config", "splits")
"""Fields naming where rows come from: a ``train_source`` never inherits them."""
DEFAULT_ANSWER_PATTERNS = (r"####\s*(\S+)", r"[Tt]he answer is:?\s*(\S+)")
FALLBACKS = ("last_number", "first_line", "none")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubTask:
    """A target task read through ``datasets.load_dataset``; implements :class:`lorabench.tasks.base.Task`."""

    name: str
    dataset: str | None = None
    """Hub name or local dataset folder; ``json``/``parquet`` (or left out) with ``data_files``."""
    data_files: dict[str, str] | None = None
    """Source split name -> local file, e.g. ``{"train": "data/train.jsonl", "test": "data/test.jsonl"}``."""
    config: str | None = None
    """The hub dataset's configuration name (GSM8K: ``main``)."""
    splits: dict[str, str | None] = field(default_factory=lambda: dict(DEFAULT_SPLITS))
    validation_size: int = 100
    prompt: str = "Question: {question}\nAnswer:"
    target: str = " {answer}"
    answer_patterns: tuple[str, ...] = DEFAULT_ANSWER_PATTERNS
    fallback: str = "last_number"
    max_examples: dict[str, int] = field(default_factory=dict)
    max_new_tokens: int = 256
    seed: int = 0
    train_source: dict[str, Any] | None = None
    """Fields of another source for train and validation only (see the module docstring)."""
    labels: tuple[str, ...] | None = None
    """Class names of a classification task (see the module docstring); None: the answer is generated."""

    def __post_init__(self) -> None:
        if self.dataset is None and not self.data_files:
            raise ValueError(f"task {self.name!r}: give 'dataset' (hub name or path) or 'data_files'")
        if set(self.splits) != set(SPLITS) or self.splits["train"] is None or self.splits["test"] is None:
            raise ValueError(
                f"task {self.name!r}: field 'splits' must map train, validation, test "
                f"(train and test not null), got {self.splits}"
            )
        if unknown := set(self.max_examples) - set(SPLITS):
            raise ValueError(f"task {self.name!r}: field 'max_examples' has unknown splits {sorted(unknown)}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"task {self.name!r}: field 'fallback' must be one of {FALLBACKS}, got {self.fallback!r}")
        for index, pattern in enumerate(self.answer_patterns):
            try:
                if re.compile(pattern).groups < 1:
                    raise re.error("needs one capture group around the answer")
            except re.error as error:
                raise ValueError(f"task {self.name!r}: field 'answer_patterns[{index}]' {pattern!r}: {error}") from None
        if self.labels is not None and not _distinct_names(self.labels):
            raise ValueError(
                f"task {self.name!r}: field 'labels' needs two or more distinct strings (quote numbers: "
                f'["0", "1"]), got {list(self.labels)}'
            )
        if self.train_source is not None:
            self._train_task  # noqa: B018 -- built now so a bad train_source fails at config time

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> HubTask:
        """Build from a config task entry; unknown or mistyped fields raise ``ValueError`` naming them."""
        name = entry.get("name", "<unnamed>")
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(entry) - set(known)):
            raise ValueError(f"task {name!r}: unknown field(s) {unknown}; known: {sorted(known)}")
        if "name" not in entry:
            raise ValueError("task entry: field 'name' is required")
        for key, value in entry.items():
            _check_type(name, key, value)
        values = dict(entry)
        for key in ("answer_patterns", "labels"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if "splits" in values:
            values["splits"] = DEFAULT_SPLITS | values["splits"]
        return cls(**values)

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return self._examples[name]

    def score(self, generated: str, example: Example) -> bool:
        if self.labels is not None:  # ``generated`` is the predicted label's name
            return generated == example.answer
        guess = self.extract_answer(generated)
        return guess is not None and answers_match(guess, self.extract_answer(example.answer))

    def extract_answer(self, text: str) -> str | None:
        """The answer inside ``text`` by ``answer_patterns`` then ``fallback``; ``None`` if there is none."""
        for pattern in self.answer_patterns:
            if match := re.search(pattern, text):
                return match.group(1)
        if self.fallback == "last_number":
            numbers = _NUMBER.findall(text)
            return numbers[-1] if numbers else None
        if self.fallback == "first_line":
            return text.strip().split("\n", 1)[0].strip() or None
        return None

    @cached_property
    def _train_task(self) -> HubTask:
        """The task whose train and validation splits this one uses, per ``train_source``."""
        if "train_source" in self.train_source:
            raise ValueError(f"task {self.name!r}: field 'train_source' cannot nest another 'train_source'")
        skip = (*SOURCE_FIELDS, "name", "train_source")
        inherited = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        return HubTask.from_dict(inherited | {"name": f"{self.name}.train_source"} | self.train_source)

    @cached_property
    def _examples(self) -> dict[str, list[Example]]:
        if self.train_source is None:
            return self._own_examples(SPLITS)
        return self._train_task._own_examples(("train", "validation")) | self._own_examples(("test",))

    def _own_examples(self, wanted: tuple[str, ...]) -> dict[str, list[Example]]:
        """Examples of the ``wanted`` splits from this task's own source (train brings validation along)."""
        held_out = self.splits["validation"] is None
        source = self._load([self.splits[s] for s in wanted if not (s == "validation" and held_out)])
        rows = {"test": source[self.splits["test"]]} if "test" in wanted else {}
        if "train" in wanted:
            rows["train"] = source[self.splits["train"]]
            if held_out:
                if self.validation_size >= len(rows["train"]):
                    raise ValueError(
                        f"task {self.name!r}: field 'validation_size' {self.validation_size} leaves no "
                        f"training rows out of {len(rows['train'])}"
                    )
                rows["train"], rows["validation"] = _hold_out(rows["train"], self.validation_size, self.seed)
            else:
                rows["validation"] = source[self.splits["validation"]]
        return {split: self._to_examples(split, rows[split]) for split in wanted}

    def _load(self, source_splits: list[str]) -> DatasetDict:
        import datasets  # deferred: importing datasets costs seconds the embedded suite never needs

        builder = self.dataset or _builder_for(self.name, self.data_files)
        source = datasets.load_dataset(builder, self.config, data_files=self.data_files)
        if missing := set(source_splits) - set(source):
            raise ValueError(
                f"task {self.name!r}: field 'splits' names {sorted(missing)}, the source has {sorted(source)}"
            )
        return source

    def _to_examples(self, split: str, rows: Dataset) -> list[Example]:
        rows = _subsample(rows, self.max_examples.get(split), f"{self.seed}:{split}")
        examples = [
            Example(_fill(self.name, "prompt", self.prompt, row), _fill(self.name, "target", self.target, row))
            for row in rows
        ]
        if self.labels is not None:
            return [self._labelled(example) for example in examples]
        for example in examples:
            if self.extract_answer(example.answer) is None:
                raise ValueError(
                    f"task {self.name!r}: no answer found in target {example.answer!r} by field "
                    f"'answer_patterns' or 'fallback' ({self.fallback!r})"
                )
        return examples

    def _labelled(self, example: Example) -> Example:
        """``example`` with its answer stripped, refused unless that answer is one of ``labels``."""
        label = example.answer.strip()
        if label not in self.labels:
            raise ValueError(
                f"task {self.name!r}: target {example.answer!r} is not one of field 'labels' {list(self.labels)}; "
                "add it there, or make field 'target' give the label column"
            )
        return Example(example.prompt, label)


def _distinct_names(labels: tuple) -> bool:
    return len(labels) >= 2 and len(set(labels)) == len(labels) and all(isinstance(x, str) for x in labels)


def normalise_answer(answer: str) -> Fraction | str:
    """A number's exact value where ``answer`` is one, else its whitespace-collapsed text."""
    text = answer.strip().rstrip(".").replace("$", "").replace(",", "")
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return " ".join(text.split())


def answers_match(guess: str, reference: str | None) -> bool:
    return reference is not None and normalise_answer(guess) == normalise_answer(reference)


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "dataset": str,
    "data_files": dict,
    "config": str,
    "splits": dict,
    "validation_size": int,
    "prompt": str,
    "target": str,
    "answer_patterns": (list, tuple),
    "fallback": str,
    "max_examples": dict,
    "max_new_tokens": int,
    "seed": int,
    "train_source": dict,
    "labels": (list, tuple),
}


def _check_type(task: str, key: str, value: Any) -> None:
    expected = _FIELD_TYPES[key]
    if value is None and key in {"dataset", "data_files", "config", "train_source", "labels"}:
        return
    if not isinstance(value, expected) or isinstance(value, bool):
        names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
        raise ValueError(f"task {task!r}: field {key!r} must be {names}, got {value!r}")


def _builder_for(task: str, data_files: dict[str, str]) -> str:
    """``json`` or ``parquet`` from the files' extension, so a config can list files and nothing else."""
    suffixes = {Path(path).suffix for path in data_files.values()}
    builders = {_FILE_BUILDERS.get(suffix) for suffix in suffixes}
    if len(builders) != 1 or None in builders:
        raise ValueError(
            f"task {task!r}: field 'data_files' must be all .json/.jsonl or all .parquet, "
            f"got {sorted(suffixes)}; or set 'dataset' to the datasets builder"
        )
    return builders.pop()


def _fill(task: str, field_name: str, template: str, row: dict) -> str:
    try:
        return template.format(**row)
    except KeyError as error:
        raise ValueError(
            f"task {task!r}: field {field_name!r} uses column {error.args[0]!r}; the data has {sorted(row)}"
        ) from None


def _subsample(rows: Dataset, limit: int | None, seed: str) -> Dataset:
    """At most ``limit`` rows of a ``datasets.Dataset``: a seeded sample kept in source order.

    Sampling indices before reading rows keeps a 400k-row source (MetaMathQA) cheap when few are used.
    """
    if limit is None or limit >= len(rows):
        return rows
    return rows.select(sorted(random.Random(seed).sample(range(len(rows)), limit)))


def _hold_out(rows: Dataset, size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split a seeded ``size`` rows off a ``datasets.Dataset`` as validation; the rest stays train."""
    held = set(random.Random(f"{seed}:validation").sample(range(len(rows)), size))
    return (
        rows.select([i for i in range(len(rows)) if i not in held]),
        rows.select(sorted(held)),
    )
