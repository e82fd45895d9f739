"""`build_task`: from `config.data` and `config.task` to a `TaskTable`.

Steps: open the dataset (generating the synthetic one if asked), draw or
reuse the image-grouped splits, check the images of those splits (skipping
unreadable ones only if the config allows), then build the caption or
category rows. Every random choice is drawn from a stream keyed by the seed,
a fixed purpose tag and the image id, so the result is identical for the
same inputs and one image's rows do not depend on the others.
"""

from __future__ import annotations

import os
import time
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from probing.cache import cache_root
from probing.data.coco import CocoDataset, DatasetError
from probing.data.synthetic_coco import ensure_synthetic_coco
from probing.store.layout import SPLIT_CODES, SPLIT_NAMES
from probing.tasks import config as task_config_module
from probing.tasks.caption import build_caption_rows, needs_embeddings
from probing.tasks.category import build_category_rows
from probing.tasks.custom import build_custom_rows
from probing.tasks.embeddings import check_encoder_available
from probing.tasks.splits import SplitError, draw_splits, load_splits
from probing.tasks.table import TaskTable, task_statistics
from probing.tasks.templates import resolve_template


def _check_choice(config: ml_collections.ConfigDict, field: str, allowed, prefix: str) -> None:
    value = config[field]
    if value not in allowed:
        raise ValueError(
            f"{prefix}.{field}={value!r} is not valid; expected one of "
            f"{', '.join(repr(a) for a in allowed)}"
        )


def synthetic_root(data: ml_collections.ConfigDict) -> str:
    """Where the synthetic dataset of these data settings is cached."""
    base = data.synthetic.cache_dir or cache_root()
    name = f"n{int(data.synthetic.num_images)}_seed{int(data.synthetic.seed)}"
    return os.path.join(os.path.expanduser(base), "synthetic_coco", name)


def open_dataset(data: ml_collections.ConfigDict) -> CocoDataset:
    """The CocoDataset the data config points at (generating a synthetic one)."""
    _check_choice(data, "source", task_config_module.DATA_SOURCES, "data")
    splits = [s.strip() for s in str(data.coco_splits).split(",") if s.strip()]
    if not splits:
        raise DatasetError("data.coco_splits is empty; name at least one split, e.g. 'train2017'")
    if data.source == "synthetic":
        root = ensure_synthetic_coco(
            synthetic_root(data), int(data.synthetic.num_images), int(data.synthetic.seed), splits
        )
    else:
        if not data.coco_root:
            raise DatasetError("data.source='coco' needs data.coco_root (the COCO directory)")
        root = os.path.expanduser(str(data.coco_root))
    return CocoDataset(root, splits)


def _check_images(
    dataset: CocoDataset, splits: dict[str, list[int]], data: ml_collections.ConfigDict
) -> tuple[dict[str, list[int]], list[dict[str, Any]]]:
    """Drops unreadable images (if allowed) or raises on the first one."""
    _check_choice(data, "image_check", task_config_module.IMAGE_CHECKS, "data")
    if data.image_check == "none":
        return splits, []
    skipped: list[dict[str, Any]] = []
    kept: dict[str, list[int]] = {}
    total = sum(len(ids) for ids in splits.values())
    done, start = 0, time.monotonic()
    for name in SPLIT_NAMES:
        kept[name] = []
        for image_id in splits[name]:
            try:
                dataset.check_image(image_id, decode=data.image_check == "decode")
                kept[name].append(image_id)
            except DatasetError as e:
                if not data.skip_unreadable_images:
                    raise
                skipped.append(
                    {
                        "image_id": int(image_id),
                        "path": dataset.image_path(image_id),
                        "reason": str(e),
                    }
                )
            done += 1
            if done % 5000 == 0:
                rate = done / max(time.monotonic() - start, 1e-9)
                logging.info(
                    "checked %d / %d images (%.0f/s, ETA %.0fs)",
                    done,
                    total,
                    rate,
                    (total - done) / rate,
                )
    if skipped:
        logging.warning(
            "skipped %d unreadable image(s) (data.skip_unreadable_images=True), e.g. %s",
            len(skipped),
            skipped[0]["path"],
        )
    for name, ids in kept.items():
        if not ids:
            raise SplitError(f"split {name!r} is empty after skipping unreadable images")
    return kept, skipped


def build_task(
    data_config: ml_collections.ConfigDict, task_config: ml_collections.ConfigDict, seed: int
) -> TaskTable:
    """The rows of the task `task_config` on the data of `data_config`."""
    task = task_config
    builder = task.get("builder")
    if not builder:
        _check_choice(task, "kind", task_config_module.TASK_KINDS, "task")
    _check_choice(task, "negatives", task_config_module.NEGATIVE_KINDS, "task")
    _check_choice(task, "category_form", task_config_module.CATEGORY_FORMS, "task")
    _check_choice(task, "category_prompt", task_config_module.CATEGORY_PROMPTS, "task")
    _check_choice(task, "blind", task_config_module.BLIND_MODES, "task")
    withcat = task.kind == "category" and task.category_prompt == "withcat"
    if not builder:
        template_name, template = resolve_template(str(task.prompt), task.kind, withcat)

    if task.kind == "caption" and needs_embeddings(task):
        # Seconds before the dataset is read and long before the VLM is loaded.
        check_encoder_available(str(task.hard_negatives.embedding_model))
    dataset = open_dataset(data_config)
    if task.reuse_splits_from:
        splits = load_splits(os.path.expanduser(str(task.reuse_splits_from)), dataset.image_ids)
        logging.info("reusing splits from %s", task.reuse_splits_from)
    else:
        splits = draw_splits(dataset.image_ids, dict(task.split_sizes), seed)
    splits, skipped = _check_images(dataset, splits, data_config)

    fixed_prompt = str(task.image_only_prompt) if task.blind == "image_only" else None
    if builder:
        custom_rows = build_custom_rows(str(builder), dataset, splits, task, seed)
        examples, split_names = custom_rows.examples, custom_rows.split_names
        labels, label_mask = custom_rows.labels, custom_rows.label_mask
        label_names, label_kind = list(custom_rows.label_names), custom_rows.label_kind
        extra_stats, split_stats = {**custom_rows.stats, "builder": str(builder)}, {}
        template_name, template = "custom", custom_rows.prompt_template
        if fixed_prompt is not None:
            for example in examples:
                example["prompt"] = fixed_prompt
    elif task.kind == "caption":
        caption_rows = build_caption_rows(dataset, splits, task, template, seed)
        examples, split_names = caption_rows.examples, caption_rows.split_names
        labels = np.asarray(caption_rows.labels, dtype=np.int8)
        label_mask, label_names, label_kind = None, ["entailed"], "binary"
        extra_stats, split_stats = caption_rows.stats, caption_rows.split_stats
        if fixed_prompt is not None:
            for example in examples:
                example["prompt"] = fixed_prompt
    else:
        category_rows = build_category_rows(dataset, splits, task, template, seed, fixed_prompt)
        examples, split_names = category_rows.examples, category_rows.split_names
        num_columns = len(category_rows.label_names)
        labels = np.asarray(category_rows.labels, dtype=np.int8).reshape(-1, num_columns)
        label_mask = np.asarray(category_rows.masks, dtype=np.uint8).reshape(-1, num_columns)
        label_names, label_kind = category_rows.label_names, "multilabel"
        extra_stats, split_stats = category_rows.stats, {}

    # Put row, split and image id first: examples.jsonl is read by people too.
    examples = [
        {"row": row, "image_id": e["image_id"], "split": split, **e}
        for row, (e, split) in enumerate(zip(examples, split_names, strict=True))
    ]
    table = TaskTable(
        task=str(task.kind),
        label_kind=label_kind,
        label_names=label_names,
        prompt_template=fixed_prompt if fixed_prompt is not None else template,
        examples=examples,
        labels=labels,
        label_mask=label_mask,
        split=np.asarray([SPLIT_CODES[s] for s in split_names], dtype=np.int8),
        group=np.asarray([e["image_id"] for e in examples], dtype=np.int64),
        splits=splits,
        stats={},
        image_paths={i: dataset.image_path(i) for ids in splits.values() for i in ids},
        with_image=task.blind != "text_only",
        template_name=template_name if fixed_prompt is None else "image_only",
        blind=str(task.blind),
        skipped=skipped,
    )
    table.stats = {**task_statistics(table), **extra_stats, "seed": int(seed)}
    for name, entry in split_stats.items():
        table.stats["splits"][name]["negative_sampling"] = entry
    logging.info(
        "task %s: %d rows over %d images (%s)",
        table.task,
        table.num_rows,
        len(table.image_paths),
        ", ".join(f"{n} {len(table.splits[n])}" for n in SPLIT_NAMES),
    )
    return table
