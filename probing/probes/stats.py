"""Statistics over seeds and a paired bootstrap over test images; CONFIDENCE, the 95% level.

`seed_summary` is the definition summary.json uses (WORKSPACE.md): mean,
standard deviation with ddof=1 and the Student-t 95% interval of the mean.
`image_bootstrap` compares the headline metric (accuracy or macro-F1) of two
probes scored on the same test rows (two layers of one model, or one layer of
two models probed on the same images), several seeds at once, as
probes/<pooling>/predictions.npz stores them. It resamples whole images so
rows of one image stay together, and works on per-image confusion counts, so
ten thousand resamples are a few matrix products.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

# The level of every interval: summary.json's ci95, the report's bands and tables.
CONFIDENCE = 0.95
# How summary.json, report captions and table headers name the default interval.
CI_LABEL = "95% CI: cluster bootstrap over test images"
# The same with folds: the fold mean under one bootstrap of the images of all folds' test parts.
FOLD_CI_LABEL = "95% CI: folds × cluster bootstrap over the test images of every fold"


def seed_summary(values: np.ndarray, confidence: float = CONFIDENCE) -> dict[str, object]:
    """{"mean", "std", "ci95", "n"} of one metric over seeds, NaNs dropped.

    With one value the std is 0 and the interval collapses to the point; with
    none every field but n is None (JSON null).
    """
    values = np.asarray(values, np.float64).ravel()
    values = values[~np.isnan(values)]
    n = int(values.size)
    if n == 0:
        return {"mean": None, "std": None, "ci95": [None, None], "n": 0}
    mean = float(values.mean())
    if n == 1:
        return {"mean": mean, "std": 0.0, "ci95": [mean, mean], "n": 1}
    std = float(values.std(ddof=1))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / np.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [float(mean - half), float(mean + half)], "n": n}


def _confusion_per_group(
    logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, inverse: np.ndarray, num_groups: int
) -> np.ndarray:
    """tp, fp, fn, tn per group, seed and output: [num_groups, S, C, 4] float64.

    logits [S, n, C], labels and mask [n, C]; unscored entries count nowhere.
    """
    predicted = logits > 0
    positive = (labels > 0.5)[None]
    scored = (mask > 0.5)[None]
    kinds = np.stack(
        [
            predicted & positive & scored,
            predicted & ~positive & scored,
            ~predicted & positive & scored,
            ~predicted & ~positive & scored,
        ],
        axis=-1,
    ).astype(np.float64)  # [S, n, C, 4]
    # Rows sorted by group, then one reduceat per group boundary.
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(num_groups))
    return np.add.reduceat(np.moveaxis(kinds, 1, 0)[order], starts, axis=0)


def headline_from_counts(counts: np.ndarray, label_kind: str) -> np.ndarray:
    """The headline metric from confusion counts [..., C, 4] (tp, fp, fn, tn).

    Binary: accuracy. Multilabel: macro-F1 over the outputs with at least one
    positive (tp + fn > 0), exactly as probing.probes.metrics.multilabel_metrics
    defines it.
    """
    tp, fp, fn, tn = np.moveaxis(counts, -1, 0)
    if label_kind == "binary":
        correct = (tp + tn).sum(axis=-1)
        return correct / np.maximum((tp + fp + fn + tn).sum(axis=-1), 1)
    if label_kind != "multilabel":
        raise ValueError(f"label_kind must be 'binary' or 'multilabel', got {label_kind!r}")
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    present = (tp + fn) > 0
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def _seed_major(logits: np.ndarray, num_rows: int, num_outputs: int) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    if logits.ndim == 1 or (logits.ndim == 2 and logits.shape == (num_rows, num_outputs)):
        logits = logits[None]  # one seed
    return logits.reshape(logits.shape[0], num_rows, num_outputs)


def image_bootstrap(
    logits_a: np.ndarray,
    logits_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    label_kind: str,
    mask: np.ndarray | None = None,
    num_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """Paired bootstrap over images of headline(a) - headline(b), averaged over seeds.

    Every resample draws the test images with replacement (all rows of an
    image together), recomputes the headline metric (accuracy for binary,
    macro-F1 for multilabel tasks) of every seed of both probes on it, and
    takes the difference of the seed means. The seeds of a and b need not
    pair up; the rows must (same images in the same order).

    Args:
      logits_a, logits_b: [S, n] or [S, n, K] logits (a single probe may drop S).
      labels: [n] or [n, K] targets in {0, 1}.
      groups: [n] image id of each row.
      label_kind: "binary" or "multilabel".
      mask: [n, K] scored entries of a multilabel task (default: all scored).
      num_resamples: bootstrap resamples.
      seed: seed of the resampling, so reports are reproducible.
      confidence: level of the percentile interval.

    Returns:
      {"difference": observed seed-mean difference, "ci_low", "ci_high",
      "p_value": two-sided bootstrap p of a - b = 0, "p_a_better": one-sided,
      add-one corrected share of resamples with a - b <= 0, "num_images"}.
    """
    labels = np.asarray(labels, np.float64)
    labels = labels[:, None] if labels.ndim == 1 else labels
    num_rows, num_outputs = labels.shape
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, np.float64)
    groups = np.asarray(groups).ravel()
    logits_a = _seed_major(logits_a, num_rows, num_outputs)
    logits_b = _seed_major(logits_b, num_rows, num_outputs)
    if mask.shape != labels.shape or groups.shape != (num_rows,):
        raise ValueError(
            f"image_bootstrap: labels {labels.shape}, mask {mask.shape} and groups "
            f"{groups.shape} must describe the same {num_rows} rows"
        )
    unique, inverse = np.unique(groups, return_inverse=True)
    counts = np.concatenate(
        [
            _confusion_per_group(logits, labels, mask, inverse, unique.size)
            for logits in (logits_a, logits_b)
        ],
        axis=1,
    )  # [images, S_a + S_b, C, 4]
    num_a = logits_a.shape[0]

    def difference(totals: np.ndarray) -> np.ndarray:
        scores = headline_from_counts(totals, label_kind)  # [..., S_a + S_b]
        return scores[..., :num_a].mean(axis=-1) - scores[..., num_a:].mean(axis=-1)

    observed = float(difference(counts.sum(axis=0)))
    rng = np.random.default_rng(seed)
    # Counts are integers, exact in float32 up to 2**24, and float32 halves
    # the cost of the products below.
    flat = counts.reshape(unique.size, -1).astype(np.float32)
    differences = []
    # Resamples in chunks: the image multiplicities of a chunk times the
    # per-image counts give every resample's totals in one matrix product.
    for start in range(0, num_resamples, 1000):
        size = min(1000, num_resamples - start)
        picks = rng.integers(0, unique.size, size=(size, unique.size))
        cells = (np.arange(size)[:, None] * unique.size + picks).ravel()
        weights = np.bincount(cells, minlength=size * unique.size).astype(np.float32)
        totals = weights.reshape(size, unique.size) @ flat
        differences.append(difference(totals.astype(np.float64).reshape(size, *counts.shape[1:])))
    differences = np.concatenate(differences)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    two_sided = 2 * min((differences <= 0).mean(), (differences >= 0).mean())
    return {
        "difference": observed,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(two_sided, 1.0)),
        "p_a_better": float((1 + np.sum(differences <= 0)) / (1 + num_resamples)),
        "num_images": int(unique.size),
    }
