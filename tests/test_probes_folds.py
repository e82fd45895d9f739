"""Split-robust sweeps: folds re-drawn by image at probe time and trained in the one program.

Images here have 1 to 6 rows, so folds differ in size: their val and test
index arrays carry padding, and a minibatch of the shared train index holds a
different number of each fold's train rows.
Sweeps use N = 300, 4 layers, D = 8 as tests/test_probes_sweep.py.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import pytest

from configs.probe import get_config
from probing.probes.data import LabelData
from probing.probes.fold_results import fold_predictions_arrays, fold_tables
from probing.probes.folds import fold_targets, make_folds
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_streaming_sweep, run_sweep
from probing.probes.train import train_workdir
from probing.store import layout
from probing.store.layout import TEST, TRAIN, VAL
from probing.testing.planted import planted_arrays, write_workdir

SIGNAL_LAYER = 1
SETTINGS = SweepSettings(
    num_seeds=2, epochs=12, patience=3, batch_size=16, learning_rates=(1e-2,), folds=4
)


def _uneven_groups(num_rows: int, seed: int = 0) -> np.ndarray:
    """Image ids for rows in order, 1 to 6 rows per image."""
    sizes = np.random.default_rng(seed).integers(1, 7, num_rows)
    return np.repeat(np.arange(num_rows), sizes)[:num_rows]


def _arrays(seed: int = 5):
    arrays = planted_arrays(300, 4, 8, [SIGNAL_LAYER], strength=3.0, seed=seed)
    arrays["group"] = _uneven_groups(300, seed)
    # Images shifted as a whole in every layer: standardisation statistics then
    # depend visibly on which images are in a fold's train part.
    images = np.unique(arrays["group"])
    shift = np.random.default_rng(seed).choice([0.0, 3.0], images.size)
    arrays["features"] += shift[np.searchsorted(images, arrays["group"])][:, None, None]
    return arrays


def _sweep_inputs(arrays):
    labels = arrays["labels"][:, None].astype(np.float32)
    return (np.moveaxis(arrays["features"], 1, 0), labels, np.ones_like(labels), arrays["split"])


@pytest.fixture(scope="module")
def fold_sweep():
    arrays = _arrays()
    inputs = _sweep_inputs(arrays)
    return arrays, inputs, run_sweep(*inputs, SETTINGS, groups=arrays["group"])


def test_kfold_tests_and_selects_on_every_image_once_and_keeps_images_whole():
    arrays = _arrays()
    group, labels = arrays["group"], arrays["labels"][:, None]
    folds = make_folds(arrays["split"], group, labels, np.ones_like(labels), SETTINGS)
    assert folds.split.shape == (4, 300) and folds.kind == "kfold"
    images = np.unique(group)
    first_row = np.searchsorted(group, images)
    per_image = folds.split[:, first_row]  # [F, images]
    # Every row of an image shares its image's split, in every fold.
    for f in range(4):
        np.testing.assert_array_equal(folds.split[f], per_image[f][np.searchsorted(images, group)])
    assert ((per_image == TEST).sum(axis=0) == 1).all()
    assert ((per_image == VAL).sum(axis=0) == 1).all()
    assert ((per_image == TRAIN).sum(axis=0) == 2).all()
    # Fold sizes differ in rows (images have 1-6 rows), so index arrays are padded.
    train_rows, counts = folds.rows(TRAIN)
    assert len(set(counts.tolist())) > 1 and train_rows.shape[1] == counts.max()
    assert counts.max() - counts.min() >= SETTINGS.batch_size


def test_repeated_draws_keep_the_workdir_fractions_of_images():
    arrays = _arrays()
    labels = arrays["labels"][:, None]
    settings = dataclasses.replace(SETTINGS, fold_kind="repeated", folds=3)
    folds = make_folds(arrays["split"], arrays["group"], labels, np.ones_like(labels), settings)
    _, first_row = np.unique(arrays["group"], return_index=True)
    own = arrays["split"][first_row]
    for fold_split in folds.split:
        drawn = fold_split[first_row]
        for code in (TRAIN, VAL, TEST):
            assert (drawn == code).sum() == (own == code).sum()
    assert not np.array_equal(folds.split[0], folds.split[1])


def test_too_few_images_or_a_class_missing_from_a_fold_is_a_clear_error():
    labels = np.array([0, 1, 0, 1, 1, 0, 0, 1], np.float32)[:, None]
    mask = np.ones_like(labels)
    split = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    four_images = np.repeat(np.arange(4), 2)
    with pytest.raises(ValueError, match=r"folds = 5 .* at least 5 images, but the workdir has 4"):
        make_folds(split, four_images, labels, mask, dataclasses.replace(SETTINGS, folds=5))
    # Positives in one image only: the fold that tests on it has none to train on.
    arrays = _arrays()
    labels = (arrays["group"] == arrays["group"][0]).astype(np.float32)[:, None]
    with pytest.raises(
        ValueError, match=r"fold \d \(kfold\): its train part \(\d+ rows\) has 0 pos"
    ):
        make_folds(arrays["split"], arrays["group"], labels, np.ones_like(labels), SETTINGS)


@pytest.mark.slow
def test_each_fold_is_standardised_with_its_own_train_rows_only(fold_sweep):
    arrays, _, result = fold_sweep
    features = arrays["features"]  # [N, L, D]
    assert result.mean.shape == (4, 4, 8) and result.folds.num_folds == 4
    for f in range(4):
        train = result.folds.split[f] == TRAIN
        np.testing.assert_allclose(result.mean[:, f], features[train].mean(0), atol=1e-5)
        np.testing.assert_allclose(result.scale[:, f], features[train].std(0), rtol=1e-5)
    # The image shifts make the folds' statistics differ from all rows' ones.
    assert np.abs(result.mean - features.mean(0)[:, None]).max() > 0.1


@pytest.mark.slow
def test_a_fold_trained_alone_equals_the_same_fold_inside_the_sweep(fold_sweep):
    arrays, inputs, full = fold_sweep
    features, labels, mask, split = inputs
    alone = run_sweep(
        features[SIGNAL_LAYER : SIGNAL_LAYER + 1],
        labels,
        mask,
        split,
        SETTINGS,
        layer_ids=[SIGNAL_LAYER],
        seed_ids=[1],
        groups=arrays["group"],
        fold_ids=[2],
    )
    assert alone.folds.ids.tolist() == [2]
    epochs = alone.train_loss.shape[0]
    for name in ("kernel", "bias", "best_epoch", "epochs_trained", "val_score"):
        # [L, F, T, S, ...]: the alone sweep's only layer, fold and seed.
        np.testing.assert_array_equal(
            getattr(alone, name)[0, 0][:, 0], getattr(full, name)[SIGNAL_LAYER, 2][:, 1], name
        )
    np.testing.assert_array_equal(alone.mean[0, 0], full.mean[SIGNAL_LAYER, 2])
    np.testing.assert_array_equal(
        alone.val_loss[:, 0, 0, :, 0], full.val_loss[:epochs, SIGNAL_LAYER, 2, :, 1]
    )
    np.testing.assert_array_equal(
        alone.train_loss[:, 0, 0, :, 0], full.train_loss[:epochs, SIGNAL_LAYER, 2, :, 1]
    )
    for split_name in ("train", "val", "test"):
        np.testing.assert_array_equal(
            alone.fold(0).logits[split_name][0, :, 0],
            full.fold(2).logits[split_name][SIGNAL_LAYER, :, 1],
        )


@pytest.mark.slow
def test_streaming_layer_groups_with_folds_equals_one_sweep(fold_sweep):
    arrays, inputs, full = fold_sweep
    features, labels, mask, split = inputs
    streamed = run_streaming_sweep(
        lambda group: features[list(group)],
        range(4),
        labels,
        mask,
        split,
        dataclasses.replace(SETTINGS, layer_group_size=3),
        groups=arrays["group"],
    )
    for name in ("kernel", "best_epoch", "epochs_trained", "mean", "scale", "chosen_grid"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(full, name), err_msg=name)
    np.testing.assert_array_equal(streamed.logits["test"], full.logits["test"])


@pytest.mark.slow
def test_folds_find_the_signal_layer_in_every_fold(fold_sweep):
    arrays, _, result = fold_sweep
    labels = arrays["labels"]
    for f in range(4):
        one = result.fold(f)
        test = result.folds.split[f] == TEST
        accuracy = ((one.logits["test"][:, 0, :, :, 0] > 0) == labels[test]).mean(axis=(1, 2))
        assert accuracy[SIGNAL_LAYER] > 0.85 and np.delete(accuracy, SIGNAL_LAYER).max() < 0.7


@pytest.mark.slow
def test_train_workdir_with_folds_writes_a_fold_column_and_the_best_layer_frequency(tmp_path):
    arrays = _arrays(seed=6)
    write_workdir(str(tmp_path / "w"), arrays)
    config = get_config()
    config.update(num_seeds=2, epochs=6, batch_size=16, learning_rate=1e-2, folds=3)
    summary = train_workdir(str(tmp_path / "w"), config)["mean"]
    probes = tmp_path / "w" / "probes" / "mean"
    metrics = list(csv.reader(io.StringIO((probes / "metrics.csv").read_text())))
    # The run's identifying columns lead, as without folds.
    run = list(layout.RUN_COLUMNS)
    assert metrics[0] == [*run, "layer", "fold", "seed", "split", "metric", "value"]
    assert {row[len(run) + 1] for row in metrics[1:]} == {"0", "1", "2"}
    assert {row[run.index("pooling")] for row in metrics[1:]} == {"mean"}
    curves = (probes / "curves.csv").read_text().splitlines()
    assert curves[0] == ",".join([*run, "layer", "fold", "seed", "epoch", "split", "loss"])
    predictions = np.load(probes / "predictions.npz")
    # K folds: every row is tested exactly once, with its fold's probes.
    assert sorted(predictions["rows"].tolist()) == list(range(300))
    assert predictions["logits"].shape == (4, 2, 300)
    assert np.bincount(predictions["fold"]).tolist() == [
        int((s == TEST).sum()) for s in make_folds_of(arrays, config)
    ]
    written = json.loads((probes / "summary.json").read_text())
    assert written["folds"]["best_layer_frequency"] == {str(SIGNAL_LAYER): 3}
    assert summary["num_folds"] == 3 and summary["best_layer"]["layer"] == SIGNAL_LAYER
    per_fold = written["folds"]["test_accuracy_per_fold"][str(SIGNAL_LAYER)]
    layer = written["layers"][SIGNAL_LAYER]["test"]["accuracy"]
    assert layer["n"] == 3 and layer["mean"] == pytest.approx(np.mean(per_fold))
    assert "convergence" in written


def make_folds_of(arrays, config):
    labels = arrays["labels"][:, None]
    settings = SweepSettings.from_config(config)
    return make_folds(
        arrays["split"], arrays["group"], labels, np.ones_like(labels), settings
    ).split


@pytest.mark.parametrize("epoch", [0, 3])
def test_an_epoch_trains_each_fold_on_every_train_row_once_and_on_nothing_else(epoch):
    # What the train program reads: minibatch positions into the shared train
    # index, in this epoch's order, and each fold's label mask there (times
    # the padding weight). Rows a fold trains on (weight > 0), for the labels
    # and the control probes alike, must be exactly its train rows, each once.
    import jax.numpy as jnp

    from probing.probes.folds import fold_targets
    from probing.probes.kernels import _epoch_order

    arrays = _arrays()
    labels = arrays["labels"][:, None].astype(np.float32)
    folds = make_folds(arrays["split"], arrays["group"], labels, np.ones_like(labels), SETTINGS)
    # K folds: every row is train in some fold, laid out in K chunks (the rows
    # that are train in the same folds).
    assert sorted(folds.train_rows.tolist()) == list(range(300))
    assert len(folds.chunk_sizes) == 4 and sum(folds.chunk_sizes) == 300
    _, train_mask = fold_targets(labels, np.ones_like(labels), folds, [0, 1], SETTINGS, TRAIN)
    positions, weight = _epoch_order(0, 1, epoch, folds.chunk_sizes, 16)
    positions, weight = np.asarray(positions), np.asarray(weight)
    rows = folds.train_rows[positions]
    read = np.asarray(train_mask)[:, :, :, positions, 0] * weight
    # Each minibatch holds rows of one chunk: a fold trains on all its real
    # rows or on none (so the fold loop can skip it whole).
    in_fold = (folds.split[:, rows] == TRAIN).reshape(4, -1, 16)
    real = weight.reshape(-1, 16) > 0
    for step in range(real.shape[0]):
        assert len({tuple(in_fold[:, step, i]) for i in np.flatnonzero(real[step])}) == 1
    for f in range(folds.num_folds):
        for target in range(2):
            for seed in range(2):
                trained = rows[read[f, target, seed] > 0]
                np.testing.assert_array_equal(
                    np.sort(trained), np.flatnonzero(folds.split[f] == TRAIN)
                )
    assert jnp.asarray(weight).shape[0] % 16 == 0


def test_fold_tables_and_predictions_score_each_folds_control_on_its_shuffled_labels(fold_sweep):
    """metrics.csv's control rows and predictions.npz's control_labels, fold by fold, against
    the labels fold_targets gave the control (train in the shared index's chunk order)."""
    arrays, (_, labels, mask, split), result = fold_sweep
    label_data = LabelData(
        labels, mask, split, np.arange(300), arrays["group"], "binary", ["y"], 5, 8
    )
    seeds = result.seeds
    given = {
        code: np.asarray(fold_targets(labels, mask, result.folds, seeds, SETTINGS, code)[0])
        for code in (TRAIN, VAL, TEST)
    }
    metrics, _ = fold_tables(result, label_data)
    control = {
        (layer, fold, seed, split_name): value
        for layer, fold, seed, split_name, metric, value in metrics
        if metric == "control_accuracy"
    }
    predictions = fold_predictions_arrays(result, label_data)
    for f in range(result.folds.num_folds):
        one = result.fold(f)
        for code, split_name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            if code == TRAIN:
                member = result.folds.train_weight()[f] > 0
                order = np.argsort(result.folds.train_rows[member])
                shuffled = given[code][f, 1][:, member][:, order, 0]
            else:
                count = int((result.folds.split[f] == code).sum())
                shuffled = given[code][f, 1][:, :count, 0]
            for layer in range(4):
                for s in range(len(seeds)):
                    hits = (one.logits[split_name][layer, 1, s, :, 0] > 0) == shuffled[s]
                    assert control[layer, f, s, split_name] == pytest.approx(hits.mean())
        at = predictions["fold"] == f
        np.testing.assert_array_equal(predictions["control_labels"][:, at], shuffled)
    assert predictions["control_labels"].shape == (len(seeds), 300)
