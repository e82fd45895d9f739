"""`build_summary`: summary.json's content from the tidy rows of metrics.csv.

The trainer (probing.probes.results) and the test fixtures (probing.testing)
both build summary.json here, so the two cannot drift apart. Per layer, split
and metric it holds the mean over seeds, `ci95` (the cluster bootstrap over
test images, test split, when the trainer computed it) and `seed_spread`, `std`
and `n` over seeds (training noise, never a confidence interval); the best
layer is chosen on the selection split's headline metric and scored on the
scoring split, with its paired difference to the last layer. WORKSPACE.md
documents every field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from probing.probes.stats import seed_summary
from probing.store.layout import HEADLINE_METRIC, SCORING_SPLIT, SELECTION_SPLIT, SPLIT_NAMES

# One row of metrics.csv: (layer, seed, split, metric, value).
MetricRow = tuple[int, int, str, str, Any]
# Per layer, scoring split: does the headline's interval lie above the strongest baseline?
BEATS_BASELINE = "beats_strongest_baseline"
SEED_SPREAD = (
    "training noise: Student-t 95% interval of the mean over probe seeds (initialisation, "
    "minibatch order, dropout) on fixed train and test images; it says nothing about which "
    "images were sampled and is not a confidence interval of the test score"
)


def build_summary(
    rows: Iterable[MetricRow],
    *,
    pooling: str,
    label_kind: str,
    hyperparameters: Mapping[int, Mapping[str, float]] | None = None,
    intervals: Mapping[int, Mapping[str, list[float]]] | None = None,
    interval_info: Mapping[str, Any] | None = None,
    compare_layers: Callable[[int, int], Mapping[str, Any]] | None = None,
    baselines: Mapping[str, Any] | None = None,
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
      intervals: layer -> metric -> [low, high] on the scoring split (the image
        bootstrap, probing.probes.intervals); becomes each metric's `ci95`.
      interval_info: summary["intervals"], what `ci95` is.
      compare_layers: (layer a, layer b) -> paired headline difference a - b;
        gives best_layer["vs_last"].
      baselines: summary["baselines"] (probing.probes.intervals.trivial_baselines);
        every layer's scoring split then says whether it beats the strongest.
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
                metric: _metric_entry(values, intervals, layer, split_name, metric)
                for metric, values in grouped.get((layer, split_name), {}).items()
            }
        if baselines is not None:
            entry[BEATS_BASELINE] = _beats(entry[SCORING_SPLIT].get(headline), baselines, headline)
        if hyperparameters is not None:
            entry["hyperparameters"] = dict(hyperparameters[layer])
        layers.append(entry)

    def mean_of(entry: dict[str, Any], split_name: str) -> float:
        mean = entry[split_name][headline]["mean"]
        return -np.inf if mean is None else mean

    best = max(layers, key=lambda e: mean_of(e, SELECTION_SPLIT))  # first layer wins ties
    best_scored = best[SCORING_SPLIT][headline]
    last = layers[-1]["layer"]
    best_layer = {
        "layer": best["layer"],
        "metric": headline,
        "split": SCORING_SPLIT,
        "mean": best_scored["mean"],
        "ci95": best_scored.get("ci95"),
        "seed_spread": best_scored["seed_spread"],
        "val_mean": best[SELECTION_SPLIT][headline]["mean"],
        "selected_on": SELECTION_SPLIT,
        "last_layer": last,
    }
    if compare_layers is not None and best["layer"] != last:
        best_layer["vs_last"] = dict(compare_layers(best["layer"], last))
    summary = {
        "pooling": pooling,
        "label_kind": label_kind,
        "headline_metric": headline,
        "num_layers": len(layers),
        "num_seeds": len(seeds),
        "intervals": dict(interval_info or {"ci95": None, "seed_spread": SEED_SPREAD}),
        "layers": layers,
        "best_layer": best_layer,
    }
    if baselines is not None:
        summary["baselines"] = dict(baselines)
    return summary


def _metric_entry(values, intervals, layer, split_name, metric) -> dict[str, Any]:
    """{"mean", "ci95" (when computed), "seed_spread", "std", "n"} of one metric."""
    seeds = seed_summary(np.asarray(values))
    entry: dict[str, Any] = {"mean": seeds["mean"]}
    interval = (intervals or {}).get(layer, {}).get(metric) if split_name == SCORING_SPLIT else None
    if interval is not None:
        entry["ci95"] = list(interval)
    entry.update(seed_spread=seeds["ci95"], std=seeds["std"], n=seeds["n"])
    return entry


def _beats(entry: Mapping[str, Any] | None, baselines: Mapping[str, Any], metric: str):
    """Whether the layer's interval (its mean without one) lies above the strongest baseline."""
    strongest = baselines.get("strongest", {}).get(metric)
    if entry is None or strongest is None or entry["mean"] is None:
        return None
    low = entry.get("ci95", [entry["mean"]])[0]
    return bool(low is not None and low > strongest["value"])
