"""How often a probe's best epoch is its last, per stopping rule, on planted-signal stores.

  python benchmarks/convergence.py                         # the default rule vs fixed epochs
  python benchmarks/convergence.py --epochs=10,50 --patience=0,5

Each row trains the same two planted stores (binary and multilabel, a signal
whose strength grows with depth, so layers differ in how fast their probes
fit) with one (epochs, patience) pair and prints, over the labels probes
whose numbers are reported (every layer x seed at the chosen grid point):
the fraction whose best epoch is the last epoch they trained, the fraction
the sweep flags as not converged (summary.json's "convergence"), the mean
number of epochs trained, the best layer and the wall time. settings.py's
default stopping rule was chosen from this table.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.probes.settings import SweepSettings
from probing.probes.stopping import not_converged
from probing.probes.sweep import run_sweep
from probing.testing.planted import planted_arrays

_EPOCHS = flags.DEFINE_list("epochs", ["10", "100"], "Epoch budgets (max_epochs).")
_PATIENCE = flags.DEFINE_list("patience", ["0", "5"], "Patience values (0: no early stopping).")
_MIN_DELTA = flags.DEFINE_list("min_delta", ["1e-4"], "Smallest improvement that resets patience.")
_LEARNING_RATES = flags.DEFINE_list("learning_rates", ["1e-3"], "Adam learning rates.")
_EXAMPLES = flags.DEFINE_integer("examples", 2000, "Rows of each planted store.")
_DIM = flags.DEFINE_integer("dim", 256, "Hidden size of the planted stores.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Probe seeds.")


def graded_store(
    num_examples, dim, num_labels, seed, strengths=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
):
    """planted_arrays' noise, labels and split, with layer l shifted by strengths[l]."""
    arrays = planted_arrays(num_examples, len(strengths), dim, [], num_labels, seed=seed)
    labels = arrays["labels"].reshape(num_examples, -1).astype(np.float32)
    rng = np.random.default_rng(seed + 1000)
    directions = np.linalg.qr(rng.standard_normal((dim, labels.shape[1])))[0].T
    sign = (2 * labels - 1) @ directions.astype(np.float32)
    features = np.moveaxis(arrays["features"], 1, 0)  # [L, N, D]
    for layer, strength in enumerate(strengths):
        features[layer] += (strength / 2) * sign
    mask = (
        arrays["label_mask"].astype(np.float32) if num_labels else np.ones_like(labels, np.float32)
    )
    return features, labels, mask, arrays["split"]


def main(argv):
    del argv
    stores = {
        "binary": graded_store(_EXAMPLES.value, _DIM.value, 0, seed=1),
        "multilabel": graded_store(_EXAMPLES.value, _DIM.value, 6, seed=2),
    }
    print(
        f"N={_EXAMPLES.value} D={_DIM.value} layers=7 seeds={_SEEDS.value}; "
        "fractions over labels probes at the chosen grid point"
    )
    print(
        "store          lr epochs patience min_delta  best==last  not_conv  mean_epochs  max_epochs"
        "  best_layer  seconds"
    )
    combos = [
        (float(lr), int(e), int(p), float(d))
        for lr in _LEARNING_RATES.value
        for e in _EPOCHS.value
        for p in _PATIENCE.value
        for d in _MIN_DELTA.value
    ]
    for learning_rate, epochs, patience, min_delta in combos:
        for name, inputs in stores.items():
            if True:
                settings = SweepSettings(
                    num_seeds=_SEEDS.value,
                    epochs=epochs,
                    patience=patience,
                    min_delta=min_delta,
                    learning_rates=(learning_rate,),
                )
                start = time.perf_counter()
                result = run_sweep(*inputs, settings)
                seconds = time.perf_counter() - start
                layers = np.arange(len(result.layers))
                best = result.best_epoch[layers, 0, :, result.chosen_grid]  # [L, S]
                trained = result.epochs_trained[layers, 0, :, result.chosen_grid]
                flagged = not_converged(result)
                labels_flagged = [p for p in flagged if p["target"] == "labels"]
                val = result.val_score[layers, 0, :, result.chosen_grid].mean(axis=1)
                print(
                    f"{name:11s} {learning_rate:6.0e} {epochs:6d} {patience:8d} {min_delta:9.0e}"
                    f"  {np.mean(best == trained):10.2f}"
                    f"  {len(labels_flagged) / best.size:8.2f}  {trained.mean():11.1f}"
                    f"  {result.train_loss.shape[0]:10d}  {int(np.argmax(val)):10d}  {seconds:7.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    app.run(main)
