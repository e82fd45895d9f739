"""Tests of probing.probes.metrics and probing.probes.stats against hand counts and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn import metrics as sk

from probing.probes.metrics import (
    BINARY_METRICS,
    MULTILABEL_METRICS,
    binary_metrics,
    majority_logits,
    multilabel_metrics,
    roc_auc,
)
from probing.probes.stats import seed_summary


def test_binary_metrics_match_hand_computed_confusion_matrix():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    # Predictions (logit > 0): 1 0 1 1 0 0 1 1 -> tp 3, fn 1, fp 2, tn 2.
    logits = np.array([2.0, -1.0, 0.5, 0.3, -2.0, -0.1, 1.0, 3.0])
    got = binary_metrics(logits, labels)
    assert set(got) == set(BINARY_METRICS)
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (3, 2, 2, 1)
    assert got["accuracy"] == pytest.approx(5 / 8)
    assert got["precision"] == pytest.approx(3 / 5)
    assert got["recall"] == pytest.approx(3 / 4)
    assert got["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # Positive scores 2, -1, 0.5, 3 against negatives 0.3, -2, -0.1, 1:
    # pairs won 4 + 1 + 3 + 4 = 12 of 16.
    assert got["roc_auc"] == pytest.approx(12 / 16)


def test_logit_zero_predicts_negative():
    got = binary_metrics(np.array([0.0, 0.0]), np.array([1, 0]))
    assert (got["tp"], got["fn"], got["tn"]) == (0, 1, 1)
    assert got["precision"] == 0.0  # zero_division = 0, as scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_metrics_match_sklearn_on_random_predictions(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    # Rounded logits create ties, which the rank-based AUC must average.
    logits = np.round(rng.normal(size=300) + 0.5 * labels, 1)
    got = binary_metrics(logits, labels)
    predicted = (logits > 0).astype(int)
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert got["precision"] == pytest.approx(sk.precision_score(labels, predicted))
    assert got["recall"] == pytest.approx(sk.recall_score(labels, predicted))
    assert got["f1"] == pytest.approx(sk.f1_score(labels, predicted))
    assert got["roc_auc"] == pytest.approx(sk.roc_auc_score(labels, logits))
    probabilities = 1 / (1 + np.exp(-logits))
    assert got["loss"] == pytest.approx(sk.log_loss(labels, probabilities), rel=1e-6)
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted).ravel()
    assert (got["tp"], got["fp"], got["tn"], got["fn"]) == (tp, fp, tn, fn)


def test_roc_auc_is_nan_with_one_class():
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_multilabel_metrics_match_sklearn_over_masked_entries():
    rng = np.random.default_rng(3)
    n, k = 400, 5
    labels = rng.integers(0, 2, (n, k))
    logits = rng.normal(size=(n, k)) + labels
    mask = (rng.random((n, k)) < 0.6).astype(int)
    # Unscored entries must not matter, whatever their label says.
    noisy_labels = np.where(mask == 1, labels, 1 - labels)
    names = [f"c{i}" for i in range(k)]
    got = multilabel_metrics(logits, noisy_labels * mask + labels * (1 - mask), mask, names)
    got_noisy = multilabel_metrics(logits, noisy_labels, mask, names)
    assert got == got_noisy
    assert set(MULTILABEL_METRICS) <= set(got)

    f1s, precisions, recalls, aucs = [], [], [], []
    for c in range(k):
        scored = mask[:, c] == 1
        y, p = labels[scored, c], (logits[scored, c] > 0).astype(int)
        f1s.append(sk.f1_score(y, p))
        precisions.append(sk.precision_score(y, p))
        recalls.append(sk.recall_score(y, p))
        aucs.append(sk.roc_auc_score(y, logits[scored, c]))
        assert got[f"f1/c{c}"] == pytest.approx(f1s[-1])
        assert got[f"precision/c{c}"] == pytest.approx(precisions[-1])
        assert got[f"recall/c{c}"] == pytest.approx(recalls[-1])
    assert got["macro_f1"] == pytest.approx(np.mean(f1s))
    assert got["macro_precision"] == pytest.approx(np.mean(precisions))
    assert got["macro_recall"] == pytest.approx(np.mean(recalls))
    assert got["roc_auc"] == pytest.approx(np.mean(aucs))
    scored = mask.ravel() == 1
    flat_y, flat_p = labels.ravel()[scored], (logits.ravel()[scored] > 0).astype(int)
    assert got["micro_f1"] == pytest.approx(sk.f1_score(flat_y, flat_p))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(flat_y, flat_p))
    assert got["tp"] + got["fp"] + got["tn"] + got["fn"] == mask.sum()


def test_multilabel_category_without_scored_entries_is_left_out():
    labels = np.array([[1, 0], [0, 0]])
    mask = np.array([[1, 0], [1, 0]])
    got = multilabel_metrics(np.array([[1.0, 1.0], [-1.0, 1.0]]), labels, mask, ["a", "b"])
    assert "f1/b" not in got
    assert got["macro_f1"] == pytest.approx(1.0)
    assert got["categories_left_out"] == 1


def test_multilabel_category_without_positives_is_left_out_not_zero():
    # Category b is scored but never positive: its F1 is undefined, not 0.
    # sklearn's macro F1 (zero_division=0) would count it as 0 and halve the score.
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    logits = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    got = multilabel_metrics(logits, labels, np.ones_like(labels), ["a", "b"])
    assert got["macro_f1"] == pytest.approx(1.0)
    assert got["categories_left_out"] == 1
    assert "f1/b" not in got and got["f1/a"] == pytest.approx(1.0)
    with_zero = sk.f1_score(labels, (logits > 0).astype(int), average="macro", zero_division=0)
    assert with_zero == pytest.approx(0.5)


def test_majority_logits_predict_train_majority():
    train = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    logits = majority_logits(train, np.ones_like(train), 4)
    assert logits.shape == (4, 2)
    assert (logits[:, 0] > 0).all() and (logits[:, 1] < 0).all()


def test_seed_summary_matches_student_t():
    values = np.array([0.8, 0.9, 0.85, 0.82])
    got = seed_summary(values)
    half = scipy_stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert got["n"] == 4
    assert got["std"] == pytest.approx(values.std(ddof=1))
    assert got["ci95"] == pytest.approx([values.mean() - half, values.mean() + half])
    assert seed_summary(np.array([0.7])) == {"mean": 0.7, "std": 0.0, "ci95": [0.7, 0.7], "n": 1}
    assert seed_summary(np.array([np.nan]))["mean"] is None


def test_seed_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.normal(loc=2.0, scale=0.5, size=(4000, 3))
    covered = [lo <= 2.0 <= hi for lo, hi in (seed_summary(d)["ci95"] for d in draws)]
    # Binomial standard error at 4000 trials is 0.0034.
    assert np.mean(covered) == pytest.approx(0.95, abs=0.015)
