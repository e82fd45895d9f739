"""The probe sweep's host driver: `run_sweep` trains the probes of one group of layers and
`run_streaming_sweep` those of all layers, group by group, into a `SweepResult`.

One Flax LinearProbe (probing.probes.model) is trained per probe; the probes'
parameters carry leading axes [layer, target, seed, grid] (see
probing.probes.kernels) and one jitted epoch program trains all of them
together. run_sweep compiles the programs while it places the features on the
device(s) (probing.probes.devices), trains epoch by epoch, and collects the
chosen probes' parameters, losses and logits into a SweepResult.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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
    _compile,
    _layer_loop,
    _padded_layer_index,
    _place,
    _place_features,
    _program,
    _shapes_of,
    _to_host,
    probe_mesh,
)
from probing.probes.kernels import (
    _chosen_logits,
    _init_state,
    _select_epoch,
    _statistics,
    _target_labels,
    _train_epoch,
)
from probing.probes.settings import FEATURE_DTYPES, SweepSettings
from probing.progress import Progress
from probing.store.layout import SPLIT_NAMES, TEST, TRAIN, VAL

# The sweep's target axis: probes of the labels, then of the shuffled-label control.
TARGETS = ("labels", "control")
# The names probe_config.json ("tasks") gives the targets: those of the files
# written before the axis was renamed from "task", kept so outputs do not change.
TARGET_NAMES_IN_FILES = {"labels": "task", "control": "control"}


@dataclasses.dataclass
class SweepResult:
    """Everything a sweep produced, as numpy arrays.

    Axes: L layers, T targets (labels, control), S seeds, G grid points, E
    epochs, D hidden size, C outputs. Parameters are those of each probe's best
    epoch.

    Attributes:
      layers: [L] layer indices; seeds: [S] seed indices.
      targets: the names of the target axis (TARGETS[:T]).
      grid: hyperparameter name -> [G] values.
      chosen_grid: [L] grid point chosen per layer (mean val score over seeds
        of the labels probes at their best epochs).
      kernel: [L, T, S, D, C], bias: [L, T, S, C] of the chosen grid point.
      best_epoch: [L, T, S, G], 1-based.
      train_loss, val_loss: [E, L, T, S, G] per-epoch losses.
      val_score: [L, T, S, G] selection score at the best epoch.
      mean, scale: [L, D] standardisation (x - mean) / scale applied before the probe.
      logits: split name -> [L, T, S, n, C] of the chosen grid point.
    """

    layers: np.ndarray
    seeds: np.ndarray
    targets: tuple[str, ...]
    grid: dict[str, np.ndarray]
    chosen_grid: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    best_epoch: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_score: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    logits: dict[str, np.ndarray]

    @staticmethod
    def concatenate(parts: Sequence[SweepResult]) -> SweepResult:
        """Joins results of layer groups along the layer axis."""
        first = parts[0]
        layer_axis = {"train_loss": 1, "val_loss": 1}

        def join(name):
            values = [getattr(p, name) for p in parts]
            if isinstance(values[0], dict):
                return {k: np.concatenate([v[k] for v in values], axis=0) for k in values[0]}
            return np.concatenate(values, axis=layer_axis.get(name, 0))

        fields = {f.name: getattr(first, f.name) for f in dataclasses.fields(SweepResult)}
        for name in fields:
            if name not in ("seeds", "targets", "grid"):
                fields[name] = join(name)
        return SweepResult(**fields)


@dataclasses.dataclass(frozen=True)
class _DeviceInputs:
    """A sweep's inputs other than the features, on the device(s)."""

    y_train: jax.Array  # [T, S, n_train, C] labels per target and seed
    m_train: jax.Array  # [T, S, n_train, C] their mask
    y_val: jax.Array  # [T, S, n_val, C]
    m_val: jax.Array  # [T, S, n_val, C]
    hp: dict[str, jax.Array]  # the grid, [G] per hyperparameter
    seeds: jax.Array  # [S] seed indices
    epochs: list[jax.Array]  # the epoch numbers 0..E-1 as device scalars

    def train_args(self, epoch: jax.Array) -> tuple:
        """train_epoch's arguments after (state, x_train, mean, inverse)."""
        return self.y_train, self.m_train, epoch, self.seeds, self.hp

    def select_args(self, epoch: jax.Array) -> tuple:
        """select_epoch's arguments after (state, x_val, mean, inverse)."""
        return self.y_val, self.m_val, epoch


@dataclasses.dataclass(frozen=True)
class _Programs:
    """The sweep's kernels for one layout, jitted (and shard_mapped with a mesh)."""

    init_state: Callable
    statistics: Callable
    train_epoch: Callable
    select_epoch: Callable
    chosen_logits: Callable


def _sweep_progress(total_probe_epochs: int) -> Progress:
    """A progress line per epoch: probe-epochs done / total, rate, ETA."""
    return Progress("probe sweep", total_probe_epochs, unit="probe-epochs")


def _epoch_mean_loss(step_loss_sums: jax.Array, step_scored: jax.Array) -> np.ndarray:
    """Mean train loss per probe from per-step sums [steps, ...], added in step order.

    An explicit loop, because numpy's own reductions may switch to pairwise
    summation depending on the array's shape.
    """
    loss_sums = np.asarray(step_loss_sums, np.float64)
    scored = np.asarray(step_scored, np.float64)
    total_loss = np.zeros(loss_sums.shape[1:])
    total_scored = np.zeros(scored.shape[1:])
    for step_loss, step_count in zip(loss_sums, scored, strict=True):
        total_loss += step_loss
        total_scored += step_count
    return (total_loss / np.maximum(total_scored, 1.0)).astype(np.float32)


def _programs(settings: SweepSettings, mesh: Mesh | None, *, num_outputs, dim, multilabel):
    """The sweep's kernels, jitted for `mesh` with their static arguments."""

    def program(impl, in_specs, out_specs, donate=(), **static):
        return _program(impl, mesh, in_specs, out_specs, donate, tuple(sorted(static.items())))

    return _Programs(
        init_state=program(
            _init_state,
            (_BY_LAYER, _REPLICATED, _REPLICATED),
            _BY_LAYER,
            seed=settings.seed,
            num_targets=settings.num_targets,
            num_outputs=num_outputs,
            dim=dim,
            zero_init=settings.zero_init,
        ),
        statistics=program(_statistics, (_FEATURES_BY_LAYER,), (_BY_LAYER,) * 3),
        train_epoch=program(
            _train_epoch,
            (_BY_LAYER, _FEATURES_BY_LAYER, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 5,
            (_BY_LAYER, (_LOSS_BY_LAYER, _REPLICATED)),
            donate=(0,),
            seed=settings.seed,
            batch_size=settings.batch_size,
            use_dropout=max(settings.dropouts) > 0,
            layer_loop=_layer_loop(settings.layer_update, mesh),
            # Read here, at call time, so that tests can lower it.
            whole_rows_max_bytes=devices.WHOLE_ROWS_MAX_BYTES,
            num_outputs=num_outputs,
        ),
        select_epoch=program(
            _select_epoch,
            (_BY_LAYER, _FEATURES_BY_LAYER, _BY_LAYER, _BY_LAYER) + (_REPLICATED,) * 3,
            (_BY_LAYER, _BY_LAYER),
            donate=(0,),
            num_outputs=num_outputs,
            selection=settings.selection,
            multilabel=multilabel,
        ),
        chosen_logits=program(
            _chosen_logits,
            (_BY_LAYER, (_FEATURES_BY_LAYER,) * 3, _BY_LAYER, _BY_LAYER, _BY_LAYER),
            (_BY_LAYER, _BY_LAYER),
            num_outputs=num_outputs,
        ),
    )


def _compile_and_place(programs, state, inputs, features, layer_index, rows, mesh):
    """Compiles the epoch and evaluation programs while the features are placed.

    Compiling takes seconds on CPU and needs only the shapes of the features:
    the programs compile on other threads (XLA releases the GIL) while the
    features are copied to the devices. Features stay raw, in their store
    dtype; the probes standardise what they read. They are the sweep's one big
    array (29 x 40,000 x 1,536 float16 is 3.6 GB): each split is copied once,
    straight into its device layout.

    Returns:
      the compiled programs, the device features (train, val, test) and the
      train statistics (mean, scale, 1 / scale), [L', D] each.
    """

    def like(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec) -> jax.ShapeDtypeStruct:
        sharding = None if mesh is None else NamedSharding(mesh, spec)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    padded, dim = len(layer_index), features.shape[2]
    x_like = {
        name: like((rows[name].size, padded, dim), features.dtype, _FEATURES_BY_LAYER)
        for name in SPLIT_NAMES
    }
    stats_like = like((padded, dim), np.float32, _BY_LAYER)
    state_like = _shapes_of(state)
    epoch, stats_like = inputs.epochs[0], (stats_like, stats_like)
    arguments_like = {
        "train_epoch": (state_like, x_like["train"], *stats_like, *inputs.train_args(epoch)),
        "select_epoch": (state_like, x_like["val"], *stats_like, *inputs.select_args(epoch)),
        "chosen_logits": (
            state_like["best_params"],
            tuple(x_like.values()),
            *stats_like,
            like((padded,), np.int32, _BY_LAYER),
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        compiling = {
            name: pool.submit(_compile, getattr(programs, name), *arguments)
            for name, arguments in arguments_like.items()
        }
        splits = tuple(
            _place_features(features, layer_index, rows[name], mesh) for name in SPLIT_NAMES
        )
        statistics = programs.statistics(splits[0])
        compiled = {name: future.result() for name, future in compiling.items()}
    return dataclasses.replace(programs, **compiled), splits, statistics


def _train(programs, state, inputs, splits, statistics, progress, probes_per_epoch):
    """Trains and selects every probe epoch by epoch.

    Returns:
      the final state and the per-epoch train and val losses, [E, L', T, S, G] each.
    """
    (x_train, x_val, _), (mean, _, inverse) = splits, statistics
    train_losses, val_losses = [], []
    for epoch in inputs.epochs:
        state, (loss_sums, scored) = programs.train_epoch(
            state, x_train, mean, inverse, *inputs.train_args(epoch)
        )
        state, val_loss = programs.select_epoch(
            state, x_val, mean, inverse, *inputs.select_args(epoch)
        )
        train_losses.append(_epoch_mean_loss(_to_host(loss_sums), _to_host(scored)))
        val_losses.append(_to_host(val_loss))
        progress.update(probes_per_epoch, force=True)
    return state, np.stack(train_losses), np.stack(val_losses)


def _collect(programs, state, splits, statistics, losses, mesh, layer_ids, seed_ids, settings):
    """The chosen probes of `layer_ids` (the padding dropped) as a SweepResult."""
    best_score = _to_host(state["best_score"])
    # Grid point per layer: best mean over seeds of the labels probes' val score.
    chosen_grid = np.argmax(best_score[:, 0].mean(axis=1), axis=-1).astype(np.int32)
    mean, scale, inverse = statistics
    split_logits, picked = programs.chosen_logits(
        state["best_params"], splits, mean, inverse, _place(chosen_grid, mesh, _BY_LAYER)
    )
    train_loss, val_loss = losses
    kept = slice(0, len(layer_ids))
    return SweepResult(
        layers=np.asarray(layer_ids, np.int64),
        seeds=np.asarray(seed_ids, np.int64),
        targets=TARGETS[: settings.num_targets],
        grid={k: np.asarray(v) for k, v in settings.grid().items()},
        chosen_grid=chosen_grid[kept],
        kernel=_to_host(picked["dense"]["kernel"])[kept],
        bias=_to_host(picked["dense"]["bias"])[kept],
        best_epoch=_to_host(state["best_epoch"])[kept],
        train_loss=train_loss[:, kept],
        val_loss=val_loss[:, kept],
        val_score=best_score[kept],
        mean=_to_host(mean)[kept],
        scale=_to_host(scale)[kept],
        logits={name: _to_host(x)[kept] for name, x in zip(SPLIT_NAMES, split_logits, strict=True)},
    )


def run_sweep(
    features: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    settings: SweepSettings,
    layer_ids: Sequence[int] | None = None,
    seed_ids: Sequence[int] | None = None,
    progress: Progress | None = None,
    mesh: Mesh | None = None,
) -> SweepResult:
    """Trains, selects and applies the probes of one group of layers.

    Args:
      features: [L, N, D], layer-major (see data.load_features), float16, bfloat16
        or float32 (kept as they are: the sweep standardises minibatches in
        float32 as it reads them); other dtypes are converted to float32.
      labels, mask: float32 [N, C] targets and scored entries.
      split: [N] 0 train, 1 val, 2 test.
      settings: hyperparameters and seeds.
      layer_ids: the workdir layer index of each features[l] (default 0..L-1);
        they key the random draws, so a subset reproduces the full sweep.
      seed_ids: seed indices to train (default 0..num_seeds-1).
      progress: shared progress logger (one is made when omitted).
      mesh: devices to shard the layer axis over (see probe_mesh); None runs
        the single-device program. Results are the same either way.
    """
    features = np.asarray(features)
    if features.dtype not in FEATURE_DTYPES:
        features = features.astype(np.float32)
    num_layers, _, dim = features.shape
    layer_ids = np.arange(num_layers) if layer_ids is None else np.asarray(layer_ids)
    seed_ids = np.arange(settings.num_seeds) if seed_ids is None else np.asarray(seed_ids)
    if layer_ids.shape != (num_layers,):
        raise ValueError(f"{len(layer_ids)} layer ids for {num_layers} feature layers")
    labels = np.asarray(labels, np.float32)
    mask = np.asarray(mask, np.float32)
    num_outputs = labels.shape[1]
    rows = {
        name: np.flatnonzero(split == code)
        for name, code in zip(SPLIT_NAMES, (TRAIN, VAL, TEST), strict=True)
    }
    grid = settings.grid()
    probes_per_epoch = (
        num_layers * settings.num_targets * len(seed_ids) * len(grid["learning_rate"])
    )
    progress = progress or _sweep_progress(probes_per_epoch * settings.epochs)

    layer_index = _padded_layer_index(num_layers, mesh)

    def replicated(value):
        return _place(value, mesh, _REPLICATED)

    y_train, m_train, y_val, m_val = (
        replicated(array)
        for name in ("train", "val")
        for array in _target_labels(labels, mask, rows[name], seed_ids, settings, name)
    )
    inputs = _DeviceInputs(
        y_train=y_train,
        m_train=m_train,
        y_val=y_val,
        m_val=m_val,
        hp={name: replicated(values) for name, values in grid.items()},
        seeds=replicated(np.asarray(seed_ids, np.int32)),
        epochs=[replicated(np.int32(epoch)) for epoch in range(settings.epochs)],
    )
    programs = _programs(
        settings, mesh, num_outputs=num_outputs, dim=dim, multilabel=num_outputs > 1
    )
    padded_ids = _place(np.asarray(layer_ids[layer_index], np.int32), mesh, _BY_LAYER)
    state = programs.init_state(padded_ids, inputs.seeds, inputs.hp)
    programs, splits, statistics = _compile_and_place(
        programs, state, inputs, features, layer_index, rows, mesh
    )
    state, *losses = _train(programs, state, inputs, splits, statistics, progress, probes_per_epoch)
    return _collect(
        programs, state, splits, statistics, losses, mesh, layer_ids, seed_ids, settings
    )


def run_streaming_sweep(
    load_layers: Callable[[Sequence[int]], np.ndarray],
    layers: Sequence[int],
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    settings: SweepSettings,
    seed_ids: Sequence[int] | None = None,
) -> SweepResult:
    """Runs the sweep over `layers` in groups of settings.layer_group_size (0: all at once).

    `load_layers(group)` returns [len(group), N, D] (dtypes: see run_sweep);
    only one group is in memory at a time. Each group is sharded over settings.devices devices
    (probe_mesh). Results equal those of a single sweep over all layers on
    one device.
    """
    mesh = probe_mesh(settings.devices)
    layers = [int(x) for x in layers]
    group_size = settings.layer_group_size or len(layers)
    seed_ids = list(range(settings.num_seeds)) if seed_ids is None else list(seed_ids)
    num_grid = len(settings.grid()["learning_rate"])
    progress = _sweep_progress(
        len(layers) * settings.num_targets * len(seed_ids) * num_grid * settings.epochs
    )
    parts = []
    for start in range(0, len(layers), group_size):
        group = layers[start : start + group_size]
        parts.append(
            run_sweep(
                load_layers(group),
                labels,
                mask,
                split,
                settings,
                layer_ids=group,
                seed_ids=seed_ids,
                progress=progress,
                mesh=mesh,
            )
        )
    return parts[0] if len(parts) == 1 else SweepResult.concatenate(parts)
