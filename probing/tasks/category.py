"""Object-category rows from instance annotations (multilabel with a mask).

The K label columns are the dataset's categories (form ``all``), a named
subset (form ``subset``), or either of these with only a few sampled
candidates scored per image (form ``candidates``, the 2025 study: 3
candidates, half positive on average). A column is *scored* for a row where
`label_mask` is 1; labels come only from instance annotations with area >=
`min_area`.

Prompts:

* ``nocat``: one row per image; the prompt names no category.
* ``withcat`` (Tao et al.): the probe of category c sees the image's other
  categories listed, c left out, in shuffled order. For a category absent
  from the image "the others" are all of its categories, the same for every
  absent c, so one row per image lists them all and scores every absent
  scored column at once (labels 0); each present scored category c gets a
  row of its own listing the rest and scoring column c only (label 1).
`labels` always holds the image's true presence vector; the mask selects. So
  rows whose prompts would coincide are extracted once, the task still fits
  the multilabel contract, and no prompt ever names a category its row
  scores as present. The listed names are the image's categories among all
  of the dataset's, not only the scored ones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from probing.data.coco import CocoDataset, DatasetError
from probing.data.synthetic_coco import PARAMS_FILE
from probing.store.layout import SPLIT_NAMES
from probing.tasks.templates import render_categories

CANDIDATE_STREAM = 4
LISTING_STREAM = 5

# The 2025 study's 40 object types (its Limitations section: "only 40 object
# types"; the list is the first 40 COCO categories, as in its public code
# JDev2001/ULM_Probing_VLMs, src/data/dataset_loader.py).
STUDY2025_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle",
)  # fmt: skip
# task.category_subset may name one of these instead of listing categories.
# On the generated dataset (which has none of them) a named subset means all
# of its own categories.
NAMED_SUBSETS: dict[str, tuple[str, ...]] = {"study2025": STUDY2025_CATEGORIES}


@dataclass
class CategoryRows:
    label_names: list[str]
    examples: list[dict[str, Any]] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    split_names: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def parse_category_list(value: str | Sequence[str]) -> list[str]:
    """A comma-separated string or a sequence of names, stripped, empties dropped."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(name).strip() for name in items if str(name).strip()]


def _resolve_subset(dataset: CocoDataset, value: str) -> list[str]:
    """Names of `task.category_subset`: a comma-separated list or a name in NAMED_SUBSETS."""
    if value.strip() not in NAMED_SUBSETS:
        return parse_category_list(value)
    names = list(NAMED_SUBSETS[value.strip()])
    known = set(dataset.category_names)
    if not known & set(names) and os.path.isfile(os.path.join(dataset.root, PARAMS_FILE)):
        # The generated dataset has none of COCO's categories: score all of its own.
        logging.info("category_subset %r: generated dataset, using all its categories", value)
        return []
    return names


def label_columns(dataset: CocoDataset, task: ml_collections.ConfigDict) -> list[str]:
    """The K category names of the label columns, in dataset (COCO id) order."""
    known = dataset.category_names
    subset = _resolve_subset(dataset, str(task.category_subset))
    unknown = [name for name in subset if name not in known]
    if unknown:
        raise DatasetError(
            f"task.category_subset names {', '.join(repr(n) for n in unknown)}, not categories "
            f"of the dataset; known: {', '.join(known)}"
        )
    if task.category_form == "subset" and not subset:
        raise DatasetError(
            "task.category_form='subset' needs task.category_subset, e.g. 'dog,cat,person'"
        )
    if task.category_form == "all" or not subset:
        return known
    chosen = set(subset)
    return [name for name in known if name in chosen]


def _scored_columns(
    present: np.ndarray, form: str, per_image: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of the label columns scored for one image."""
    if form != "candidates":
        return np.arange(present.size)
    positives = np.flatnonzero(present)
    negatives = np.flatnonzero(~present)
    # Half of the candidates positive, the odd one decided by a coin, so the
    # positive rate is 1/2 in expectation; clipped by what the image offers.
    num_positive = per_image // 2 + int(per_image % 2 == 1 and rng.random() < 0.5)
    num_positive = min(num_positive, positives.size)
    num_negative = min(per_image - num_positive, negatives.size)
    num_positive = min(per_image - num_negative, positives.size)
    chosen = np.concatenate(
        [
            rng.choice(positives, size=num_positive, replace=False),
            rng.choice(negatives, size=num_negative, replace=False),
        ]
    )
    return np.sort(chosen.astype(np.int64))


def build_category_rows(
    dataset: CocoDataset,
    splits: Mapping[str, Sequence[int]],
    task: ml_collections.ConfigDict,
    template: str,
    seed: int,
    fixed_prompt: str | None = None,
) -> CategoryRows:
    """Rows of the category task; `fixed_prompt` replaces every prompt (image-only baseline)."""
    columns = label_columns(dataset, task)
    column_of = {name: n for n, name in enumerate(columns)}
    per_image = int(task.candidates_per_image)
    if task.category_form == "candidates" and not 1 <= per_image <= len(columns):
        raise ValueError(
            f"task.candidates_per_image={per_image}: must be between 1 and the number of "
            f"categories ({len(columns)})"
        )
    withcat = task.category_prompt == "withcat"
    rows = CategoryRows(label_names=list(columns))
    images_without_categories = 0

    def add(split: str, example: dict[str, Any], labels: np.ndarray, scored: np.ndarray):
        mask = np.zeros(len(columns), dtype=np.uint8)
        mask[scored] = 1
        example["candidates"] = [columns[c] for c in scored]
        example["positives"] = [columns[c] for c in scored if labels[c]]
        if fixed_prompt is not None:
            example["prompt"] = fixed_prompt
        rows.examples.append(example)
        rows.labels.append(labels.astype(np.int8))
        rows.masks.append(mask)
        rows.split_names.append(split)

    for split in SPLIT_NAMES:
        for image_id in splits[split]:
            image_categories = dataset.categories(image_id, float(task.min_area))
            present = np.zeros(len(columns), dtype=bool)
            for name in image_categories:
                if name in column_of:
                    present[column_of[name]] = True
            images_without_categories += not present.any()
            rng = np.random.default_rng([seed, CANDIDATE_STREAM, image_id])
            scored = _scored_columns(present, task.category_form, per_image, rng)
            # Every category the image shows (not only scored ones): what
            # Tao's Table 1 splits rows by. Never part of a prompt.
            base = {"image_id": int(image_id), "present": sorted(image_categories)}
            if not withcat:
                prompt = render_categories(template, [])
                add(split, {**base, "prompt": prompt}, present, scored)
                continue
            listing_rng = np.random.default_rng([seed, LISTING_STREAM, image_id])
            everything = sorted(image_categories)
            absent_scored = scored[~present[scored]]
            if absent_scored.size:
                listed = [everything[j] for j in listing_rng.permutation(len(everything))]
                example = {
                    **base,
                    "prompt": render_categories(template, listed),
                    "listed": listed,
                    "target": None,
                }
                add(split, example, present, absent_scored)
            for column in scored[present[scored]]:
                target = columns[column]
                others = [name for name in everything if name != target]
                listed = [others[j] for j in listing_rng.permutation(len(others))]
                example = {
                    **base,
                    "prompt": render_categories(template, listed),
                    "listed": listed,
                    "target": target,
                }
                add(split, example, present, np.array([column]))
    rows.stats = {
        "category_form": str(task.category_form),
        "category_prompt": str(task.category_prompt),
        "num_categories": len(columns),
        "min_area": float(task.min_area),
        "images_without_categories": int(images_without_categories),
    }
    return rows
