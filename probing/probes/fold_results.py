"""The files of probes/<pooling>/ for a sweep with folds re-drawn at probe time (settings.folds).

The same files as probing.probes.results writes without folds, each fold
scored on its own split exactly as a fold-less sweep would be, with a `fold`
column (or axis) added:

  metrics.csv        layer, fold, seed, split, metric, value
  curves.csv         layer, fold, seed, epoch, split, loss
  summary.json       per layer, split and metric: the mean over folds (each
                     fold the mean over its seeds); on the test split `ci95`,
                     the folds x bootstrap interval (probing.probes.bootstrap:
                     the fold mean under resamples of the images of all
                     folds' test parts, the interval to quote); `fold_interval`
                     (Student-t 95% interval over folds: how far one re-split
                     scatters), std and n over folds; trivial baselines
                     averaged over folds; the best layer and its paired
                     difference to the last; "folds": the best layer of each
                     fold (chosen on its val) and how often each layer wins;
                     "convergence" as without folds
  probe_config.json  as without folds, plus each fold's split sizes
  weights.npz        kernel [L, F, S, D, C], bias [L, F, S, C], mean and
                     scale [L, F, D] (each fold's train statistics), folds [F]
  predictions.npz    every fold's test rows one after another: rows, fold,
                     group, labels (mask), logits [L, S, n] ([L, S, n, K]),
                     control_logits and control_labels (control_mask), each
                     fold's control scored on its fold's shuffled test labels;
                     with K folds every row is tested once
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import numpy as np

from probing.probes.data import LabelData
from probing.probes.intervals import ImageIntervals, fold_baselines
from probing.probes.results import (
    control_prediction_arrays,
    curve_table,
    metric_table,
    probe_config,
    run_record,
    write_run_files,
)
from probing.probes.settings import SweepSettings
from probing.probes.stopping import convergence_summary
from probing.probes.summary import build_summary
from probing.probes.sweep import SweepResult
from probing.store.layout import (
    CONTROL_LABELS,
    CONTROL_LOGITS,
    CONTROL_MASK,
    CURVES_CSV,
    FOLD_COLUMN,
    FOLD_CURVES_COLUMNS,
    FOLD_METRICS_COLUMNS,
    HEADLINE_METRIC,
    METRICS_CSV,
    SCORING_SPLIT,
    SELECTION_SPLIT,
    SPLIT_NAMES,
    TEST,
    TRAIN,
)
from probing.store.workdir import Workdir

FOLD_INTERVAL = (
    "Student-t 95% interval of the mean over folds, each fold the mean over its probe seeds: "
    "how much the number moves when the images are re-split; the folds share images, so it "
    "is approximate. Not the interval to quote: ci95 (folds x bootstrap) is"
)


def _fold_label_data(label_data: LabelData, result: SweepResult, position: int) -> LabelData:
    """The workdir's labels with the split of the fold at `position`."""
    return dataclasses.replace(label_data, split=result.folds.split[position])


def fold_tables(result: SweepResult, label_data: LabelData) -> tuple[list[tuple], list[tuple]]:
    """The rows of metrics.csv and curves.csv, fold by fold."""
    metrics, curves = [], []
    for position, fold in enumerate(result.folds.ids):
        one, data = result.fold(position), _fold_label_data(label_data, result, position)
        fold = int(fold)
        metrics += [(row[0], fold, *row[1:]) for row in metric_table(one, data)]
        curves += [(row[0], fold, *row[1:]) for row in curve_table(one)]
    return metrics, curves


def _fold_baselines(result: SweepResult, label_data: LabelData) -> dict[str, Any]:
    """The trivial baselines of every fold (its train frequencies, its test labels), averaged."""
    parts = []
    for split in result.folds.split:
        train, test = split == TRAIN, split == TEST
        labels, mask = label_data.labels, label_data.mask
        parts.append((labels[train], mask[train], labels[test], mask[test]))
    return fold_baselines(label_data.label_kind, parts)


def fold_summary(
    metrics: list[tuple],
    result: SweepResult,
    label_data: LabelData,
    pooling: str,
    settings,
    predictions: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """summary.json with folds: folds x bootstrap ci95, intervals over folds, the best
    layer of each fold. `predictions` (fold_predictions_arrays) feed the bootstrap; it
    is skipped when settings.bootstrap_resamples is 0."""
    headline = HEADLINE_METRIC[label_data.label_kind]
    # (layer, fold, split, metric) -> values over seeds.
    per_seed: dict[tuple, list[float]] = {}
    for layer, fold, _, split_name, metric, value in metrics:
        per_seed.setdefault((layer, fold, split_name, metric), []).append(float(value))
    fold_means = {key: float(np.mean(values)) for key, values in per_seed.items()}
    num_resamples = settings.bootstrap_resamples
    intervals = None
    if num_resamples:
        if predictions is None:
            predictions = fold_predictions_arrays(result, label_data)
        intervals = ImageIntervals(predictions, num_resamples)
    # Each fold's seed mean stands where a seed's value stands without folds.
    summary = build_summary(
        [(layer, fold, s, m, v) for (layer, fold, s, m), v in fold_means.items()],
        pooling=pooling,
        label_kind=label_data.label_kind,
        intervals=intervals and intervals.ci95(),
        interval_info=intervals and intervals.describe(),
        compare_layers=intervals and intervals.compare_layers,
        baselines=_fold_baselines(result, label_data),
    )
    fold_ids = [int(f) for f in result.folds.ids]
    # build_summary names the spread of its "seed" values, here the folds'.
    for li, entry in enumerate(summary["layers"]):
        for split_name in SPLIT_NAMES:
            for values in entry[split_name].values():
                values["fold_interval"] = values.pop("seed_spread")
        entry["hyperparameters"] = {
            name: [float(column[g]) for g in result.chosen_grid[li]]
            for name, column in result.grid.items()
        }
    summary["best_layer"]["fold_interval"] = summary["best_layer"].pop("seed_spread")
    layers = [int(layer) for layer in result.layers]

    def fold_score(layer, fold, split_name):
        value = fold_means.get((layer, fold, split_name, headline), np.nan)
        return -np.inf if np.isnan(value) else value

    # Chosen on each fold's val, the first layer winning ties, as without folds.
    best = [max(layers, key=lambda layer: fold_score(layer, f, SELECTION_SPLIT)) for f in fold_ids]
    info = dict(summary["intervals"])
    info.pop("seed_spread", None)
    info["fold_interval"] = FOLD_INTERVAL
    summary.update(
        num_seeds=len(result.seeds),
        num_folds=len(fold_ids),
        intervals=info,
        convergence=convergence_summary(result, settings),
        folds={
            "kind": result.folds.kind,
            "fold_seed": settings.fold_seed,
            "ids": fold_ids,
            "rows_per_split": {
                name: [int((s == code).sum()) for s in result.folds.split]
                for code, name in enumerate(SPLIT_NAMES)
            },
            f"{SCORING_SPLIT}_{headline}_per_fold": {
                str(layer): [fold_means.get((layer, f, SCORING_SPLIT, headline)) for f in fold_ids]
                for layer in layers
            },
            "best_layer_per_fold": best,
            "best_layer_frequency": {str(layer): best.count(layer) for layer in sorted(set(best))},
        },
    )
    return summary


def fold_weights_bytes(result: SweepResult, label_data: LabelData) -> bytes:
    """weights.npz with a fold axis (see the module docstring)."""
    buffer = io.BytesIO()
    chosen = {name: column[result.chosen_grid] for name, column in result.grid.items()}
    np.savez(
        buffer,
        kernel=result.kernel[:, :, 0],
        bias=result.bias[:, :, 0],
        mean=result.mean,
        scale=result.scale,
        layers=result.layers,
        seeds=result.seeds,
        folds=result.folds.ids,
        label_names=np.asarray(label_data.label_names),
        **chosen,
    )
    return buffer.getvalue()


def fold_predictions_arrays(result: SweepResult, label_data: LabelData) -> dict[str, np.ndarray]:
    """predictions.npz: every fold's test rows and logits, fold after fold."""
    multilabel = label_data.label_kind == "multilabel"
    keep = (lambda a: a) if multilabel else (lambda a: a[..., 0])
    parts: dict[str, list[np.ndarray]] = {}
    for position, fold in enumerate(result.folds.ids):
        test = np.flatnonzero(result.folds.split[position] == TEST)
        one = result.fold(position)
        rows = label_data.rows[test]
        groups = rows if label_data.groups is None else label_data.groups[test]
        fold_arrays = {
            "rows": rows.astype(np.int64),
            FOLD_COLUMN: np.full(test.size, int(fold), np.int64),
            "group": np.asarray(groups, np.int64),
            "labels": label_data.labels[test],
            "logits": one.logits[SCORING_SPLIT][:, 0],
        }
        if multilabel:
            fold_arrays["mask"] = label_data.mask[test].astype(np.uint8)
        if "control" in result.targets:
            # Each fold's control scored on its own fold's shuffled test labels.
            fold_arrays.update(
                control_prediction_arrays(one, _fold_label_data(label_data, result, position), keep)
            )
        for key, value in fold_arrays.items():
            parts.setdefault(key, []).append(value)
    # Rows run along axis 2 of the logits [L, S, n(, K)], 1 of the control's per-seed
    # labels [S, n(, K)], 0 of the rest.
    row_axis = {"logits": 2, CONTROL_LOGITS: 2, CONTROL_LABELS: 1, CONTROL_MASK: 1}
    arrays = {
        key: np.concatenate(values, axis=row_axis.get(key, 0)) for key, values in parts.items()
    }
    arrays["labels"] = (arrays["labels"] if multilabel else arrays["labels"][:, 0]).astype(np.int8)
    arrays["logits"] = np.asarray(keep(arrays["logits"]), np.float32)
    arrays.update(
        layers=result.layers,
        seeds=result.seeds,
        label_kind=np.asarray(label_data.label_kind),
        label_names=np.asarray(label_data.label_names),
    )
    return arrays


def fold_predictions_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """predictions.npz's bytes."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_fold_results(
    workdir: Workdir,
    pooling: str,
    result: SweepResult,
    label_data: LabelData,
    settings: SweepSettings,
    write: bool = True,
    partial: dict[str, Any] | None = None,
    run: str | None = None,
) -> dict[str, Any]:
    """Writes every file of probes/<run>/ for a sweep with folds, as one unit (see
    results.write_results for `write` and `partial`); returns the summary."""
    metrics, curves = fold_tables(result, label_data)
    predictions = fold_predictions_arrays(result, label_data)
    summary = fold_summary(metrics, result, label_data, pooling, settings, predictions)
    if partial:
        summary["partial_store"] = dict(partial)
    if not write:
        return summary
    config = run_record(probe_config(settings, result, label_data), pooling, run)
    config["folds"] = summary["folds"]["rows_per_split"]
    write_run_files(
        workdir,
        pooling,
        run,
        partial,
        tables={
            METRICS_CSV: (FOLD_METRICS_COLUMNS, metrics),
            CURVES_CSV: (FOLD_CURVES_COLUMNS, curves),
        },
        summary=summary,
        config=config,
        weights=fold_weights_bytes(result, label_data),
        predictions=fold_predictions_bytes(predictions),
    )
    return summary
