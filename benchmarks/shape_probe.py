"""Do a trained checkpoint's image tokens encode object categories? A quick linear read-out.

  python benchmarks/shape_probe.py --family=qwen2_vl                  # the committed checkpoint
  python benchmarks/shape_probe.py --family=qwen2_vl --checkpoint=DIR # another one
  python benchmarks/shape_probe.py --family=qwen2_vl --train_a        # the recipe's stage A only (4 min)
  python benchmarks/shape_probe.py --family=qwen2_vl --train_a --set steps_a=600 \
      --set object_weight=0 --set fresh_images_a=false \
      --vision patch_size=14 --vision spatial_merge_size=2            # the recipe before version 5
  python benchmarks/shape_probe.py --family=fast_vlm --train_a --frozen_stages=0 ...

For N images of the demo's generator seed (0, never trained on), the mean of
the image tokens the decoder receives (the projector's output: decoder layer
0 under pooling image_mean; stage B leaves the tower and projector frozen, so
stage A alone decides them) is read out per category by a logistic
regression (5-fold cross-validation, standardised features, balanced class
weights). Printed: per-category ROC-AUC, the macro-F1 of the read-out and of
the strongest trivial baseline (always positive: 2p / (1 + p) per
category), and the same for the 8 object colours as a sanity check.
One thread, as training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from probing.data.synthetic_coco import CATEGORY_NAMES, OBJECT_COLOURS, generate_scene


def image_token_means(model, processor, family, scenes) -> np.ndarray:
    """[N, hidden] mean projected image token of every scene."""
    rows = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(scenes), 64):
            prepared = [family.prepare(processor, s.image) for s in scenes[start : start + 64]]
            for cached in family.frozen_b(model, prepared):
                tokens = family.projector(model)(cached[None] if cached.dim() == 2 else cached)
                rows.append(tokens.reshape(-1, tokens.shape[-1]).mean(0).numpy())
    return np.stack(rows)


def labels(scenes) -> tuple[np.ndarray, np.ndarray]:
    categories = np.zeros((len(scenes), len(CATEGORY_NAMES)), np.int64)
    colours = np.zeros((len(scenes), len(OBJECT_COLOURS)), np.int64)
    for i, s in enumerate(scenes):
        for obj in s.objects:
            categories[i, obj.category_index] = 1
            colours[i, list(OBJECT_COLOURS).index(obj.colour)] = 1
    return categories, colours


def read_out(x: np.ndarray, y: np.ndarray, names) -> dict:
    aucs, f1s, base = {}, [], []
    for c, name in enumerate(names):
        target = y[:, c]
        scores = np.zeros(len(target))
        for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, target):
            scaler = StandardScaler().fit(x[train])
            probe = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced")
            probe.fit(scaler.transform(x[train]), target[train])
            scores[test] = probe.predict_proba(scaler.transform(x[test]))[:, 1]
        aucs[name] = round(float(roc_auc_score(target, scores)), 3)
        f1s.append(f1_score(target, scores > 0.5))
        p = target.mean()
        base.append(2 * p / (1 + p))
    return {
        "auc": aucs,
        "mean_auc": round(float(np.mean(list(aucs.values()))), 3),
        "macro_f1": round(float(np.mean(f1s)), 3),
        "always_positive_macro_f1": round(float(np.mean(base)), 3),
    }


def report(model, processor, family, n: int) -> dict:
    scenes = [generate_scene(0, 0, i) for i in range(n)]
    x = image_token_means(model, processor, family, scenes)
    categories, colours = labels(scenes)
    return {
        "category": read_out(x, categories, CATEGORY_NAMES),
        "colour": read_out(x, colours, list(OBJECT_COLOURS)),
    }


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="qwen2_vl")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--train_a", action="store_true", help="train a fresh stage A only")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], help="TrainSettings key=value")
    parser.add_argument("--vision", action="append", default=[], help="family.vision key=value")
    parser.add_argument("--frozen_stages", type=int, default=None, help="FastVLM stage-A freeze")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from absl import logging

    logging.set_verbosity(logging.INFO)
    from probing.models.trained import checkpoint_dir, world
    from probing.models.trained.families import family as family_of
    from probing.models.trained.train import TrainSettings, load_world, train_vision

    family = family_of(args.family)
    if args.frozen_stages is not None:
        family.frozen_stages = args.frozen_stages
    if args.vision:
        family.vision = dict(family.vision)
        for item in args.vision:
            key, value = item.split("=", 1)
            family.vision[key] = _value(value)
    started = time.time()
    if args.train_a:
        settings = TrainSettings(steps_a=family.steps_a, **family.settings)
        for item in args.set:
            key, value = item.split("=", 1)
            setattr(settings, key, _value(value))
        torch.manual_seed(settings.seed)
        scenes = [world.scene(world.TRAIN_SPLIT_INDEX, i) for i in range(settings.train_images)]
        texts = [c for s in scenes for c in s.captions] + [world.naming_answer(s) for s in scenes]
        model, processor = family.build(world.tokenizer_corpus(texts))
        train = load_world(family, processor, scenes)
        t0 = time.time()
        train_vision(model, family, train, settings, processor)
        print(f"stage A: {time.time() - t0:.1f} s", flush=True)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        path = args.checkpoint or checkpoint_dir(args.family)
        model = AutoModelForImageTextToText.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)
    result = report(model, processor, family, args.images)
    result["seconds"] = round(time.time() - started, 1)
    result["parameters"] = sum(p.numel() for p in model.parameters())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
