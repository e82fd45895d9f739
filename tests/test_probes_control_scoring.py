"""Tests that the shuffled-label control is scored on its own task: the test part's labels
permuted as its train and val labels are (folds.control_targets), in metrics.csv's tables,
predictions.npz and the bootstrap, with its train and val labels unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from probing.probes.data import LabelData
from probing.probes.folds import control_targets, fold_targets, make_folds
from probing.probes.metrics import binary_metrics
from probing.probes.results import metric_table
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from probing.store.layout import TEST, TRAIN, VAL
from probing.testing.planted import planted_arrays

NUM_ROWS, NUM_SEEDS, SIGNAL_LAYER = 400, 8, 1

# sha256[:16] of fold_targets' (labels, mask) bytes for _targets_inputs(), settings seed 5,
# seeds 0..2, computed before the control's test scoring changed: the train and val
# labels the control trains and is selected on must stay bit-identical.
FOLD_TARGETS_DIGESTS = {
    (0, TRAIN): "7e9bbabed8e20f29",
    (0, VAL): "b38eb1e1fe8416b5",
    (0, TEST): "563c5b5a909cf47d",
    (3, TRAIN): "766cb8b6b2388470",
    (3, VAL): "28e033bd8bf37565",
    (3, TEST): "115eb5db1903c9cc",
}


def _targets_inputs():
    arrays = planted_arrays(120, 2, 8, [1], seed=1)
    labels = arrays["labels"].reshape(120, -1).astype(np.float32)
    return arrays, labels, np.ones_like(labels)


@pytest.mark.parametrize("num_folds", [0, 3])
def test_control_train_and_val_labels_are_those_of_before(num_folds):
    arrays, labels, mask = _targets_inputs()
    settings = SweepSettings(seed=5, folds=num_folds, controls=True)
    folds = make_folds(arrays["split"], arrays["group"], labels, mask, settings)
    for code in (TRAIN, VAL, TEST):
        y, m = fold_targets(labels, mask, folds, np.arange(3), settings, code)
        digest = hashlib.sha256(np.asarray(y).tobytes() + np.asarray(m).tobytes()).hexdigest()
        assert digest[:16] == FOLD_TARGETS_DIGESTS[num_folds, code], (num_folds, code)


@pytest.mark.parametrize("num_folds", [0, 3])
def test_control_targets_are_the_labels_the_control_was_given(num_folds):
    """Per fold and part, in row order: exactly fold_targets' control labels (train in the
    shared train index's chunk order, which control_targets must undo)."""
    arrays, labels, mask = _targets_inputs()
    settings = SweepSettings(seed=5, folds=num_folds, controls=True)
    folds = make_folds(arrays["split"], arrays["group"], labels, mask, settings)
    seeds = np.arange(3)
    for code in (TRAIN, VAL, TEST):
        y, _ = fold_targets(labels, mask, folds, seeds, settings, code)
        for f in range(folds.num_folds):
            mine, _ = control_targets(
                labels, mask, folds.split[f], seeds, settings.seed, code, folds.train_rows
            )
            if code == TRAIN:
                member = folds.train_weight()[f] > 0
                order = np.argsort(folds.train_rows[member])
                given = np.asarray(y)[f, 1][:, member][:, order]
            else:
                given = np.asarray(y)[f, 1][:, : mine.shape[1]]
            np.testing.assert_array_equal(mine, given)
            # A permutation of the part's own labels, and a different one per seed.
            part = labels[folds.split[f] == code]
            assert np.array_equal(np.sort(mine[0], axis=0), np.sort(part, axis=0))
            assert not np.array_equal(mine[0], mine[1])


@pytest.fixture(scope="module")
def strong_sweep():
    """Separation 5 sigma at SIGNAL_LAYER: the task probe is ~0.98 accurate, so a control
    scored on the real labels lands near 0 or 1 with the sign of its shuffle's chance
    correlation (measured 0.24 .. 0.98 over 8 seeds before the fix)."""
    arrays = planted_arrays(NUM_ROWS, 2, 8, [SIGNAL_LAYER], strength=5.0, seed=3)
    labels = arrays["labels"][:, None].astype(np.float32)
    mask = np.ones_like(labels)
    settings = SweepSettings(num_seeds=NUM_SEEDS, epochs=20, batch_size=32, learning_rates=(1e-2,))
    result = run_sweep(
        np.moveaxis(arrays["features"], 1, 0), labels, mask, arrays["split"], settings
    )
    label_data = LabelData(
        labels, mask, arrays["split"], np.arange(NUM_ROWS), arrays["group"], "binary", ["y"], 2, 8
    )
    return result, label_data


def _binomial_99(n: int) -> tuple[float, float]:
    """The central 99% range of the accuracy of n fair coin flips (exact binomial)."""
    from scipy.stats import binom

    return binom.ppf(0.005, n, 0.5) / n, binom.isf(0.005, n, 0.5) / n


@pytest.mark.slow
def test_control_scores_chance_on_its_shuffled_test_labels(strong_sweep):
    result, label_data = strong_sweep
    table = metric_table(result, label_data)

    def values(metric):
        rows = [
            (s, v) for layer, s, split, m, v in table if (layer, split, m) == (1, "test", metric)
        ]
        return np.array([v for _, v in sorted(rows)])

    task, control = values("accuracy"), values("control_accuracy")
    assert len(control) == NUM_SEEDS >= 6
    assert task.min() > 0.9  # the strong signal the old scoring broke on
    low, high = _binomial_99(int((label_data.split == TEST).sum()))
    assert abs(control.mean() - 0.5) <= 0.06, control
    assert ((control >= low) & (control <= high)).all(), (control, low, high)
    np.testing.assert_allclose(values("selectivity"), task - control)
    # The known answer, by hand: each seed's control logits against its permuted labels.
    labels, _ = control_targets(
        label_data.labels, label_data.mask, label_data.split, result.seeds, 0, TEST
    )
    by_hand = [
        binary_metrics(result.logits["test"][1, 1, s, :, 0], labels[s, :, 0])["accuracy"]
        for s in range(NUM_SEEDS)
    ]
    np.testing.assert_allclose(control, by_hand)
