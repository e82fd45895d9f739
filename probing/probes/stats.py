"""Statistics over seeds and a paired bootstrap over test images.

`seed_summary` is the definition summary.json uses (WORKSPACE.md): mean,
standard deviation with ddof=1 and the Student-t 95% interval of the mean.
`paired_bootstrap` compares two probes scored on the same test rows (two
layers of one model, or one layer of two models probed on the same images),
resampling whole images so rows of one image stay together.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


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


def paired_bootstrap(
    score_fn: Callable[[np.ndarray, np.ndarray], float],
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    num_resamples: int = 1000,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> dict[str, float]:
    """Bootstrap of metric(a) - metric(b) over images, paired on the same rows.

    Args:
      score_fn: called as score_fn(scores, labels) on the resampled rows,
        returns a float, e.g. `lambda s, y: ((s > 0) == y).mean()` for accuracy.
      scores_a, scores_b: [n] (or [n, C]) outputs of the two probes on the same rows.
      labels: targets of those rows, shape like the scores.
      groups: [n] image id per row; images are resampled with replacement.
      num_resamples: bootstrap resamples.
      seed: seed of the resampling.
      confidence: level of the percentile interval.

    Returns:
      {"difference": observed a - b, "ci_low", "ci_high", "p_value"}: the
      percentile interval and the two-sided bootstrap p-value of a - b = 0.
    """
    scores_a, scores_b, labels = (np.asarray(x) for x in (scores_a, scores_b, labels))
    groups = np.asarray(groups).ravel()
    if not (len(scores_a) == len(scores_b) == len(labels) == len(groups)):
        raise ValueError(
            "paired_bootstrap needs scores_a, scores_b, labels and groups with one entry per "
            f"row, got lengths {len(scores_a)}, {len(scores_b)}, {len(labels)}, {len(groups)}"
        )
    unique, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    observed = score_fn(scores_a, labels) - score_fn(scores_b, labels)
    rng = np.random.default_rng(seed)
    differences = np.empty(num_resamples)
    for i in range(num_resamples):
        picked = rng.integers(0, unique.size, unique.size)
        rows = np.concatenate([rows_of[g] for g in picked])
        differences[i] = score_fn(scores_a[rows], labels[rows]) - score_fn(
            scores_b[rows], labels[rows]
        )
    alpha = (1 - confidence) / 2
    low, high = np.quantile(differences, [alpha, 1 - alpha])
    # Two-sided: how often the resampled difference lands on the other side of 0.
    p_value = 2 * min((differences <= 0).mean(), (differences >= 0).mean())
    return {
        "difference": float(observed),
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": float(min(p_value, 1.0)),
    }
