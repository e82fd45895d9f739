"""The batched PyTorch baseline (benchmarks/torch_batched.py) learns the planted signal, in both layer updates.

benchmarks/probe_sweep.py compares its per-layer test accuracy with the JAX
sweep's at benchmark size; here, at a tiny size, the probes find the signal
layer, stay at chance elsewhere, and "together" and "sequential" (the same
draws, layers grouped differently) train the same probes.
"""

from __future__ import annotations

import numpy as np

from benchmarks.torch_batched import train_batched
from probing.testing.planted import planted_arrays


def test_finds_the_signal_layer_in_both_layer_updates(single_thread):
    arrays = planted_arrays(1200, 3, 16, [1], strength=3.0, seed=8, layer_major=True)
    features = arrays["features"].astype(np.float16)
    labels, split = arrays["labels"].astype(np.float32), arrays["split"]
    accuracy = {
        update: train_batched(
            features,
            labels,
            split,
            num_seeds=2,
            epochs=8,
            batch_size=32,
            learning_rate=1e-2,
            dropout=0.1,
            layer_update=update,
        ).accuracy
        for update in ("together", "sequential")
    }
    for values in accuracy.values():
        assert values.shape == (3, 2)
        assert values[1].mean() > 0.85
        assert np.all(np.abs(values[[0, 2]].mean(axis=1) - 0.5) < 0.12)
    np.testing.assert_allclose(accuracy["together"], accuracy["sequential"], atol=0.01)
