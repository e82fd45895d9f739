"""Tao et al.'s separate probes per category (settings.per_category_selection): each output
of a multilabel probe keeps the weights of its own best val epoch and stops on its own.

Checked against computations outside the kernel: each category's best epoch is
the argmin of its own val-loss curve, the weights kept for it give that loss
(recomputed in numpy from the val logits), training itself is unchanged, and
with one category the result is bitwise the joint probe's.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from probing.probes.settings import SweepSettings, default_config
from probing.probes.sweep import run_streaming_sweep, run_sweep
from probing.probes.train import train_workdir
from probing.store.layout import VAL
from probing.testing.planted import planted_arrays, write_workdir

# Noise per category at the signal layer: a clean category is still improving
# when a noisy one has begun to overfit, so their best epochs differ.
NOISE = (0.2, 1.0, 3.0)
SETTINGS = SweepSettings(
    num_seeds=2,
    epochs=25,
    patience=0,
    batch_size=16,
    learning_rates=(3e-2,),
    dropouts=(0.0,),
    controls=False,
    per_category_selection=True,
)


def _inputs(num_rows=240, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(2, num_rows, dim)).astype(np.float32)
    weights = rng.normal(size=(dim, len(NOISE)))
    noise = rng.normal(size=(num_rows, len(NOISE))) * np.asarray(NOISE)
    labels = (features[1] @ weights + noise > 0).astype(np.float32)
    split = np.repeat([0, 1, 2], [num_rows // 2, num_rows // 4, num_rows - 3 * (num_rows // 4)])
    return features, labels, np.ones_like(labels), split


def _val_loss_per_category(logits, labels):
    """numpy BCE with logits per column, [..., C] from logits [..., n, C]."""
    logits = logits.astype(np.float64)
    per_entry = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    return per_entry.mean(axis=-2)


@pytest.fixture(scope="module")
def both():
    inputs = _inputs()
    per_category = run_sweep(*inputs, SETTINGS)
    joint = run_sweep(*inputs, dataclasses.replace(SETTINGS, per_category_selection=False))
    return inputs, per_category, joint


# Slow: the `both` fixture compiles two sweep programs (~35 s on 2 idle cores).
@pytest.mark.slow
def test_each_category_keeps_the_epoch_of_its_own_lowest_val_loss(both):
    (_, labels, _, split), result, joint = both
    curves = result.category_val_loss[:, :, 0, :, 0]  # [E, L, S, C], labels target, grid 0
    chosen = result.category_best_epoch[:, 0, :, 0]  # [L, S, C]
    np.testing.assert_array_equal(chosen, np.argmin(curves, axis=0) + 1)
    # Not vacuous: within one probe the categories chose different epochs.
    assert (chosen.max(-1) != chosen.min(-1)).any()
    # The weights kept for each category are those of its chosen epoch: its val
    # loss, recomputed from the val logits, is the minimum of its curve.
    val_labels = labels[split == VAL]
    kept_loss = _val_loss_per_category(result.logits["val"][:, 0], val_labels)
    np.testing.assert_allclose(kept_loss, curves.min(axis=0), rtol=2e-5, atol=1e-6)
    # The probe-level best epoch is the latest of its categories'.
    np.testing.assert_array_equal(result.best_epoch[:, 0, :, 0], chosen.max(-1))

    # Selection only: training is the joint probe's, loss for loss.
    np.testing.assert_array_equal(result.train_loss, joint.train_loss)
    np.testing.assert_array_equal(result.val_loss, joint.val_loss)
    joint_loss = _val_loss_per_category(joint.logits["val"][:, 0], val_labels)
    # Each category is at least as good on val as under the joint epoch, some better.
    assert (kept_loss <= joint_loss + 1e-6).all()
    assert (kept_loss < joint_loss - 1e-4).any()
    assert joint.category_best_epoch is None and joint.category_val_loss is None


def test_each_category_stops_on_its_own_patience():
    settings = dataclasses.replace(SETTINGS, patience=2, epochs=60)
    result = run_sweep(*_inputs(), settings)
    curves = result.category_val_loss[:, :, 0, :, 0]  # [E, L, S, C], NaN once stopped
    chosen = result.category_best_epoch[:, 0, :, 0]
    trained = np.isfinite(curves).sum(axis=0)  # epochs each category was selected on
    # min_delta = 0: a category stops `patience` epochs after its best one.
    np.testing.assert_array_equal(trained, np.minimum(chosen + 2, result.train_loss.shape[0]))
    np.testing.assert_array_equal(chosen, np.nanargmin(curves, axis=0) + 1)
    assert (trained.max(-1) != trained.min(-1)).any()  # categories stopped at different epochs
    # The probe trains while any of its categories is active.
    np.testing.assert_array_equal(result.epochs_trained[:, 0, :, 0], trained.max(-1))
    assert result.converged.all()


# Slow: compiles the one-category per-category and joint programs (> 10 s idle).
@pytest.mark.slow
@pytest.mark.parametrize("patience", [0, 3])
def test_one_category_is_the_joint_probe_bit_for_bit(patience):
    features, labels, mask, split = _inputs()
    inputs = (features, labels[:, :1], mask[:, :1], split)
    settings = dataclasses.replace(SETTINGS, patience=patience, controls=True)
    separate = run_sweep(*inputs, settings)
    joint = run_sweep(*inputs, dataclasses.replace(settings, per_category_selection=False))
    for field in ("kernel", "bias", "best_epoch", "epochs_trained", "val_loss", "val_score"):
        np.testing.assert_array_equal(getattr(separate, field), getattr(joint, field), field)
    np.testing.assert_array_equal(separate.logits["test"], joint.logits["test"])
    np.testing.assert_array_equal(separate.category_best_epoch[..., 0], joint.best_epoch)


def test_the_option_is_off_by_default_and_read_from_the_config():
    assert SweepSettings().per_category_selection is False
    config = default_config()
    assert config.per_category_selection is False
    config.per_category_selection = True
    assert SweepSettings.from_config(config).per_category_selection is True
    from configs.probe import get_config

    assert get_config("tao").per_category_selection is True
    assert get_config().per_category_selection is False
    with pytest.raises(ValueError, match="'tao ,x' is not one of tao"):
        get_config("tao ,x")


@pytest.mark.slow
def test_layer_groups_and_folds_keep_the_per_category_selection():
    features, labels, mask, split = _inputs()
    settings = dataclasses.replace(SETTINGS, epochs=6, layer_group_size=1)
    streamed = run_streaming_sweep(
        lambda group: features[group], [0, 1], labels, mask, split, settings
    )
    whole = run_sweep(
        features, labels, mask, split, dataclasses.replace(settings, layer_group_size=0)
    )
    np.testing.assert_array_equal(streamed.category_best_epoch, whole.category_best_epoch)
    np.testing.assert_array_equal(streamed.category_val_loss, whole.category_val_loss)
    np.testing.assert_array_equal(streamed.kernel, whole.kernel)
    folded = run_sweep(
        features, labels, mask, split, dataclasses.replace(settings, folds=3), groups=np.arange(240)
    )
    assert folded.category_best_epoch.shape == (2, 3, 1, 2, 1, 3)  # [L, F, T, S, G, C]
    assert folded.fold(1).category_val_loss.shape == (6, 2, 1, 2, 1, 3)


@pytest.mark.slow
def test_train_all_layers_writes_each_categorys_best_epoch(tmp_path):
    arrays = planted_arrays(160, 2, 8, [1], num_labels=3, strength=3.0, seed=2)
    workdir = write_workdir(str(tmp_path / "w"), arrays, poolings=("mean",))
    config = default_config()
    config.update(num_seeds=2, epochs=8, per_category_selection=True, bootstrap_resamples=0)
    train_workdir(workdir.location, config)
    with open(tmp_path / "w" / "probes" / "mean" / "probe_config.json") as f:
        written = json.load(f)
    assert written["settings"]["per_category_selection"] is True
    entry = written["category_best_epoch"]
    assert entry["axes"] == ["layer", "task", "seed", "category"]
    assert entry["categories"] == ["cat0", "cat1", "cat2"]
    epochs = np.asarray(entry["epochs"])
    assert epochs.shape == (2, 2, 2, 3) and ((epochs >= 1) & (epochs <= 8)).all()
    metrics = pd.read_csv(tmp_path / "w" / "probes" / "mean" / "metrics.csv")
    best = metrics[(metrics.split == "val") & (metrics.metric == "best_epoch")]
    best = best.sort_values(["layer", "seed"]).value.to_numpy()
    np.testing.assert_array_equal(best, epochs[:, 0].max(-1).ravel())
