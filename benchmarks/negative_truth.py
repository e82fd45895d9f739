"""Caption negatives on generated data: how many are true of their image, with and without the check.

  python benchmarks/negative_truth.py                   # 2,000 images: ~4 min the first time
  python benchmarks/negative_truth.py --num_images=400  # (dataset, embeddings), ~1 min after

Builds Tao-style caption rows (5 positives per image, one negative each;
hard: the most similar of 5,000 captions sampled per positive, random:
uniform) on the generated COCO-format dataset, whose every caption records
what it asserts, with the truth check on (`task.negative_check=auto`, exact
here) and off (`none`), side by side. Printed per construction: the exact
false-negative rate of the kept negatives (all splits and per split),
within-image repeats, distinct negatives and the largest reuse of one,
positive-negative similarity, and the caption-words-only baseline accuracy
(probing.reporting.baselines): what a probe could score without the image.
The first run embeds the captions (all-MiniLM-L6-v2, cached afterwards).
"""

from __future__ import annotations

import collections
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.data.truth import SceneTruth
from probing.reporting.baselines import caption_baseline
from probing.tasks import build_task, default_data_config, default_task_config, open_dataset
from probing.tasks.negatives import normalise_caption

_NUM_IMAGES = flags.DEFINE_integer("num_images", 2000, "Generated images.")
_EVAL = flags.DEFINE_integer("eval_images", 200, "Images in each of val and test.")
_SEED = flags.DEFINE_integer("seed", 0, "Task seed.")


def _measure(data, negatives: str, check: str) -> list[str]:
    task = default_task_config()
    task.positives_per_image = 5
    task.negatives = negatives
    task.negative_check = check
    task.split_sizes.val = task.split_sizes.test = _EVAL.value
    start = time.monotonic()
    table = build_task(data, task, _SEED.value)
    seconds = time.monotonic() - start
    truth = SceneTruth(open_dataset(data))
    kept = [e for e in table.examples if e["label"] == 0]
    true = [bool(truth.is_true(e["caption"], e["image_id"])) for e in kept]
    per_split = collections.defaultdict(list)
    seen = collections.defaultdict(set)
    repeats = 0
    for example, is_true in zip(kept, true, strict=True):
        per_split[example["split"]].append(is_true)
        key = normalise_caption(example["caption"])
        repeats += key in seen[example["image_id"]]
        seen[example["image_id"]].add(key)
    sampling = {n: table.stats["splits"][n]["negative_sampling"] for n in per_split}
    split_rates = " ".join(f"{n} {sum(v) / len(v):.3f}" for n, v in per_split.items())
    return [
        f"{negatives} / check {check}",
        f"{sum(true) / len(true):.4f} ({sum(true)}/{len(true)}; {split_rates})",
        str(repeats),
        " ".join(
            f"{n} {s['distinct_negative_captions']}/{s['largest_negative_reuse']}"
            for n, s in sampling.items()
        ),
        f"{table.stats['pair_similarity']['mean']:.3f}",
        f"{caption_baseline(table.examples).metrics['accuracy']:.3f}",
        f"{seconds:.1f}",
    ]


def main(argv) -> None:
    del argv
    data = default_data_config()
    data.synthetic.num_images = _NUM_IMAGES.value
    header = [
        "construction",
        "exact false-negative rate",
        "repeats in an image",
        "distinct/largest reuse",
        "pair sim.",
        "caption-words acc.",
        "build s",
    ]
    rows = [_measure(data, n, c) for n in ("hard", "random") for c in ("auto", "none")]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    app.run(main)
