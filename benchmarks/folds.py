"""A K-fold sweep in one program vs K separate sweeps, one per fold, side by side in one run.

  python benchmarks/folds.py --size=small      # about a minute on 2 cores
  python benchmarks/folds.py --size=full       # N=40,000, 29 layers, D=1,536, 5 seeds, K=5
  python benchmarks/folds.py --size=full --examples=12000 --layers=8 --hidden=256 --seeds=3
                                               # a reduced size: ~3 min on 2 cores

Both train the same kind of probes on the same splits: the fold sweep
(settings.folds = K, grouped K-fold by image) trains every (fold, layer,
seed) in one jitted program over one copy of the features; the baseline runs
K plain sweeps, the k-th on fold k's split as if it were the workdir's own
(what re-splitting and re-running would cost: features placed and programs
compiled K times). Probes use the sweep's defaults (early stopping, patience
5) with the benchmark's learning rate, dropout and batch size from
benchmarks/probe_sweep.py, no controls and no grid. Features are planted
(signal in one layer), float16, rows two per image. Printed: wall time of
each, epochs run, the ratio (separate / folds; > 1 means folds are cheaper)
and the test accuracy of the signal layer per fold from both, which must
agree within noise: same splits and hyperparameters, but the fold sweep
steps through minibatches of all rows, each fold training on its own rows
of each (about (K - 2) / K of it), where a separate sweep steps through its
train rows only; so per epoch a fold takes more, smaller steps. Times
include compilation and placement, and on a shared machine they move with
its load.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.probes.devices import probe_mesh
from probing.probes.folds import make_folds
from probing.probes.settings import SweepSettings
from probing.probes.sweep import run_sweep
from probing.store.layout import TEST
from probing.testing.planted import planted_arrays

SIZES = {
    # name: (examples, layers, hidden size, seeds); as benchmarks/probe_sweep.py
    "small": (4000, 6, 128, 2),
    "full": (40000, 29, 1536, 5),
}
_SIZE = flags.DEFINE_enum("size", "small", list(SIZES), "Problem size.")
_FOLDS = flags.DEFINE_integer("folds", 5, "K: folds of the fold sweep and separate sweeps.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Minibatch size of all probes.")
_EPOCHS = flags.DEFINE_integer("epochs", 300, "Epoch budget (probes stop earlier, patience 5).")
_LAYERS = flags.DEFINE_integer("layers", 0, "Layers to probe (0: the size's own count).")
_EXAMPLES = flags.DEFINE_integer("examples", 0, "N (0: the size's own); a reduced size.")
_HIDDEN = flags.DEFINE_integer("hidden", 0, "D (0: the size's own).")
_SEEDS = flags.DEFINE_integer("seeds", 0, "Probe seeds (0: the size's own count).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", 0, "On CPU, JAX devices to shard the layers over (0: one per core)."
)
LEARNING_RATE, DROPOUT, SIGNAL_LAYER = 1e-3, 0.1, 3


def _signal_accuracy(result, labels, split):
    """Test accuracy of the signal layer's probes, mean over seeds."""
    test = split == TEST
    logits = result.logits["test"][SIGNAL_LAYER, 0, :, :, 0]
    return float(((logits > 0) == labels[test]).mean())


def main(argv):
    del argv
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value or os.cpu_count() or 1)
    num_examples, num_layers, dim, num_seeds = SIZES[_SIZE.value]
    num_layers = _LAYERS.value or num_layers
    num_examples = _EXAMPLES.value or num_examples
    dim, num_seeds = _HIDDEN.value or dim, _SEEDS.value or num_seeds
    k = _FOLDS.value
    arrays = planted_arrays(
        num_examples, num_layers, dim, [SIGNAL_LAYER], strength=3.0, layer_major=True
    )
    features = arrays.pop("features").astype(np.float16)  # [L, N, D], as stored
    labels = arrays["labels"].astype(np.float32)
    group, split = arrays["group"], arrays["split"]
    mask = np.ones((num_examples, 1), np.float32)
    print(
        f"size={_SIZE.value}: N={num_examples} layers={num_layers} D={dim} seeds={num_seeds} "
        f"folds={k} batch={_BATCH.value} lr={LEARNING_RATE} dropout={DROPOUT} epochs<={_EPOCHS.value} "
        f"features=float16 jax_devices={len(jax.devices())}",
        flush=True,
    )
    plain = SweepSettings(
        num_seeds=num_seeds,
        epochs=_EPOCHS.value,
        batch_size=_BATCH.value,
        learning_rates=(LEARNING_RATE,),
        dropouts=(DROPOUT,),
        controls=False,
    )
    folded = SweepSettings(**{**vars(plain), "folds": k})
    mesh = probe_mesh(0)
    fold_splits = make_folds(split, group, labels[:, None], mask, folded).split

    start = time.perf_counter()
    together = run_sweep(features, labels[:, None], mask, split, folded, mesh=mesh, groups=group)
    fold_seconds = time.perf_counter() - start
    fold_accuracy = [_signal_accuracy(together.fold(f), labels, fold_splits[f]) for f in range(k)]
    print(
        f"{k}-fold sweep:      {fold_seconds:8.1f} s  epochs run {together.train_loss.shape[0]}",
        flush=True,
    )

    separate_seconds, separate_accuracy, separate_epochs = 0.0, [], []
    for f in range(k):
        start = time.perf_counter()
        one = run_sweep(features, labels[:, None], mask, fold_splits[f], plain, mesh=mesh)
        separate_seconds += time.perf_counter() - start
        separate_accuracy.append(_signal_accuracy(one, labels, fold_splits[f]))
        separate_epochs.append(one.train_loss.shape[0])
    print(
        f"{k} separate sweeps: {separate_seconds:8.1f} s  epochs run {separate_epochs}",
        flush=True,
    )
    print("signal-layer test accuracy per fold (fold sweep / separate):")
    for f in range(k):
        print(f"  fold {f}: {fold_accuracy[f]:.4f} / {separate_accuracy[f]:.4f}")
    print(f"ratio separate / folds: {separate_seconds / fold_seconds:.2f}x")


if __name__ == "__main__":
    app.run(main)
