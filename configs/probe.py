"""Probe sweep settings for `python -m probing.train_all_layers`.

Command (from the repository root):

  python -m probing.train_all_layers --workdir=runs/demo/qwen_caption \
      --config=configs/probe.py --config.num_seeds=5

`--config` may be left out (this file is the default). Expected runtime on a
2-core CPU: a few seconds for the embedded demo's workdirs; about a minute for
29 layers x 3 seeds at N = 40,000, D = 1,536 with the controls on. A GPU or TPU
runs the same program without changes.

Grid search: give any of grid.learning_rate, grid.weight_decay, grid.dropout a
tuple of values, e.g. `--config.grid.learning_rate="(1e-3, 1e-2)"`; the
product grid is trained in the same sweep and one point chosen per layer on val.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the default probe config; `arg` is accepted for symmetry and unused."""
    del arg
    config = ml_collections.ConfigDict()
    # Root seed; every random draw of probe (layer l, seed s) derives from (seed, s, l).
    config.seed = 0
    # Probes trained per layer with different seeds (init, minibatch order, dropout);
    # summary.json reports mean, std and 95% CI over them.
    config.num_seeds = 3
    # Passes over the train split; the best epoch per probe is chosen on val.
    config.epochs = 10
    # Minibatch size of Adam; the last minibatch of an epoch is padded with weight 0.
    config.batch_size = 64
    # Adam learning rate (used unless grid.learning_rate lists values).
    config.learning_rate = 1e-3
    # Decoupled weight decay on the probe's kernel (AdamW); 0 is plain Adam.
    config.weight_decay = 0.0
    # Dropout rate on the probe's input features (the 2025 study's probe has dropout).
    config.dropout = 0.1
    # Optional grid: non-empty tuples replace the scalar fields above; the product
    # grid is trained at once and the point with the best mean val score over
    # seeds is chosen per layer.
    config.grid = ml_collections.ConfigDict()
    config.grid.learning_rate = ()
    config.grid.weight_decay = ()
    config.grid.dropout = ()
    # What picks the best epoch (and grid point) on val: "loss" (val cross-entropy,
    # smooth even on small val splits) or "headline" (accuracy / macro-F1).
    config.selection = "loss"
    # Train the shuffled-label control probe alongside (control_* metrics and
    # selectivity in metrics.csv); doubles the work.
    config.controls = True
    # Layers trained per group; 0 trains all layers at once. Set it when the
    # features of all layers do not fit in device memory: results are identical.
    config.layer_group_size = 0
    # Start every probe's kernel at zero (the loss is convex; a random start only
    # adds seed-dependent optimisation noise). False: Flax's LeCun-normal start.
    config.zero_init = True
    # Layer indices to probe; empty = all L+1 hidden states.
    config.layers = ()
    # Devices the layer axis is sharded over (a jax.sharding Mesh): 0 = all devices
    # JAX sees, N = the first N, 1 = the plain single-device program. Results are
    # bitwise identical for any count (tests/test_probes_devices.py).
    config.devices = 0
    # Call jax.distributed.initialize() first, for one process per host on a TPU
    # VM slice or a multi-node GPU job (launch/train_tpu_vm.sh); `devices` then
    # counts the devices of all hosts.
    config.distributed = False
    # How a minibatch step updates the layers: "sequential" (one layer after another,
    # its minibatch stays in the CPU cache: 1.4x faster per epoch on 2 CPU cores at
    # 29 layers, D = 1,536), "together" (all layers in one batched kernel, for GPU/TPU),
    # "auto" (sequential on CPU only). Each mode is deterministic; the two differ in the
    # last float bits.
    config.layer_update = "auto"
    return config
