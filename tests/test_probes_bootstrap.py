"""Tests of stats.image_bootstrap, the paired bootstrap over test images of predictions.npz."""

from __future__ import annotations

import numpy as np
import pytest

from probing.probes.metrics import binary_metrics, multilabel_metrics
from probing.probes.stats import image_bootstrap

ROWS_PER_IMAGE = 3


def _binary_case(seed=0, num_rows=600, num_seeds=3):
    rng = np.random.default_rng(seed)
    labels = (rng.random(num_rows) < 0.5).astype(np.int8)
    signed = 2.0 * labels - 1.0
    strong = rng.normal(size=(num_seeds, num_rows)) + 1.5 * signed
    weak = rng.normal(size=(num_seeds, num_rows)) + 0.3 * signed
    groups = np.arange(num_rows) // ROWS_PER_IMAGE + 1000
    return strong, weak, labels, groups


def test_observed_difference_is_the_seed_mean_metric_difference():
    strong, weak, labels, groups = _binary_case()
    got = image_bootstrap(strong, weak, labels, groups, "binary", num_resamples=200)
    expected = np.mean([binary_metrics(s, labels)["accuracy"] for s in strong]) - np.mean(
        [binary_metrics(w, labels)["accuracy"] for w in weak]
    )
    assert got["difference"] == pytest.approx(expected, abs=1e-12)
    assert got["num_images"] == 600 // ROWS_PER_IMAGE

    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d"]
    labels = (rng.random((400, 4)) < 0.4).astype(np.int8)
    mask = (rng.random((400, 4)) < 0.6).astype(np.uint8)
    mask[:, 3] = 0  # a category never scored stays out of the macro average
    logits_a = rng.normal(size=(2, 400, 4)) + (2.0 * labels - 1.0)
    logits_b = rng.normal(size=(2, 400, 4))
    got = image_bootstrap(
        logits_a, logits_b, labels, np.arange(400) // 2, "multilabel", mask=mask, num_resamples=50
    )
    expected = np.mean(
        [multilabel_metrics(x, labels, mask, names)["macro_f1"] for x in logits_a]
    ) - np.mean([multilabel_metrics(x, labels, mask, names)["macro_f1"] for x in logits_b])
    assert got["difference"] == pytest.approx(expected, abs=1e-12)


def test_a_real_difference_is_detected_and_no_difference_is_not():
    strong, weak, labels, groups = _binary_case()
    better = image_bootstrap(strong, weak, labels, groups, "binary", num_resamples=2000)
    assert better["p_a_better"] < 0.01 and better["p_value"] < 0.01
    assert 0 < better["ci_low"] < better["difference"] < better["ci_high"]
    worse = image_bootstrap(weak, strong, labels, groups, "binary", num_resamples=2000)
    assert worse["p_a_better"] > 0.99
    same = image_bootstrap(strong, strong, labels, groups, "binary", num_resamples=500)
    assert same["difference"] == 0.0 and same["p_a_better"] == 1.0


def test_images_are_resampled_whole_whatever_the_row_order():
    strong, weak, labels, groups = _binary_case(seed=2)
    reference = image_bootstrap(strong, weak, labels, groups, "binary", num_resamples=300)
    order = np.random.default_rng(3).permutation(len(labels))
    shuffled = image_bootstrap(
        strong[:, order], weak[:, order], labels[order], groups[order], "binary", num_resamples=300
    )
    assert shuffled == pytest.approx(reference)
    # Every image's rows are copies of one another here, so they are not
    # independent evidence: resampling rows instead of images would give a
    # falsely narrow interval.
    copies = np.arange(len(labels)) // ROWS_PER_IMAGE * ROWS_PER_IMAGE
    args = (strong[:, copies], weak[:, copies], labels[copies])
    by_image = image_bootstrap(*args, groups, "binary", num_resamples=1000)
    by_row = image_bootstrap(*args, np.arange(len(labels)), "binary", num_resamples=1000)
    width_by_row = by_row["ci_high"] - by_row["ci_low"]
    assert width_by_row < 0.8 * (by_image["ci_high"] - by_image["ci_low"])


def test_mismatched_rows_are_rejected():
    strong, weak, labels, groups = _binary_case()
    with pytest.raises(ValueError, match="same 600 rows"):
        image_bootstrap(strong, weak, labels, groups[:-1], "binary")
