"""Trivial baselines in closed form: what a probe must beat without looking at features.

Every baseline is fitted on the train split's label frequencies (the prior p
of each output over its scored entries) and scored on the test labels:

* `majority`: every row predicts the train majority class of each output
  (positive iff p > 0.5; a tie predicts negative, like
  metrics.majority_logits and scikit-learn's DummyClassifier("most_frequent")).
* `always_positive`: every scored entry predicted positive, the strongest
  constant for F1 and recall when positives are rare.
* `prior`: each scored entry predicted positive at random with probability p,
  independently (DummyClassifier("stratified")). Its metrics are random; we
  report the metric of the EXPECTED confusion counts, E[tp] = p·P, E[fp] = p·N,
  E[fn] = (1 - p)·P, E[tn] = (1 - p)·N for P positives and N negatives among an
  output's scored test entries. Accuracy (and multilabel accuracy) is linear
  in the counts, so there it is the exact expected value; precision, recall
  and F1 are ratios, and the metric of expected counts differs from the
  expected metric by O(1/P) (e.g. F1 = 2pP / (pP + pN + P) instead of
  E[2 tp / (tp + fp + P)]).

Metrics are those of probing.probes.bootstrap.scores_from_totals, macro
averages over the categories with a positive in the test split.
"""

from __future__ import annotations

import numpy as np

from probing.probes.bootstrap import METRICS, scores_from_totals

BASELINES = {
    "binary": ("majority", "always_positive", "prior"),
    "multilabel": ("majority", "always_positive", "prior"),
}


def _as_columns(labels: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.float64)
    labels = labels[:, None] if labels.ndim == 1 else labels
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, np.float64)
    if mask.shape != labels.shape:
        raise ValueError(f"mask {mask.shape} and labels {labels.shape} differ")
    return labels > 0.5, mask > 0.5


def train_prior(labels: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """[C] share of positives among each output's scored train entries (0 when none is scored)."""
    positive, scored = _as_columns(labels, mask)
    count = scored.sum(axis=0)
    return np.where(count > 0, (positive & scored).sum(axis=0) / np.maximum(count, 1), 0.0)


def predicted_positive_rate(name: str, prior: np.ndarray) -> np.ndarray:
    """[C] probability with which the baseline predicts positive, per output."""
    if name == "majority":
        return (prior > 0.5).astype(np.float64)
    if name == "always_positive":
        return np.ones_like(prior)
    if name == "prior":
        return np.asarray(prior, np.float64)
    raise ValueError(f"unknown baseline {name!r}; known: majority, always_positive, prior")


def baseline_metrics(
    label_kind: str,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    train_mask: np.ndarray | None = None,
    test_mask: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """baseline name -> metric -> value on the test split (BASELINES[label_kind]).

    Each baseline predicts positive with a rate q per output (0 or 1 for the
    constant baselines, the train prior for `prior`), independently of the
    row, so its expected counts are tp = q·P, fp = q·N: exact counts for the
    constant baselines, expectations for `prior` (see the module docstring).
    Multilabel results also hold `categories_left_out`.
    """
    if label_kind not in BASELINES:
        raise ValueError(f"label_kind must be 'binary' or 'multilabel', got {label_kind!r}")
    prior = train_prior(train_labels, train_mask)
    positive, scored = _as_columns(test_labels, test_mask)
    if prior.shape[0] != positive.shape[1]:
        raise ValueError(f"train has {prior.shape[0]} outputs, test {positive.shape[1]}")
    positives = (positive & scored).sum(axis=0).astype(np.float64)
    num_scored = scored.sum(axis=0).astype(np.float64)
    out = {}
    for name in BASELINES[label_kind]:
        rate = predicted_positive_rate(name, prior)
        values = scores_from_totals(
            rate * positives, rate * (num_scored - positives), positives, num_scored, label_kind
        )
        out[name] = {metric: float(value) for metric, value in values.items()}
    return out


def strongest_baselines(baselines: dict[str, dict[str, float]]) -> dict[str, dict]:
    """metric -> {"baseline": name, "value": v}: the highest baseline of each metric.

    Every metric here is higher-is-better; a tie keeps the first baseline in
    BASELINES order (the simpler one). NaN values (no positives) never win.
    """
    best: dict[str, dict] = {}
    for name, values in baselines.items():
        for metric, value in values.items():
            if metric == "categories_left_out" or not np.isfinite(value):
                continue
            if metric not in best or value > best[metric]["value"]:
                best[metric] = {"baseline": name, "value": float(value)}
    return best


def strongest_headline_baselines(
    label_kind: str,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    train_mask: np.ndarray | None = None,
    test_mask: np.ndarray | None = None,
) -> dict[str, dict]:
    """The strongest trivial baseline of every reported metric (METRICS[label_kind])."""
    strongest = strongest_baselines(
        baseline_metrics(label_kind, train_labels, test_labels, train_mask, test_mask)
    )
    return {m: strongest[m] for m in METRICS[label_kind] if m in strongest}
