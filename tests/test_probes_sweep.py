"""Tests of the JAX probe sweep: planted signal, chance, controls, determinism, streaming.

All sweeps share small shapes (N = 300, 4 layers, D = 8) so that XLA compiles
only a few programs.
"""

from __future__ import annotations

import numpy as np
import pytest

from probing.probes import devices
from probing.probes.devices import _aligned_empty, _place_features
from probing.probes.folds import control_targets
from probing.probes.metrics import binary_metrics, multilabel_metrics
from probing.probes.model import hash_bits
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_streaming_sweep, run_sweep
from probing.testing.planted import planted_arrays

SIGNAL_LAYER = 2
SETTINGS = SweepSettings(num_seeds=2, epochs=6, batch_size=16, learning_rates=(1e-2,))


def _as_sweep_inputs(arrays):
    labels = arrays["labels"]
    if labels.ndim == 1:
        labels = labels[:, None]
        mask = np.ones_like(labels, np.float32)
    else:
        mask = arrays["label_mask"].astype(np.float32)
    features = np.moveaxis(arrays["features"], 1, 0)  # [L, N, D]
    return features, labels.astype(np.float32), mask, arrays["split"]


def _signal_layer_seed_1_alone(inputs):
    """A sweep of the signal layer and seed 1 only, with SETTINGS."""
    features, labels, mask, split = inputs
    return run_sweep(
        features[SIGNAL_LAYER : SIGNAL_LAYER + 1],
        labels,
        mask,
        split,
        SETTINGS,
        layer_ids=[SIGNAL_LAYER],
        seed_ids=[1],
    )


@pytest.fixture(scope="module")
def binary_sweep():
    arrays = planted_arrays(300, 4, 8, [SIGNAL_LAYER], strength=5.0, seed=1)
    inputs = _as_sweep_inputs(arrays)
    return inputs, run_sweep(*inputs, SETTINGS)


def _test_accuracy(result, inputs, target=0):
    _, labels, _, split = inputs
    test_labels = labels[split == 2, 0]
    return np.array(
        [
            [
                binary_metrics(result.logits["test"][layer, target, seed, :, 0], test_labels)[
                    "accuracy"
                ]
                for seed in range(result.logits["test"].shape[2])
            ]
            for layer in range(result.logits["test"].shape[0])
        ]
    )


@pytest.mark.slow
def test_probe_recovers_planted_signal_and_scores_chance_elsewhere(binary_sweep):
    inputs, result = binary_sweep
    accuracy = _test_accuracy(result, inputs)
    # Separation 5 sigma: the Bayes accuracy is ~0.99.
    assert accuracy[SIGNAL_LAYER].min() > 0.9
    noise_layers = [layer for layer in range(4) if layer != SIGNAL_LAYER]
    assert np.abs(accuracy[noise_layers].mean() - 0.5) < 0.1
    assert accuracy[noise_layers].max() < 0.75


@pytest.mark.slow
def test_shuffled_label_control_scores_near_chance(binary_sweep):
    inputs, result = binary_sweep
    assert result.targets == ("labels", "control")
    # Scored on its own task, the test labels shuffled as its train and val labels were.
    _, labels, mask, split = inputs
    shuffled, _ = control_targets(labels, mask, split, result.seeds, SETTINGS.seed, 2)
    control = np.array(
        [
            [
                binary_metrics(result.logits["test"][layer, 1, s, :, 0], shuffled[s, :, 0])[
                    "accuracy"
                ]
                for s in range(len(result.seeds))
            ]
            for layer in range(result.logits["test"].shape[0])
        ]
    )
    assert control[SIGNAL_LAYER].max() < 0.7
    assert np.abs(control.mean() - 0.5) < 0.1


@pytest.mark.slow
def test_outputs_have_documented_shapes(binary_sweep):
    _, result = binary_sweep
    assert result.kernel.shape == (4, 2, 2, 8, 1)
    assert result.train_loss.shape == (6, 4, 2, 2, 1)
    assert result.best_epoch.min() >= 1 and result.best_epoch.max() <= 6
    # Train loss of the signal layer falls while training.
    assert (
        result.train_loss[-1, SIGNAL_LAYER, 0].max() < result.train_loss[0, SIGNAL_LAYER, 0].min()
    )


@pytest.mark.slow
def test_probe_trained_alone_equals_the_same_probe_inside_the_sweep(binary_sweep):
    inputs, full = binary_sweep
    alone = _signal_layer_seed_1_alone(inputs)
    np.testing.assert_array_equal(alone.kernel[0, :, 0], full.kernel[SIGNAL_LAYER, :, 1])
    np.testing.assert_array_equal(alone.bias[0, :, 0], full.bias[SIGNAL_LAYER, :, 1])
    np.testing.assert_array_equal(alone.best_epoch[0, :, 0], full.best_epoch[SIGNAL_LAYER, :, 1])
    np.testing.assert_array_equal(alone.val_loss[:, 0, :, 0], full.val_loss[:, SIGNAL_LAYER, :, 1])
    for split_name in ("train", "val", "test"):
        np.testing.assert_array_equal(
            alone.logits[split_name][0, :, 0], full.logits[split_name][SIGNAL_LAYER, :, 1]
        )
    np.testing.assert_array_equal(
        alone.train_loss[:, 0, :, 0], full.train_loss[:, SIGNAL_LAYER, :, 1]
    )


@pytest.mark.slow
def test_alone_equals_inside_when_all_layers_update_together():
    # "together" is the GPU/TPU form of a minibatch step (one batched kernel over
    # all layers); it must keep the guarantee too. Three layers, so that the
    # one-layer sweep (padded to two) and the full one have different layer counts.
    arrays = planted_arrays(300, 3, 8, [1], strength=5.0, seed=4)
    features, labels, mask, split = _as_sweep_inputs(arrays)
    settings = SweepSettings(**{**vars(SETTINGS), "layer_update": "together"})
    full = run_sweep(features, labels, mask, split, settings)
    alone = run_sweep(features[1:2], labels, mask, split, settings, layer_ids=[1], seed_ids=[0])
    np.testing.assert_array_equal(alone.kernel[0, :, 0], full.kernel[1, :, 0])
    np.testing.assert_array_equal(alone.train_loss[:, 0, :, 0], full.train_loss[:, 1, :, 0])
    np.testing.assert_array_equal(alone.logits["test"][0, :, 0], full.logits["test"][1, :, 0])


@pytest.mark.slow
def test_streaming_layer_groups_equals_one_sweep(binary_sweep):
    inputs, full = binary_sweep
    features, labels, mask, split = inputs
    loads = []

    def load_layers(group):
        loads.append(list(group))
        return features[list(group)]

    streamed = run_streaming_sweep(
        load_layers,
        range(4),
        labels,
        mask,
        split,
        SweepSettings(**{**vars(SETTINGS), "layer_group_size": 3}),
    )
    assert loads == [[0, 1, 2], [3]]
    for name in ("kernel", "bias", "train_loss", "val_loss", "best_epoch", "mean", "scale"):
        np.testing.assert_array_equal(getattr(streamed, name), getattr(full, name), err_msg=name)
    np.testing.assert_array_equal(streamed.logits["test"], full.logits["test"])


@pytest.mark.slow
def test_different_seeds_train_different_probes(binary_sweep):
    _, result = binary_sweep
    assert not np.array_equal(result.kernel[0, 0, 0], result.kernel[0, 0, 1])


@pytest.mark.slow
def test_multilabel_planted_signal_is_recovered():
    arrays = planted_arrays(300, 4, 8, [1], num_labels=4, strength=5.0, seed=2)
    features, labels, mask, split = _as_sweep_inputs(arrays)
    settings = SweepSettings(num_seeds=1, epochs=6, batch_size=16, learning_rates=(1e-2,))
    result = run_sweep(features, labels, mask, split, settings)
    test = split == 2
    names = ["a", "b", "c", "d"]
    macro_f1 = [
        multilabel_metrics(result.logits["test"][layer, 0, 0], labels[test], mask[test], names)[
            "macro_f1"
        ]
        for layer in range(4)
    ]
    assert macro_f1[1] > 0.85
    assert max(macro_f1[0], macro_f1[2], macro_f1[3]) < 0.7


@pytest.mark.slow
def test_grid_chooses_a_point_per_layer_and_keeps_probes_comparable():
    arrays = planted_arrays(300, 4, 8, [SIGNAL_LAYER], strength=5.0, seed=1)
    inputs = _as_sweep_inputs(arrays)
    # A learning rate far too small cannot fit the signal in 2 epochs; the grid must avoid it.
    settings = SweepSettings(
        num_seeds=2,
        epochs=2,
        batch_size=16,
        learning_rates=(1e-6, 3e-2),
        dropouts=(0.0, 0.2),
        controls=False,
    )
    result = run_sweep(*inputs, settings)
    assert result.targets == ("labels",)
    assert result.grid["learning_rate"].tolist() == pytest.approx([1e-6, 1e-6, 3e-2, 3e-2])
    assert result.grid["learning_rate"][result.chosen_grid[SIGNAL_LAYER]] == pytest.approx(3e-2)
    assert _test_accuracy(result, inputs)[SIGNAL_LAYER].min() > 0.9


def test_hash_bits_are_uniform_and_key_dependent():
    import jax.numpy as jnp

    words = jnp.array([12345, 678], jnp.uint32)
    bits = np.asarray(hash_bits(words, (64, 256)))
    uniform = (bits >> 8) / 2.0**24
    assert abs(uniform.mean() - 0.5) < 0.01
    assert abs((uniform < 0.1).mean() - 0.1) < 0.01
    other = np.asarray(hash_bits(jnp.array([12346, 678], jnp.uint32), (64, 256)))
    assert (bits != other).mean() > 0.99


def test_bad_settings_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="dropout must lie in"):
        SweepSettings(dropouts=(1.0,))
    with pytest.raises(ValueError, match="selection must be one of"):
        SweepSettings(selection="accuracy")
    with pytest.raises(ValueError, match="layer_update must be one of"):
        SweepSettings(layer_update="parallel")


@pytest.mark.slow
@pytest.mark.parametrize("store_dtype", [np.float16, "bfloat16"])
def test_compact_features_train_exactly_as_their_float32_values(binary_sweep, store_dtype):
    # The sweep reads float16/bfloat16 features as they are and standardises
    # each minibatch in float32; that must be the very arithmetic of the same
    # values handed over as float32 (which the sweep used to convert them to).
    inputs, _ = binary_sweep
    features, labels, mask, split = inputs
    compact = features.astype(np.dtype(store_dtype))
    assert compact.dtype.itemsize == 2 and not np.array_equal(compact, features)
    as_stored = run_sweep(compact, labels, mask, split, SETTINGS)
    widened = run_sweep(compact.astype(np.float32), labels, mask, split, SETTINGS)
    for name in ("kernel", "bias", "train_loss", "val_loss", "best_epoch", "mean", "scale"):
        np.testing.assert_array_equal(
            getattr(as_stored, name), getattr(widened, name), err_msg=name
        )
    for split_name, logits in widened.logits.items():
        np.testing.assert_array_equal(as_stored.logits[split_name], logits, err_msg=split_name)


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16", np.float32])
def test_aligned_host_arrays_start_on_64_byte_boundaries(dtype):
    # The CPU backend adopts a 64-byte-aligned host array as the device buffer
    # instead of copying it; the features are placed that way.
    for shape in [(3, 5, 7), (1,), (40, 2, 1536)]:
        array = _aligned_empty(shape, dtype)
        assert array.shape == shape and array.dtype == np.dtype(dtype)
        assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous


@pytest.mark.parametrize("rows", [np.arange(10, 40), np.array([3, 0, 17, 5, 50])])
def test_features_are_placed_example_major(rows):
    # Device features are [n, L, D]: row i holds every layer of example rows[i],
    # for a contiguous split (a view) and for scattered rows alike; padded
    # layers repeat the last one.
    features = np.random.default_rng(0).standard_normal((3, 60, 4)).astype(np.float16)
    layer_index = np.array([0, 1, 2, 2])
    placed = np.asarray(_place_features(features, layer_index, rows, mesh=None))
    assert placed.shape == (len(rows), 4, 4) and placed.dtype == np.float16
    np.testing.assert_array_equal(placed, features[layer_index][:, rows].transpose(1, 0, 2))


@pytest.mark.slow
def test_gathering_each_layer_rows_equals_gathering_whole_rows(binary_sweep, monkeypatch):
    # Big minibatches read each layer's rows separately instead of one block of
    # all layers (devices.WHOLE_ROWS_MAX_BYTES); the probes must not notice.
    inputs, whole_rows = binary_sweep
    monkeypatch.setattr(devices, "WHOLE_ROWS_MAX_BYTES", 0)
    per_layer = run_sweep(*inputs, SETTINGS)
    for name in ("kernel", "bias", "train_loss", "val_loss", "best_epoch"):
        np.testing.assert_array_equal(
            getattr(per_layer, name), getattr(whole_rows, name), err_msg=name
        )


@pytest.mark.slow
def test_minibatches_stepped_through_in_parts_train_the_same_probes(binary_sweep, monkeypatch):
    # On CPU each minibatch is stepped through in parts that stay in cache
    # (devices.PART_MAX_BYTES; here 4 parts of 4 rows of D = 8). Each probe's
    # gradient is then summed in another order: the probes agree with the
    # whole-minibatch sweep to float32 rounding, and a probe trained alone
    # equals the same probe inside the parted sweep bit for bit.
    inputs, whole = binary_sweep
    monkeypatch.setattr(devices, "PART_MAX_BYTES", 4 * 8 * 4)
    parted = run_sweep(*inputs, SETTINGS)
    np.testing.assert_allclose(parted.kernel, whole.kernel, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(parted.train_loss, whole.train_loss, rtol=1e-5)
    for split_name, logits in whole.logits.items():
        np.testing.assert_allclose(parted.logits[split_name], logits, rtol=1e-3, atol=1e-4)
    alone = _signal_layer_seed_1_alone(inputs)
    np.testing.assert_array_equal(alone.kernel[0, :, 0], parted.kernel[SIGNAL_LAYER, :, 1])
    np.testing.assert_array_equal(
        alone.train_loss[:, 0, :, 0], parted.train_loss[:, SIGNAL_LAYER, :, 1]
    )
