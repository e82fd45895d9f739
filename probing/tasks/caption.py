"""Caption-image entailment rows: positives and random or hard negatives.

For every image, `positives_per_image` of its captions are positives (label
1) and each gets one negative (label 0): a caption of ANOTHER image of the
same task split, so no caption text crosses the train/test boundary.

* ``random``: drawn uniformly from the split's other captions.
* ``hard`` (Tao et al.): among `num_candidates` captions sampled from the
  split (one sample per image, shared by its positives; the image's own
  captions are dropped from it), the one most similar to the positive by
  sentence embedding, skipping candidates more similar than
  `similarity_ceiling` to any of the image's own captions (likely
  paraphrases of a true caption, hence true themselves).

Either way a candidate whose text equals one of the image's own captions
(case and final period ignored) is never a negative. When no candidate
survives the filters the negative falls back to a random one, and the count
of such fallbacks goes to task_stats.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from probing.data.coco import CocoDataset, DatasetError
from probing.store.layout import SPLIT_NAMES
from probing.tasks import embeddings
from probing.tasks.templates import render_caption

POSITIVE_STREAM = 2
NEGATIVE_STREAM = 3


def normalise_caption(text: str) -> str:
    """The form used to decide that two captions are the same text."""
    return " ".join(text.lower().strip().rstrip(".").split())


@dataclass
class CaptionRows:
    examples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    split_names: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _similarity_summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.quantile(array, [0.25, 0.5, 0.75])
    return {
        "mean": round(float(array.mean()), 4),
        "q25": round(float(q25), 4),
        "median": round(float(q50), 4),
        "q75": round(float(q75), 4),
        "min": round(float(array.min()), 4),
        "max": round(float(array.max()), 4),
        "n": len(values),
    }


class _CaptionPool:
    """The captions of one task split, with their owners, for drawing negatives."""

    def __init__(
        self,
        ids: Sequence[int],
        captions: Mapping[int, list[str]],
        vectors: np.ndarray | None,
        text_index: Mapping[str, int],
    ):
        self.texts = [t for i in ids for t in captions[i]]
        self.owners = np.array([i for i in ids for _ in captions[i]], dtype=np.int64)
        self._text_ids: dict[str, int] = {}
        self.text_ids = np.array(
            [self.text_id(t) for t in self.texts],
            dtype=np.int64,
        )
        self.vectors = vectors[[text_index[t] for t in self.texts]] if vectors is not None else None

    def text_id(self, caption: str) -> int:
        """An integer standing for the caption's normalised text."""
        return self._text_ids.setdefault(normalise_caption(caption), len(self._text_ids))

    def usable(self, indices: np.ndarray, image_id: int, own_text_ids: np.ndarray) -> np.ndarray:
        """Which pool entries may be negatives of `image_id`: other owner, other text."""
        return (self.owners[indices] != image_id) & ~np.isin(self.text_ids[indices], own_text_ids)

    def random_negative(
        self, rng: np.random.Generator, image_id: int, own_text_ids: np.ndarray
    ) -> int | None:
        """A uniformly drawn usable pool index, or None if there is none."""
        # Rejection sampling is O(1) per row when almost every caption is
        # usable, the normal case; the full scan only runs on degenerate pools.
        for _ in range(32):
            draws = rng.integers(len(self.texts), size=8)
            ok = draws[self.usable(draws, image_id, own_text_ids)]
            if ok.size:
                return int(ok[0])
        everything = np.arange(len(self.texts))
        everything = everything[self.usable(everything, image_id, own_text_ids)]
        return int(rng.choice(everything)) if everything.size else None

    def hard_negatives(
        self,
        rng: np.random.Generator,
        image_id: int,
        own_text_ids: np.ndarray,
        positive_vectors: np.ndarray,
        own_vectors: np.ndarray,
        num_candidates: int,
        ceiling: float,
    ) -> list[int | None]:
        """Per positive, the most similar usable candidate caption.

        One sample of `num_candidates` captions serves all positives of the
        image, so the candidate vectors are gathered once and scored in one
        matrix product. A candidate more similar than `ceiling` to ANY of the
        image's own captions is dropped: it likely paraphrases a true caption.
        """
        assert self.vectors is not None
        size = min(num_candidates, len(self.texts))
        sample = rng.choice(len(self.texts), size=size, replace=False)
        sample = sample[self.usable(sample, image_id, own_text_ids)]
        candidates = self.vectors[sample]
        sample = sample[(candidates @ own_vectors.T).max(axis=1, initial=-1.0) <= ceiling]
        if not sample.size:
            return [None] * len(positive_vectors)
        similarity = self.vectors[sample] @ positive_vectors.T  # [candidates, positives]
        best = np.argmax(similarity, axis=0)
        return [int(sample[b]) for b in best]


def build_caption_rows(
    dataset: CocoDataset,
    splits: Mapping[str, Sequence[int]],
    task: ml_collections.ConfigDict,
    template: str,
    seed: int,
) -> CaptionRows:
    """Rows (positive, negative, positive, negative, ...) image by image, split by split."""
    k = int(task.positives_per_image)
    if not 1 <= k <= 5:
        raise ValueError(f"task.positives_per_image={k}: must be between 1 and 5")
    captions = {i: dataset.captions(i) for ids in splits.values() for i in ids}
    no_caption = [i for i, c in captions.items() if not c]
    if no_caption:
        raise DatasetError(
            f"{len(no_caption)} image(s) have no caption in the captions file, e.g. image id "
            f"{no_caption[0]} ({dataset.image_path(no_caption[0])}); the caption task needs "
            "at least one caption per image"
        )

    need_embeddings = task.negatives == "hard" or bool(task.similarity_stats)
    vectors, text_index = None, {}
    if need_embeddings:
        texts = sorted({t for c in captions.values() for t in c})
        text_index = {t: n for n, t in enumerate(texts)}
        hn = task.hard_negatives
        vectors = embeddings.embed_texts(
            texts, hn.embedding_model, hn.cache_dir, int(hn.batch_size), hn.device
        )

    rows = CaptionRows()
    similarities: list[float] = []
    fallbacks = 0
    short_images = 0
    for split in SPLIT_NAMES:
        ids = list(splits[split])
        pool = _CaptionPool(ids, captions, vectors, text_index)
        for done, image_id in enumerate(ids):
            own = captions[image_id]
            own_text_ids = np.array([pool.text_id(t) for t in own], dtype=np.int64)
            chosen = np.random.default_rng([seed, POSITIVE_STREAM, image_id]).choice(
                len(own), size=min(k, len(own)), replace=False
            )
            short_images += len(own) < k
            positives = [own[j] for j in sorted(chosen.tolist())]
            negative_rng = np.random.default_rng([seed, NEGATIVE_STREAM, image_id])
            hard: list[int | None] = [None] * len(positives)
            if task.negatives == "hard":
                hard = pool.hard_negatives(
                    negative_rng,
                    image_id,
                    own_text_ids,
                    vectors[[text_index[p] for p in positives]],
                    vectors[[text_index[t] for t in own]],
                    int(task.hard_negatives.num_candidates),
                    float(task.hard_negatives.similarity_ceiling),
                )
                fallbacks += sum(h is None for h in hard)
            for positive, negative_index in zip(positives, hard, strict=True):
                if negative_index is None:
                    negative_index = pool.random_negative(negative_rng, image_id, own_text_ids)
                if negative_index is None:
                    raise DatasetError(
                        f"split {split!r} has no caption of another image that can serve "
                        f"as a negative for image id {image_id}; use more images per split"
                    )
                negative = pool.texts[negative_index]
                similarity = None
                if vectors is not None:
                    similarity = round(
                        float(vectors[text_index[positive]] @ vectors[text_index[negative]]), 4
                    )
                    similarities.append(similarity)
                for text, owner, label in (
                    (positive, image_id, 1),
                    (negative, int(pool.owners[negative_index]), 0),
                ):
                    example = {
                        "image_id": int(image_id),
                        "prompt": render_caption(template, text),
                        "caption": text,
                        "caption_image_id": owner,
                        "label": label,
                    }
                    if similarity is not None:
                        example["pair_similarity"] = similarity
                    rows.examples.append(example)
                    rows.labels.append(label)
                    rows.split_names.append(split)
            if (done + 1) % 5000 == 0:
                logging.info("caption rows (%s): %d / %d images", split, done + 1, len(ids))
    if short_images:
        logging.warning(
            "%d image(s) have fewer than %d captions; all of theirs were used", short_images, k
        )
    rows.stats = {
        "negatives": str(task.negatives),
        "positives_per_image": k,
        "images_with_fewer_captions": int(short_images),
        "hard_negative_fallbacks": int(fallbacks),
    }
    if vectors is not None:
        rows.stats["embedding_model"] = str(task.hard_negatives.embedding_model)
        rows.stats["pair_similarity"] = _similarity_summary(similarities)
    return rows
