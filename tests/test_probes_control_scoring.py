"""Tests that the shuffled-label control is scored on its own task: the test part's labels
permuted as its train and val labels are (folds.control_targets), in metrics.csv's tables,
predictions.npz and the bootstrap, with its train and val labels unchanged."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

from probing.probes import bootstrap as bs
from probing.probes.data import LabelData
from probing.probes.folds import control_targets, fold_targets, make_folds
from probing.probes.intervals import ImageIntervals
from probing.probes.metrics import binary_metrics, multilabel_metrics
from probing.probes.results import metric_table, predictions_arrays
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


def _resampled_accuracy(logits, labels, group, words, resample):
    """numpy: seed-mean accuracy of logits [S, n] against labels [S, n] (or [n]) on the
    images resample `resample` draws (bootstrap.resample_images), each row weighted by its
    image's multiplicity."""
    images, image_of_row = np.unique(group, return_inverse=True)
    picks = np.asarray(bs.resample_images(words, np.array([resample]), images.size))[0]
    weight = np.bincount(picks, minlength=images.size)[image_of_row]
    hits = (logits > 0) == (np.broadcast_to(labels, logits.shape) > 0.5)
    return float(np.mean((hits * weight).sum(axis=-1) / weight.sum()))


def test_bootstrap_scores_a_set_on_its_own_per_seed_labels():
    rng = np.random.default_rng(0)
    n, seeds, layers = 90, 3, 2
    group = rng.integers(0, 30, n)
    labels = rng.integers(0, 2, n)
    own = np.stack([labels[rng.permutation(n)] for _ in range(seeds)])  # [S, n]
    task = rng.normal(size=(layers, seeds, n)) + 2 * (labels - 0.5)
    # Control logits that follow the shuffled labels in layer 1 (and the real ones in
    # layer 0), so that scoring against the wrong labels changes the answer.
    control = rng.normal(size=(layers, seeds, n))
    control[0] += 3 * (labels - 0.5)
    control[1] += 3 * (own - 0.5)
    result = bs.bootstrap(
        [task, control], labels, group, num_resamples=40, seed=7, set_labels=[None, (own, None)]
    )
    words = bs.key_words(7)
    task_set, control_set = result.sets
    for layer in range(layers):
        expected = np.mean([np.mean((control[layer, s] > 0) == own[s]) for s in range(seeds)])
        assert control_set.observed["accuracy"][layer] == pytest.approx(expected)
        for r in (0, 13, 39):
            assert control_set.samples["accuracy"][r, layer] == pytest.approx(
                _resampled_accuracy(control[layer], own, group, words, r), abs=1e-6
            )
            assert task_set.samples["accuracy"][r, layer] == pytest.approx(
                _resampled_accuracy(task[layer], labels, group, words, r), abs=1e-6
            )
    assert control_set.observed["accuracy"][1] > 0.8 > control_set.observed["accuracy"][0]
    # Selectivity: the paired difference on the same resamples.
    selectivity = bs.set_difference(result, "accuracy")
    expected = bs.percentile_interval(
        task_set.samples["accuracy"][:, 1] - control_set.samples["accuracy"][:, 1]
    )
    assert selectivity[1]["ci95"] == pytest.approx(expected)


def test_predictions_bootstrap_uses_control_labels_and_warns_without_them(caplog):
    rng = np.random.default_rng(1)
    n = 60
    labels = rng.integers(0, 2, n).astype(np.int8)
    own = np.stack([labels[rng.permutation(n)] for _ in range(2)])
    predictions = {
        "group": np.arange(n) // 2,
        "labels": labels,
        "label_kind": np.asarray("binary"),
        "logits": rng.normal(size=(1, 2, n)).astype(np.float32),
        "control_logits": (3 * (own - 0.5) + rng.normal(size=(2, n)))[None].astype(np.float32),
        "control_labels": own,
    }
    with_labels = bs.predictions_bootstrap(predictions, num_resamples=10)
    observed = with_labels.sets[1].observed["accuracy"][0]
    assert observed == pytest.approx(np.mean((predictions["control_logits"][0] > 0) == own))
    del predictions["control_labels"]
    with caplog.at_level(logging.WARNING, logger="probing.probes.bootstrap"):
        old = bs.predictions_bootstrap(predictions, num_resamples=10)
    assert "control_labels" in caplog.text
    assert old.sets[1].observed["accuracy"][0] == pytest.approx(
        np.mean((predictions["control_logits"][0] > 0) == labels)
    )


@pytest.mark.slow
def test_predictions_and_intervals_score_the_control_on_its_shuffled_labels(strong_sweep):
    result, label_data = strong_sweep
    arrays = predictions_arrays(result, label_data)
    labels, _ = control_targets(
        label_data.labels, label_data.mask, label_data.split, result.seeds, 0, TEST
    )
    np.testing.assert_array_equal(arrays["control_labels"], labels[..., 0])
    assert arrays["control_labels"].dtype == np.int8
    intervals = ImageIntervals(arrays, 500)
    ci = intervals.ci95()[SIGNAL_LAYER]
    table = metric_table(result, label_data)
    control = np.mean(
        [
            v
            for layer, _, split, m, v in table
            if (layer, split, m) == (1, "test", "control_accuracy")
        ]
    )
    assert intervals.result.sets[1].observed["accuracy"][1] == pytest.approx(control)
    low, high = ci["control_accuracy"]
    assert low < 0.5 < high
    assert ci["selectivity"][0] > 0.3


def test_multilabel_control_is_scored_on_its_own_labels_and_mask():
    """Multilabel: per seed, the permuted label vectors and their permuted masks; the
    observed macro F1 is metrics.multilabel_metrics' on them, averaged over seeds."""
    rng = np.random.default_rng(2)
    n, seeds, k = 80, 2, 3
    group = np.arange(n) // 2
    labels = rng.integers(0, 2, (n, k))
    mask = (rng.random((n, k)) > 0.2).astype(np.uint8)
    perms = [rng.permutation(n) for _ in range(seeds)]
    own, own_mask = np.stack([labels[p] for p in perms]), np.stack([mask[p] for p in perms])
    control = (2 * (own - 0.5) + rng.normal(size=(seeds, n, k)))[None]
    task = rng.normal(size=(1, seeds, n, k))
    result = bs.bootstrap(
        [task, control], labels, group, mask=mask, label_kind="multilabel",
        num_resamples=5, set_labels=[None, (own, own_mask)],
    )  # fmt: skip
    names = ["a", "b", "c"]
    for index, (x, y, m) in enumerate(((task, [labels] * 2, [mask] * 2), (control, own, own_mask))):
        expected = np.mean(
            [multilabel_metrics(x[0, s], y[s], m[s], names)["macro_f1"] for s in range(seeds)]
        )
        assert result.sets[index].observed["macro_f1"][0] == pytest.approx(expected)


def test_report_warns_about_probes_scored_before_the_control_had_its_labels(tmp_path, caplog):
    import io
    import os

    from configs.probe import get_config
    from probing.probes.train import train_workdir
    from probing.reporting.runs import load_runs
    from probing.store.layout import CONTROL_LABELS, PREDICTIONS_NPZ, RESULTS_JSON
    from probing.testing.planted import write_workdir

    location = str(tmp_path / "w")
    write_workdir(location, planted_arrays(300, 4, 8, [2], strength=5.0), poolings=("mean",))
    config = get_config()
    config.update(num_seeds=2, epochs=4, batch_size=16, learning_rate=3e-2, bootstrap_resamples=100)
    train_workdir(location, config, poolings=["mean"])
    with caplog.at_level(logging.WARNING):
        load_runs([location])
    assert "shuffled-label control" not in caplog.text
    # An older version's folder: predictions.npz without the control's labels (and
    # no results.json, which came later too).
    folder = os.path.join(location, "probes", "mean")
    path = os.path.join(folder, PREDICTIONS_NPZ)
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files if k != CONTROL_LABELS}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())
    os.remove(os.path.join(folder, RESULTS_JSON))
    with caplog.at_level(logging.WARNING):
        load_runs([location])
    assert "written before the shuffled-label control was scored on its own labels" in caplog.text
