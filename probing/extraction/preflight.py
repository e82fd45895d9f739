"""Checks that fail fast, before any work: a hub id that cannot be had, prompt lengths vs context.

`prompt_token_counts` also feeds the work plan (rows are sorted by it into
forward batches with less padding).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probing.extraction.batches import RejectedInput, load_rgb
from probing.extraction.settings import ExtractionError
from probing.hub import hub_offline


def prompt_token_counts(
    adapter, examples: Sequence[dict[str, Any]], with_image: bool
) -> np.ndarray:
    """Text tokens of every row's chat-rendered prompt (image placeholders unexpanded)."""
    texts = adapter.render_prompts([e["prompt"] for e in examples], with_image=with_image)
    encoded = adapter.tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.asarray([len(ids) for ids in encoded], dtype=np.int64)


def context_length(model: torch.nn.Module) -> int | None:
    """The decoder's maximum sequence length, if its config states one."""
    value = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    return int(value) if value else None


def check_context(adapter, table, token_counts: np.ndarray, limit: int | None) -> None:
    """Fails before any work if the longest prompt (with its image) exceeds the context."""
    if limit is None or not len(token_counts):
        return
    row = int(np.argmax(token_counts))
    example = table.examples[row]
    images = None
    if table.with_image:
        image_id = int(example["image_id"])
        try:
            images = [load_rgb(table.image_paths[image_id], image_id)]
        except RejectedInput:
            images = None  # reported (or skipped) when its batch runs
        if images is None:
            length = int(token_counts[row])
        else:
            length = int(adapter.build_batch(images, [example["prompt"]])["input_ids"].shape[1])
    else:
        length = int(adapter.build_batch(None, [example["prompt"]])["input_ids"].shape[1])
    if length > limit:
        raise ExtractionError(
            f"row {row} (image {example['image_id']}): its prompt is {length} tokens with the "
            f"image, longer than the model's context of {limit} (max_position_embeddings). "
            "Shorten the prompt template or lower the image resolution in the processor."
        )


def check_batch_length(inputs, rows, limit: int | None) -> None:
    """Fails if one forward batch (with its expanded image tokens) exceeds the context."""
    if limit is not None and inputs["input_ids"].shape[1] > limit:
        raise ExtractionError(
            f"rows {rows[0]}..{rows[-1]}: {inputs['input_ids'].shape[1]} tokens exceed the "
            f"model's context of {limit}; lower the image resolution or shorten the prompt"
        )


def check_hub_model(name: str, revision: str | None, timeout_s: float = 10.0) -> None:
    """Fails in seconds, before the task is built, if a hub id can be neither read nor fetched.

    A local directory passes. A hub id passes when its config.json is in the
    local cache; otherwise, in offline mode (HF_HUB_OFFLINE) it fails at once
    saying so, and online it must answer the hub within `timeout_s`.
    """
    from huggingface_hub import HfApi, try_to_load_from_cache

    from probing.models import ModelLoadError

    if os.path.isdir(name):
        return
    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        return
    where = f"model.name {name!r}" + (f" (revision {revision})" if revision else "")
    if hub_offline():
        raise ModelLoadError(
            f"{where} is a hub id and offline mode is on (HF_HUB_OFFLINE / "
            "TRANSFORMERS_OFFLINE), but it is not in the local cache; download it where there "
            f"is network (`huggingface-cli download {name}`) or point model.name at a local "
            "directory"
        )
    try:
        HfApi().model_info(name, revision=revision, timeout=timeout_s)
    except Exception as error:  # connection, auth and not-found errors share no base type
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelLoadError(
            f"{where}: the hub did not answer within {timeout_s:.0f} s and the model is not in "
            f"the local cache ({first}); check the network or the id, set HF_TOKEN for a gated "
            "model, or point model.name at a local directory"
        ) from None
