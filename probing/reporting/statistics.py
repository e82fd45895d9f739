"""The report's intervals: the image bootstrap of summary.json, or the seed spread without it.

With folds (ProbeRun.has_folds) summary.json's `ci95` is the folds x bootstrap
interval (FOLD_BOOTSTRAP); without it (probes trained with
bootstrap_resamples = 0) the report falls back to its `fold_interval` over
folds (FOLDS), never to seeds. `best_layer_wins` reads how often each layer
won across folds.

`layer_interval` gives a metric's test mean over seeds (from metrics.csv) per
layer and its 95% interval: summary.json's `ci95`, the cluster bootstrap over
test images the trainer computed from the saved test logits, whenever
summary.json has it for every probed layer and its means agree with
metrics.csv; otherwise (workdirs trained before the bootstrap, or a stale
summary.json) the Student-t interval over probe seeds, labelled as such,
since it covers training noise only. `strongest_baseline` reads the trivial
baselines summary.json holds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from absl import logging
from scipy import stats

from probing.probes.stats import CI_LABEL, CONFIDENCE, FOLD_CI_LABEL
from probing.store.layout import SCORING_SPLIT

if TYPE_CHECKING:
    from probing.reporting.runs import ProbeRun

# What an interval of the report is, in captions, headers and results.csv.
BOOTSTRAP = "bootstrap"
FOLD_BOOTSTRAP = "folds × bootstrap"
FOLDS = "folds"
SEEDS = "seeds"
CI_LABELS = {
    BOOTSTRAP: CI_LABEL,
    FOLD_BOOTSTRAP: FOLD_CI_LABEL,
    FOLDS: "Student-t 95% interval over folds (re-split scatter; no bootstrap in summary.json)",
    SEEDS: "95% CI over probe seeds (training noise only: no bootstrap in summary.json)",
}


def mean_and_ci(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over the last axis and its Student-t 95% interval, ignoring NaNs.

    Args:
      values: [..., num_seeds]; NaN marks a missing seed.

    Returns:
      (mean, low, high), each of shape values.shape[:-1]. With one seed the
      interval collapses to the point; with none all three are NaN.
    """
    values = np.asarray(values, dtype=np.float64)
    count = np.sum(~np.isnan(values), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(np.isnan(values), 0.0, values)
        mean = np.where(count > 0, safe.sum(axis=-1) / np.maximum(count, 1), np.nan)
        squares = np.where(np.isnan(values), 0.0, (values - mean[..., None]) ** 2)
        std = np.sqrt(squares.sum(axis=-1) / np.maximum(count - 1, 1))
        t_quantile = stats.t.ppf(0.5 + CONFIDENCE / 2, np.maximum(count - 1, 1))
        half_width = np.where(count > 1, t_quantile * std / np.sqrt(np.maximum(count, 1)), 0.0)
    return mean, mean - half_width, mean + half_width


def paired_bootstrap_pvalue(
    better: np.ndarray, worse: np.ndarray, num_resamples: int = 10_000, seed: int = 0
) -> float:
    """One-sided paired bootstrap p-value for "mean(better) > mean(worse)".

    The pairs (better[i], worse[i]) share a unit (a seed or an example); units
    are resampled with replacement and the p-value is the share of resampled
    mean differences that are <= 0. Identical inputs give 1.0.

    Args:
      better: [num_units] values of the supposedly better condition.
      worse: [num_units] values of the other condition, paired by index.
      num_resamples: bootstrap resamples.
      seed: seed of the resampling, so reports are reproducible.
    """
    better = np.asarray(better, dtype=np.float64)
    worse = np.asarray(worse, dtype=np.float64)
    if better.shape != worse.shape or better.ndim != 1:
        raise ValueError(
            f"paired bootstrap needs two 1-D arrays of equal length, got shapes "
            f"{better.shape} and {worse.shape}"
        )
    keep = ~(np.isnan(better) | np.isnan(worse))
    differences = (better - worse)[keep]
    if differences.size == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, differences.size, size=(num_resamples, differences.size))
    resampled_means = differences[picks].mean(axis=1)
    return float((1 + np.sum(resampled_means <= 0.0)) / (1 + num_resamples))


def layer_interval(run: ProbeRun, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(mean, low, high, source) per layer of `metric` on the test split.

    mean is the seed mean of metrics.csv (with folds, the mean over folds of
    each fold's seed mean); source is BOOTSTRAP or FOLD_BOOTSTRAP when the
    interval is summary.json's ci95, FOLDS when it is its fold_interval
    (folds without a bootstrap), SEEDS when it is the seed interval.
    """
    mean, low, high = mean_and_ci(run.values(SCORING_SPLIT, metric))
    entries = {int(e["layer"]): e.get(SCORING_SPLIT, {}).get(metric) for e in _layers(run)}
    probed = np.flatnonzero(~np.isnan(mean))
    found = [entries.get(int(layer)) for layer in probed]
    key, source = "ci95", FOLD_BOOTSTRAP if run.has_folds else BOOTSTRAP
    if run.has_folds and found and all(e is not None and e.get(key) is None for e in found):
        key, source = "fold_interval", FOLDS
    if not found or any(e is None or e.get(key) is None for e in found):
        return mean, low, high, SEEDS
    if any(
        e["mean"] is None or not math.isclose(e["mean"], mean[layer], abs_tol=1e-6)
        for e, layer in zip(found, probed, strict=True)
    ):
        logging.warning(
            "%s: summary.json disagrees with metrics.csv on %s; showing the seed interval",
            run.workdir,
            metric,
        )
        return mean, low, high, SEEDS
    low, high = np.full_like(mean, np.nan), np.full_like(mean, np.nan)
    for entry, layer in zip(found, probed, strict=True):
        low[layer], high[layer] = entry[key]
    return mean, low, high, source


def best_layer_wins(run: ProbeRun) -> dict[int, int]:
    """layer -> in how many folds it was the best layer (chosen on that fold's val); {}
    without folds or when summary.json does not record it."""
    frequency = run.summary.get("folds", {}).get("best_layer_frequency") or {}
    return {int(layer): int(count) for layer, count in frequency.items()}


def _layers(run: ProbeRun) -> list[dict]:
    layers = run.summary.get("layers") if isinstance(run.summary, dict) else None
    return layers if isinstance(layers, list) else []


def strongest_baseline(run: ProbeRun, metric: str) -> tuple[str, float] | None:
    """(name, value) of the strongest trivial baseline of `metric` in summary.json, or None."""
    entry = run.summary.get("baselines", {}).get("strongest", {}).get(metric)
    if not entry or entry.get("value") is None:
        return None
    return str(entry["baseline"]), float(entry["value"])


def layers_not_above_baseline(run: ProbeRun, metric: str) -> list[int]:
    """Probed layers whose interval does not lie above the strongest baseline ([] without one)."""
    baseline = strongest_baseline(run, metric)
    if baseline is None:
        return []
    mean, low, _, _ = layer_interval(run, metric)
    return [int(layer) for layer in np.flatnonzero(~np.isnan(mean)) if not low[layer] > baseline[1]]


def interval_label(sources: set[str] | list[str]) -> str:
    """The caption words of the intervals of a figure or table."""
    return "; ".join(CI_LABELS[source] for source in sorted(set(sources)))
