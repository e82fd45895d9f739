"""The folds x bootstrap interval (probing/probes/bootstrap.py with `fold`) against known answers.

* Reference: the JAX fold bootstrap equals an explicit loop: per resample,
  each fold's metric on its rows with the resampled image multiplicities,
  then the mean over folds; folds that share images (repeated draws) give a
  shared image one weight in every fold.
* Null: noise features, K grouped folds, trained probes: the interval of the
  fold-mean accuracy excludes chance (0.5) in at most 7% of layers.
* Bayes: planted Gaussian classes, K folds: the interval covers the Bayes
  accuracy at >= 90% of layers.

The null and Bayes tests reuse the correlated-rows images of
tests/test_probes_calibration.py (two rows per image, feature correlation 0.8).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from probing.probes import bootstrap as bs
from probing.probes.data import LabelData
from probing.probes.fold_results import fold_predictions_arrays
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from tests.test_probes_calibration import (
    _correlated_noise,
    _excludes,
    _images,
    _irregular_case,
    _reference,
)


def _fold_case(kind, shared):
    """The irregular rows of the calibration test split into 3 folds' test parts.

    shared=False: each image in one fold (K-fold); True: every image in two
    of the three folds (repeated draws share images).
    """
    logits, labels, group, mask = _irregular_case(kind, seed=4)
    images = np.unique(group)
    first = np.random.default_rng(1).integers(0, 3, images.size)
    fold_of = dict(zip(images.tolist(), first.tolist(), strict=True))
    rows = np.arange(len(group))
    if not shared:
        return logits, labels, group, mask, np.array([fold_of[g] for g in group.tolist()])
    folds = [np.array([fold_of[g] for g in group.tolist()])]
    folds.append((folds[0] + 1) % 3)
    rows = np.concatenate([rows, rows])
    fold = np.concatenate(folds)
    return (
        logits[:, :, rows],
        labels[rows],
        group[rows],
        None if mask is None else mask[rows],
        fold,
    )


@pytest.mark.parametrize("kind", ["binary", "multilabel"])
@pytest.mark.parametrize("shared", [False, True])
def test_fold_bootstrap_equals_an_explicit_loop_of_fold_means(kind, shared):
    logits, labels, group, mask, fold = _fold_case(kind, shared)
    result = bs.bootstrap(
        [logits],
        labels,
        group,
        mask=mask,
        num_resamples=30,
        seed=7,
        fold=fold,
        widen_to_folds=False,
    )
    assert result.num_folds == 3
    images, image_of_row = np.unique(group, return_inverse=True)
    picks = np.asarray(bs.resample_images(bs.key_words(7), np.arange(30), images.size))
    mask = np.ones_like(labels) if mask is None else mask

    def fold_mean(layer, weight_of_image):
        per_fold = []
        for f in range(3):
            rows = np.flatnonzero(fold == f)
            rows = np.repeat(rows, weight_of_image[image_of_row[rows]])
            per_fold.append(_reference(logits[layer][:, rows], labels[rows], mask[rows], kind))
        return {m: np.mean([v[m] for v in per_fold]) for m in bs.METRICS[kind]}

    for layer in range(3):
        expected = fold_mean(layer, np.ones(images.size, int))
        for metric in bs.METRICS[kind]:
            got = result.sets[0].observed[metric][layer]
            assert got == pytest.approx(expected[metric], abs=1e-12), metric
        for r in (0, 11, 29):
            expected = fold_mean(layer, np.bincount(picks[r], minlength=images.size))
            for metric in bs.METRICS[kind]:
                got = result.sets[0].samples[metric][r, layer]
                assert got == pytest.approx(expected[metric], abs=2e-6), (metric, r)


def test_resamples_widen_to_the_fold_scatter_when_folds_disagree():
    logits, labels, group, _, fold = _fold_case("binary", shared=False)
    # Fold 0's probes of layer 2 predict the opposite: the folds now disagree far
    # more than resampling test images explains; layer 0 (noise) is left as is.
    logits = logits.copy()
    logits[2][:, fold == 0] *= -1
    raw = bs.bootstrap([logits], labels, group, num_resamples=400, fold=fold, widen_to_folds=False)
    wide = bs.bootstrap([logits], labels, group, num_resamples=400, fold=fold)
    observed = raw.sets[0].observed["accuracy"]
    per_fold = []
    for f in range(3):
        correct = (logits[:, :, fold == f] > 0) == labels[fold == f]
        per_fold.append(correct.mean(axis=2).mean(axis=1))  # [L] seed mean
    fold_variance = np.var(per_fold, axis=0, ddof=1) / 3
    boot_variance = raw.sets[0].samples["accuracy"].astype(np.float64).var(axis=0)
    factor = np.sqrt(np.maximum(1.0, fold_variance / boot_variance))
    assert factor[2] > 1.5
    np.testing.assert_allclose(wide.sets[0].widening["accuracy"], factor, rtol=1e-6)
    expected = observed + (raw.sets[0].samples["accuracy"] - observed) * factor
    np.testing.assert_allclose(wide.sets[0].samples["accuracy"], expected, atol=1e-6)
    np.testing.assert_array_equal(wide.sets[0].observed["accuracy"], observed)


def test_without_a_fold_array_the_bootstrap_is_unchanged():
    logits, labels, group, _ = _irregular_case("binary", seed=1)
    plain = bs.bootstrap([logits], labels, group, num_resamples=50, seed=2)
    one_fold = bs.bootstrap(
        [logits], labels, group, num_resamples=50, seed=2, fold=np.full(len(group), 3)
    )
    np.testing.assert_array_equal(plain.sets[0].samples["f1"], one_fold.sets[0].samples["f1"])
    with pytest.raises(ValueError, match="fold has 2 rows"):
        bs.bootstrap([logits], labels, group, fold=np.zeros(2))


def _label_data(labels, split, group):
    labels = labels[:, None].astype(np.float32)
    return LabelData(
        labels=labels,
        mask=np.ones_like(labels),
        split=split,
        rows=np.arange(len(split)),
        groups=group,
        label_kind="binary",
        label_names=["positive"],
        num_layers=0,
        hidden_size=0,
    )


def _fold_bootstrap(features, labels, split, group, settings, seed):
    """Trains the K-fold sweep and bootstraps its predictions as fold_results does."""
    targets = labels[:, None].astype(np.float32)
    result = run_sweep(features, targets, np.ones_like(targets), split, settings, groups=group)
    predictions = fold_predictions_arrays(result, _label_data(labels, split, group))
    assert np.bincount(predictions["rows"]).tolist() == [1] * len(split)  # each row once
    return result, bs.predictions_bootstrap(predictions, num_resamples=1000, seed=seed)


@pytest.mark.slow
def test_null_calibration_of_the_fold_interval():
    # Noise features, 5 grouped folds of 600 images (1200 rows) each draw:
    # every image is tested once, so the pooled test set is all 600 images.
    settings = SweepSettings(
        num_seeds=2, epochs=6, batch_size=64, learning_rates=(1e-2,), controls=False, folds=5
    )
    rng = np.random.default_rng(11)
    layers, draws = 40, 10
    excluded = 0
    for draw in range(draws):
        group, labels, split = _images(600, rng)
        features = _correlated_noise((layers, len(group), 8), group, rng)
        _, boot = _fold_bootstrap(features, labels, split, group, settings, draw)
        excluded += _excludes(bs.percentile_interval(boot.sets[0].samples["accuracy"]), 0.5).sum()
    rate = excluded / (layers * draws)
    assert rate <= 0.07, rate
    assert rate >= 0.005, rate  # not calibrated by being uselessly wide


@pytest.mark.slow
def test_fold_interval_covers_the_bayes_accuracy_of_planted_layers():
    # Train parts of 3 / 5 of 5,000 images: each fold's probe is close to
    # Bayes while the interval over the pooled 5,000 test images is ~ 0.01
    # wide. 60 epochs let the probes converge (8 left the strong layers' probes
    # 0.004 below Bayes); early stopping ends most sooner.
    settings = SweepSettings(
        num_seeds=2, epochs=60, batch_size=256, learning_rates=(1e-2,), controls=False, folds=5
    )
    layers, dim, draws = 24, 8, 6
    delta = np.linspace(0.0, 3.0, layers)
    bayes = norm.cdf(delta / 2)
    rng = np.random.default_rng(12)
    covered, half_widths = 0, []
    for draw in range(draws):
        group, labels, split = _images(5000, rng)
        direction = np.linalg.qr(rng.standard_normal((dim, 1)))[0][:, 0]
        features = _correlated_noise((layers, len(group), dim), group, rng)
        features += (delta[:, None, None] / 2) * (2 * labels[None, :, None] - 1) * direction
        _, boot = _fold_bootstrap(features.astype(np.float32), labels, split, group, settings, draw)
        low, high = bs.percentile_interval(boot.sets[0].samples["accuracy"])
        covered += ((low <= bayes) & (bayes <= high)).sum()
        half_widths.append((high - low) / 2)
    assert covered / (layers * draws) >= 0.90, covered / (layers * draws)
    # Every image is tested once: narrower than a 1,000-image single split (~0.03).
    assert np.median(np.concatenate(half_widths)) < 0.02
