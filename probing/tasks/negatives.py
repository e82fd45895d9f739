"""Drawing negative captions of an image: random or hard, never a true caption, never twice.

A negative of image i is a caption of ANOTHER image of the same task split
that passes, in this order:

1. not i's own text (case and final period ignored) and not a negative i
   already has (no caption repeated within an image);
2. ``hard`` only: cosine similarity to each of i's own captions at most
   `similarity_ceiling` (a likely paraphrase of a true caption);
3. the truth check (`probing.data.truth`): not true of image i.

``random`` draws uniformly until a candidate passes. ``hard`` follows Tao et
al.: for EACH positive, `num_candidates` captions are sampled from the
split's other images, and the one most similar to that positive that passes
is taken. When no candidate passes, a random negative is drawn instead (a
fallback, counted). `SplitCounts` keeps what was rejected and why, for
task_stats.json.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def normalise_caption(text: str) -> str:
    """The form used to decide that two captions are the same text."""
    return " ".join(text.lower().strip().rstrip(".").split())


@dataclass
class SplitCounts:
    """What negative sampling did in one split."""

    negatives: int = 0
    rejected_true: int = 0  # candidates the truth check found true of the image
    rejected_ceiling: int = 0  # hard candidates above the similarity ceiling
    rejected_own_text: int = 0  # candidates whose text is one of the image's own captions
    rejected_repeat: int = 0  # candidates already a negative of the image
    fallbacks: int = 0  # hard negatives replaced by random ones
    reuse: Counter = field(default_factory=Counter)  # normalised text -> times used

    def summary(self) -> dict[str, Any]:
        return {
            "negatives": self.negatives,
            "rejected_true": self.rejected_true,
            "rejected_similarity_ceiling": self.rejected_ceiling,
            "rejected_own_text": self.rejected_own_text,
            "rejected_repeat_within_image": self.rejected_repeat,
            "hard_negative_fallbacks": self.fallbacks,
            "distinct_negative_captions": len(self.reuse),
            "largest_negative_reuse": max(self.reuse.values(), default=0),
        }


# Candidates sorted up front; the rest only if all of these fail.
_SORTED_FIRST = 64

# judge(pool index, image id) -> True when the caption is true of the image.
Judge = Callable[[int, int], bool]


def _most_similar_first(similarity: np.ndarray):
    """Candidate positions by descending similarity: the top few, then (if needed) all."""
    head = min(_SORTED_FIRST, similarity.size)
    if head < similarity.size:
        top = np.argpartition(-similarity, head - 1)[:head]
        yield top[np.argsort(-similarity[top], kind="stable")]
    yield np.argsort(-similarity, kind="stable")


class CaptionPool:
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
        # Own captions are contiguous: [start, start + count) in pool order.
        self._span: dict[int, tuple[int, int]] = {}
        start = 0
        for i in ids:
            self._span[int(i)] = (start, len(captions[i]))
            start += len(captions[i])
        self._text_ids: dict[str, int] = {}
        self.text_ids = np.array([self.text_id(t) for t in self.texts], dtype=np.int64)
        self.vectors = vectors[[text_index[t] for t in self.texts]] if vectors is not None else None

    def text_id(self, caption: str) -> int:
        """An integer standing for the caption's normalised text."""
        return self._text_ids.setdefault(normalise_caption(caption), len(self._text_ids))

    def _others(self, image_id: int) -> int:
        return len(self.texts) - self._span[image_id][1]

    def _other_index(self, image_id: int, k: np.ndarray) -> np.ndarray:
        """The k-th caption not owned by `image_id` (k an array)."""
        start, count = self._span[image_id]
        return np.where(k >= start, k + count, k)

    def random_negative(
        self,
        rng: np.random.Generator,
        image_id: int,
        own: set[int],
        chosen: set[int],
        judge: Judge | None,
        counts: SplitCounts,
    ) -> int | None:
        """A uniform draw among other images' captions that passes every check, or None."""
        others = self._others(image_id)
        if others <= 0:
            return None
        # Draws are O(1) when most captions pass, the normal case; the full
        # scan in shuffled order only runs on degenerate pools.
        for _ in range(64):
            index = int(self._other_index(image_id, rng.integers(others, size=1))[0])
            if self._passes(index, image_id, own, chosen, None, None, judge, counts):
                return index
        order = self._other_index(image_id, rng.permutation(others))
        for index in order.tolist():
            if self._passes(index, image_id, own, chosen, None, None, judge, counts):
                return index
        return None

    def hard_negative(
        self,
        rng: np.random.Generator,
        image_id: int,
        own: set[int],
        chosen: set[int],
        positive_vector: np.ndarray,
        own_vectors: np.ndarray,
        num_candidates: int,
        ceiling: float,
        judge: Judge | None,
        counts: SplitCounts,
        pool_similarity: np.ndarray | None = None,
    ) -> int | None:
        """The most similar of `num_candidates` sampled captions that passes, or None.

        `pool_similarity` (the positive's similarity to every pool caption,
        from `similarities`) saves gathering the sample's vectors; it is
        cheaper when the pool is small against the candidates drawn.
        """
        assert self.vectors is not None
        others = self._others(image_id)
        if others <= 0:
            return None
        draw = rng.choice(others, size=min(num_candidates, others), replace=False)
        sample = self._other_index(image_id, draw)
        if pool_similarity is not None:
            similarity = pool_similarity[sample]
        else:
            similarity = self.vectors[sample] @ positive_vector
        # Most similar first; the checks run only until one candidate passes,
        # which is almost always among the first few, so only those are sorted
        # unless all of them fail.
        tried: set[int] = set()
        for order in _most_similar_first(similarity):
            for j in order.tolist():
                if j in tried:
                    continue
                tried.add(j)
                index = int(sample[j])
                if self._passes(index, image_id, own, chosen, own_vectors, ceiling, judge, counts):
                    return index
        return None

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        """[pool, len(vectors)] cosine similarity of every pool caption to each vector."""
        assert self.vectors is not None
        return self.vectors @ vectors.T

    def _passes(
        self,
        index: int,
        image_id: int,
        own: set[int],
        chosen: set[int],
        own_vectors: np.ndarray | None,
        ceiling: float | None,
        judge: Judge | None,
        counts: SplitCounts,
    ) -> bool:
        """Checks 1-3 of the module docstring, counting the rejections."""
        text_id = int(self.text_ids[index])
        if text_id in own:
            counts.rejected_own_text += 1
            return False
        if text_id in chosen:
            counts.rejected_repeat += 1
            return False
        if own_vectors is not None and float((own_vectors @ self.vectors[index]).max()) > ceiling:
            counts.rejected_ceiling += 1
            return False
        if judge is not None and judge(index, image_id):
            counts.rejected_true += 1
            return False
        return True
