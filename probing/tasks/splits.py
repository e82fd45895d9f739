"""Image-grouped train/val/test splits and the split manifest (splits.json).

All rows of one image land in one split, so a probe is never tested on an
image it was trained on. The draw depends only on the seed and the sorted
pool of image ids. The manifest is ``{"train": [ids], "val": [ids],
"test": [ids]}`` with ids sorted; another run can reuse it to probe a second
model on exactly the same images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from probing.store.layout import SPLIT_NAMES, SPLITS_JSON

# Fixed stream tags, so each random decision of a task draws from its own
# stream and adding one decision never shifts another.
SPLIT_STREAM = 1


class SplitError(ValueError):
    """Split sizes or a split manifest cannot be satisfied or are malformed."""


def draw_splits(
    image_ids: Sequence[int], sizes: Mapping[str, int], seed: int
) -> dict[str, list[int]]:
    """Draws disjoint image sets of the given sizes; train=-1 takes the rest."""
    pool = sorted(int(i) for i in image_ids)
    wanted = {}
    for name in SPLIT_NAMES:
        if name not in sizes:
            raise SplitError(f"task.split_sizes lacks {name!r}; give train, val and test")
        wanted[name] = int(sizes[name])
    for name in ("val", "test"):
        if wanted[name] < 1:
            raise SplitError(
                f"task.split_sizes.{name}={wanted[name]}: every split needs at least one image"
            )
    fixed = wanted["val"] + wanted["test"]
    if wanted["train"] == -1:
        wanted["train"] = len(pool) - fixed
        if wanted["train"] < 1:
            raise SplitError(
                f"task.split_sizes: val + test = {fixed} images leave none for train; "
                f"the dataset has {len(pool)} images"
            )
    elif wanted["train"] < 1:
        raise SplitError(
            f"task.split_sizes.train={wanted['train']}: give a positive count or -1 (the rest)"
        )
    total = sum(wanted.values())
    if total > len(pool):
        raise SplitError(
            f"task.split_sizes asks for {total} images ({wanted}) but the dataset has only "
            f"{len(pool)}; lower the sizes or add images (data.coco_splits, "
            "data.synthetic.num_images)"
        )
    order = np.random.default_rng([seed, SPLIT_STREAM]).permutation(len(pool))
    shuffled = [pool[i] for i in order]
    splits, start = {}, 0
    # val and test first, so their images do not change when train grows.
    for name in ("val", "test", "train"):
        splits[name] = sorted(shuffled[start : start + wanted[name]])
        start += wanted[name]
    return {name: splits[name] for name in SPLIT_NAMES}


def load_splits(location: str, known_ids: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Reads a split manifest (a splits.json file or a workdir holding one)."""
    path = os.path.join(location, SPLITS_JSON) if os.path.isdir(location) else location
    if not os.path.isfile(path):
        raise SplitError(
            f"task.reuse_splits_from: {path} does not exist; give a splits.json file or the "
            "workdir of an earlier run"
        )
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise SplitError(f"split manifest {path} is not valid JSON: {e}") from e
    splits = {}
    for name in SPLIT_NAMES:
        ids = data.get(name) if isinstance(data, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise SplitError(f"split manifest {path}: field {name!r} must be a list of image ids")
        if not ids:
            raise SplitError(f"split manifest {path}: split {name!r} is empty")
        splits[name] = sorted(ids)
    check_disjoint(splits, path)
    if known_ids is not None:
        known = set(known_ids)
        for name, ids in splits.items():
            missing = [i for i in ids if i not in known]
            if missing:
                raise SplitError(
                    f"split manifest {path}: {len(missing)} {name} image id(s) are not in the "
                    f"dataset, e.g. {missing[:5]}; it was made for other data (check data.*)"
                )
    return splits


def check_disjoint(splits: Mapping[str, Sequence[int]], where: str = "splits") -> None:
    """Raises SplitError if an image id is in two splits."""
    seen: dict[int, str] = {}
    for name, ids in splits.items():
        for image_id in ids:
            if image_id in seen:
                raise SplitError(
                    f"{where}: image id {image_id} is in both {seen[image_id]!r} and {name!r}"
                )
            seen[image_id] = name
