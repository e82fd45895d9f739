"""Caption-image entailment rows: positives and random or hard negatives.

For every image, `positives_per_image` of its captions are positives (label
1) and each gets one negative (label 0): a caption of ANOTHER image of the
same task split, so no caption text crosses the train/test boundary, drawn
by `probing.tasks.negatives` (random, or Tao et al.'s hard negatives with
candidates sampled per positive), never one of the image's own texts, never
twice for one image, and never a caption the truth check finds true of the
image (`task.negative_check`, `probing.data.truth`).

task_stats.json gets, per split (under "splits"/<split>/"negatives"), what
was rejected and why, how often a negative text is reused, and the
false-negative rate of the kept negatives: exact on the generated dataset,
the noun-match estimate elsewhere (0 by construction when that check
rejected them; `noun_match_undecided` is the share it cannot judge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from probing.data.coco import CocoDataset, DatasetError
from probing.data.truth import NounTruth, SceneTruth, caption_truth, records_scenes
from probing.progress import Progress
from probing.store.layout import SPLIT_NAMES
from probing.tasks import embeddings
from probing.tasks.negatives import CaptionPool, SplitCounts, normalise_caption
from probing.tasks.templates import render_caption

POSITIVE_STREAM = 2
NEGATIVE_STREAM = 3

__all__ = ["CaptionRows", "build_caption_rows", "normalise_caption"]


@dataclass
class CaptionRows:
    examples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    split_names: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    # Per split: what negative sampling rejected and how good the kept ones are.
    split_stats: dict[str, dict[str, Any]] = field(default_factory=dict)


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


def _quality(
    kept: Sequence[tuple[str, int]], exact: SceneTruth | None, nouns: NounTruth
) -> dict[str, Any]:
    """False-negative rate of kept (caption, image id) negatives, exact or estimated."""
    n = max(len(kept), 1)
    nouns_said = [nouns.is_true(c, i) for c, i in kept]
    result: dict[str, Any] = {
        "noun_match_rate": round(sum(v is True for v in nouns_said) / n, 4),
        "noun_match_undecided": round(sum(v is None for v in nouns_said) / n, 4),
    }
    if exact is not None:
        false_negatives = sum(bool(exact.is_true(c, i)) for c, i in kept)
        result["false_negative_method"] = "exact"
    else:
        false_negatives = sum(v is True for v in nouns_said)
        result["false_negative_method"] = "noun_match"
    result["false_negatives"] = false_negatives
    result["false_negative_rate"] = round(false_negatives / n, 4)
    return result


def _block_similarity(
    pool: CaptionPool,
    ids: Sequence[int],
    positives_of: Mapping[int, list[str]],
    vectors: np.ndarray,
    text_index: Mapping[str, int],
) -> dict[int, np.ndarray]:
    """Image id -> [pool, positives] similarity, for a block of images at once."""
    texts = [t for i in ids for t in positives_of[i]]
    product = pool.similarities(vectors[[text_index[t] for t in texts]])
    result, column = {}, 0
    for image_id in ids:
        width = len(positives_of[image_id])
        result[image_id] = product[:, column : column + width]
        column += width
    return result


def needs_embeddings(task: ml_collections.ConfigDict) -> bool:
    """Whether the caption rows of `task` need the sentence encoder (hard negatives, stats)."""
    return task.negatives == "hard" or bool(task.similarity_stats)


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

    vectors, text_index = None, {}
    if needs_embeddings(task):
        texts = sorted({t for c in captions.values() for t in c})
        text_index = {t: n for n, t in enumerate(texts)}
        hn = task.hard_negatives
        vectors = embeddings.embed_texts(
            texts, hn.embedding_model, hn.cache_dir, int(hn.batch_size), hn.device
        )

    truth = caption_truth(dataset, str(task.negative_check), float(task.min_area))
    nouns = truth if isinstance(truth, NounTruth) else NounTruth(dataset, float(task.min_area))
    # The exact measurement needs no check to be on: generated data is measured always.
    exact = truth if isinstance(truth, SceneTruth) else None
    if exact is None and records_scenes(dataset):
        exact = SceneTruth(dataset)
    hard = task.negatives == "hard"
    hn = task.hard_negatives
    rows = CaptionRows()
    similarities: list[float] = []
    short_images = 0
    for split in SPLIT_NAMES:
        ids = list(splits[split])
        pool = CaptionPool(ids, captions, vectors, text_index)
        counts = SplitCounts()
        kept: list[tuple[str, int]] = []
        judge = None
        if truth is not None:
            judge = lambda index, image_id, pool=pool: bool(  # noqa: E731
                truth.is_true(pool.texts[index], image_id)
            )
        positives_of = {}
        for image_id in ids:
            own = captions[image_id]
            chosen = np.random.default_rng([seed, POSITIVE_STREAM, image_id]).choice(
                len(own), size=min(k, len(own)), replace=False
            )
            short_images += len(own) < k
            positives_of[image_id] = [own[j] for j in sorted(chosen.tolist())]
        # A small pool (against the candidates drawn) is scored against a
        # block of images' positives in one matrix product instead of
        # gathering every positive's sample: the same numbers, far fewer reads.
        whole_pool = hard and len(pool.texts) <= 4 * int(hn.num_candidates)
        block: dict[int, np.ndarray] = {}
        what = f"{'hard' if hard else 'random'} negatives ({split})"
        progress = Progress(what, len(ids), unit="images")
        for done, image_id in enumerate(ids):
            own = captions[image_id]
            own_text_ids = {pool.text_id(t) for t in own}
            positives = positives_of[image_id]
            negative_rng = np.random.default_rng([seed, NEGATIVE_STREAM, image_id])
            own_vectors = vectors[[text_index[t] for t in own]] if hard else None
            if whole_pool and image_id not in block:
                block = _block_similarity(
                    pool, ids[done : done + 64], positives_of, vectors, text_index
                )
            pool_similarity = block.get(image_id)
            used: set[int] = set()
            for number, positive in enumerate(positives):
                index = None
                if hard:
                    index = pool.hard_negative(
                        negative_rng,
                        image_id,
                        own_text_ids,
                        used,
                        vectors[text_index[positive]],
                        own_vectors,
                        int(hn.num_candidates),
                        float(hn.similarity_ceiling),
                        judge,
                        counts,
                        None if pool_similarity is None else pool_similarity[:, number],
                    )
                    counts.fallbacks += index is None
                if index is None:
                    index = pool.random_negative(
                        negative_rng, image_id, own_text_ids, used, judge, counts
                    )
                if index is None:
                    raise DatasetError(
                        f"split {split!r} has no caption of another image that can serve as a "
                        f"negative for image id {image_id} (false of it, not yet used for it); "
                        "use more images per split"
                    )
                negative = pool.texts[index]
                used.add(int(pool.text_ids[index]))
                counts.negatives += 1
                counts.reuse[normalise_caption(negative)] += 1
                kept.append((negative, int(image_id)))
                similarity = None
                if vectors is not None:
                    similarity = round(
                        float(vectors[text_index[positive]] @ vectors[text_index[negative]]), 4
                    )
                    similarities.append(similarity)
                for text, owner, label in (
                    (positive, image_id, 1),
                    (negative, int(pool.owners[index]), 0),
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
            progress.update(1)
        progress.close()
        rows.split_stats[split] = {**counts.summary(), **_quality(kept, exact, nouns)}
    if short_images:
        logging.warning(
            "%d image(s) have fewer than %d captions; all of theirs were used", short_images, k
        )
    rows.stats = {
        "negatives": str(task.negatives),
        "negative_check": truth.kind if truth is not None else "none",
        "positives_per_image": k,
        "images_with_fewer_captions": int(short_images),
        "hard_negative_fallbacks": sum(
            s["hard_negative_fallbacks"] for s in rows.split_stats.values()
        ),
    }
    if hard:
        rows.stats["num_candidates_per_positive"] = int(hn.num_candidates)
    if vectors is not None:
        rows.stats["embedding_model"] = str(hn.embedding_model)
        rows.stats["pair_similarity"] = _similarity_summary(similarities)
    return rows
