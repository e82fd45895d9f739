"""The metric names of metrics.csv (one registry) and the functions that compute them.

The registry below names every metric per label kind and the derived rows
(control, majority, selectivity, best epoch); the trainer, the report and the
test fixtures all read it, WORKSPACE.md documents it. The headline metric per
label kind is probing.store.layout.HEADLINE_METRIC.

All functions take logits (a probe's raw outputs; the predicted class is
logit > 0, i.e. probability > 0.5) and labels in {0, 1}, and return plain
floats keyed by metric name. Conventions follow scikit-learn's defaults with
`zero_division=0`: a precision, recall or F1 whose denominator is zero is 0.
ROC-AUC is the Mann-Whitney statistic with average ranks for ties, NaN when a
class is absent.

Multilabel metrics count only scored entries (mask == 1). Macro averages
(F1, precision, recall) run over the categories that have at least one
positive among their scored entries in the split: without positives recall
and F1 are undefined, and counting them as 0 (scikit-learn's zero_division)
would deflate the average; `categories_left_out` counts the categories left
out. The multilabel `roc_auc` is the macro average over categories that have
both classes among their scored entries. probing.probes.bootstrap uses the
same definitions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# ------------------------------------------------ metric names (the registry)
# Every metric name of metrics.csv comes from here: compute_metrics returns the
# names in this order, results.py adds the derived names below, and the report
# and the test fixtures read the same tuples.
# Scores in [0, 1] per label kind, in the order compute_metrics returns them.
BINARY_SCORES = ("accuracy", "precision", "recall", "f1", "roc_auc")
MULTILABEL_SCORES = (
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "micro_f1",
    "accuracy",
    "roc_auc",
)
COUNTS = ("tp", "fp", "tn", "fn")
LOSS = "loss"
# Multilabel: categories without a positive in the split, outside the macro averages.
CATEGORIES_LEFT_OUT = "categories_left_out"
BINARY_METRICS = (*BINARY_SCORES, *COUNTS, LOSS)
MULTILABEL_METRICS = (*MULTILABEL_SCORES, *COUNTS, LOSS, CATEGORIES_LEFT_OUT)
METRICS = {"binary": BINARY_METRICS, "multilabel": MULTILABEL_METRICS}
SCORES = {"binary": BINARY_SCORES, "multilabel": MULTILABEL_SCORES}
# Precision, recall and F1 of a label kind (macro averages for multilabel).
PRF_METRICS = {
    "binary": ("precision", "recall", "f1"),
    "multilabel": ("macro_precision", "macro_recall", "macro_f1"),
}
# Multilabel only: these per category, named `<metric>/<category>`.
PER_CATEGORY_METRICS = ("f1", "precision", "recall")
# Derived rows of metrics.csv: the headline metric minus its control, and the
# epoch chosen on val.
SELECTIVITY = "selectivity"
BEST_EPOCH = "best_epoch"


def control_metric(metric: str) -> str:
    """The name of `metric` for the shuffled-label control probe."""
    return f"control_{metric}"


def majority_metric(metric: str) -> str:
    """The name of `metric` for the majority-class baseline."""
    return f"majority_{metric}"


def category_metric(metric: str, category: str) -> str:
    """The name of a per-category metric, e.g. "f1/dog"."""
    return f"{metric}/{category}"


def is_category_metric(name: str) -> bool:
    return "/" in name


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)


def binary_cross_entropy(logits: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None):
    """Mean sigmoid cross-entropy over (scored) entries, computed stably in float64."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    mask = np.ones_like(logits) if mask is None else np.asarray(mask, np.float64)
    # log(1 + exp(-|z|)) + max(z, 0) - z * y, the usual overflow-free form.
    per_entry = np.logaddexp(0.0, -np.abs(logits)) + np.maximum(logits, 0.0) - logits * labels
    total = mask.sum()
    return float((per_entry * mask).sum() / total) if total > 0 else float("nan")


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN unless both classes occur."""
    scores = np.asarray(scores, np.float64).ravel()
    labels = np.asarray(labels).ravel() > 0.5
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # Average rank (1-based) of each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    average_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(average_rank, ends - starts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def confusion_counts(
    predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None, axis=None
) -> dict[str, np.ndarray]:
    """tp, fp, tn, fn summed over `axis` of the scored entries."""
    pred = np.asarray(predictions) > 0.5
    true = np.asarray(labels) > 0.5
    scored = np.ones(pred.shape, bool) if mask is None else np.asarray(mask) > 0.5
    return {
        "tp": np.sum(pred & true & scored, axis=axis),
        "fp": np.sum(pred & ~true & scored, axis=axis),
        "tn": np.sum(~pred & ~true & scored, axis=axis),
        "fn": np.sum(~pred & true & scored, axis=axis),
    }


def _scores_from_counts(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return precision, recall, f1


def binary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """accuracy, precision, recall, f1, roc_auc, tp, fp, tn, fn, loss of [n] logits."""
    logits = np.asarray(logits, np.float64).ravel()
    labels = np.asarray(labels, np.float64).ravel()
    if logits.shape != labels.shape:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} differ in shape")
    counts = confusion_counts(logits > 0, labels)
    tp, fp, tn, fn = (int(counts[k]) for k in ("tp", "fp", "tn", "fn"))
    precision, recall, f1 = _scores_from_counts(tp, fp, fn)
    values = {
        "accuracy": (tp + tn) / max(labels.size, 1),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": roc_auc(logits, labels),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        LOSS: binary_cross_entropy(logits, labels),
    }
    return {name: values[name] for name in BINARY_METRICS}


def multilabel_metrics(
    logits: np.ndarray, labels: np.ndarray, mask: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """Masked multilabel metrics of [n, K] logits, plus f1/precision/recall per category.

    Categories without a positive among their scored entries in these rows
    get no per-category entry and do not enter the macro averages; their
    number is `categories_left_out`.
    """
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.float64)
    mask = np.asarray(mask, np.float64)
    if not logits.shape == labels.shape == mask.shape or logits.ndim != 2:
        raise ValueError(
            f"logits {logits.shape}, labels {labels.shape} and mask {mask.shape} must all be [n, K]"
        )
    if logits.shape[1] != len(names):
        raise ValueError(f"{logits.shape[1]} logit columns but {len(names)} category names")
    counts = confusion_counts(logits > 0, labels, mask, axis=0)
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision, recall, f1 = _scores_from_counts(tp, fp, fn)
    present = mask.sum(axis=0) > 0
    with_positives = (labels * mask > 0.5).sum(axis=0) > 0
    values: dict[str, float] = {CATEGORIES_LEFT_OUT: int(logits.shape[1] - with_positives.sum())}
    if with_positives.any():
        values["macro_f1"] = float(f1[with_positives].mean())
        values["macro_precision"] = float(precision[with_positives].mean())
        values["macro_recall"] = float(recall[with_positives].mean())
    else:
        values.update(
            macro_f1=float("nan"), macro_precision=float("nan"), macro_recall=float("nan")
        )
    total = {k: int(v.sum()) for k, v in counts.items()}
    values["micro_f1"] = float(_ratio(2 * total["tp"], 2 * total["tp"] + total["fp"] + total["fn"]))
    values["accuracy"] = float(_ratio(total["tp"] + total["tn"], sum(total.values())))
    aucs = []
    for k in np.flatnonzero(present):
        scored = mask[:, k] > 0.5
        aucs.append(roc_auc(logits[scored, k], labels[scored, k]))
    aucs = [a for a in aucs if not np.isnan(a)]
    values["roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
    values.update(total)
    values[LOSS] = binary_cross_entropy(logits, labels, mask)
    out = {name: values[name] for name in MULTILABEL_METRICS}
    per_category = {"f1": f1, "precision": precision, "recall": recall}
    for k in np.flatnonzero(with_positives):
        for metric in PER_CATEGORY_METRICS:
            out[category_metric(metric, names[k])] = float(per_category[metric][k])
    return out


def compute_metrics(
    label_kind: str,
    logits: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    names: Sequence[str],
) -> dict[str, float]:
    """Dispatches on label_kind; `logits`, `labels` and `mask` are [n, C]."""
    if label_kind == "binary":
        return binary_metrics(logits[:, 0], labels[:, 0])
    if label_kind == "multilabel":
        return multilabel_metrics(logits, labels, mask, names)
    raise ValueError(f"label_kind must be 'binary' or 'multilabel', got {label_kind!r}")


def majority_logits(train_labels: np.ndarray, train_mask: np.ndarray, num_rows: int) -> np.ndarray:
    """[num_rows, C] constant logits of the majority-class baseline fitted on train.

    Each output predicts its train-split prior: the predicted class is the
    majority class (ties go to the negative class) and the loss is that of the
    best constant probability. The prior is clipped away from 0 and 1 so the
    loss stays finite.
    """
    positives = (train_labels * train_mask).sum(axis=0)
    scored = np.maximum(train_mask.sum(axis=0), 1)
    prior = np.clip(positives / scored, 1e-6, 1 - 1e-6)
    logit = np.log(prior) - np.log1p(-prior)
    # An exact 50/50 prior gives logit 0, predicted negative (logit > 0 is positive).
    return np.broadcast_to(logit, (num_rows, train_labels.shape[1])).astype(np.float64)
