"""Models and tokenizers: the embedded tiny ones are built here; every model is loaded like a hub model.

The embedded suite saves its models with ``save_pretrained`` and loads them back with
``from_pretrained``, so the code path that trains on them is the one that trains on a hub name or a
local checkpoint on a GPU cluster.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPT2Config,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lorabench.tasks.algorithmic import ALPHABET

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
_CONFIGS = {"llama": LlamaConfig, "gpt2": GPT2Config}


def character_tokenizer() -> PreTrainedTokenizerFast:
    """A one-token-per-character tokenizer over the embedded tasks' alphabet."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: index for index, token in enumerate((*SPECIAL_TOKENS, *ALPHABET))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def build_embedded(architecture: dict[str, Any], tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A randomly initialised model from a transformers config (``family`` picks Llama or GPT-2)."""
    settings = dict(architecture)
    family = settings.pop("family")
    config = _CONFIGS[family](
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        **settings,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def load(
    path: str | Path, dtype: torch.dtype = torch.float32, labels: tuple[str, ...] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer from a hub name or a local checkpoint folder.

    Without ``labels``: the causal LM, ready for batched (left-padded) generation. With ``labels``: the
    same backbone under a new sequence-classification head with one output per label, drawn from the
    global RNG (seed it first); encoders (BERT) and decoders (their last token) alike.
    """
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if labels is not None:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path),
            dtype=dtype,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: index for index, label in enumerate(labels)},
            pad_token_id=tokenizer.pad_token_id,
        )
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def task_head(model: PreTrainedModel) -> list[torch.nn.Parameter]:
    """The parameters outside the pretrained backbone (``model.base_model``): a classification head.

    A new head starts from random, so every variant trains it (PEFT's ``modules_to_save`` habit).
    For classification models only: a causal LM's untied ``lm_head`` is pretrained, not new.
    """
    backbone = {id(parameter) for parameter in model.base_model.parameters()}
    return [parameter for parameter in model.parameters() if id(parameter) not in backbone]


def targeted_layers(model: torch.nn.Module, target_modules: list[str]) -> Iterator[tuple[str, torch.nn.Module]]:
    """The layers a variant adapts, by the rule the variants apply (PEFT's: the full name or its last parts)."""
    from lorabench.variants._layers import matches_target

    for name, module in model.named_modules():
        if matches_target(name, target_modules) and hasattr(module, "weight"):
            yield name, module


def unmatched_targets(layer_names: Iterable[str], target_modules: list[str]) -> list[str]:
    """The target names that match none of ``layer_names``: each one a typo the variant would silently skip."""
    from lorabench.variants._layers import matches_target

    names = list(layer_names)
    return [target for target in target_modules if not any(matches_target(name, [target]) for name in names)]


SET_BY_TOKENIZER = ("vocab_size", "pad_token_id", "eos_token_id", "bos_token_id")
"""Architecture settings :func:`build_embedded` takes from the character tokenizer, never from the config."""


def architecture_problem(architecture: dict[str, Any]) -> str | None:
    """Why ``architecture`` would not build the model it describes, or None: a key its transformers config class
    does not know would be stored and ignored (``hiden_size`` leaves the default 4096), so it is refused."""
    config_class = _CONFIGS[architecture["family"]]
    known = set(config_class().to_dict()) | set(config_class.attribute_map)
    for key in architecture:
        if key in SET_BY_TOKENIZER:
            return f"{key!r} is set from the embedded character tokenizer; leave it out"
        if key != "family" and key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            settable = ", ".join(sorted(known - set(SET_BY_TOKENIZER)))
            return f"{config_class.__name__} has no setting {key!r}{hint}; its settings: {settable}"
    return None


def target_layers(architecture: dict[str, Any], target_modules: list[str]) -> dict[str, torch.nn.Module]:
    """Every targeted layer of a weightless (meta-device) instance: shapes and layer types without weights.

    Used to check ranks and layer types against the model before any job runs, without allocating weights.
    """
    with torch.device("meta"):
        model = build_embedded(architecture, character_tokenizer(), seed=0)
    return dict(targeted_layers(model, target_modules))


def checkpoint_target_layers(path: str, target_modules: list[str]) -> dict[str, torch.nn.Module] | None:
    """Like :func:`target_layers` for a hub name or local folder, from its ``config.json`` alone.

    ``None`` when the config cannot be resolved here (a hub name offline, or not cached), so the
    pre-check is skipped and the train job records the failure instead.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception:  # OSError, ValueError: unresolvable name, no network, no cache
        if (Path(path) / "config.json").exists():
            raise  # a local folder whose config is broken is the user's to fix now
        return None
    return config_target_layers(config, target_modules)


def config_target_layers(config: PretrainedConfig, target_modules: list[str]) -> dict[str, torch.nn.Module]:
    """Every targeted layer of the backbone ``config`` describes, from a meta-device instance.

    The backbone (``AutoModel``) holds every adapted layer of a causal LM and of an encoder alike, whatever
    head a task puts on top.
    """
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return dict(targeted_layers(model, target_modules))


def target_weights(model: torch.nn.Module, target_modules: list[str]) -> dict[str, torch.Tensor]:
    """A detached copy of every targeted layer's weight, as ``(m, n)``."""
    return {name: layer_weight(module).detach().clone() for name, module in targeted_layers(model, target_modules)}


def layer_weight(module: torch.nn.Module) -> torch.Tensor:
    """The weight as ``(m, n)`` = (out, in): GPT-2's ``Conv1D`` stores its transpose."""
    return module.weight if isinstance(module, torch.nn.Linear) else module.weight.T
