"""Tiny, randomly initialised checkpoints of real VLM architectures.

No machine of this project reaches the Hugging Face hub, yet tests and the
embedded demo must exercise exactly the code path that loads
``Qwen/Qwen2-VL-2B-Instruct`` or FastVLM. ``build_tiny_checkpoint(family)``
therefore writes, once, a local directory that ``from_pretrained`` loads like
the real checkpoint:

* the family's real model class with a few small decoder layers and a small
  vision tower, randomly initialised from a fixed seed;
* a BPE tokenizer trained on the fly (``tokenizers``) on caption-like text,
  with the family's special tokens (image / vision tokens, chat-template
  tokens, pad / eos): byte-level with Qwen2's pre-tokeniser, saved as
  Qwen2Tokenizer, for the Qwen2- and Llama-based families; SentencePiece-style
  ("▁" for spaces, byte fallback), saved as GemmaTokenizer, for PaliGemma and
  Gemma 3;
* the family's real image processor, configured so that a ~128×96 image gives
  a handful of image tokens (4 to 20), and the family's real processor with a
  chat template that renders prompts like the real one (PaliGemma has none).

Families: ``qwen2_vl``, ``qwen2_5_vl``, ``llava``, ``paligemma`` and ``gemma3``
pad on the left, ``fast_vlm`` and ``idefics3`` on the right, so code built on
them meets both conventions.
A config names such a checkpoint ``"tiny:<family>"``. Directories are cached
under ``$PROBING_CACHE_DIR`` (default ``~/.cache/probing``), keyed by family,
:data:`TINY_VERSION` and the transformers version, and written atomically so
concurrent builders never see a half-written checkpoint.

This module holds the public API and registers the ``tiny:`` prefix with
:func:`probing.models.loading.register_checkpoint_source`; the parts live in
``vocab`` (tokenizers), ``chat_templates``, ``common`` (seed and sizes) and
``builders_qwen2`` / ``builders_gemma`` (one builder per family).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from probing.cache import cache_root, publish_directory
from probing.models.loading import register_checkpoint_source
from probing.models.tiny.builders_gemma import build_gemma3, build_paligemma
from probing.models.tiny.builders_qwen2 import (
    build_fast_vlm,
    build_idefics3,
    build_llava,
    build_qwen2_5_vl,
    build_qwen2_vl,
)
from probing.models.tiny.common import BUILD_SEED

# Bump whenever a builder changes what it writes, so stale caches are ignored.
TINY_VERSION = "2"

# family name -> builder writing the checkpoint into an empty directory.
TINY_BUILDERS: dict[str, Callable[[Path], None]] = {
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "fast_vlm": build_fast_vlm,
    "llava": build_llava,
    "idefics3": build_idefics3,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
}


def tiny_families() -> tuple[str, ...]:
    """Families ``build_tiny_checkpoint`` can build."""
    return tuple(sorted(TINY_BUILDERS))


def _is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def build_tiny_checkpoint(family: str, cache_dir: str | None = None) -> str:
    """Returns the directory of the tiny ``family`` checkpoint, building it if needed.

    Args:
      family: one of :func:`tiny_families` (``"qwen2_vl"``, ``"qwen2_5_vl"``,
        ``"fast_vlm"``, ``"llava"``, ``"idefics3"``, ``"paligemma"``, ``"gemma3"``).
      cache_dir: where checkpoints are kept; default ``$PROBING_CACHE_DIR/tiny`` or
        ``~/.cache/probing/tiny``.

    Returns:
      A local directory that ``AutoProcessor.from_pretrained`` and
      ``AutoModelForImageTextToText.from_pretrained`` load.
    """
    if family not in TINY_BUILDERS:
        raise ValueError(
            f"No tiny checkpoint for family {family!r}; known tiny families: "
            f"{', '.join(tiny_families())}. Add a builder to TINY_BUILDERS in {__file__}."
        )
    root = Path(cache_dir) if cache_dir is not None else Path(cache_root()) / "tiny"
    key = f"{family}-v{TINY_VERSION}-transformers{transformers.__version__}"
    target = root / key
    if _is_checkpoint(str(target)):
        return str(target)

    def build(staging: str) -> None:
        # Weights come from the global torch RNG; fork it so a build neither
        # depends on nor disturbs the caller's random state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(BUILD_SEED)
            TINY_BUILDERS[family](Path(staging))

    publish_directory(target, build, _is_checkpoint, staging_prefix=f".{key}.")
    return str(target)


# model.name "tiny:<family>" resolves to build_tiny_checkpoint(family).
register_checkpoint_source("tiny", build_tiny_checkpoint, tiny_families)
