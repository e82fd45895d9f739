"""Tao et al.'s separate probes per category (settings.per_category_selection): each output
of a multilabel probe keeps the weights of its own best val epoch and stops on its own.

Checked against computations outside the kernel: each category's best epoch is
the argmin of its own val-loss curve, the weights kept for it give that loss
(recomputed in numpy from the val logits), training itself is unchanged, and
with one category the result is bitwise the joint probe's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from probing.probes.settings import SweepSettings, default_config
from probing.probes.sweep import run_sweep
from probing.store.layout import VAL

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
