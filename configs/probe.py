"""Probe sweep settings for `python -m probing.train_all_layers`.

Command (from the repository root):

  python -m probing.train_all_layers --workdir=runs/demo/qwen_caption \
      --config=configs/probe.py --config.num_seeds=5

`--config` may be left out (this file is the default). Expected runtime on a
2-core CPU: a few seconds for the embedded demo's workdirs; one to two minutes
for 29 layers x 3 seeds at N = 40,000, D = 1,536 with the controls on (probes
stop when converged, about 15 epochs there). `--config.folds=5` trains 5
image-grouped folds in the same program (about 4x one run; 1.3x faster than 5
runs, benchmarks/folds.py). A GPU or TPU runs the same program without changes.

Grid search: give any of grid.learning_rate, grid.weight_decay, grid.dropout a
tuple of values, e.g. `--config.grid.learning_rate="(1e-3, 1e-2)"`; the
product grid is trained in the same sweep and one point chosen per layer on val.
"""

from __future__ import annotations

import ml_collections

from probing.probes.settings import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the default probe config; `arg` is accepted for symmetry and unused.

    Every field and its default is documented in probing.probes.settings.default_config.
    """
    del arg
    return default_config()
