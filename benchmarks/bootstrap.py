"""The JAX image bootstrap (probes/bootstrap.py) vs the numpy one (probes/stats.py), side by side.

  python benchmarks/bootstrap.py                  # full size, ~1 minute on 2 cores
  python benchmarks/bootstrap.py --label_kind=multilabel --categories=80

Full size is the benchmark store's test split: N = 40,000 rows, 20% test =
8,000 rows, 2 rows per image (4,000 images), 29 layers, 5 seeds, 10,000
resamples. Test logits are drawn with a different signal per layer.

Printed, in one run:
* JAX, everything: every reported metric of all 29 layers and of the control
  probes (the sets a report needs), all from the same resamples; time with
  and without compilation.
* JAX, one layer pair: two layers only, the work of the numpy call below.
* numpy `stats.image_bootstrap`: the headline difference of one layer pair.
The ratios numpy / JAX (numpy's selectivity of every layer is one call per
layer, extrapolated from the timed call), and the two intervals of the pair (different random
resamples, so they agree within resampling error, about 0.001 here).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.probes import bootstrap as bs
from probing.probes.stats import image_bootstrap

_ROWS = flags.DEFINE_integer("test_rows", 8000, "Test rows (20% of N = 40,000).")
_LAYERS = flags.DEFINE_integer("layers", 29, "Layers.")
_SEEDS = flags.DEFINE_integer("seeds", 5, "Probe seeds.")
_RESAMPLES = flags.DEFINE_integer("resamples", 10_000, "Bootstrap resamples.")
_KIND = flags.DEFINE_enum("label_kind", "binary", ["binary", "multilabel"], "Task kind.")
_CATEGORIES = flags.DEFINE_integer("categories", 80, "K of a multilabel task.")
ROWS_PER_IMAGE = 2


def _logits(rng, shape_rows, labels, layers, seeds, signal):
    """[L, S, n(, K)] logits: a layer component (shared by seeds) plus seed noise."""
    sign = 2.0 * labels - 1.0
    layer = rng.standard_normal((layers, 1, *shape_rows), dtype=np.float32)
    seed = 0.3 * rng.standard_normal((layers, seeds, *shape_rows), dtype=np.float32)
    strength = np.linspace(0, signal, layers, dtype=np.float32)
    return layer + seed + strength.reshape(-1, 1, *[1] * len(shape_rows)) * sign - 0.5


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    n, layers, seeds, resamples = _ROWS.value, _LAYERS.value, _SEEDS.value, _RESAMPLES.value
    group = np.arange(n) // ROWS_PER_IMAGE
    multilabel = _KIND.value == "multilabel"
    shape = (n, _CATEGORIES.value) if multilabel else (n,)
    labels = (rng.random(shape) < (0.1 if multilabel else 0.5)).astype(np.int8)
    task = _logits(rng, shape, labels, layers, seeds, 3.0)
    control = _logits(rng, shape, labels, layers, seeds, 0.0)
    print(
        f"{_KIND.value}: {n} test rows, {n // ROWS_PER_IMAGE} images, {layers} layers, "
        f"{seeds} seeds, {resamples} resamples"
    )

    def everything():
        return bs.bootstrap([task, control], labels, group, num_resamples=resamples)

    _, first = _timed(everything)
    result, warm = _timed(everything)
    metrics = len(bs.METRICS[_KIND.value])
    print(
        f"JAX, all {layers} layers x {metrics} metrics, task + control: "
        f"{first:.2f} s with compilation, {warm:.2f} s compiled"
    )
    pair = np.stack([task[-1], task[-2]])
    bs.bootstrap([pair], labels, group, num_resamples=resamples)  # compile
    pair_result, pair_time = _timed(
        lambda: bs.bootstrap([pair], labels, group, num_resamples=resamples)
    )
    headline = "macro_f1" if multilabel else "accuracy"
    ours = bs.layer_difference(pair_result, headline, 0, 1)
    print(f"JAX, one layer pair (all {metrics} metrics): {pair_time:.2f} s compiled")
    theirs, numpy_time = _timed(
        lambda: image_bootstrap(
            task[-1], task[-2], labels, group, _KIND.value, num_resamples=resamples
        )
    )
    print(f"numpy stats.image_bootstrap, one layer pair ({headline}): {numpy_time:.2f} s")
    print(
        f"  interval of layer {layers - 1} - layer {layers - 2}: JAX "
        f"[{ours['ci95'][0]:.4f}, {ours['ci95'][1]:.4f}], numpy "
        f"[{theirs['ci_low']:.4f}, {theirs['ci_high']:.4f}] (different resamples)"
    )
    # Selectivity of every layer with numpy is one call per layer (task vs control).
    all_pairs = numpy_time * layers
    print(
        f"ratio numpy / JAX, one layer pair: {numpy_time / pair_time:.1f}x; numpy once per "
        f"layer for selectivity ({layers} calls, {all_pairs:.1f} s extrapolated, headline "
        f"only) / JAX all layers and metrics: {all_pairs / warm:.1f}x"
    )
    del result


if __name__ == "__main__":
    app.run(main)
