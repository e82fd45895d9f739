"""Tasks of your own: a builder named by import path in the config writes the same rows.

    config.task.kind = "color"                          # the task's name in the workdir
    config.task.builder = "my_tasks.color:build_rows"   # package.module:function

`build_task` opens the dataset, draws the image-grouped splits and checks the
images as for the built-in tasks, then calls

    build_rows(dataset, splits, task_config, seed) -> TaskRows

with the CocoDataset (captions, instance annotations, image paths), the image
ids per split, the task config and the run's seed. The builder returns one
example per row, and the rest (row numbers, splits, groups, task_stats.json,
blind baselines) is done as for the built-in tasks, so the workdir follows
WORKSPACE.md and every later stage works unchanged. `validate_rows` checks
what a builder returns and names the builder and the bad field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from probing.imports import load_object
from probing.store.layout import LABEL_KINDS, SPLIT_NAMES


@dataclasses.dataclass
class TaskRows:
    """What a task builder returns; row i of every field describes the same example.

    Attributes:
      examples: one dict per row with at least "image_id" (an image of the
        split the row is in) and "prompt" (the text put to the model); any
        other JSON-able keys are kept in examples.jsonl.
      split_names: "train" / "val" / "test" per row: the split of its image.
      labels: [N] in {0, 1} (binary) or [N, K] (multilabel).
      label_names: binary: one name for the positive class; multilabel: K names.
      label_kind: "binary" or "multilabel".
      prompt_template: the template the prompts were rendered from (manifest).
      label_mask: [N, K] 1 = scored, multilabel only (default: all scored).
      stats: extra entries for task_stats.json.
    """

    examples: list[dict[str, Any]]
    split_names: list[str]
    labels: np.ndarray
    label_names: list[str]
    label_kind: str
    prompt_template: str
    label_mask: np.ndarray | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


def validate_rows(rows: Any, spec: str, splits: Mapping[str, Sequence[int]]) -> TaskRows:
    """`rows` as a checked TaskRows (labels int8, mask uint8); ValueError naming what is wrong."""
    where = f"task.builder={spec!r}"
    if not isinstance(rows, TaskRows):
        raise ValueError(
            f"{where} returned {type(rows).__name__}, not probing.tasks.custom.TaskRows"
        )
    n = len(rows.examples)
    if n == 0:
        raise ValueError(f"{where} returned no rows")
    if rows.label_kind not in LABEL_KINDS:
        raise ValueError(f"{where}: label_kind={rows.label_kind!r}; use one of {LABEL_KINDS}")
    labels = np.asarray(rows.labels)
    want_ndim = 1 if rows.label_kind == "binary" else 2
    if labels.ndim != want_ndim or labels.shape[0] != n:
        raise ValueError(
            f"{where}: labels have shape {labels.shape}; a {rows.label_kind} task of {n} rows "
            f"needs {'[N]' if want_ndim == 1 else '[N, K]'}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{where}: labels must be 0 or 1, found {sorted(set(np.unique(labels)))}")
    names_needed = 1 if want_ndim == 1 else labels.shape[1]
    if len(rows.label_names) != names_needed:
        raise ValueError(
            f"{where}: {len(rows.label_names)} label_names for {names_needed} label column(s)"
        )
    if len(rows.split_names) != n:
        raise ValueError(f"{where}: {len(rows.split_names)} split_names for {n} examples")
    members = {name: set(int(i) for i in ids) for name, ids in splits.items()}
    for row, (example, split) in enumerate(zip(rows.examples, rows.split_names, strict=True)):
        if split not in SPLIT_NAMES:
            raise ValueError(f"{where}: row {row} has split {split!r}; use one of {SPLIT_NAMES}")
        if not isinstance(example.get("prompt"), str) or "image_id" not in example:
            raise ValueError(f"{where}: row {row} needs a str 'prompt' and an 'image_id'")
        if int(example["image_id"]) not in members[split]:
            raise ValueError(
                f"{where}: row {row} is in split {split!r} but its image {example['image_id']} "
                "is not (splits are grouped by image: use the split of the row's image)"
            )
    mask = None
    if rows.label_kind == "multilabel":
        mask = np.ones_like(labels) if rows.label_mask is None else np.asarray(rows.label_mask)
        if mask.shape != labels.shape:
            raise ValueError(f"{where}: label_mask {mask.shape} differs from labels {labels.shape}")
        mask = mask.astype(np.uint8)
    return dataclasses.replace(rows, labels=labels.astype(np.int8), label_mask=mask)


def build_custom_rows(
    spec: str, dataset, splits: Mapping[str, Sequence[int]], task, seed: int
) -> TaskRows:
    """Imports the builder `spec` ("package.module:function"), runs it, checks its rows."""
    builder = load_object(spec, "task.builder")
    if not callable(builder):
        raise ValueError(f"task.builder={spec!r} is {builder!r}, not a function")
    return validate_rows(builder(dataset, splits, task, seed), spec, splits)
