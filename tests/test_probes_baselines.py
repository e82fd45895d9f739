"""Trivial baselines (probes/baselines.py) against scikit-learn's DummyClassifier and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from probing.probes.baselines import (
    baseline_metrics,
    strongest_baselines,
    strongest_headline_baselines,
)

SKLEARN = {
    "accuracy": accuracy_score,
    "precision": lambda y, p: precision_score(y, p, zero_division=0),
    "recall": lambda y, p: recall_score(y, p, zero_division=0),
    "f1": lambda y, p: f1_score(y, p, zero_division=0),
}


@pytest.mark.parametrize("train_prior", [0.3, 0.7])
def test_binary_constants_equal_dummy_classifier(train_prior):
    rng = np.random.default_rng(0)
    train = (rng.random(500) < train_prior).astype(int)
    test = (rng.random(300) < 0.45).astype(int)
    ours = baseline_metrics("binary", train, test)
    features = np.zeros((len(train), 1))
    for name, dummy in (
        ("majority", DummyClassifier(strategy="most_frequent")),
        ("always_positive", DummyClassifier(strategy="constant", constant=1)),
    ):
        predicted = dummy.fit(features, train).predict(np.zeros((len(test), 1)))
        for metric, score in SKLEARN.items():
            assert ours[name][metric] == pytest.approx(score(test, predicted), abs=1e-12), name


def test_prior_baseline_is_the_expectation_of_stratified_guessing():
    rng = np.random.default_rng(1)
    train = (rng.random(400) < 0.3).astype(int)
    test = (rng.random(200) < 0.4).astype(int)
    ours = baseline_metrics("binary", train, test)["prior"]
    draws = 4000
    # One predict call of draws x 200 rows: every row is an independent draw.
    dummy = DummyClassifier(strategy="stratified", random_state=0).fit(np.zeros((400, 1)), train)
    predicted = dummy.predict(np.zeros((draws * 200, 1))).reshape(draws, 200)
    tp = (predicted & test).sum(axis=1).mean()
    fp = (predicted & (1 - test)).sum(axis=1).mean()
    accuracy = (predicted == test).mean()
    # Accuracy is linear in the counts: its expectation, within Monte Carlo error.
    assert ours["accuracy"] == pytest.approx(accuracy, abs=0.002)
    # F1 is documented as F1 of the expected counts, 2pP / (pP + pN + P).
    positives = test.sum()
    assert ours["f1"] == pytest.approx(2 * tp / (tp + fp + positives), abs=0.005)
    p, negatives = train.mean(), len(test) - positives
    assert ours["f1"] == pytest.approx(
        2 * p * positives / (p * positives + p * negatives + positives)
    )
    assert ours["recall"] == pytest.approx(p)


def _masked_reference(rate, labels, mask):
    """Brute force: metrics of expected predictions on each category's scored entries."""
    f1s, precisions, recalls, totals = [], [], [], np.zeros(4)
    for k in range(labels.shape[1]):
        y = labels[mask[:, k] == 1, k]
        tp, fp = rate[k] * y.sum(), rate[k] * (1 - y).sum()
        fn, tn = y.sum() - tp, (1 - y).sum() - fp
        totals += [tp, fp, fn, tn]
        if y.sum() == 0:
            continue  # no positives: left out of the macro averages
        precisions.append(tp / (tp + fp) if tp + fp else 0.0)
        recalls.append(tp / (tp + fn))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    tp, fp, fn, tn = totals
    return {
        "macro_f1": np.mean(f1s),
        "macro_precision": np.mean(precisions),
        "macro_recall": np.mean(recalls),
        "micro_f1": 2 * tp / (2 * tp + fp + fn),
        "accuracy": (tp + tn) / totals.sum(),
        "categories_left_out": labels.shape[1] - len(f1s),
    }


def test_multilabel_baselines_with_a_mask_equal_brute_force():
    rng = np.random.default_rng(2)
    priors = np.array([0.1, 0.6, 0.3, 0.05, 0.2])
    train = (rng.random((600, 5)) < priors).astype(int)
    train_mask = (rng.random((600, 5)) < 0.6).astype(int)
    test = (rng.random((250, 5)) < priors).astype(int)
    test[:, 3] = 0  # no positives in the test split
    test_mask = (rng.random((250, 5)) < 0.6).astype(int)
    ours = baseline_metrics("multilabel", train, test, train_mask, test_mask)
    scored_prior = (train * train_mask).sum(0) / train_mask.sum(0)
    rates = {
        "majority": (scored_prior > 0.5).astype(float),
        "always_positive": np.ones(5),
        "prior": scored_prior,
    }
    for name, rate in rates.items():
        expected = _masked_reference(rate, test, test_mask)
        for metric, value in expected.items():
            assert ours[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
    assert ours["majority"]["categories_left_out"] == 1


def test_multilabel_constants_equal_dummy_classifier_without_a_mask():
    rng = np.random.default_rng(3)
    priors = np.array([0.2, 0.7, 0.4])
    train = (rng.random((300, 3)) < priors).astype(int)
    test = (rng.random((200, 3)) < priors).astype(int)
    ours = baseline_metrics("multilabel", train, test)
    for name, dummy in (
        ("majority", DummyClassifier(strategy="most_frequent")),
        ("always_positive", DummyClassifier(strategy="constant", constant=[1, 1, 1])),
    ):
        predicted = dummy.fit(np.zeros((300, 1)), train).predict(np.zeros((200, 1)))
        for average in ("macro", "micro"):
            expected = f1_score(test, predicted, average=average, zero_division=0)
            assert ours[name][f"{average}_f1"] == pytest.approx(expected, abs=1e-12)


def test_strongest_baseline_per_metric():
    # Rare categories, as in category tasks: majority predicts nothing and
    # scores F1 = 0, always-positive is the strongest for macro-F1, majority
    # for accuracy (the case the issue measured: always-positive 0.509 >
    # prior 0.352 > majority 0.273).
    rng = np.random.default_rng(4)
    priors = np.array([0.1, 0.2, 0.3, 0.15])
    train = (rng.random((800, 4)) < priors).astype(int)
    test = (rng.random((400, 4)) < priors).astype(int)
    baselines = baseline_metrics("multilabel", train, test)
    strongest = strongest_baselines(baselines)
    assert strongest["macro_f1"]["baseline"] == "always_positive"
    assert strongest["accuracy"]["baseline"] == "majority"
    assert baselines["majority"]["macro_f1"] == 0.0
    assert (
        baselines["always_positive"]["macro_f1"]
        > baselines["prior"]["macro_f1"]
        > baselines["majority"]["macro_f1"]
    )
    headline = strongest_headline_baselines("multilabel", train, test)
    assert set(headline) == {"macro_f1", "micro_f1", "macro_precision", "macro_recall", "accuracy"}
    assert headline["macro_f1"]["value"] == baselines["always_positive"]["macro_f1"]
