"""Character-level algorithmic tasks, generated from a seed: the embedded suite's data.

Each task maps a short random string to an answer (``C`` copy, ``R`` reverse, ``S`` sort, ``H`` shift by
one letter, ``M`` digit sum mod 10, ``L`` key lookup). A prompt is the task's marker, the input and ``=``;
the answer follows. Splits are disjoint by input, so held-out accuracy measures generalisation.
"""

from __future__ import annotations

import math
import random
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from lorabench.tasks.base import Example

LETTERS = "abcdefgh"
DIGITS = string.digits
"""Every character an embedded task can emit: the embedded tokenizer's vocabulary."""
ALPHABET = string.ascii_lowercase + string.digits + string.ascii_uppercase + "=|"


def _letters(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(low, high)))


def _digits(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(DIGITS) for _ in range(rng.randint(low, high)))


def _lookup_input(rng: random.Random, low: int, high: int) -> str:
    keys = rng.sample(LETTERS, rng.randint(max(low, 2), min(high, len(LETTERS))))
    pairs = "".join(f"{k}{rng.choice(DIGITS)}" for k in keys)
    return f"{pairs}|{rng.choice(keys)}"


def _lookup_answer(text: str) -> str:
    pairs, key = text.split("|")
    return dict(zip(pairs[::2], pairs[1::2], strict=True))[key]


def _strings_of(alphabet: str) -> Callable[[int, int], int]:
    """The number of strings over ``alphabet`` with lengths ``low..high``."""
    return lambda low, high: sum(len(alphabet) ** length for length in range(low, high + 1))


def _lookup_inputs(low: int, high: int) -> int:
    """Ordered distinct keys, a digit each, and which key is asked: as :func:`_lookup_input` draws them."""
    keys = range(max(low, 2), min(high, len(LETTERS)) + 1)
    return sum(math.perm(len(LETTERS), k) * len(DIGITS) ** k * k for k in keys)


def _shift(text: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in text)


@dataclass(frozen=True)
class _Rule:
    marker: str
    draw: Callable[[random.Random, int, int], str]
    solve: Callable[[str], str]
    max_answer_len: Callable[[int], int]
    input_count: Callable[[int, int], int]
    """Distinct inputs of lengths ``low..high``: the most examples the task's disjoint splits can hold."""


RULES: dict[str, _Rule] = {
    "copy": _Rule("C", _letters, lambda s: s, lambda n: n, _strings_of(LETTERS)),
    "reverse": _Rule("R", _letters, lambda s: s[::-1], lambda n: n, _strings_of(LETTERS)),
    "sort": _Rule("S", _letters, lambda s: "".join(sorted(s)), lambda n: n, _strings_of(LETTERS)),
    "shift": _Rule("H", _letters, _shift, lambda n: n, _strings_of(LETTERS)),
    "modsum": _Rule("M", _digits, lambda s: str(sum(map(int, s)) % 10), lambda n: 1, _strings_of(DIGITS)),
    "lookup": _Rule("L", _lookup_input, _lookup_answer, lambda n: 1, _lookup_inputs),
}


@dataclass(frozen=True)
class AlgorithmicTask:
    """One embedded task with deterministic, input-disjoint train/validation/test splits."""

    name: str
    seed: int
    sizes: tuple[int, int, int]
    """Examples in train, validation and test."""
    min_len: int = 3
    max_len: int = 6
    labels = None
    """Embedded tasks generate their answers."""

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown embedded task {self.name!r}; known: {', '.join(RULES)}")

    @property
    def max_new_tokens(self) -> int:
        return RULES[self.name].max_answer_len(self.max_len) + 1

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        rule = RULES[self.name]
        rng = random.Random(zlib.crc32(f"{self.name}:{self.seed}".encode()))
        inputs = _unique_inputs(rule, rng, sum(self.sizes), self.min_len, self.max_len)
        examples = [Example(f"{rule.marker}{text}=", rule.solve(text)) for text in inputs]
        n_train, n_val, _ = self.sizes
        test_start = n_train + n_val
        return {
            "train": examples[:n_train],
            "validation": examples[n_train:test_start],
            "test": examples[test_start:],
        }

    def split(self, name: str) -> list[Example]:
        return self._splits[name]

    def score(self, generated: str, example: Example) -> bool:
        return generated.strip() == example.answer


def _unique_inputs(rule: _Rule, rng: random.Random, count: int, low: int, high: int) -> list[str]:
    """``count`` distinct inputs; a clear error when the input space is too small for the splits."""
    seen: dict[str, None] = {}
    for _ in range(50 * count):
        seen.setdefault(rule.draw(rng, low, high), None)
        if len(seen) == count:
            return list(seen)
    raise ValueError(
        f"task {rule.marker!r} has fewer than {count} distinct inputs of length {low}-{high}; "
        "lower the split sizes or raise data.max_len in the config"
    )
