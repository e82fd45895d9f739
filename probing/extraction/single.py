"""Pooled features of new (image, prompt) pairs, computed exactly as extraction computes a row.

Extraction feeds rows of a task table through DataLoader workers
(`probing.extraction.batches`); a caller with a handful of its own images and
prompts has no table. `pooled_features` builds the same model inputs
(`ModelAdapter.build_batch`, which applies the chat template or the raw
format, and `ModelAdapter.prompt_spans`), runs them through the same hooked
forward (`PooledForward.run`), and converts the result to the workdir's
storage dtype (`to_storage`), so a probe sees what it would have seen in the
workdir. Prefix sharing is left out: it only changes speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from probing.data.images import UnreadableImage, open_image
from probing.extraction.batches import to_storage
from probing.extraction.forward import PooledForward
from probing.extraction.preflight import check_batch_length, context_length

# What a caller may pass as one image: a decoded image or a file path.
ImageLike = Image.Image | str


def as_rgb(image: ImageLike, index: int) -> Image.Image:
    """One image as RGB, as extraction decodes files (`open_image`)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        return open_image(str(image))
    except UnreadableImage as e:
        raise ValueError(f"images[{index}]: cannot read {e.path} ({e.reason})") from e


def check_pairs(images: Sequence[ImageLike] | None, prompts: Sequence[str], with_image: bool):
    """Raises ValueError (one line) unless images and prompts pair up as the workdir's rows did."""
    if isinstance(prompts, str):
        raise ValueError(
            "prompts must be a list of prompt strings, got one string; wrap it in [...]"
        )
    if isinstance(images, str | Image.Image):
        raise ValueError(
            "images must be a list (one image per prompt), got one image; wrap it in [...]"
        )
    if len(prompts) == 0:
        raise ValueError("no prompts given: pass at least one prompt (and its image)")
    if with_image and images is None:
        raise ValueError(
            "this workdir's rows carry images: pass one image (PIL or path) per prompt"
        )
    if not with_image and images is not None:
        raise ValueError("this workdir is text-only (manifest with_image false): pass images=None")
    if images is not None and len(images) != len(prompts):
        raise ValueError(
            f"{len(images)} images for {len(prompts)} prompts: pass one image per prompt"
        )


def pooled_features(
    model: torch.nn.Module,
    adapter,
    pooling: str,
    images: Sequence[ImageLike] | None,
    prompts: Sequence[str],
    feature_dtype: str,
    batch_size: int = 8,
) -> np.ndarray:
    """Features [n, L+1, D] of `pooling` at every layer, in the storage dtype `feature_dtype`.

    Args:
      model, adapter: from `probing.models.load_model` with the workdir's model config.
      pooling: a name of `probing.extraction.pooling` (the probe run's pooling).
      images: one image (PIL or file path) per prompt, or None for text-only workdirs.
      prompts: the full prompt texts, as examples.jsonl's `prompt` holds them (the
        task template already filled in; the chat template is applied here).
      feature_dtype: manifest["feature_dtype"].
      batch_size: rows per forward.
    """
    with_image = images is not None
    limit = context_length(model)
    device = next(model.parameters()).device
    out = []
    with PooledForward(model, adapter, (pooling,), with_image) as engine:
        for start in range(0, len(prompts), batch_size):
            stop = min(start + batch_size, len(prompts))
            batch_prompts = list(prompts[start:stop])
            batch_images = None
            if with_image:
                batch_images = [as_rgb(images[i], i) for i in range(start, stop)]
            inputs = adapter.build_batch(batch_images, batch_prompts)
            check_batch_length(inputs, list(range(start, stop)), limit)
            spans = torch.as_tensor(adapter.prompt_spans(batch_prompts, with_image))
            result = engine.run(adapter.to_model(inputs), spans.to(device))
            out.append(to_storage(result.pooled[pooling], feature_dtype))
    return np.concatenate(out)
