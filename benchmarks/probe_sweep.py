"""Probe sweep vs a PyTorch per-layer loop vs scikit-learn, side by side in one run.

  python benchmarks/probe_sweep.py --size=small      # < 1 minute on 2 cores
  python benchmarks/probe_sweep.py --size=full       # N=40,000, 29 layers, D=1,536, 5 seeds
  python benchmarks/probe_sweep.py --size=full --torch_layers=2   # time 2 layers, extrapolate

All three train on the same planted-signal features (signal in one layer)
with the same hyperparameters: dropout -> linear probe, Adam, sigmoid
cross-entropy, standardised features. The JAX sweep runs without controls
and without a grid so that it does the same work as the baselines; its time
includes compilation. The PyTorch loop trains one probe per (layer, seed) in
Python like the 2025 study; scikit-learn fits LogisticRegression per layer
(one seed: it is deterministic). Printed: wall time, probe-examples per second
(examples x layers x seeds x epochs), the ratios, and test accuracy per layer,
which must agree within about a point. The last line is the ratio to PyTorch.

The batched PyTorch baseline (benchmarks/torch_batched.py) is the best one
could write by hand: all layers × seeds as stacked matmuls, the same dropout,
batch, epochs and Adam; it runs eager and torch.compile'd (--torch_batched),
and the faster of the two sets the "ratio to batched pytorch" line.

With --torch_layers=K the baselines run on K layers (the signal layer among
them) and their time is scaled to all layers: their cost is linear in the
number of layers. Rows are ordered by split and features generated layer-major.
Features are float16 by default, as real extraction configs store them
(--dtype=float32 for the other store dtype); the baselines standardise the
same values in float32. --skip_baselines times the JAX sweep alone. On CPU
the sweep shards its layers over one JAX device per core (--cpu_devices):
XLA runs a single device's sweep on about one core.

The floor (benchmarks/floor.py, measured after the sweep, in the same run): the bytes
of every seed's minibatch rows of all layers (each seed its own order) and
the val rows, at the fastest rate a gather of exactly those rows reaches on
this machine, plus the probes' FLOPs at this machine's measured matmul rate,
per epoch x epochs; the strict floor reads the same bytes at the rate of a
plain stream over the features, which random rows do not reach. Printed with
the sweep's training time (its progress clock: epochs only, not setup or
compilation) and its ratio to both.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.floor import measure_floor
from benchmarks.torch_batched import train_batched
from probing.probes.devices import probe_mesh
from probing.probes.settings import LAYER_UPDATES, SweepSettings
from probing.probes.sweep import _sweep_progress, run_sweep
from probing.testing.planted import planted_arrays

SIZES = {
    # name: (examples, layers, hidden size, seeds, epochs)
    "small": (4000, 6, 128, 2, 10),
    "full": (40000, 29, 1536, 5, 10),
}
_SIZE = flags.DEFINE_enum("size", "small", list(SIZES), "Problem size.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Minibatch size of all probes.")
_LAYERS = flags.DEFINE_integer(
    "layers", 0, "Override the size's layer count (0: keep it), e.g. when memory is short."
)
_TORCH_LAYERS = flags.DEFINE_integer(
    "torch_layers",
    0,
    "Time PyTorch and scikit-learn on this many layers and extrapolate (0: all).",
)
_TORCH_BATCHED = flags.DEFINE_enum(
    "torch_batched",
    "both",
    ["both", "eager", "compiled", "none"],
    "Batched PyTorch baseline: eager, torch.compile'd, both (the faster sets the ratio), none.",
)
_SKIP_SKLEARN = flags.DEFINE_bool("skip_sklearn", False, "Leave out scikit-learn.")
_SKIP_BASELINES = flags.DEFINE_bool(
    "skip_baselines", False, "Time the JAX sweep only (no PyTorch, no scikit-learn)."
)
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices",
    0,
    "On CPU, split the cores into this many JAX devices and shard the layers over them "
    "(0: one per core; 1: a single device). XLA runs one device's sweep on about one "
    "core, so this is how the sweep uses all of them; results are bitwise the same.",
)
_SKIP_FLOOR = flags.DEFINE_bool(
    "skip_floor", False, "Do not measure the floor (benchmarks/floor.py) before the sweep."
)
_LAYER_UPDATE = flags.DEFINE_enum(
    "layer_update", "auto", list(LAYER_UPDATES), "How a minibatch step updates the layers."
)
_DTYPE = flags.DEFINE_enum(
    "dtype",
    "float16",
    ["float16", "float32"],
    "Feature dtype, as a workdir stores them (real configs extract float16).",
)
LEARNING_RATE, DROPOUT, SIGNAL_LAYER = 1e-3, 0.1, 3


def _standardize(features, train):
    """Per-layer train statistics, applied to [layers, N, D] features, in float32."""
    features = features.astype(np.float32)
    mean = features[:, train].mean(axis=1, keepdims=True)
    std = features[:, train].std(axis=1, keepdims=True)
    return ((features - mean) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)


def torch_loop(features, labels, split, layers, seeds, epochs, batch_size):
    """The 2025 study's approach: one PyTorch probe per (layer, seed), trained in Python."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    train, test = split == 0, split == 2
    accuracy = np.zeros((len(layers), len(seeds)))
    y_train = torch.from_numpy(labels[train].astype(np.float32))
    for li in range(len(layers)):
        x_train = torch.from_numpy(features[li, train])
        x_test = torch.from_numpy(features[li, test])
        for si, seed in enumerate(seeds):
            torch.manual_seed(seed)
            probe = torch.nn.Sequential(
                torch.nn.Dropout(DROPOUT), torch.nn.Linear(features.shape[2], 1)
            )
            # Zero start, as the sweep's default (configs/probe.py: zero_init).
            torch.nn.init.zeros_(probe[1].weight)
            optimizer = torch.optim.Adam(probe.parameters(), lr=LEARNING_RATE)
            loss_fn = torch.nn.BCEWithLogitsLoss()
            for _ in range(epochs):
                probe.train()
                for batch in torch.randperm(len(x_train)).split(batch_size):
                    optimizer.zero_grad()
                    loss = loss_fn(probe(x_train[batch])[:, 0], y_train[batch])
                    loss.backward()
                    optimizer.step()
            probe.eval()
            with torch.no_grad():
                predicted = (probe(x_test)[:, 0] > 0).numpy()
            accuracy[li, si] = (predicted == labels[test]).mean()
    return accuracy


def sklearn_per_layer(features, labels, split):
    from sklearn.linear_model import LogisticRegression

    train, test = split == 0, split == 2
    accuracy = []
    for layer in range(features.shape[0]):  # features holds only the layers to fit
        model = LogisticRegression(max_iter=200).fit(features[layer, train], labels[train])
        accuracy.append(model.score(features[layer, test], labels[test]))
    return np.asarray(accuracy)


def main(argv):
    del argv
    # Must happen before JAX creates its CPU backend (the first array).
    jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value or os.cpu_count() or 1)
    num_examples, num_layers, dim, num_seeds, epochs = SIZES[_SIZE.value]
    num_layers = _LAYERS.value or num_layers
    batch_size = _BATCH.value
    arrays = planted_arrays(
        num_examples, num_layers, dim, [SIGNAL_LAYER], strength=3.0, layer_major=True
    )
    # Rows ordered by split: the sweep then moves each split to the device as a view.
    order = np.argsort(arrays["split"], kind="stable")
    drawn = arrays.pop("features")
    # Stored like a workdir stores them; every method reads these same values.
    features = np.empty(drawn.shape, _DTYPE.value)
    for layer in range(num_layers):
        features[layer] = drawn[layer, order]
    del drawn
    labels, split = arrays["labels"][order].astype(np.float32), arrays["split"][order]
    work = num_examples * num_layers * num_seeds * epochs
    print(
        f"size={_SIZE.value}: N={num_examples} layers={num_layers} D={dim} seeds={num_seeds} "
        f"epochs={epochs} batch={batch_size} dropout={DROPOUT} lr={LEARNING_RATE} "
        f"features={_DTYPE.value} jax_devices={len(jax.devices())}"
    )

    settings = SweepSettings(
        num_seeds=num_seeds,
        epochs=epochs,
        batch_size=batch_size,
        learning_rates=(LEARNING_RATE,),
        dropouts=(DROPOUT,),
        controls=False,
        layer_update=_LAYER_UPDATE.value,
        # A fixed number of epochs, as the PyTorch loop trains (no early stopping).
        patience=0,
    )
    # The sweep's own progress clock runs only while epochs train (setup and
    # compilation are paused out): its active time is the training time.
    progress = _sweep_progress(num_layers * num_seeds * epochs)
    start = time.perf_counter()
    result = run_sweep(
        features,
        labels[:, None],
        np.ones((num_examples, 1), np.float32),
        split,
        settings,
        mesh=probe_mesh(0),
        progress=progress,
    )
    jax_seconds = time.perf_counter() - start
    epoch_seconds = progress._active(progress._last_update)  # up to the last epoch's update
    progress.close()
    test_labels = labels[split == 2]
    jax_accuracy = ((result.logits["test"][:, 0, :, :, 0] > 0) == test_labels).mean(axis=-1)
    print(f"jax sweep:     {jax_seconds:8.2f} s  {work / jax_seconds:12.3g} probe-examples/s")
    print(
        f"  of which training epochs {epoch_seconds:.2f} s "
        f"({epoch_seconds / epochs:.3f} s/epoch), setup and compilation "
        f"{jax_seconds - epoch_seconds:.2f} s"
    )
    floor = None
    if not _SKIP_FLOOR.value:
        # Measured after the sweep: it places a copy of the features too, and
        # placed before the sweep, it left the sweep's own placement to fault
        # its 2 MB pages into memory the floor had just handed back (set-up
        # 9.2-15.0 s against 6.6 s without a floor, N = 40,000, batch 16).
        floor = measure_floor(
            features,
            np.flatnonzero(split == 0),
            np.flatnonzero(split == 1),
            num_seeds=num_seeds,
            batch_size=batch_size,
        )
        print(floor.line(epochs))
        ratio = epoch_seconds / (floor.epoch_seconds * epochs)
        strict = epoch_seconds / (floor.strict_epoch_seconds * epochs)
        print(f"training epochs / floor: {ratio:.2f}x  (/ strict floor: {strict:.2f}x)")
        if ratio < 1:
            # A floor the sweep beats is no floor (as the float32-summing gather of an
            # earlier floor.py was: 1.5 GB/s on a quiet 2-core CPU): say so, loudly.
            print(
                "WARNING: the sweep trained faster than the measured floor, so the floor's "
                "read term is not a lower bound here; do not use this ratio"
            )
    if _SKIP_BASELINES.value:
        return

    torch_layers = list(range(_TORCH_LAYERS.value or num_layers))
    if SIGNAL_LAYER not in torch_layers:
        torch_layers[-1] = SIGNAL_LAYER
    standardized = _standardize(features[torch_layers], split == 0)
    scale_up = num_layers / len(torch_layers)
    start = time.perf_counter()
    torch_accuracy = torch_loop(
        standardized, labels, split, torch_layers, range(num_seeds), epochs, batch_size
    )
    torch_seconds = (time.perf_counter() - start) * scale_up
    note = "" if len(torch_layers) == num_layers else f" (extrapolated from {len(torch_layers)})"
    print(
        f"pytorch loop:  {torch_seconds:8.2f} s  {work / torch_seconds:12.3g} probe-examples/s{note}"
    )

    sklearn_accuracy = None
    if not _SKIP_SKLEARN.value:
        start = time.perf_counter()
        sklearn_accuracy = sklearn_per_layer(standardized, labels, split)
        sklearn_seconds = (time.perf_counter() - start) * scale_up
        print(
            f"sklearn:       {sklearn_seconds:8.2f} s  (one fit per layer, no seeds/epochs){note}"
        )

    batched = {}
    for mode in ["eager", "compiled"] if _TORCH_BATCHED.value == "both" else [_TORCH_BATCHED.value]:
        if mode == "none":
            break
        run = train_batched(
            features[torch_layers],
            labels,
            split,
            num_seeds=num_seeds,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=LEARNING_RATE,
            dropout=DROPOUT,
            compile=mode == "compiled",
        )
        # Compilation (first epoch minus a later one) is paid once, not per layer.
        once = max(run.first_epoch_seconds - run.epoch_seconds, 0.0)
        batched[mode] = (once + (run.seconds - once) * scale_up, run)
        print(
            f"batched torch: {batched[mode][0]:8.2f} s  {work / batched[mode][0]:12.3g} "
            f"probe-examples/s ({run.mode}; first epoch {run.first_epoch_seconds:.2f} s, "
            f"then {run.epoch_seconds:.2f} s/epoch){note}"
        )
    best = min(batched, key=lambda mode: batched[mode][0]) if batched else None

    print("test accuracy per layer (mean over seeds): layer jax pytorch sklearn batched")
    for li, layer in enumerate(range(num_layers)):
        torch_value = (
            f"{torch_accuracy[torch_layers.index(layer)].mean():.4f}"
            if layer in torch_layers
            else "   -  "
        )
        sk_value = (
            f"{sklearn_accuracy[torch_layers.index(layer)]:.4f}"
            if sklearn_accuracy is not None and layer in torch_layers
            else "   -  "
        )
        batched_value = (
            f"{batched[best][1].accuracy[torch_layers.index(layer)].mean():.4f}"
            if best and layer in torch_layers
            else "   -  "
        )
        print(
            f"  {layer:3d} {jax_accuracy[li].mean():.4f} {torch_value} {sk_value} {batched_value}"
        )
    if sklearn_accuracy is not None:
        print(f"ratio to sklearn: {sklearn_seconds / jax_seconds:.2f}x")
    if best:
        gaps = [
            abs(batched[best][1].accuracy[i].mean() - jax_accuracy[layer].mean())
            for i, layer in enumerate(torch_layers)
        ]
        print(
            f"ratio to batched pytorch ({best}): {batched[best][0] / jax_seconds:.2f}x "
            f"(test accuracy within {max(gaps):.4f} of jax per layer, "
            f"{gaps[torch_layers.index(SIGNAL_LAYER)]:.4f} at the signal layer)"
        )
    print(f"ratio to pytorch: {torch_seconds / jax_seconds:.2f}x")


if __name__ == "__main__":
    app.run(main)
