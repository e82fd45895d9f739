"""Seed statistics of probe results: confidence intervals and a paired bootstrap.

Every probe is trained with several seeds; the report summarises a metric by
its mean over seeds and the Student-t 95% interval of that mean, the same
definition summary.json uses (WORKSPACE.md), so the two always agree.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from probing.probes.stats import CONFIDENCE


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
