"""The sweep's programs and their inputs: `_programs` jits (and shard_maps) the kernels for one
device layout, `_compile_and_place` compiles them while the features are placed.

Used by probing.probes.sweep's host driver; see probing.probes.kernels for the
kernels and probing.probes.devices for the mesh and placement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from probing.probes import devices
from probing.probes.devices import (
    _BY_LAYER,
    _FEATURES_BY_LAYER,
    _LOSS_BY_LAYER,
    _REPLICATED,
    _layer_loop,
    _lower,
    _program,
    _shapes_of,
    place_features,
)
from probing.probes.kernels import _init_state, _select_epoch, _train_epoch
from probing.probes.scoring import _chosen_logits, _statistics
from probing.probes.settings import SweepSettings
from probing.store.layout import SPLIT_NAMES


@dataclasses.dataclass(frozen=True)
class _DeviceInputs:
    """A sweep's inputs other than the features, on the device(s)."""

    rows: dict[str, jax.Array]  # split -> [F, n] each fold's rows of it (padded), to evaluate
    train_rows: jax.Array  # [n_train] the shared train index, to train on
    train_weight: jax.Array  # [F, n_train] each fold's rows of it
    y_train: jax.Array  # [F, T, S, n_train, C] labels per fold, target and seed
    m_train: jax.Array  # [F, T, S, n_train, C] their mask (0 outside the fold's train part)
    y_val: jax.Array  # [F, T, S, n_val, C]
    m_val: jax.Array  # [F, T, S, n_val, C]
    hp: dict[str, jax.Array]  # the grid, [G] per hyperparameter
    seeds: jax.Array  # [S] seed indices
    epochs: list[jax.Array]  # the epoch numbers 0..E-1 as device scalars

    def train_args(self, epoch: jax.Array) -> tuple:
        """train_epoch's arguments after (state, x, mean, inverse)."""
        return (
            self.train_rows,
            self.train_weight,
            self.y_train,
            self.m_train,
            epoch,
            self.seeds,
            self.hp,
        )

    def select_args(self, epoch: jax.Array) -> tuple:
        """select_epoch's arguments after (state, x): val rows, then after (mean, inverse)."""
        return self.y_val, self.m_val, epoch


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The sweep's kernels for one layout, jitted (and shard_mapped with a mesh)."""

    init_state: Callable
    statistics: Callable
    train_epoch: Callable
    select_epoch: Callable
    chosen_logits: Callable


def _programs(settings: SweepSettings, mesh: Mesh | None, *, folds, num_outputs, dim, multilabel):
    """The sweep's kernels, jitted for `mesh` with their static arguments."""

    def program(impl, in_specs, out_specs, donate=(), **static):
        return _program(impl, mesh, in_specs, out_specs, donate, tuple(sorted(static.items())))

    return _Programs(
        init_state=program(
            _init_state,
            (_BY_LAYER, _REPLICATED, _REPLICATED),
            _BY_LAYER,
            seed=settings.seed,
            num_folds=folds.num_folds,
            num_targets=settings.num_targets,
            num_outputs=num_outputs,
            dim=dim,
            zero_init=settings.zero_init,
            per_category=settings.per_category_selection,
        ),
        statistics=program(
            _statistics,
            (_FEATURES_BY_LAYER, _REPLICATED, _REPLICATED),
            (_BY_LAYER,) * 3,
            weighted=folds.enabled,
        ),
        train_epoch=program(
            _train_epoch,
            (_BY_LAYER, _FEATURES_BY_LAYER, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 7,
            (_BY_LAYER, (_LOSS_BY_LAYER, _REPLICATED)),
            donate=(0,),
            seed=settings.seed,
            batch_size=settings.batch_size,
            dropouts=tuple(float(rate) for rate in settings.grid()["dropout"]),
            layer_loop=_layer_loop(settings.layer_update, mesh),
            fold_loop=folds.enabled and _layer_loop(settings.layer_update, mesh),
            chunk_sizes=folds.chunk_sizes,
            # Read here, at call time, so that tests can lower it.
            whole_rows_max_bytes=devices.WHOLE_ROWS_MAX_BYTES,
            part_max_bytes=devices.PART_MAX_BYTES,
            num_outputs=num_outputs,
        ),
        select_epoch=program(
            _select_epoch,
            (_BY_LAYER, _FEATURES_BY_LAYER, _REPLICATED, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 3,
            (_BY_LAYER, _BY_LAYER),
            donate=(0,),
            num_outputs=num_outputs,
            selection=settings.selection,
            multilabel=multilabel,
            patience=settings.patience,
            min_delta=settings.min_delta,
            per_category=settings.per_category_selection,
        ),
        chosen_logits=program(
            _chosen_logits,
            (_BY_LAYER, _FEATURES_BY_LAYER, (_REPLICATED,) * 3, _BY_LAYER, _BY_LAYER, _BY_LAYER),
            (_BY_LAYER, _BY_LAYER),
            num_outputs=num_outputs,
        ),
    )


def _compile_and_place(programs, state, inputs, features, layer_index, mesh):
    """Compiles the epoch and evaluation programs while the features are placed.

    Compiling takes seconds on CPU and needs only the shapes of the features:
    the programs compile on other threads (XLA releases the GIL) while the
    features are copied to the devices. Features stay raw, in their store
    dtype; the probes standardise what they read. They are the sweep's one big
    array (29 x 40,000 x 1,536 float16 is 3.6 GB): `features` is a feature
    source (devices.HostFeatures, data.StoreFeatures) that writes every row
    once, straight into its device layout, and each fold and split reads its
    rows through an index array.

    Returns:
      the compiled programs, the device features [N, L', D] and each fold's
      train statistics (mean, scale, 1 / scale), [L', F, D] each.
    """

    def like(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
        sharding = None if mesh is None else NamedSharding(mesh, spec)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    padded, num_rows, dim = len(layer_index), features.num_rows, features.dim
    num_folds = inputs.train_weight.shape[0]
    x_like = like((num_rows, padded, dim), features.dtype, _FEATURES_BY_LAYER)
    stats_like = like((padded, num_folds, dim), np.float32, _BY_LAYER)
    state_like = _shapes_of(state)
    epoch, stats_like = inputs.epochs[0], (stats_like, stats_like)
    arguments_like = {
        # The epoch program first: it is the biggest, and the longest to compile.
        "train_epoch": (state_like, x_like, *stats_like, *inputs.train_args(epoch)),
        # Compiled here with the others, while the features are read: as a plain
        # jit call after placing, its compilation ran on the main thread once the
        # read was done (about 9 s of N = 160,000's first group, py-spy).
        "statistics": (x_like, inputs.train_rows, inputs.train_weight),
        "select_epoch": (
            state_like,
            x_like,
            inputs.rows["val"],
            *stats_like,
            *inputs.select_args(epoch),
        ),
        "chosen_logits": (
            state_like["best_params"],
            x_like,
            tuple(inputs.rows[name] for name in SPLIT_NAMES),
            *stats_like,
            like((padded, num_folds), np.int32, _BY_LAYER),
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        # Lowered here, one after another, and compiled on the pool's threads.
        # Lowering is Python and holds the GIL: lowered on the pool's threads
        # beside each other and the placing, the epoch program took 2.1 s to
        # lower instead of 0.7 s, and set-up waited for it (N = 40,000, batch 16).
        compiling = {
            name: pool.submit(_lower(getattr(programs, name), *arguments))
            for name, arguments in arguments_like.items()
        }
        x = place_features(features, layer_index, mesh)
        statistics = compiling["statistics"].result()(x, inputs.train_rows, inputs.train_weight)
        compiled = {name: future.result() for name, future in compiling.items()}
    return dataclasses.replace(programs, **compiled), x, statistics
