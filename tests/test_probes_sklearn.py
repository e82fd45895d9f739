"""The converged sweep agrees with scikit-learn's LogisticRegression on a planted store.

Four layers carry the labels with strengths 0.5, 1, 2 and 3 noise standard
deviations (Bayes accuracies 0.60, 0.69, 0.84, 0.93). The sweep runs with its
default stopping rule and learning rate; scikit-learn fits the same train
rows, standardised with the sweep's train statistics. Each picks its
regularisation on val from its own grid: the sweep its AdamW weight decay
(decoupled, so not an L2 penalty in the loss: the two grids cannot be the
same numbers), LogisticRegression its L2 strength C, by val log-loss. Per
layer the test accuracies (the sweep's: mean over seeds) agree within one
point, and the best layer is the same: its gap to the runner-up (0.09) is
far beyond the test sampling error of 800 rows (about 0.015).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from probing.testing.planted import planted_arrays

STRENGTHS = (0.5, 1.0, 2.0, 3.0)
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _graded_store(num_examples: int, dim: int, seed: int):
    """planted_arrays' noise, labels and split; layer l shifted by STRENGTHS[l]."""
    arrays = planted_arrays(num_examples, len(STRENGTHS), dim, [], seed=seed, layer_major=True)
    labels = arrays["labels"].astype(np.float32)
    direction = np.linalg.qr(np.random.default_rng(seed + 1).standard_normal((dim, 1)))[0][:, 0]
    features = arrays["features"]
    for layer, strength in enumerate(STRENGTHS):
        features[layer] += (strength / 2) * (2 * labels - 1)[:, None] * direction
    return features, labels, arrays["split"]


@pytest.mark.slow
def test_converged_sweep_agrees_with_sklearn_per_layer_and_on_the_best_layer():
    features, labels, split = _graded_store(4000, 16, seed=1)
    settings = SweepSettings(num_seeds=3, weight_decays=(0.0, 1e-3, 1e-2), controls=False)
    result = run_sweep(features, labels[:, None], np.ones((4000, 1), np.float32), split, settings)
    assert result.converged.all()
    train, val, test = (split == code for code in (0, 1, 2))
    sweep = ((result.logits["test"][:, 0, :, :, 0] > 0) == labels[test]).mean(axis=(1, 2))

    standardized = (features - result.mean[:, None]) / result.scale[:, None]
    sklearn = []
    for layer in range(len(STRENGTHS)):
        fits = [
            LogisticRegression(C=c, max_iter=1000).fit(standardized[layer, train], labels[train])
            for c in C_GRID
        ]
        val_loss = [
            log_loss(labels[val], f.predict_proba(standardized[layer, val])[:, 1]) for f in fits
        ]
        chosen = fits[int(np.argmin(val_loss))]
        sklearn.append(chosen.score(standardized[layer, test], labels[test]))
    sklearn = np.asarray(sklearn)

    np.testing.assert_allclose(sweep, sklearn, atol=0.01)
    assert np.argmax(sweep) == np.argmax(sklearn) == len(STRENGTHS) - 1
