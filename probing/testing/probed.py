"""Probed workdirs: fabricated probe results that peak at a chosen depth, for report tests.

`write_probed_workdir` writes what `probing.report` reads (manifest.json,
config.json, examples.jsonl and probes/<pooling>/{metrics,curves}.csv,
summary.json) with plausible per-layer curves that peak at a chosen depth,
through the contract of probing.store.layout: the manifest comes from
`new_manifest`, the metric names from probing.probes.metrics and summary.json
from the trainer's own `build_summary`.
No features and no model are involved, so tests and examples of the report
stage run in a blink and do not depend on the extraction or training code.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from probing.probes.identity import run_columns
from probing.probes.metrics import (
    BEST_EPOCH,
    CATEGORIES_LEFT_OUT,
    LOSS,
    SCORES,
    SELECTIVITY,
    category_metric,
    control_metric,
    majority_metric,
)
from probing.probes.stats import CI_LABEL
from probing.probes.summary import build_summary
from probing.store.layout import (
    CONFIG_JSON,
    CURVES_COLUMNS,
    CURVES_CSV,
    EXAMPLES_JSONL,
    HEADLINE_METRIC,
    MANIFEST_JSON,
    METRICS_COLUMNS,
    METRICS_CSV,
    PROBE_CONFIG_JSON,
    SCORING_SPLIT,
    SPLIT_NAMES,
    SUMMARY_JSON,
    new_manifest,
    probe_file,
)
from probing.store.workdir import Workdir

DEFAULT_CATEGORIES = ("circle", "square", "triangle", "star")


def _layer_profile(num_layers: int, peak_layer: int, low: float, high: float) -> np.ndarray:
    """A rise-then-fall curve from `low` at layer 0 to `high` at `peak_layer`."""
    layers = np.arange(num_layers)
    rise = np.clip(layers / max(peak_layer, 1), 0.0, 1.0)
    fall = np.clip((layers - peak_layer) / max(num_layers - 1 - peak_layer, 1), 0.0, 1.0)
    return low + (high - low) * (rise - 0.35 * fall)


def _tidy_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode()


def write_probed_workdir(
    location: str,
    *,
    model_id: str = "tiny:qwen2_vl",
    task: str = "caption",
    num_layers: int = 5,
    num_seeds: int = 3,
    poolings: Sequence[str] = ("mean",),
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    peak_layer: int | None = None,
    random_init: bool = False,
    blind: str | None = None,
    with_controls: bool = True,
    with_first_tokens: bool = False,
    num_epochs: int = 4,
    num_examples: int = 40,
    seed: int = 0,
    with_intervals: bool = True,
    category_prompt: str | None = None,
    category_form: str = "all",
) -> Workdir:
    """Writes a workdir whose probes/<pooling>/ hold fabricated results.

    Args:
      location: directory to write (created).
      model_id: manifest["model"]["id"].
      task: "caption" gives a binary task; any other name a multilabel one
        over `categories`.
      num_layers: hidden states L+1.
      num_seeds: probe seeds per layer.
      poolings: probes/<pooling> folders to write.
      categories: multilabel label names.
      peak_layer: layer of the best headline metric (default: 2/3 depth).
      random_init: manifest["model"]["random_init"].
      blind: config.json["task"]["blind"] ("text_only", "image_only" or None).
      with_controls: also write control_*, selectivity and majority_* metrics.
      with_first_tokens: examples.jsonl rows carry "first_token_topk".
      num_epochs: epochs of the fabricated loss curves.
      num_examples: rows of examples.jsonl.
      seed: seed of the noise, so every call with the same arguments writes
        the same files.
      with_intervals: summary.json carries `ci95` intervals (fabricated: the
        seed mean ± 0.04, in the schema the trainer's bootstrap writes) and
        trivial baselines; False writes the summary of a run trained without
        the bootstrap (seed spread only).
      category_prompt: "nocat" or "withcat" makes examples.jsonl a category
        task's rows as probing.tasks builds them (present, candidates,
        positives; WithCat rows listed and target), over `num_examples`
        images, with first tokens that name the first category when present.
      category_form: config.json["task"]["category_form"] of such a workdir.
    """
    rng = np.random.default_rng(seed)
    workdir = Workdir(location)
    binary = task == "caption"
    label_names = ["matches"] if binary else list(categories)
    peak = (2 * (num_layers - 1)) // 3 if peak_layer is None else peak_layer
    high = 0.6 if random_init else 0.7 if blind else 0.9
    label_kind = "binary" if binary else "multilabel"
    headline_name = HEADLINE_METRIC[label_kind]
    workdir.write_json(
        MANIFEST_JSON,
        new_manifest(
            model={
                "id": model_id,
                "revision": "local",
                "family": model_id.split(":")[-1].split("/")[-1],
                "random_init": random_init,
            },
            library_versions={"torch": "2.14.1", "transformers": "5.0.0", "numpy": "2.4"},
            dtype="float32",
            feature_dtype="float32",
            num_examples=num_examples,
            num_layers=num_layers,
            hidden_size=8,
            poolings=list(poolings),
            label_kind=label_kind,
            label_names=label_names,
            task=task,
            prompt_template="This image contains: {caption}.\nIs this right?",
            complete=True,
            date="2025-01-01T00:00:00Z",
        ),
    )
    task_config: dict[str, Any] = {"name": task, "blind": blind}
    if category_prompt is not None:
        task_config.update(category_prompt=category_prompt, category_form=category_form)
    workdir.write_json(CONFIG_JSON, {"task": task_config})
    if category_prompt is not None:
        rows = _category_rows(rng, num_examples, list(categories), category_prompt == "withcat")
        workdir.write_jsonl(EXAMPLES_JSONL, rows)
    examples = []
    tokens_positive = ["person", "man", "A", "a", "woman"]
    tokens_negative = ["A", "a", "the", "and", "dog"]
    for row in range(num_examples):
        label = row % 2
        example: dict[str, Any] = {
            "row": row,
            "image_id": row // 2,
            "prompt": "...",
            "split": SPLIT_NAMES[row % 3],
            "label": label,
        }
        if with_first_tokens:
            pool = tokens_positive if label else tokens_negative
            first = pool[int(rng.integers(len(pool)))]
            example["first_token_topk"] = [[first, 0.6], ["the", 0.1]]
        examples.append(example)
    if category_prompt is None:
        workdir.write_jsonl(EXAMPLES_JSONL, examples)

    for pooling_index, pooling in enumerate(poolings):
        headline_profile = _layer_profile(num_layers, peak, 0.55, high - 0.05 * pooling_index)
        metric_rows: list[tuple[Any, ...]] = []
        names = SCORES[label_kind]
        per_category = [] if binary else [category_metric("f1", c) for c in categories]
        for layer in range(num_layers):
            for seed_id in range(num_seeds):
                for split in SPLIT_NAMES:
                    headline = headline_profile[layer] + rng.normal(0, 0.015)
                    values = {name: headline + rng.normal(0, 0.02) for name in names}
                    values[headline_name] = headline
                    for offset, name in enumerate(per_category):
                        values[name] = headline - 0.05 * offset + rng.normal(0, 0.02)
                    if with_controls:
                        control = 0.5 + rng.normal(0, 0.01)
                        values[control_metric(headline_name)] = control
                        values[SELECTIVITY] = headline - control
                        values[majority_metric("accuracy")] = 0.5
                    values[LOSS] = 1.0 - headline
                    if not binary:
                        values[CATEGORIES_LEFT_OUT] = 1  # one category without positives
                    values[BEST_EPOCH] = float(num_epochs - 1)
                    metric_rows.extend(
                        (layer, seed_id, split, name, f"{value:.6f}")
                        for name, value in values.items()
                    )
        curve_rows = []
        for layer in range(num_layers):
            floor = 1.0 - headline_profile[layer]
            for seed_id in range(num_seeds):
                for epoch in range(num_epochs):
                    train_loss = floor * 0.8 + 0.7 * np.exp(-epoch) + rng.normal(0, 0.005)
                    val_loss = floor + 0.6 * np.exp(-epoch) + rng.normal(0, 0.005)
                    curve_rows.append((layer, seed_id, epoch, "train", f"{train_loss:.6f}"))
                    curve_rows.append((layer, seed_id, epoch, "val", f"{val_loss:.6f}"))
        # The run's identifying columns lead every row, as probing.probes.results writes them.
        run = run_columns(workdir.manifest(), {"task": task_config}, pooling)
        prefix = tuple(run.values())
        workdir.write_bytes(
            probe_file(pooling, METRICS_CSV),
            _tidy_csv((*run, *METRICS_COLUMNS), [prefix + tuple(r) for r in metric_rows]),
        )
        workdir.write_bytes(
            probe_file(pooling, CURVES_CSV),
            _tidy_csv((*run, *CURVES_COLUMNS), [prefix + tuple(r) for r in curve_rows]),
        )
        extras = _fabricated_intervals(metric_rows, headline_name) if with_intervals else {}
        workdir.write_json(
            probe_file(pooling, SUMMARY_JSON),
            build_summary(metric_rows, pooling=pooling, label_kind=label_kind, **extras),
        )
        workdir.write_json(probe_file(pooling, PROBE_CONFIG_JSON), {"num_seeds": num_seeds})
    return workdir


# Half-width of the fabricated intervals; the strongest baseline of every
# fabricated run sits at 0.6, so the first layers (from 0.55) do not beat it.
FABRICATED_HALF_WIDTH = 0.04
FABRICATED_BASELINE = 0.6


def _fabricated_intervals(rows: Sequence[tuple[Any, ...]], headline: str) -> dict[str, Any]:
    """build_summary's intervals, interval_info and baselines for fabricated rows."""
    sums: dict[tuple[int, str], list[float]] = {}
    for layer, _, split, metric, value in rows:
        if split == SCORING_SPLIT:
            sums.setdefault((layer, metric), []).append(float(value))
    intervals: dict[int, dict[str, list[float]]] = {}
    for (layer, metric), values in sums.items():
        mean = float(np.mean(values))
        intervals.setdefault(layer, {})[metric] = [
            mean - FABRICATED_HALF_WIDTH,
            mean + FABRICATED_HALF_WIDTH,
        ]
    strongest = {"baseline": "always_positive", "value": FABRICATED_BASELINE}
    return {
        "intervals": intervals,
        "interval_info": {"ci95": CI_LABEL, "fabricated": True},
        "baselines": {
            "values": {"always_positive": {headline: FABRICATED_BASELINE}},
            "strongest": {headline: strongest},
        },
    }


def _category_rows(
    rng: np.random.Generator, num_images: int, categories: list[str], withcat: bool
) -> list[dict[str, Any]]:
    """Category rows of `num_images` images, form "all", as probing.tasks writes them.

    The greedy first token is the first category's name for most images that
    contain it and "a" otherwise, so a first-token table has something to show.
    """
    rows: list[dict[str, Any]] = []
    for image in range(num_images):
        # At least one category per image, as in COCO and the generated data.
        present = sorted(c for c in categories if rng.random() < 0.4) or [categories[-1]]
        split = SPLIT_NAMES[image % 3]
        token = categories[0] if categories[0] in present and rng.random() < 0.8 else "a"
        base = {"image_id": image, "split": split, "present": present}
        tail = {"first_token_topk": [[token, 0.6], ["the", 0.1]]}
        if not withcat:
            rows.append({**base, "prompt": "Objects:", "candidates": categories,
                         "positives": present, **tail})  # fmt: skip
            continue
        absent = [c for c in categories if c not in present]
        if absent:
            rows.append({**base, "prompt": "Objects: " + ", ".join(present), "listed": present,
                         "target": None, "candidates": absent, "positives": [], **tail})  # fmt: skip
        for target in present:
            listed = [c for c in present if c != target]
            rows.append({**base, "prompt": "Objects: " + ", ".join(listed), "listed": listed,
                         "target": target, "candidates": [target], "positives": [target],
                         **tail})  # fmt: skip
    return [{"row": row, **example} for row, example in enumerate(rows)]
