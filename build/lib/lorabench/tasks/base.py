"""What a task is to the training loop: prompts with reference answers, and how to score a guess.

A task either generates its answer (``labels`` is None: causal LM, greedy generation, exact match) or
classifies its prompt (``labels`` names the classes and every answer is one of them: a sequence
classification head, argmax, accuracy).

Embedded algorithmic tasks (``algorithmic.py``) and hub/local datasets (``hub.py``) both produce
:class:`Example` lists, so training and evaluation never care where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    """The text the model must produce after ``prompt`` (training target and reference)."""


class Task(Protocol):
    name: str
    max_new_tokens: int
    """Greedy generation budget at evaluation: enough for the longest answer."""
    labels: tuple[str, ...] | None
    """The class names of a classification task, whose answers are among them; None for a generation task."""

    def split(self, name: str) -> list[Example]:
        """The examples of split ``train``, ``validation`` or ``test``; deterministic."""
        ...

    def score(self, generated: str, example: Example) -> bool:
        """Exact match of the answer extracted from ``generated`` against ``example.answer``."""
        ...
