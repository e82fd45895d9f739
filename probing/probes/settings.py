"""Probe sweep settings: `SweepSettings`, its validation, and every probe default.

The defaults live in one place, the fields of `SweepSettings`;
`default_config()` (what configs/probe.py returns) builds the ConfigDict from
them and documents each field, and `SweepSettings.from_config` falls back to
them for optional fields a config leaves out.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

# What picks the best epoch (and grid point) on val.
SELECTIONS = ("loss", "headline")
# How a minibatch step updates the layers (see kernels._train_epoch): one after
# another (fast on CPU), all together (fast on GPU/TPU), or chosen by the backend.
LAYER_UPDATES = ("auto", "sequential", "together")
# How train_all_layers re-draws the image-grouped split at probe time (settings.folds > 0).
FOLD_KINDS = ("kfold", "repeated")
# Feature dtypes the sweep reads as they are (the workdir's store dtypes).
FEATURE_DTYPES = (np.dtype(np.float16), np.dtype(jnp.bfloat16), np.dtype(np.float32))


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """Probe hyperparameters; see default_config for what each one means."""

    seed: int = 0
    num_seeds: int = 3
    epochs: int = 300
    patience: int = 5
    min_delta: float = 0.0
    batch_size: int = 64
    learning_rates: tuple[float, ...] = (1e-3,)
    weight_decays: tuple[float, ...] = (0.0,)
    dropouts: tuple[float, ...] = (0.1,)
    selection: str = "loss"
    per_category_selection: bool = False
    controls: bool = True
    layer_group_size: int = 0
    zero_init: bool = True
    devices: int = 0
    layer_update: str = "auto"
    bootstrap_resamples: int = 10_000
    folds: int = 0
    fold_kind: str = "kfold"
    fold_seed: int = 0

    def __post_init__(self):
        problems = []
        if self.num_seeds < 1:
            problems.append(f"num_seeds must be >= 1, got {self.num_seeds}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.patience < 0:
            problems.append(f"patience must be >= 0 (0 = train every epoch), got {self.patience}")
        if self.min_delta < 0:
            problems.append(f"min_delta must be >= 0, got {self.min_delta}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.learning_rates and self.weight_decays and self.dropouts):
            problems.append("learning_rate, weight_decay and dropout grids must be non-empty")
        if any(not 0.0 <= p < 1.0 for p in self.dropouts):
            problems.append(f"dropout must lie in [0, 1), got {self.dropouts}")
        if any(lr <= 0 for lr in self.learning_rates):
            problems.append(f"learning rates must be > 0, got {self.learning_rates}")
        if any(wd < 0 for wd in self.weight_decays):
            problems.append(f"weight decays must be >= 0, got {self.weight_decays}")
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.layer_group_size < 0:
            problems.append(f"layer_group_size must be >= 0, got {self.layer_group_size}")
        if self.layer_update not in LAYER_UPDATES:
            problems.append(
                f"layer_update must be one of {LAYER_UPDATES}, got {self.layer_update!r}"
            )
        if self.bootstrap_resamples < 0:
            problems.append(f"bootstrap_resamples must be >= 0, got {self.bootstrap_resamples}")
        if self.fold_kind not in FOLD_KINDS:
            problems.append(f"fold_kind must be one of {FOLD_KINDS}, got {self.fold_kind!r}")
        elif self.folds < 0 or (self.fold_kind == "kfold" and self.folds in (1, 2)):
            problems.append(
                f"folds must be 0 (the workdir's split) or >= 3 for kfold (test, val and "
                f"train each need a fold), >= 1 for repeated; got {self.folds}"
            )
        if self.devices < 0:
            problems.append(f"devices must be >= 0 (0 = all), got {self.devices}")
        if problems:
            raise ValueError("probe config: " + "; ".join(problems))

    @property
    def num_targets(self) -> int:
        """Probes per (layer, seed, grid point): the labels' and, with controls, the control's."""
        return 2 if self.controls else 1

    @classmethod
    def from_config(cls, config: Any) -> SweepSettings:
        """Builds settings from a default_config()-shaped ConfigDict (grid fields override scalars).

        seed, num_seeds, epochs, batch_size and the scalar learning_rate,
        weight_decay and dropout are required; the other fields default to
        the dataclass defaults when the config leaves them out.
        """
        grid = config.get("grid") or {}

        def axis(name: str) -> tuple[float, ...]:
            values = tuple(grid.get(name, ()) or ())
            return tuple(float(v) for v in values) or (float(config[name]),)

        def optional(name: str) -> Any:
            return config.get(name, _DEFAULTS[name])

        return cls(
            seed=int(config.seed),
            num_seeds=int(config.num_seeds),
            epochs=int(config.epochs),
            batch_size=int(config.batch_size),
            learning_rates=axis("learning_rate"),
            weight_decays=axis("weight_decay"),
            dropouts=axis("dropout"),
            selection=str(optional("selection")),
            per_category_selection=bool(optional("per_category_selection")),
            controls=bool(optional("controls")),
            layer_group_size=int(optional("layer_group_size")),
            zero_init=bool(optional("zero_init")),
            devices=int(optional("devices")),
            layer_update=str(optional("layer_update")),
            bootstrap_resamples=int(optional("bootstrap_resamples")),
            patience=int(optional("patience")),
            min_delta=float(optional("min_delta")),
            folds=int(optional("folds")),
            fold_kind=str(optional("fold_kind")),
            fold_seed=int(optional("fold_seed")),
        )

    def grid(self) -> dict[str, np.ndarray]:
        """The hyperparameter grid as three [G] arrays (learning rate varies slowest)."""
        points = [
            (lr, wd, p)
            for lr in self.learning_rates
            for wd in self.weight_decays
            for p in self.dropouts
        ]
        columns = np.asarray(points, np.float32).reshape(-1, 3)
        return {
            "learning_rate": columns[:, 0],
            "weight_decay": columns[:, 1],
            "dropout": columns[:, 2],
        }


_DEFAULTS = {field.name: field.default for field in dataclasses.fields(SweepSettings)}


def default_config() -> ml_collections.ConfigDict:
    """The default probe config (configs/probe.py), built from SweepSettings' defaults."""
    defaults = SweepSettings()
    config = ml_collections.ConfigDict()
    # Root seed; every random draw of probe (layer l, seed s) derives from (seed, s, l)
    # (and, with folds, from the fold's rows).
    config.seed = defaults.seed
    # Probes trained per layer with different seeds (init, minibatch order, dropout);
    # summary.json reports their spread as training noise (seed_spread, std).
    config.num_seeds = defaults.num_seeds
    # The most passes over the train split (a budget: with patience > 0 a probe
    # stops when it has converged); the best epoch per probe is chosen on val.
    config.epochs = defaults.epochs
    # Early stopping, per probe: a probe stops (its weights and chosen epoch
    # freeze) once its val selection score has gone `patience` epochs without
    # improving by more than min_delta; the sweep ends when every probe has
    # stopped, or after `epochs`. 0 trains every probe for all epochs. Probes
    # whose best epoch is their last, or still improving when the budget ran
    # out, are listed in summary.json ("convergence") and logged. Measured on
    # planted stores (benchmarks/convergence.py, Adam at 1e-3, batch 64): the old
    # fixed 10 epochs left 57% (binary) / 62% (multilabel) of the probes at their
    # best in the last epoch; patience 5 leaves none, stopping after 25 epochs on
    # average (at most 55) at N = 2,000, D = 256, 12 (at most 21) at N = 8,000,
    # D = 512, and 67-89 (at most 194) at N = 4,000, D = 16, hence the budget.
    config.patience = defaults.patience
    # Smallest val improvement that counts for the patience, in the selection
    # score's units (cross-entropy in nats for selection = "loss"). 0 counts any:
    # with a tolerance, probes whose loss still creeps down stop with their best
    # epoch last (19% of the multilabel probes at 1e-4 in the D = 16 store).
    config.min_delta = defaults.min_delta
    # Minibatch size of Adam; the last minibatch of an epoch is padded with weight 0.
    config.batch_size = defaults.batch_size
    # Adam learning rate (used unless grid.learning_rate lists values).
    config.learning_rate = defaults.learning_rates[0]
    # Decoupled weight decay on the probe's kernel (AdamW); 0 is plain Adam.
    config.weight_decay = defaults.weight_decays[0]
    # Dropout rate on the probe's input features (the 2025 study's probe has dropout).
    config.dropout = defaults.dropouts[0]
    # Optional grid: non-empty tuples replace the scalar fields above; the product
    # grid is trained at once and the point with the best mean val score over
    # seeds is chosen per layer.
    config.grid = ml_collections.ConfigDict()
    config.grid.learning_rate = ()
    config.grid.weight_decay = ()
    config.grid.dropout = ()
    # What picks the best epoch (and grid point) on val: "loss" (val cross-entropy,
    # smooth even on small val splits) or "headline" (accuracy / macro-F1).
    config.selection = defaults.selection
    # Multilabel tasks: False (default) trains one probe with an output per
    # category and picks one best epoch (and stop) for it on the joint val score.
    # True is Tao et al.'s separate probe per category: each category's output
    # keeps the weights of its own best epoch on its own val loss (or F1) and
    # stops on its own patience (configs/probe.py:tao), at the cost of one probe.
    # The outputs of a linear probe train independently of each other; they
    # differ from separately trained probes only in the loss being averaged over
    # all scored entries of a minibatch instead of each category's own, a scale
    # that Adam's normalised step nearly cancels. metrics.csv's best_epoch is then
    # the latest of the categories'; probe_config.json lists each category's.
    # A binary task (one output) is the same either way.
    config.per_category_selection = defaults.per_category_selection
    # Train the shuffled-label control probe alongside (control_* metrics and
    # selectivity in metrics.csv); doubles the work.
    config.controls = defaults.controls
    # Layers trained per group; 0 chooses from the memory available (all layers at
    # once when they fit). The next group is read while one trains, so two groups'
    # features are in memory at once. Results are identical for any grouping.
    config.layer_group_size = defaults.layer_group_size
    # Start every probe's kernel at zero (the loss is convex; a random start only
    # adds seed-dependent optimisation noise). False: Flax's LeCun-normal start.
    config.zero_init = defaults.zero_init
    # Layer indices to probe; empty = all L+1 hidden states.
    config.layers = ()
    # Devices the layer axis is sharded over (a jax.sharding Mesh): 0 = all devices
    # JAX sees, N = the first N, 1 = the plain single-device program. Results are
    # bitwise identical for any count (tests/test_probes_devices.py).
    config.devices = defaults.devices
    # Call jax.distributed.initialize() first, for one process per host on a TPU
    # VM slice or a multi-node GPU job (launch/train_tpu_vm.sh); `devices` then
    # counts the devices of all hosts.
    config.distributed = False
    # How a minibatch step updates the layers: "sequential" (one layer after another,
    # its minibatch stays in the CPU cache: 1.4x faster per epoch on 2 CPU cores at
    # 29 layers, D = 1,536), "together" (all layers in one batched kernel, for GPU/TPU),
    # "auto" (sequential on CPU only). Each mode is deterministic; the two differ in the
    # last float bits.
    config.layer_update = defaults.layer_update
    # Resamples of the cluster bootstrap over test images behind every `ci95` of
    # summary.json and the report (probing/probes/bootstrap.py); 0 = no intervals,
    # only the seed spread. On 2 CPU cores (benchmarks/bootstrap.py), 10,000 take ~4 s
    # for a binary task at 29 layers x 5 seeds x 4,000 test images, but ~6 min for an
    # 80-category multilabel one (the cost grows with layers x seeds x categories):
    # there use a GPU or ~2,000 (interval ends then move by < 0.1 bootstrap sd).
    config.bootstrap_resamples = defaults.bootstrap_resamples
    # Probe a workdir whose extraction has not finished (manifest complete: false),
    # using its written rows only; summary.json and results.json then say so.
    # Off by default: an incomplete store is refused.
    config.allow_partial = False
    # Split-robust sweeps: 0 keeps the workdir's own split (arrays/split). K > 0
    # re-draws the image-grouped split at probe time, from arrays/group, without
    # re-extracting: every fold is trained in the same program as the layers and
    # seeds (a fold is a row mask on the one copy of the features: one gathered
    # minibatch trains every fold), metrics.csv / curves.csv / predictions.npz
    # gain a `fold` column, and summary.json the best layer of each fold.
    config.folds = defaults.folds
    # "kfold": K folds of the images; fold f tests on the f-th K-th of them, selects
    # on the next one and trains on the other K - 2 (K >= 3; K = 5 is 60/20/20).
    # "repeated": K independent random draws with the workdir's own train / val /
    # test fractions of images (how much the numbers move when the split is re-drawn).
    config.fold_kind = defaults.fold_kind
    # Seed of the fold assignment (independent of `seed`, so the probes' own
    # randomness can vary while the folds stay put, and vice versa).
    config.fold_seed = defaults.fold_seed
    # Name of this run: its results go to probes/<pooling>-<run_name>/. Empty derives
    # one (probing/probes/run_names.py): probes/<pooling>/ for the first run of a
    # pooling, probes/<pooling>-<hash of the settings>/ for a run whose settings
    # differ from the one there, so a grid or 5-seed run never replaces another
    # run, and a re-run of the same settings replaces its own folder.
    # `python -m probing.runs --workdir=DIR` lists the runs; the report shows all.
    config.run_name = ""
    # Let this run replace a run of the same name trained with other settings
    # (otherwise refused, naming what differs).
    config.replace_run = False
    return config
