"""Early stopping of probes: the per-probe patience rule, frozen stopped probes, the not-converged
report, and the guarantee that a probe stops as it would alone.

Sweeps share the small shapes of tests/test_probes_sweep.py (N = 300, 4 layers, D = 8).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from probing.probes import stopping
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from probing.testing.planted import planted_arrays

SIGNAL_LAYER = 2
# Small patience and a big budget, so that probes stop at different epochs.
SETTINGS = SweepSettings(
    num_seeds=2, epochs=40, patience=2, min_delta=1e-3, batch_size=16, learning_rates=(1e-2,)
)


def _inputs(seed=1, strength=3.0):
    arrays = planted_arrays(300, 4, 8, [SIGNAL_LAYER], strength=strength, seed=seed)
    labels = arrays["labels"][:, None].astype(np.float32)
    features = np.moveaxis(arrays["features"], 1, 0)
    return features, labels, np.ones_like(labels), arrays["split"]


@pytest.fixture(scope="module")
def stopped_sweep():
    inputs = _inputs()
    return inputs, run_sweep(*inputs, SETTINGS)


def test_patience_rule_on_a_score_sequence():
    # Scores (higher is better) of three probes over six epochs.
    scores = np.array(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # keeps improving: never stops
            [1.0, 2.0, 2.0, 1.5, 1.0, 9.0],  # no improvement after epoch 2: stops after epoch 4
            [1.0, 1.0005, 1.0007, 1.0008, 5.0, 5.0],  # improvements below min_delta count as none
        ],
        np.float32,
    )
    state = stopping.initial_state((3,))
    active = []
    for epoch in range(6):
        state = stopping.update(
            state, jnp.asarray(scores[:, epoch]), jnp.int32(epoch), patience=2, min_delta=1e-3
        )
        active.append(np.asarray(state["active"]))
    np.testing.assert_array_equal(np.asarray(state["epochs_trained"]), [6, 4, 3])
    assert np.stack(active)[:, 0].all()
    np.testing.assert_array_equal(np.stack(active)[:, 1], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(np.asarray(state["anchor_epoch"]), [6, 2, 1])


@pytest.mark.slow
def test_probes_stop_at_their_own_epochs_and_stay_frozen(stopped_sweep):
    _, result = stopped_sweep
    trained = result.epochs_trained[:, 0, :, 0]  # labels probes, [L, S]
    # Noise layers overfit early; the strong signal layer keeps improving longer.
    assert trained.min() < trained[SIGNAL_LAYER].min()
    assert len(np.unique(result.epochs_trained)) > 2
    assert result.train_loss.shape[0] == result.epochs_trained.max() < SETTINGS.epochs
    # Losses exist exactly for the epochs a probe trained.
    epochs = np.arange(result.train_loss.shape[0])[:, None, None, None, None]
    np.testing.assert_array_equal(
        np.isfinite(result.val_loss), epochs < result.epochs_trained[None]
    )
    np.testing.assert_array_equal(
        np.isfinite(result.train_loss), epochs < result.epochs_trained[None]
    )
    # A probe's best epoch lies at least `patience` epochs before its last
    # epoch (it stopped because the val loss stopped improving), unless it
    # improved by less than min_delta since.
    assert (result.best_epoch <= result.epochs_trained).all()
    assert result.converged.all()


@pytest.mark.slow
def test_a_probe_stops_alone_exactly_as_inside_the_sweep(stopped_sweep):
    # The noise layer 0 stops earlier than the signal layer (it is frozen while
    # the sweep goes on) and is compared with a sweep of layer 0 and seed 1 alone
    # (which ends as soon as that probe stops); likewise the signal layer.
    inputs, full = stopped_sweep
    features, labels, mask, split = inputs
    for layer in (0, SIGNAL_LAYER):
        alone = run_sweep(
            features[layer : layer + 1],
            labels,
            mask,
            split,
            SETTINGS,
            layer_ids=[layer],
            seed_ids=[1],
        )
        epochs = alone.train_loss.shape[0]
        for name in ("kernel", "bias", "best_epoch", "epochs_trained", "val_score"):
            # [L, T, S, ...]: the alone sweep's only layer and seed.
            np.testing.assert_array_equal(
                getattr(alone, name)[0][:, 0], getattr(full, name)[layer][:, 1], err_msg=name
            )
        np.testing.assert_array_equal(
            alone.val_loss[:, 0, :, 0], full.val_loss[:epochs, layer, :, 1]
        )
        assert np.isnan(full.val_loss[epochs:, layer, :, 1]).all()
        np.testing.assert_array_equal(
            alone.logits["test"][0, :, 0], full.logits["test"][layer, :, 1]
        )
    assert full.epochs_trained[0, :, 1].max() < full.epochs_trained[SIGNAL_LAYER, :, 1].max()


@pytest.mark.slow
def test_probes_that_run_out_of_epochs_are_reported_not_converged():
    inputs = _inputs(seed=2, strength=3.0)
    settings = dataclasses.replace(SETTINGS, epochs=2, patience=5, learning_rates=(1e-3,))
    result = run_sweep(*inputs, settings)
    # Two epochs at a small learning rate: the signal layer's val loss is still falling.
    flagged = stopping.not_converged(result)
    signal = [p for p in flagged if p["layer"] == SIGNAL_LAYER and p["target"] == "labels"]
    assert {p["seed"] for p in signal} == {0, 1}
    assert all(p["epochs_trained"] == 2 for p in flagged)
    summary = stopping.convergence_summary(result, settings)
    assert summary["not_converged"] == len(flagged) and summary["probes"] == 4 * 2 * 2
    assert summary["not_converged_probes"][0].keys() >= {"layer", "seed", "target", "grid"}


def test_converged_without_patience_means_best_epoch_before_the_last():
    best = np.array([3, 10, 10])
    trained = np.array([10, 10, 10])
    active = np.array([True, True, False])
    np.testing.assert_array_equal(stopping.converged(best, trained, active, 0), [1, 0, 0])
    np.testing.assert_array_equal(stopping.converged(best, trained, active, 5), [0, 0, 0])
    np.testing.assert_array_equal(
        stopping.converged(np.array([3]), np.array([9]), np.array([False]), 5), [1]
    )


def test_a_probe_that_is_not_live_keeps_parameters_and_adam_state_exactly():
    # Stopped probes, and minibatches of a fold made of padding only (weight 0),
    # must not step: Adam on a zero gradient would still move the weights by
    # their momentum and advance the step count.
    from functools import partial

    import jax

    from probing.probes.kernels import _probe_step
    from probing.probes.model import LinearProbe, _optimizer

    params = LinearProbe(1).init(jax.random.key(0), jnp.zeros((1, 4)))["params"]
    optimizer = _optimizer(jnp.float32(1e-2), jnp.float32(0.0))
    opt_state = optimizer.init(params)
    x = jax.random.normal(jax.random.key(1), (8, 4))
    labels = (x[:, :1] > 0).astype(jnp.float32)
    step = partial(_probe_step, num_outputs=1)
    # No dropout keep masks (None), rate index 0, then learning rate, weight decay, dropout.
    hp = (0, jnp.float32(1e-2), jnp.float32(0.0), jnp.float32(0.0))
    # One real step, so that Adam has momentum.
    params, opt_state, _ = step(
        params, opt_state, True, x, labels, jnp.ones_like(labels), None, *hp
    )
    for live, weight in ((False, 1.0), (True, 0.0), (False, 0.0)):
        mask = jnp.full_like(labels, weight)
        new_params, new_state, _ = step(params, opt_state, live, x, labels, mask, None, *hp)
        same = jax.tree.map(
            lambda a, b: bool((a == b).all()), (new_params, new_state), (params, opt_state)
        )
        # A live probe on a zero-weight minibatch does move (the sweep marks such
        # steps not live); a probe that is not live never does.
        assert all(jax.tree.leaves(same)) == (not live), (live, weight)
