"""`build_summary`: summary.json's content from the tidy rows of metrics.csv.

The trainer (probing.probes.results) and the test fixtures (probing.testing)
both build summary.json here, so the two cannot drift apart. Per layer, split
and metric it holds the seed summary of probing.probes.stats (mean, std,
Student-t 95% CI, n); the best layer is chosen on the selection split's
headline metric and scored on the scoring split (WORKSPACE.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from probing.probes.stats import seed_summary
from probing.store.layout import HEADLINE_METRIC, SCORING_SPLIT, SELECTION_SPLIT, SPLIT_NAMES

# One row of metrics.csv: (layer, seed, split, metric, value).
MetricRow = tuple[int, int, str, str, Any]


def build_summary(
    rows: Iterable[MetricRow],
    *,
    pooling: str,
    label_kind: str,
    hyperparameters: Mapping[int, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """summary.json: per layer, split and metric the seed summary; the best layer.

    Args:
      rows: the (layer, seed, split, metric, value) rows of metrics.csv; values
        may be numbers or their text. Layers are listed in first-seen order and
        every seed that has a row counts in num_seeds.
      pooling: the probes/<pooling> folder the summary describes.
      label_kind: "binary" or "multilabel"; picks the headline metric.
      hyperparameters: layer -> the grid point chosen for it; written per layer
        when given.
    """
    headline = HEADLINE_METRIC[label_kind]
    # (layer, split) -> metric -> values over seeds, all in first-seen order.
    grouped: dict[tuple[int, str], dict[str, list[float]]] = {}
    layer_order: dict[int, None] = {}
    seeds = set()
    for layer, seed, split_name, metric, value in rows:
        layer_order.setdefault(layer)
        seeds.add(seed)
        grouped.setdefault((layer, split_name), {}).setdefault(metric, []).append(float(value))
    layers = []
    for layer in layer_order:
        entry: dict[str, Any] = {"layer": int(layer)}
        for split_name in SPLIT_NAMES:
            entry[split_name] = {
                metric: seed_summary(np.asarray(values))
                for metric, values in grouped.get((layer, split_name), {}).items()
            }
        if hyperparameters is not None:
            entry["hyperparameters"] = dict(hyperparameters[layer])
        layers.append(entry)

    def mean_of(entry: dict[str, Any], split_name: str) -> float:
        mean = entry[split_name][headline]["mean"]
        return -np.inf if mean is None else mean

    best = max(layers, key=lambda e: mean_of(e, SELECTION_SPLIT))  # first layer wins ties
    best_scored = best[SCORING_SPLIT][headline]
    return {
        "pooling": pooling,
        "label_kind": label_kind,
        "headline_metric": headline,
        "num_layers": len(layers),
        "num_seeds": len(seeds),
        "layers": layers,
        "best_layer": {
            "layer": best["layer"],
            "metric": headline,
            "split": SCORING_SPLIT,
            "mean": best_scored["mean"],
            "ci95": best_scored["ci95"],
            "val_mean": best[SELECTION_SPLIT][headline]["mean"],
            "selected_on": SELECTION_SPLIT,
        },
    }
