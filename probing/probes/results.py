"""Turning a SweepResult into the files of <workdir>/probes/<pooling>/ (WORKSPACE.md).

The file names and columns come from probing.store.layout, the metric names
from probing.probes.metrics and summary.json from probing.probes.summary.

  metrics.csv        model, task, prompt, pooling, run (the run columns), layer, seed, split, metric, value
  curves.csv         the run's columns, layer, seed, epoch, split, loss (task probe,
                     chosen grid point)
  summary.json       per layer, split and metric: mean, 95% CI (cluster bootstrap over
                     test images), seed spread; trivial baselines; the best layer;
                     which probes did not converge ("convergence")
  probe_config.json  the settings used, the grid and what was chosen per layer
  weights.npz        the trained probes and the standardisation
  predictions.npz    per test example: row, image id, logits of the chosen probes

Rows of metrics.csv: the task probe's metrics under their plain names; with
controls, `control_<metric>` for the shuffled-label probe and `selectivity`
(headline metric minus its control); `majority_<metric>` for the majority
baseline (the same for every layer and seed, repeated so each (layer, seed)
row group is complete); `best_epoch` (1-based) under split `val`, where it was
chosen. Control and majority rows leave out the per-category metrics.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np

from probing.probes.bootstrap import NUM_RESAMPLES
from probing.probes.data import LabelData
from probing.probes.folds import control_targets
from probing.probes.identity import workdir_run_columns
from probing.probes.intervals import ImageIntervals, trivial_baselines
from probing.probes.metrics import (
    BEST_EPOCH,
    CATEGORIES_LEFT_OUT,
    SELECTIVITY,
    compute_metrics,
    control_metric,
    is_category_metric,
    majority_logits,
    majority_metric,
)
from probing.probes.settings import SweepSettings
from probing.probes.stopping import convergence_summary
from probing.probes.summary import build_summary
from probing.probes.sweep import TARGET_NAMES_IN_FILES, SweepResult
from probing.provenance import probe_environment
from probing.store.atomic import write_probe_dir
from probing.store.layout import (
    CONTROL_LABELS,
    CONTROL_LOGITS,
    CONTROL_MASK,
    CURVES_COLUMNS,
    CURVES_CSV,
    HEADLINE_METRIC,
    METRICS_COLUMNS,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    PROBE_CONFIG_JSON,
    PROBE_ENVIRONMENT,
    SCORING_SPLIT,
    SELECTION_SPLIT,
    SPLIT_NAMES,
    SUMMARY_JSON,
    WEIGHTS_NPZ,
    probes_dir,
)
from probing.store.workdir import Workdir


def _split_targets(label_data: LabelData, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = label_data.split_rows(SPLIT_NAMES.index(split_name))
    return label_data.labels[rows], label_data.mask[rows]


def control_split_targets(
    result: SweepResult, label_data: LabelData, split_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The shuffled-label control's labels and mask, [S, n, C], of one split part of
    `label_data` (with folds: the fold's, as fold_results passes it), in the row order of
    `_split_targets`: the labels it trained on (train), was selected on (val) and is
    scored on (test)."""
    return control_targets(
        label_data.labels,
        label_data.mask,
        label_data.split,
        result.seeds,
        result.control_seed,
        SPLIT_NAMES.index(split_name),
        result.control_train_rows,
    )


def metric_table(
    result: SweepResult, label_data: LabelData
) -> list[tuple[int, int, str, str, float]]:
    """All (layer, seed, split, metric, value) rows of metrics.csv, in a fixed order."""
    kind, names = label_data.label_kind, label_data.label_names
    headline = HEADLINE_METRIC[kind]
    train_labels, train_mask = _split_targets(label_data, "train")
    majority = {}
    for split_name in SPLIT_NAMES:
        labels, mask = _split_targets(label_data, split_name)
        constant = majority_logits(train_labels, train_mask, len(labels))
        majority[split_name] = {
            majority_metric(k): v
            for k, v in compute_metrics(kind, constant, labels, mask, names).items()
            if not is_category_metric(k) and k != CATEGORIES_LEFT_OUT
        }

    with_control = "control" in result.targets
    controls = {
        split_name: control_split_targets(result, label_data, split_name)
        for split_name in (SPLIT_NAMES if with_control else ())
    }
    table = []
    for li, layer in enumerate(result.layers):
        for si, seed in enumerate(result.seeds):
            for split_name in SPLIT_NAMES:
                labels, mask = _split_targets(label_data, split_name)
                logits = result.logits[split_name]
                values = compute_metrics(kind, logits[li, 0, si], labels, mask, names)
                if with_control:
                    # The control is scored on its own task, the part's labels shuffled as
                    # it was trained and selected, never on the real labels it cannot know.
                    control_labels, control_mask = controls[split_name]
                    control = compute_metrics(
                        kind, logits[li, 1, si], control_labels[si], control_mask[si], names
                    )
                    values.update(
                        {
                            control_metric(k): v
                            for k, v in control.items()
                            if not is_category_metric(k) and k != CATEGORIES_LEFT_OUT
                        }
                    )
                    values[SELECTIVITY] = values[headline] - control[headline]
                values.update(majority[split_name])
                if split_name == SELECTION_SPLIT:
                    grid_point = result.chosen_grid[li]
                    values[BEST_EPOCH] = int(result.best_epoch[li, 0, si, grid_point])
                table.extend(
                    (int(layer), int(seed), split_name, metric, value)
                    for metric, value in values.items()
                )
    return table


def curve_table(result: SweepResult) -> list[tuple[int, int, int, str, float]]:
    """(layer, seed, epoch, split, loss) rows of curves.csv for the task probes."""
    table = []
    for li, layer in enumerate(result.layers):
        grid_point = result.chosen_grid[li]
        for si, seed in enumerate(result.seeds):
            # A probe that stopped early has no losses after its last epoch.
            for epoch in range(int(result.epochs_trained[li, 0, si, grid_point])):
                for split_name, losses in (("train", result.train_loss), ("val", result.val_loss)):
                    loss = float(losses[epoch, li, 0, si, grid_point])
                    table.append((int(layer), int(seed), epoch + 1, split_name, loss))
    return table


def _csv_bytes(
    header: tuple[str, ...], rows: list[tuple], run: dict[str, str] | None = None
) -> bytes:
    """A tidy CSV; `run` (identity.run_columns) prepends the run's columns to every row."""
    run = run or {}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*run, *header])
    prefix = list(run.values())
    for row in rows:
        # repr keeps every float bit, so reruns compare exactly.
        writer.writerow(
            prefix + [repr(float(v)) if isinstance(v, float | np.floating) else v for v in row]
        )
    return buffer.getvalue().encode()


def summarize(
    table: list[tuple[int, int, str, str, float]],
    result: SweepResult,
    label_data: LabelData,
    pooling: str,
    num_resamples: int = NUM_RESAMPLES,
) -> dict[str, Any]:
    """summary.json of the metric table, with each layer's chosen grid point.

    Intervals (`ci95`) are the image bootstrap of the test predictions with
    `num_resamples` resamples (0: none, the seed spread only), keyed by the
    probe seed so reruns write the same file.
    """
    hyperparameters = {
        int(layer): {
            name: float(column[result.chosen_grid[li]]) for name, column in result.grid.items()
        }
        for li, layer in enumerate(result.layers)
    }
    train_labels, train_mask = _split_targets(label_data, "train")
    test_labels, test_mask = _split_targets(label_data, SCORING_SPLIT)
    baselines = trivial_baselines(
        label_data.label_kind, train_labels, train_mask, test_labels, test_mask
    )
    intervals = None
    if num_resamples:
        intervals = ImageIntervals(predictions_arrays(result, label_data), num_resamples)
    return build_summary(
        table,
        pooling=pooling,
        label_kind=label_data.label_kind,
        hyperparameters=hyperparameters,
        intervals=intervals and intervals.ci95(),
        interval_info=intervals and intervals.describe(),
        compare_layers=intervals and intervals.compare_layers,
        baselines=baselines,
    )


def weights_bytes(result: SweepResult, label_data: LabelData) -> bytes:
    """weights.npz of the task probes (control probes are not kept).

    Keys: kernel [L, S, D, C], bias [L, S, C], mean and scale [L, D], layers
    [L], seeds [S], label_names [C], and the chosen learning_rate,
    weight_decay and dropout [L]. A probe applies to raw features x of its
    layer as logits = ((x - mean) / scale) @ kernel + bias; logit > 0 predicts 1.
    """
    buffer = io.BytesIO()
    chosen = {name: column[result.chosen_grid] for name, column in result.grid.items()}
    np.savez(
        buffer,
        kernel=result.kernel[:, 0],
        bias=result.bias[:, 0],
        mean=result.mean,
        scale=result.scale,
        layers=result.layers,
        seeds=result.seeds,
        label_names=np.asarray(label_data.label_names),
        **chosen,
    )
    return buffer.getvalue()


def predictions_bytes(result: SweepResult, label_data: LabelData) -> bytes:
    """predictions.npz: `predictions_arrays` in one file."""
    buffer = io.BytesIO()
    np.savez(buffer, **predictions_arrays(result, label_data))
    return buffer.getvalue()


def predictions_arrays(result: SweepResult, label_data: LabelData) -> dict[str, np.ndarray]:
    """The test-split outputs of the chosen probes, per example (predictions.npz).

    With these, probing.probes.bootstrap gives every metric an interval over
    test images and compares two layers, the task and the control probe, or
    the same layer of two models probed on the same images. Keys:
      rows [n]: workdir row index of each test row, in row order;
      group [n]: its image id (arrays/group; the row index when the workdir
        has no group array, i.e. one image per row);
      layers [L], seeds [S]; label_kind; label_names [C];
      labels int8 [n] (binary) or [n, K], mask uint8 [n, K] (multilabel only);
      logits float32 [L, S, n] (binary) or [L, S, n, K]: task probes at the
        chosen grid point and best epoch, the logits metrics.csv was scored on;
      control_logits, same shape, when the shuffled-label control ran, with
        control_labels int8 [S, n] ([S, n, K]) and (multilabel) control_mask uint8
        [S, n, K]: per seed the test labels it is scored on (the test part's labels
        permuted as its train and val labels were; layout.CONTROL_LABELS).
    """
    test = label_data.split_rows(SPLIT_NAMES.index(SCORING_SPLIT))
    rows = label_data.rows[test]
    groups = rows if label_data.groups is None else label_data.groups[test]
    multilabel = label_data.label_kind == "multilabel"

    def squeeze(logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits if multilabel else logits[..., 0], np.float32)

    arrays = {
        "rows": rows.astype(np.int64),
        "group": np.asarray(groups, np.int64),
        "layers": result.layers,
        "seeds": result.seeds,
        "label_kind": np.asarray(label_data.label_kind),
        "label_names": np.asarray(label_data.label_names),
        "labels": squeeze(label_data.labels[test]).astype(np.int8),
        "logits": squeeze(result.logits[SCORING_SPLIT][:, 0]),
    }
    if multilabel:
        arrays["mask"] = label_data.mask[test].astype(np.uint8)
    if "control" in result.targets:
        arrays.update(control_prediction_arrays(result, label_data, squeeze))
    return arrays


def control_prediction_arrays(result: SweepResult, label_data: LabelData, squeeze) -> dict:
    """The control's predictions.npz entries of one fold-less result: its test logits and the
    shuffled test labels (and mask) it is scored on; `squeeze` drops binary's output axis."""
    labels, mask = control_split_targets(result, label_data, SCORING_SPLIT)
    arrays = {
        CONTROL_LOGITS: np.asarray(squeeze(result.logits[SCORING_SPLIT][:, 1]), np.float32),
        CONTROL_LABELS: np.asarray(squeeze(labels)).astype(np.int8),
    }
    if label_data.label_kind == "multilabel":
        arrays[CONTROL_MASK] = mask.astype(np.uint8)
    return arrays


def _category_best_epochs(result: SweepResult, label_names) -> dict | None:
    """Each category's own best epoch at the chosen grid point (per-category selection)."""
    epochs = result.category_best_epoch
    if epochs is None:
        return None
    grid = result.chosen_grid  # [L] or [L, F]
    index = grid.reshape(grid.shape + (1,) * (epochs.ndim - grid.ndim))
    chosen = np.take_along_axis(epochs, index, axis=-2)[..., 0, :]
    folded = result.folds is not None
    return {
        "axes": ["layer", *(["fold"] if folded else []), "task", "seed", "category"],
        "categories": list(label_names),
        "epochs": chosen.tolist(),
    }


def probe_config(settings: SweepSettings, result: SweepResult, label_data: LabelData) -> dict:
    """probe_config.json: the settings, grid, chosen points and split sizes."""
    config = {
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "layers": result.layers.tolist(),
        "seeds": result.seeds.tolist(),
        "tasks": [TARGET_NAMES_IN_FILES[target] for target in result.targets],
        "grid": {k: v.tolist() for k, v in result.grid.items()},
        "chosen_grid_point": result.chosen_grid.tolist(),
        "rows_per_split": {
            name: int((label_data.split == code).sum()) for code, name in enumerate(SPLIT_NAMES)
        },
        "epoch_numbering": "1-based: epoch e is the model after e passes over train",
        "dropout_generator": (
            "one mask per (seed, epoch, step), shared by all layers, from a keyed "
            "counter hash (lowbias32); see probing/probes/model.py"
        ),
        PROBE_ENVIRONMENT: probe_environment(),
    }
    per_category = _category_best_epochs(result, label_data.label_names)
    if per_category is not None:
        # settings.per_category_selection: metrics.csv's best_epoch is the latest of these.
        config["category_best_epoch"] = per_category
    return config


def run_record(config: dict, pooling: str, run: str | None) -> dict:
    """probe_config.json with the run's name and pooling (what `probing.runs` lists)."""
    return {"run": {"name": run or pooling, "pooling": pooling}, **config}


def write_results(
    workdir: Workdir,
    pooling: str,
    result: SweepResult,
    label_data: LabelData,
    settings: SweepSettings,
    write: bool = True,
    partial: dict[str, Any] | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Writes every file of probes/<run>/ as one unit and returns the summary.

    The files go through `probing.store.atomic.write_probe_dir`: a reader (or
    a kill) sees the previous run or this one, never a mix. `partial`
    ({"rows_written", "num_examples"}) marks results of an incomplete store
    in summary.json and results.json. `write=False` only computes the
    summary: on several hosts every process holds the same results and one
    of them writes. `run` names the folder, probes/<run>/ (default: the
    pooling; probing.probes.run_names).
    """
    table = metric_table(result, label_data)
    summary = summarize(table, result, label_data, pooling, settings.bootstrap_resamples)
    summary["convergence"] = convergence_summary(result, settings)
    if partial:
        summary["partial_store"] = dict(partial)
    if not write:
        return summary
    write_run_files(
        workdir,
        pooling,
        run,
        partial,
        tables={
            METRICS_CSV: (METRICS_COLUMNS, table),
            CURVES_CSV: (CURVES_COLUMNS, curve_table(result)),
        },
        summary=summary,
        config=run_record(probe_config(settings, result, label_data), pooling, run),
        weights=weights_bytes(result, label_data),
        predictions=predictions_bytes(result, label_data),
    )
    return summary


def write_run_files(
    workdir: Workdir,
    pooling: str,
    run: str | None,
    partial: dict[str, Any] | None,
    *,
    tables: dict[str, tuple[tuple[str, ...], list]],
    summary: dict[str, Any],
    config: dict[str, Any],
    weights: bytes,
    predictions: bytes,
) -> None:
    """Writes probes/<run>/ as one unit (probing.store.atomic.write_probe_dir), with
    or without folds: the tidy tables (file -> (columns, rows)) led by the run's
    identifying columns, summary.json, probe_config.json, weights and predictions."""
    columns = workdir_run_columns(workdir, pooling, run)
    files = {name: _csv_bytes(cols, rows, columns) for name, (cols, rows) in tables.items()}
    files[SUMMARY_JSON] = _json_bytes(_json_safe(summary))
    files[PROBE_CONFIG_JSON] = _json_bytes(_json_safe(config))
    files[WEIGHTS_NPZ] = weights
    files[PREDICTIONS_NPZ] = predictions
    meta = {"partial_store": dict(partial)} if partial else None
    write_probe_dir(workdir, probes_dir(run or pooling), files, meta)


def _json_bytes(obj: Any) -> bytes:
    """The bytes Workdir.write_json writes (same layout as before the atomic writer)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def _json_safe(obj: Any) -> Any:
    """Replaces NaN / inf (not valid JSON) by None, recursively."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
