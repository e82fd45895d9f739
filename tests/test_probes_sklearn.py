"""The sweep agrees with scikit-learn's LogisticRegression on a planted-signal task.

The same check benchmarks/probe_sweep.py prints at full size, here at a small
one: at the signal layer the test accuracy of the sweep's probes (mean over
seeds) is within three points of a LogisticRegression fitted on the same
standardised train features; elsewhere both are at chance.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from probing.testing.planted import planted_arrays


@pytest.mark.slow
def test_test_accuracy_per_layer_agrees_with_sklearn():
    arrays = planted_arrays(1200, 3, 16, [1], strength=3.0, seed=8, layer_major=True)
    features, split = arrays["features"], arrays["split"]
    labels = arrays["labels"].astype(np.float32)
    settings = SweepSettings(
        num_seeds=2, epochs=8, batch_size=32, learning_rates=(1e-2,), controls=False
    )
    result = run_sweep(features, labels[:, None], np.ones((1200, 1), np.float32), split, settings)
    train, test = split == 0, split == 2
    sweep_accuracy = ((result.logits["test"][:, 0, :, :, 0] > 0) == labels[test]).mean(axis=(1, 2))

    standardized = (features - result.mean[:, None]) / result.scale[:, None]
    sklearn_accuracy = np.array(
        [
            LogisticRegression(max_iter=500)
            .fit(standardized[layer, train], labels[train])
            .score(standardized[layer, test], labels[test])
            for layer in range(3)
        ]
    )
    # Strength 3 along one direction: Bayes accuracy ~0.93 in layer 1, 0.5 elsewhere.
    assert sklearn_accuracy[1] > 0.85
    assert abs(sweep_accuracy[1] - sklearn_accuracy[1]) < 0.03
    # On noise layers two fits agree only up to the chance spread of 240 test rows.
    for layer in (0, 2):
        assert abs(sweep_accuracy[layer] - 0.5) < 0.1 and abs(sklearn_accuracy[layer] - 0.5) < 0.1
