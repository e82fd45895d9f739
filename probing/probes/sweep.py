"""The probe sweep's host driver: `run_sweep` trains the probes of one group of layers and
`run_streaming_sweep` those of all layers, group by group, into a `SweepResult`.

One Flax LinearProbe (probing.probes.model) is trained per probe; the probes'
parameters carry leading axes [layer, fold, target, seed, grid] (see
probing.probes.kernels; folds: probing.probes.folds) and one jitted epoch
program trains all of them together. run_sweep compiles the programs while it
places the features on the device(s) (probing.probes.programs, .devices),
trains epoch by epoch until every probe has stopped (probing.probes.stopping),
and collects the chosen probes' parameters, losses and logits into a
SweepResult.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from probing.probes import stopping
from probing.probes.devices import (
    _BY_LAYER,
    _REPLICATED,
    _padded_layer_index,
    _place,
    _to_host,
    as_feature_source,
    auto_layer_group_size,
    place_ahead,
    probe_mesh,
)
from probing.probes.folds import FoldSet, fold_targets, make_folds
from probing.probes.programs import _compile_and_place, _DeviceInputs, _programs
from probing.probes.settings import SweepSettings
from probing.progress import Progress
from probing.store.layout import SPLIT_NAMES, TRAIN, VAL

# The sweep's target axis: probes of the labels, then of the shuffled-label control.
TARGETS = ("labels", "control")
# The names probe_config.json ("tasks") gives the targets: those of the files
# written before the axis was renamed from "task", kept so outputs do not change.
TARGET_NAMES_IN_FILES = {"labels": "task", "control": "control"}


# SweepResult fields without a layer axis (and without a fold axis to take).
_NOT_PER_LAYER = ("seeds", "targets", "grid", "folds", "control_seed", "control_train_rows")


@dataclasses.dataclass
class SweepResult:
    """Everything a sweep produced, as numpy arrays.

    Axes: L layers, (F folds,) T targets (labels, control), S seeds, G grid
    points, E epochs, D hidden size, C outputs. The fold axis is there only
    when folds were re-drawn at probe time (`folds` is then set); `fold(i)`
    gives one fold as a fold-less result. Parameters are those of each
    probe's best epoch.

    Attributes:
      layers: [L] layer indices; seeds: [S] seed indices.
      targets: the names of the target axis (TARGETS[:T]).
      grid: hyperparameter name -> [G] values.
      chosen_grid: [L(, F)] grid point chosen per layer (and fold): mean val
        score over seeds of the labels probes at their best epochs.
      kernel: [L, (F,) T, S, D, C], bias: [L, (F,) T, S, C] of the chosen grid point.
      best_epoch: [L, (F,) T, S, G], 1-based.
      epochs_trained: [L, (F,) T, S, G] epochs each probe trained before it stopped.
      converged: [L, (F,) T, S, G] see stopping.converged.
      train_loss, val_loss: [E, L, (F,) T, S, G] per-epoch losses, NaN after a
        probe stopped.
      val_score: [L, (F,) T, S, G] selection score at the best epoch.
      mean, scale: [L, (F,) D] standardisation (x - mean) / scale applied before the probe.
      logits: split name -> [L, (F,) T, S, n, C] of the chosen grid point (with
        folds, n is padded to the longest fold; fold(i) crops it).
      folds: the FoldSet trained, None without folds.
      category_best_epoch: [L, (F,) T, S, G, C] with settings.per_category_selection,
        each output's own best epoch (1-based); best_epoch is then their latest.
      category_val_loss: [E, L, (F,) T, S, G, C] with per_category_selection, each
        output's val loss per epoch, NaN after that output stopped.
      control_seed: settings.seed, which keys the shuffled-label control's permutations
        (folds.control_permutation), so that its metrics are scored on its shuffled labels.
      control_train_rows: the shared train index (FoldSet.train_rows) the control's train
        permutation runs over; kept by fold(i), which drops `folds`.
    """

    layers: np.ndarray
    seeds: np.ndarray
    targets: tuple[str, ...]
    grid: dict[str, np.ndarray]
    chosen_grid: np.ndarray
    kernel: np.ndarray
    bias: np.ndarray
    best_epoch: np.ndarray
    epochs_trained: np.ndarray
    converged: np.ndarray
    train_loss: np.ndarray
    val_loss: np.ndarray
    val_score: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    logits: dict[str, np.ndarray]
    folds: FoldSet | None = None
    category_best_epoch: np.ndarray | None = None
    category_val_loss: np.ndarray | None = None
    control_seed: int = 0
    control_train_rows: np.ndarray | None = None

    @staticmethod
    def concatenate(parts: Sequence[SweepResult]) -> SweepResult:
        """Joins results of layer groups along the layer axis (epochs padded with NaN)."""
        first = parts[0]
        num_epochs = max(p.train_loss.shape[0] for p in parts)
        layer_axis = {"train_loss": 1, "val_loss": 1, "category_val_loss": 1}

        def join(name):
            values = [getattr(p, name) for p in parts]
            if values[0] is None:
                return None
            if isinstance(values[0], dict):
                return {k: np.concatenate([v[k] for v in values], axis=0) for k in values[0]}
            if name in layer_axis:
                values = [
                    np.pad(
                        v,
                        [(0, num_epochs - len(v))] + [(0, 0)] * (v.ndim - 1),
                        constant_values=np.nan,
                    )
                    for v in values
                ]
            return np.concatenate(values, axis=layer_axis.get(name, 0))

        fields = {f.name: getattr(first, f.name) for f in dataclasses.fields(SweepResult)}
        for name in fields:
            if name not in _NOT_PER_LAYER:
                fields[name] = join(name)
        return SweepResult(**fields)

    def fold(self, index: int) -> SweepResult:
        """Fold `index` (a position on the fold axis) as a result without a fold axis."""
        at = {"train_loss": 2, "val_loss": 2, "category_val_loss": 2}
        fields = {}
        for f in dataclasses.fields(SweepResult):
            value = getattr(self, f.name)
            if f.name in ("layers", *_NOT_PER_LAYER) or value is None:
                fields[f.name] = value
            elif f.name == "logits":
                split = self.folds.split[index]
                fields[f.name] = {
                    name: v[:, index, ..., : int((split == SPLIT_NAMES.index(name)).sum()), :]
                    for name, v in value.items()
                }
            else:
                fields[f.name] = np.take(value, index, axis=at.get(f.name, 1))
        fields["folds"] = None
        return SweepResult(**fields)


def _sweep_progress(total_probe_epochs: int, what: str = "probe sweep") -> Progress:
    """Probe-epochs done / total, rate, ETA (a bound: probes stop when they converge).

    Its clock runs only while epochs train: compilation and feature placement
    are paused out (and logged as their own step), so the rate is the
    training rate. The ETA is a range: from the earliest the stopping rule
    lets the probes finish (if none improves again) to the epoch budget.
    """
    return Progress(what, total_probe_epochs, unit="probe-epochs", bound=True)


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


def _earliest_end(state, epoch: int, num_epochs: int, patience: int) -> int:
    """The fewest epochs the loop can still run: an active probe runs at least until
    `patience` epochs after its last significant improvement (probing.probes.stopping)."""
    if not patience:
        return num_epochs
    active = _to_host(state["active"])
    if not active.any():
        return epoch + 1
    anchor = int(np.max(np.where(active, _to_host(state["anchor_epoch"]), 0)))
    return min(num_epochs, max(epoch + 1, anchor + patience))


def _train(programs, state, inputs, x, statistics, progress, probes_per_epoch, patience):
    """Trains and selects every probe epoch by epoch, until every probe has stopped.

    Returns:
      the final state and the per-epoch train and val losses, [E, L', F, T, S, G]
      each, NaN for the probes that had stopped before that epoch; and with
      per-category selection each output's val loss [E, L', F, T, S, G, C]
      (NaN after it stopped), else None.
    """
    mean, _, inverse = statistics
    train_losses, val_losses, category_losses = [], [], []
    num_epochs = len(inputs.epochs)
    # The progress total is a bound (every epoch of this group and of the later
    # groups); its least value assumes the later groups stop when this one does.
    before = progress.done
    later = progress.total - before - probes_per_epoch * num_epochs
    for epoch_index, epoch in enumerate(inputs.epochs):
        trained = _to_host(state["active"])
        if "category" in state:
            trained_outputs = _to_host(state["category"]["active"])
        state, (loss_sums, scored) = programs.train_epoch(
            state, x, mean, inverse, *inputs.train_args(epoch)
        )
        state, val_loss = programs.select_epoch(
            state, x, inputs.rows["val"], mean, inverse, *inputs.select_args(epoch)
        )
        train_loss = _epoch_mean_loss(_to_host(loss_sums), _to_host(scored))
        train_losses.append(np.where(trained, train_loss, np.nan))
        val_losses.append(np.where(trained, _to_host(val_loss["loss"]), np.nan))
        if "category_loss" in val_loss:
            category_loss = _to_host(val_loss["category_loss"])
            category_losses.append(np.where(trained_outputs, category_loss, np.nan))
        end = _earliest_end(state, epoch_index, num_epochs, patience)
        progress.at_least(before + (probes_per_epoch + later / num_epochs) * end)
        progress.update(probes_per_epoch)
        if not _to_host(state["active"]).any():
            break
    # Every probe stopped: the epochs left will not run, so the bound shrinks.
    progress.shrink(probes_per_epoch * (len(inputs.epochs) - len(train_losses)))
    categories = np.stack(category_losses) if category_losses else None
    return state, np.stack(train_losses), np.stack(val_losses), categories


def _collect(
    programs, state, x, statistics, losses, inputs, mesh, layer_ids, seed_ids, settings, folds
):
    """The chosen probes of `layer_ids` (the padding dropped) as a SweepResult."""
    best_score = _to_host(state["best_score"])
    # Grid point per (layer, fold): best mean over seeds of the labels probes' val score.
    chosen_grid = np.argmax(best_score[:, :, 0].mean(axis=2), axis=-1).astype(np.int32)
    mean, scale, inverse = statistics
    split_logits, picked = programs.chosen_logits(
        state["best_params"],
        x,
        tuple(inputs.rows[name] for name in SPLIT_NAMES),
        mean,
        inverse,
        _place(chosen_grid, mesh, _BY_LAYER),
    )
    train_loss, val_loss, category_loss = losses
    kept = slice(0, len(layer_ids))
    best_epoch = _to_host(state["best_epoch"])[kept]
    epochs_trained = _to_host(state["epochs_trained"])[kept]
    active = _to_host(state["active"])[kept]
    converged = stopping.converged(best_epoch, epochs_trained, active, settings.patience)
    category_best_epoch = None
    if "category" in state:
        # A probe of separate per-category selections converged when each output did.
        category = {k: _to_host(v)[kept] for k, v in state["category"].items()}
        category_best_epoch = category["best_epoch"]
        converged = stopping.converged(
            category_best_epoch, category["epochs_trained"], category["active"], settings.patience
        ).all(axis=-1)
    # Without folds the fold axis (of size 1) is dropped: the outputs are as before folds.
    unfold = (lambda a, axis=1: a) if folds.enabled else (lambda a, axis=1: a.squeeze(axis))
    return SweepResult(
        layers=np.asarray(layer_ids, np.int64),
        seeds=np.asarray(seed_ids, np.int64),
        targets=TARGETS[: settings.num_targets],
        grid={k: np.asarray(v) for k, v in settings.grid().items()},
        chosen_grid=unfold(chosen_grid[kept]),
        kernel=unfold(_to_host(picked["dense"]["kernel"])[kept]),
        bias=unfold(_to_host(picked["dense"]["bias"])[kept]),
        best_epoch=unfold(best_epoch),
        epochs_trained=unfold(epochs_trained),
        converged=unfold(converged),
        train_loss=unfold(train_loss[:, kept], 2),
        val_loss=unfold(val_loss[:, kept], 2),
        val_score=unfold(best_score[kept]),
        mean=unfold(_to_host(mean)[kept]),
        scale=unfold(_to_host(scale)[kept]),
        logits={
            name: unfold(_to_host(logits)[kept])
            for name, logits in zip(SPLIT_NAMES, split_logits, strict=True)
        },
        folds=folds if folds.enabled else None,
        category_best_epoch=None if category_loss is None else unfold(category_best_epoch),
        category_val_loss=None if category_loss is None else unfold(category_loss[:, kept], 2),
        control_seed=int(settings.seed),
        control_train_rows=np.asarray(folds.train_rows),
    )


def _setup(features, labels, mask, settings, layer_ids, seed_ids, mesh, folds, num_outputs, dim):
    """The sweep's inputs on the device(s), its initial state and its compiled programs."""
    num_layers = features.num_layers
    grid = settings.grid()
    layer_index = _padded_layer_index(num_layers, mesh)

    def replicated(value):
        return _place(value, mesh, _REPLICATED)

    targets = {
        name: [replicated(a) for a in fold_targets(labels, mask, folds, seed_ids, settings, code)]
        for code, name in ((TRAIN, "train"), (VAL, "val"))
    }
    inputs = _DeviceInputs(
        rows={name: replicated(folds.rows(code)[0]) for code, name in enumerate(SPLIT_NAMES)},
        train_rows=replicated(folds.train_rows),
        train_weight=replicated(folds.train_weight()),
        y_train=targets["train"][0],
        m_train=targets["train"][1],
        y_val=targets["val"][0],
        m_val=targets["val"][1],
        hp={name: replicated(values) for name, values in grid.items()},
        seeds=replicated(np.asarray(seed_ids, np.int32)),
        epochs=[replicated(np.int32(epoch)) for epoch in range(settings.epochs)],
    )
    programs = _programs(
        settings, mesh, folds=folds, num_outputs=num_outputs, dim=dim, multilabel=num_outputs > 1
    )
    padded_ids = _place(np.asarray(layer_ids[layer_index], np.int32), mesh, _BY_LAYER)
    state = programs.init_state(padded_ids, inputs.seeds, inputs.hp)
    programs, x, statistics = _compile_and_place(
        programs, state, inputs, features, layer_index, mesh
    )
    return programs, state, x, statistics, inputs


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
    groups: np.ndarray | None = None,
    folds: FoldSet | None = None,
    fold_ids: Sequence[int] | None = None,
) -> SweepResult:
    """Trains, selects and applies the probes of one group of layers.

    Args:
      features: [L, N, D], layer-major (see data.load_features), float16, bfloat16
        or float32 (kept as they are: the sweep standardises minibatches in
        float32 as it reads them); other dtypes are converted to float32. Or
        a feature source (devices.HostFeatures; data.StoreFeatures reads a
        workdir's layers straight into the device buffers, with no host copy).
      labels, mask: float32 [N, C] targets and scored entries.
      split: [N] 0 train, 1 val, 2 test.
      settings: hyperparameters, seeds, stopping rule and folds.
      layer_ids: the workdir layer index of each features[l] (default 0..L-1);
        they key the random draws, so a subset reproduces the full sweep.
      seed_ids: seed indices to train (default 0..num_seeds-1).
      progress: shared progress logger (one is made when omitted).
      mesh: devices to shard the layer axis over (see probe_mesh); None runs
        the single-device program. Results are the same either way.
      groups: [N] image ids (arrays/group), for folds re-drawn by image.
      folds: the folds to train (default: folds.make_folds from the above).
      fold_ids: positions of the folds to train (default all); each trains as
        in the full set.
    """
    features = as_feature_source(features)
    num_layers, dim = features.num_layers, features.dim
    layer_ids = np.arange(num_layers) if layer_ids is None else np.asarray(layer_ids)
    seed_ids = np.arange(settings.num_seeds) if seed_ids is None else np.asarray(seed_ids)
    if layer_ids.shape != (num_layers,):
        raise ValueError(f"{len(layer_ids)} layer ids for {num_layers} feature layers")
    labels = np.asarray(labels, np.float32)
    mask = np.asarray(mask, np.float32)
    num_outputs = labels.shape[1]
    folds = folds or make_folds(split, groups, labels, mask, settings)
    if fold_ids is not None:
        folds = folds.select(fold_ids)
    grid = settings.grid()
    probes_per_epoch = (
        num_layers
        * folds.num_folds
        * settings.num_targets
        * len(seed_ids)
        * len(grid["learning_rate"])
    )
    own_progress = progress is None
    progress = progress or _sweep_progress(probes_per_epoch * settings.epochs)

    with progress.paused():
        setup_start = time.monotonic()
        programs, state, x, statistics, inputs = _setup(
            features, labels, mask, settings, layer_ids, seed_ids, mesh, folds, num_outputs, dim
        )
        logging.info(
            "%s: layers %d-%d set up and compiled in %.1fs (%d probes per epoch)",
            progress.what,
            int(layer_ids[0]),
            int(layer_ids[-1]),
            time.monotonic() - setup_start,
            probes_per_epoch,
        )
    train_start = time.monotonic()
    state, *losses = _train(
        programs, state, inputs, x, statistics, progress, probes_per_epoch, settings.patience
    )
    # benchmarks/load_path.py sums these: training epochs vs everything else.
    logging.info(
        "%s: layers %d-%d trained in %.1fs (%d epochs)",
        progress.what,
        int(layer_ids[0]),
        int(layer_ids[-1]),
        time.monotonic() - train_start,
        len(losses[0]),
    )
    if own_progress:
        progress.close()
    return _collect(
        programs, state, x, statistics, losses, inputs, mesh, layer_ids, seed_ids, settings, folds
    )


def run_streaming_sweep(
    load_layers: Callable[[Sequence[int]], np.ndarray],
    layers: Sequence[int],
    labels: np.ndarray,
    mask: np.ndarray,
    split: np.ndarray,
    settings: SweepSettings,
    seed_ids: Sequence[int] | None = None,
    groups: np.ndarray | None = None,
    what: str = "probe sweep",
    layer_bytes: int = 0,
) -> SweepResult:
    """Runs the sweep over `layers` in groups of settings.layer_group_size.

    layer_group_size = 0 chooses the groups from the memory available
    (devices.auto_layer_group_size) given `layer_bytes`, the bytes of one
    layer's features; without them (0), all layers form one group.
    `load_layers(group)` returns [len(group), N, D] or a feature source
    (dtypes: see run_sweep); a source's rows are read on another thread (a host
    array is already read), each group's while its programs compile and the
    next group's while the current one trains, so at most two groups are in
    memory at once. Each group is sharded over settings.devices devices
    (probe_mesh). Results equal those of a single sweep over all layers on
    one device. `groups` (image ids) are needed for folds (settings.folds).
    `what` names the sweep in progress lines (e.g. "probe sweep (mean)").
    """
    mesh = probe_mesh(settings.devices)
    layers = [int(x) for x in layers]
    group_size = settings.layer_group_size or (
        auto_layer_group_size(len(layers), layer_bytes, mesh) if layer_bytes else len(layers)
    )
    seed_ids = list(range(settings.num_seeds)) if seed_ids is None else list(seed_ids)
    folds = make_folds(split, groups, labels, mask, settings)
    num_grid = len(settings.grid()["learning_rate"])
    progress = _sweep_progress(
        len(layers)
        * folds.num_folds
        * settings.num_targets
        * len(seed_ids)
        * num_grid
        * settings.epochs,
        what,
    )
    layer_groups = [
        layers[start : start + group_size] for start in range(0, len(layers), group_size)
    ]
    parts = []
    # Features are read and placed on a thread of their own (TensorStore's reads
    # and the copies release the GIL): a group's while its programs compile, the
    # next group's while it trains. The next group is queued as a group starts, and
    # the one after only once it has trained, so at most two groups' features are
    # in memory at once; auto_layer_group_size allows for that.
    # Layer groups take ordinary pages, one group 2 MB pages (devices._aligned_empty):
    # groups mean features near the memory's size, where the kernel must compact
    # memory that the store's page cache fragments to find 2 MB pages. At
    # N = 160,000 from an emptied page cache that cost 18 s more set-up (wall
    # 148.7 s against 127.2 s), and training, beside the next group's read, gained
    # nothing.
    huge_pages = len(layer_groups) == 1
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="place_ahead") as placing:
        following = place_ahead(load_layers(layer_groups[0]), mesh, placing, huge_pages)
        for index, group in enumerate(layer_groups):
            features = following
            if index + 1 < len(layer_groups):
                following = place_ahead(
                    load_layers(layer_groups[index + 1]), mesh, placing, huge_pages
                )
            parts.append(
                run_sweep(
                    features,
                    labels,
                    mask,
                    split,
                    settings,
                    layer_ids=group,
                    seed_ids=seed_ids,
                    progress=progress,
                    mesh=mesh,
                    folds=folds,
                )
            )
            del features  # this group's buffers go before the one after next is read
    progress.close()
    return parts[0] if len(parts) == 1 else SweepResult.concatenate(parts)
