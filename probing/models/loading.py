"""Loading a frozen VLM, its processor and its adapter from a model config.

``load_model(config)`` accepts a hub id, a local checkpoint directory or
``"<prefix>:<name>"`` of a registered checkpoint source, e.g.
``"tiny:<family>"`` (a tiny random checkpoint built by
:func:`probing.models.tiny.build_tiny_checkpoint`) or ``"trained:<family>"``
(a tiny checkpoint trained on the generated world, :mod:`probing.models.trained`),
and loads all three through
``from_pretrained``, the path real checkpoints take. Everything that can fail
cheaply (name, dtype, device, config.json, family, processor) is checked
before the weights are read, so a bad config fails in seconds.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_collections
import torch
import transformers

from probing.models.base import PADDING_SIDES, PROMPT_FORMATS, ModelAdapter
from probing.models.registry import adapter_class_for

# Prefix -> module that registers that checkpoint source when imported. It is
# imported on the first name with the prefix, so this module never imports
# test-checkpoint code by itself. To add a source: write a module that calls
# register_checkpoint_source(prefix, resolve, names) at import time, and list
# it here.
CHECKPOINT_SOURCE_MODULES: dict[str, str] = {
    "tiny": "probing.models.tiny",
    "trained": "probing.models.trained",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = (None, "sdpa", "eager", "flash_attention_2")
DEVICES = ("auto", "cpu", "cuda")


class ModelLoadError(ValueError):
    """A model config names something that cannot be loaded."""


@dataclass(frozen=True)
class CheckpointSource:
    """Checkpoints named ``"<prefix>:<name>"``, built or found locally."""

    # name -> local checkpoint directory (built if needed).
    resolve: Callable[[str], str]
    # The names resolve accepts, listed when an unknown one is asked for.
    names: Callable[[], Sequence[str]]


# Prefix (without the colon) -> its source; filled by register_checkpoint_source.
CHECKPOINT_SOURCES: dict[str, CheckpointSource] = {}


def register_checkpoint_source(
    prefix: str, resolve: Callable[[str], str], names: Callable[[], Sequence[str]]
) -> None:
    """Makes ``model.name = "<prefix>:<name>"`` load ``resolve(name)``.

    Args:
      prefix: e.g. ``"tiny"``; no colon.
      resolve: returns the local checkpoint directory of a name in ``names()``.
      names: the names this source knows.
    """
    if not prefix or ":" in prefix:
        raise ValueError(f"checkpoint source prefix must be non-empty without ':', got {prefix!r}")
    CHECKPOINT_SOURCES[prefix] = CheckpointSource(resolve, names)


def _checkpoint_source(prefix: str) -> CheckpointSource | None:
    """The source registered for ``prefix``, importing its module on first use."""
    if prefix not in CHECKPOINT_SOURCES and prefix in CHECKPOINT_SOURCE_MODULES:
        importlib.import_module(CHECKPOINT_SOURCE_MODULES[prefix])
    return CHECKPOINT_SOURCES.get(prefix)


def default_model_config() -> ml_collections.ConfigDict:
    """The model section of a run config, with every field explained."""
    config = ml_collections.ConfigDict()
    # Hub id ("Qwen/Qwen2-VL-2B-Instruct"), local checkpoint directory,
    # "tiny:<family>" for a tiny random checkpoint of that family built locally
    # (families: probing.models.tiny.tiny_families()), or "trained:<family>"
    # for the tiny checkpoint trained on the generated world (qwen2_vl, fast_vlm).
    config.name = "tiny:qwen2_vl"
    # Hub revision (branch, tag or commit) to pin; None = the default branch.
    # Ignored for local directories and tiny checkpoints.
    config.revision = ml_collections.config_dict.placeholder(str)
    # Dtype the model runs in: "float32", "bfloat16" or "float16".
    config.dtype = "float32"
    # transformers attention kernel: None (its default), "sdpa", "eager" or
    # "flash_attention_2" (CUDA and the flash-attn package only).
    config.attn_implementation = ml_collections.config_dict.placeholder(str)
    # Run code shipped with the checkpoint. Off: only native transformers
    # architectures load, and nothing from the hub is executed.
    config.trust_remote_code = False
    # Same architecture with fresh random weights instead of the trained ones:
    # the untrained baseline. Needs only config.json, not the weights.
    config.random_init = False
    # Seed of the random weights when random_init is True.
    config.random_init_seed = 0
    # "auto" (CUDA if available, else CPU), "cpu" or "cuda" / "cuda:N".
    config.device = "auto"
    # How a prompt is put to the model: "chat" (the checkpoint's chat template:
    # system turn where the template has one, the image and prompt in a user
    # turn, the assistant header as generation prompt, so the "last" token is
    # the template's) or "raw" (the image placeholder, then the prompt text,
    # nothing else: how Tao et al. prompted base models; "last" is the prompt's
    # own last token). probing.models.base.PROMPT_FORMATS.
    config.prompt_format = "chat"
    # Tokenizer padding side for batches: None keeps the processor's own
    # ("left" for Qwen2-VL-Instruct); "left" or "right" overrides it.
    config.padding_side = ml_collections.config_dict.placeholder(str)
    # Your own ModelAdapter subclass, "package.module:Class", for a family probing
    # does not ship (probing.models.registry); None picks the adapter by the
    # checkpoint's model_type.
    config.adapter = ml_collections.config_dict.placeholder(str)
    return config


def resolve_model_path(name: str) -> str:
    """The path or hub id ``from_pretrained`` gets for ``name``.

    ``"<prefix>:<name>"`` of a registered checkpoint source (``tiny:<family>``)
    resolves through that source, which may build the checkpoint.
    """
    if not isinstance(name, str) or not name:
        raise ModelLoadError(f"model.name must be a non-empty string, got {name!r}")
    prefix, colon, rest = name.partition(":")
    source = _checkpoint_source(prefix) if colon else None
    if source is not None:
        known = source.names()
        if rest not in known:
            raise ModelLoadError(
                f"model.name {name!r}: no {prefix} checkpoint for family {rest!r}; "
                f"use one of {', '.join(f'{prefix}:{n}' for n in known)}"
            )
        return source.resolve(rest)
    looks_local = name.startswith(("/", "./", "../", "~")) or os.path.exists(name)
    if looks_local:
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelLoadError(
                f"model.name {name!r} is a local path but {os.path.join(path, 'config.json')} "
                "does not exist; point it at a directory written by save_pretrained"
            )
        _check_tokenizer_files(name, path)
        return path
    return name


# Files that hold a tokenizer's vocabulary, one of which every checkpoint needs.
# Without any, transformers builds an empty tokenizer without a word, and the
# run later fails on a baffling "image token count mismatch".
TOKENIZER_VOCAB_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _check_tokenizer_files(name: str, path: str) -> None:
    """A local checkpoint must carry its tokenizer's vocabulary (see TOKENIZER_VOCAB_FILES)."""
    present = os.listdir(path)
    if any(f in TOKENIZER_VOCAB_FILES or f.endswith(".tiktoken") for f in present):
        return
    raise ModelLoadError(
        f"model.name {name!r}: the checkpoint has no tokenizer files (none of "
        f"{', '.join(TOKENIZER_VOCAB_FILES)} in {path}); save the processor next to the model "
        "(processor.save_pretrained(path)) or copy the tokenizer files from the original "
        "checkpoint"
    )


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"model.device is {device!r} but CUDA is not available")
        return torch.device(device)
    raise ModelLoadError(f"model.device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")


def _check_choice(field: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ModelLoadError(f"model.{field} must be one of {choices}, got {value!r}")


def load_model(
    model_config: ml_collections.ConfigDict,
) -> tuple[torch.nn.Module, Any, ModelAdapter]:
    """Loads a frozen VLM, its processor and the family's adapter.

    Args:
      model_config: see :func:`default_model_config`.

    Returns:
      ``(model, processor, adapter)``; the model is in eval mode, on the
      configured device and dtype, with ``requires_grad`` off everywhere.
    """
    _check_choice("dtype", model_config.dtype, tuple(DTYPES))
    _check_choice("attn_implementation", model_config.attn_implementation, ATTN_IMPLEMENTATIONS)
    if model_config.padding_side is not None:
        _check_choice("padding_side", model_config.padding_side, PADDING_SIDES)
    _check_choice("prompt_format", model_config.prompt_format, PROMPT_FORMATS)
    device = _resolve_device(model_config.device)
    path = resolve_model_path(model_config.name)
    hub_kwargs: dict[str, Any] = {"trust_remote_code": bool(model_config.trust_remote_code)}
    if model_config.revision is not None and path == model_config.name:
        hub_kwargs["revision"] = model_config.revision

    try:
        hf_config = transformers.AutoConfig.from_pretrained(path, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load config.json of model {model_config.name!r} "
            f"(revision {model_config.revision!r}): {str(error).rstrip('.')}. Use a local checkpoint "
            "directory, 'tiny:<family>', 'trained:<family>', or a hub id already in the Hugging Face cache "
            "(HF_HUB_OFFLINE=1 forbids downloads)."
        ) from error
    adapter_class = adapter_class_for(
        hf_config.model_type,
        model_config.get("adapter"),
        source=f"config.json of {model_config.name!r}",
    )
    try:
        processor = transformers.AutoProcessor.from_pretrained(path, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"cannot load the processor of model {model_config.name!r}: {error}. A checkpoint "
            "needs its processor files (processor/tokenizer/preprocessor configs) next to "
            "config.json"
        ) from error

    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None and len(tokenizer) < 2:
        # A hub checkpoint missing its tokenizer files loads an empty tokenizer.
        raise ModelLoadError(
            f"model {model_config.name!r}: its tokenizer is empty ({len(tokenizer)} tokens), "
            "the checkpoint lacks its tokenizer files (tokenizer.json, vocab.json, ...); "
            "use a checkpoint that includes them"
        )

    model_kwargs: dict[str, Any] = {"dtype": DTYPES[model_config.dtype]}
    if model_config.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_config.attn_implementation
    if model_config.random_init:
        # Fork the RNG: the baseline's weights depend only on random_init_seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(model_config.random_init_seed)
            model = transformers.AutoModelForImageTextToText.from_config(
                hf_config, trust_remote_code=hub_kwargs["trust_remote_code"], **model_kwargs
            )
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(
            path, **hub_kwargs, **model_kwargs
        )
    model.to(device)
    model.eval()
    model.requires_grad_(False)

    adapter = adapter_class(model, processor, prompt_format=model_config.prompt_format)
    # The commit a hub id resolved to (None for local directories): what the
    # manifest records, since a branch name like "main" moves.
    adapter.resolved_revision = getattr(hf_config, "_commit_hash", None)
    if model_config.padding_side is not None:
        adapter.set_padding_side(model_config.padding_side)
    return model, processor, adapter
