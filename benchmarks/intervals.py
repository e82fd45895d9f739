"""Per-layer interval half-widths side by side: seed spread, image bootstrap, folds, folds x bootstrap.

  python benchmarks/intervals.py                       # N=8,000, 8 layers, D=64: ~2 min on 2 cores
  python benchmarks/intervals.py --examples=40000 --layers=29 --hidden=1536 --seeds=5

The store is the planted benchmark store (probing.testing.planted, two rows
per image, image-grouped 60/20/20 split) with a graded signal: layer l is
shifted along one direction by strength s_l, from 0 (noise) to --max_strength
in equal steps, so its Bayes accuracy is Phi(s_l / 2). Two sweeps run on it
with the same probe settings:

* plain: the workdir's own split. Printed per layer: the test accuracy (mean
  over seeds), the half-width of the seed spread (Student-t over seeds,
  training noise only) and of the image bootstrap (summary.json's ci95).
* folds: K grouped folds re-drawn at probe time. Printed: the fold-mean
  accuracy, the half-width of the fold interval (Student-t over the folds'
  means) and of the folds x bootstrap interval (ci95 with folds), and the
  factor the bootstrap was widened by to the fold scatter (1 = not widened).

A last line says whether each interval covers the Bayes accuracy, counted
over layers.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from scipy.stats import norm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from probing.probes import bootstrap as bs
from probing.probes.data import LabelData
from probing.probes.fold_results import fold_predictions_arrays
from probing.probes.settings import SweepSettings
from probing.probes.stats import seed_summary
from probing.probes.sweep import run_sweep
from probing.store.layout import TEST
from probing.testing.planted import planted_arrays

_EXAMPLES = flags.DEFINE_integer("examples", 8000, "N rows (two per image).")
_LAYERS = flags.DEFINE_integer("layers", 8, "Layers.")
_HIDDEN = flags.DEFINE_integer("hidden", 64, "D.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Probe seeds.")
_FOLDS = flags.DEFINE_integer("folds", 5, "K of the fold sweep.")
_STRENGTH = flags.DEFINE_float("max_strength", 2.5, "Separation of the last layer.")
_RESAMPLES = flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples.")


def _half(interval) -> float:
    return (float(interval[1]) - float(interval[0])) / 2


def main(argv):
    del argv
    n, num_layers, dim = _EXAMPLES.value, _LAYERS.value, _HIDDEN.value
    arrays = planted_arrays(n, num_layers, dim, [], seed=0, layer_major=True)
    strength = np.linspace(0.0, _STRENGTH.value, num_layers)
    rng = np.random.default_rng(1)
    direction = np.linalg.qr(rng.standard_normal((dim, 1)))[0][:, 0].astype(np.float32)
    labels = arrays["labels"].astype(np.float32)
    features = arrays["features"]
    features += (strength[:, None, None] / 2) * (2 * labels[None, :, None] - 1) * direction
    group, split = arrays["group"], arrays["split"]
    targets, mask = labels[:, None], np.ones((n, 1), np.float32)
    settings = SweepSettings(
        num_seeds=_SEEDS.value, batch_size=256, learning_rates=(1e-2,), controls=False
    )
    print(
        f"planted store: N={n} images={group.max() + 1} layers={num_layers} D={dim} "
        f"seeds={_SEEDS.value} folds={_FOLDS.value} epochs<={settings.epochs} "
        f"(patience {settings.patience}) resamples={_RESAMPLES.value}",
        flush=True,
    )
    start = time.perf_counter()
    plain = run_sweep(features, targets, mask, split, settings, groups=group)
    test = split == TEST
    logits = plain.logits["test"][:, 0, :, :, 0]  # [L, S, n]
    boot = bs.bootstrap([logits], labels[test], group[test], num_resamples=_RESAMPLES.value)
    plain_seconds = time.perf_counter() - start

    start = time.perf_counter()
    folded_settings = SweepSettings(**{**vars(settings), "folds": _FOLDS.value})
    folded = run_sweep(features, targets, mask, split, folded_settings, groups=group)
    label_data = LabelData(
        targets, mask, split, np.arange(n), group, "binary", ["positive"], num_layers, dim
    )
    predictions = fold_predictions_arrays(folded, label_data)
    fold_boot = bs.predictions_bootstrap(predictions, num_resamples=_RESAMPLES.value)
    fold_seconds = time.perf_counter() - start
    print(
        f"plain sweep + bootstrap {plain_seconds:.1f} s; fold sweep + bootstrap {fold_seconds:.1f} s"
    )

    bayes = norm.cdf(strength / 2)
    per_seed = boot.sets[0].per_seed["accuracy"]  # [L, S]
    per_fold = fold_boot.sets[0].per_fold["accuracy"]  # [F, L]
    boot_ci = bs.percentile_interval(boot.sets[0].samples["accuracy"])
    fold_ci = bs.percentile_interval(fold_boot.sets[0].samples["accuracy"])
    widening = fold_boot.sets[0].widening["accuracy"]
    header = (
        "layer strength  bayes | plain acc  seed±  boot± | folds acc  fold±  folds×boot±  widened"
    )
    print(header)
    covered = {"seed": 0, "boot": 0, "fold": 0, "folds×boot": 0}
    for layer in range(num_layers):
        seeds = seed_summary(per_seed[layer])
        folds = seed_summary(per_fold[:, layer])
        intervals = {
            "seed": seeds["ci95"],
            "boot": boot_ci[:, layer],
            "fold": folds["ci95"],
            "folds×boot": fold_ci[:, layer],
        }
        for name, (low, high) in intervals.items():
            covered[name] += int(low <= bayes[layer] <= high)
        print(
            f"{layer:5d} {strength[layer]:8.2f} {bayes[layer]:6.3f} | "
            f"{seeds['mean']:9.4f} {_half(seeds['ci95']):6.4f} {_half(boot_ci[:, layer]):6.4f} | "
            f"{folds['mean']:9.4f} {_half(folds['ci95']):6.4f} "
            f"{_half(fold_ci[:, layer]):11.4f} {widening[layer]:8.2f}"
        )
    print(
        "covers the Bayes accuracy in layers (of "
        f"{num_layers}): " + ", ".join(f"{k} {v}" for k, v in covered.items())
    )


if __name__ == "__main__":
    app.run(main)
