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

`--config=configs/probe.py:tao` probes a multilabel (category) workdir as Tao
et al. did, with a separate probe per category: each category's output keeps
its own best val epoch and stops on its own (`per_category_selection`). The
default is one joint probe with one epoch chosen for all categories. Both
train in the same one program; only the epoch selection differs.
"""

from __future__ import annotations

import ml_collections

from probing.probes.settings import default_config

# Config arguments: the probe setups of the papers.
ARGS = ("", "tao")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The default probe config, or with arg "tao" Tao et al.'s per-category probes.

    Every field and its default is documented in probing.probes.settings.default_config.
    """
    arg = (arg or "").strip()
    if arg not in ARGS:
        raise ValueError(f"config argument {arg!r} is not one of {', '.join(a for a in ARGS if a)}")
    config = default_config()
    if arg == "tao":
        config.per_category_selection = True
    return config
