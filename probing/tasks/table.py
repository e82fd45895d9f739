"""`TaskTable`: the rows of one probing task, ready to be written to a workdir.

Row `i` of `examples`, `labels`, `label_mask`, `split` and `group` describe
the same example (WORKSPACE.md). The extraction stage writes `examples` to
examples.jsonl, the arrays to arrays/*, `splits` to splits.json, `stats` to
task_stats.json and `skipped` to skipped.jsonl, and feeds the images of
`image_paths` to the model (none when `with_image` is False).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from probing.store.layout import SPLIT_NAMES


@dataclasses.dataclass
class TaskTable:
    task: str  # "caption" | "category"
    label_kind: str  # "binary" | "multilabel"
    # binary: one name for the positive class; multilabel: the K category names.
    label_names: list[str]
    # The template every prompt was rendered from (the image-only baseline's
    # fixed prompt when blind="image_only").
    prompt_template: str
    # One dict per row: row, image_id, prompt, split ("train" / "val" /
    # "test"); caption rows add caption, caption_image_id, label and
    # pair_similarity; category rows add present (every category the image
    # shows), candidates and positives (withcat rows also listed and target).
    examples: list[dict[str, Any]]
    labels: np.ndarray  # int8 [N] or [N, K]
    label_mask: np.ndarray | None  # uint8 [N, K], multilabel only
    split: np.ndarray  # int8 [N]: 0 train, 1 val, 2 test
    group: np.ndarray  # int64 [N]: image id
    splits: dict[str, list[int]]  # image ids per split (splits.json)
    stats: dict[str, Any]  # task_stats.json
    image_paths: dict[int, str]  # image id -> file path, for every image in `splits`
    with_image: bool  # False for the text-only blind baseline
    # Name of the template in probing.tasks.templates.TEMPLATES, or "custom".
    template_name: str = "custom"
    blind: str = "none"
    # {"image_id", "path", "reason"} of every image skipped as unreadable.
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return len(self.examples)

    def unique_prompts(self) -> int:
        """Distinct (image, prompt) pairs: the forward passes extraction really needs."""
        return len({(e["image_id"], e["prompt"]) for e in self.examples})


def task_statistics(table: TaskTable) -> dict[str, Any]:
    """Counts per split and label frequencies (merged into table.stats)."""
    per_split: dict[str, Any] = {}
    for code, name in enumerate(SPLIT_NAMES):
        rows = table.split == code
        entry: dict[str, Any] = {
            "rows": int(rows.sum()),
            "images": len(table.splits.get(name, [])),
        }
        if table.label_kind == "binary":
            labels = table.labels[rows]
            entry["positives"] = int((labels == 1).sum())
            entry["negatives"] = int((labels == 0).sum())
        else:
            assert table.label_mask is not None
            scored = table.label_mask[rows].astype(bool)
            labels = table.labels[rows].astype(bool)
            entry["positives"] = int((scored & labels).sum())
            entry["negatives"] = int((scored & ~labels).sum())
            entry["label_frequency"] = {
                category: {
                    "positives": int((scored[:, k] & labels[:, k]).sum()),
                    "scored": int(scored[:, k].sum()),
                }
                for k, category in enumerate(table.label_names)
            }
        per_split[name] = entry
    return {
        "task": table.task,
        "label_kind": table.label_kind,
        "template": table.template_name,
        "blind": table.blind,
        "rows": table.num_rows,
        "images": int(sum(len(ids) for ids in table.splits.values())),
        "unique_image_prompt_pairs": table.unique_prompts(),
        "skipped_images": len(table.skipped),
        "splits": per_split,
    }
