"""Turning a SweepResult into the files of <workdir>/probes/<pooling>/ (WORKSPACE.md).

  metrics.csv        layer, seed, split, metric, value
  curves.csv         layer, seed, epoch, split, loss (task probe, chosen grid point)
  summary.json       mean / std / 95% CI over seeds per layer, split and metric
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
from typing import Any

import numpy as np

from probing.probes.data import LabelData
from probing.probes.metrics import HEADLINE, compute_metrics, majority_logits
from probing.probes.settings import SweepSettings
from probing.probes.stats import seed_summary
from probing.probes.sweep import TARGET_NAMES_IN_FILES, SweepResult
from probing.store.layout import SPLIT_NAMES
from probing.store.workdir import Workdir

METRICS_CSV = "metrics.csv"
CURVES_CSV = "curves.csv"
SUMMARY_JSON = "summary.json"
PROBE_CONFIG_JSON = "probe_config.json"
WEIGHTS_NPZ = "weights.npz"
PREDICTIONS_NPZ = "predictions.npz"


def probes_dir(pooling: str) -> str:
    """The workdir-relative directory of one pooling's probe results."""
    return f"probes/{pooling}"


def _split_targets(label_data: LabelData, split_name: str) -> tuple[np.ndarray, np.ndarray]:
    rows = label_data.split_rows(SPLIT_NAMES.index(split_name))
    return label_data.labels[rows], label_data.mask[rows]


def metric_table(
    result: SweepResult, label_data: LabelData
) -> list[tuple[int, int, str, str, float]]:
    """All (layer, seed, split, metric, value) rows of metrics.csv, in a fixed order."""
    kind, names = label_data.label_kind, label_data.label_names
    headline = HEADLINE[kind]
    train_labels, train_mask = _split_targets(label_data, "train")
    majority = {}
    for split_name in SPLIT_NAMES:
        labels, mask = _split_targets(label_data, split_name)
        constant = majority_logits(train_labels, train_mask, len(labels))
        majority[split_name] = {
            f"majority_{k}": v
            for k, v in compute_metrics(kind, constant, labels, mask, names).items()
            if "/" not in k
        }

    table = []
    for li, layer in enumerate(result.layers):
        for si, seed in enumerate(result.seeds):
            for split_name in SPLIT_NAMES:
                labels, mask = _split_targets(label_data, split_name)
                logits = result.logits[split_name]
                values = compute_metrics(kind, logits[li, 0, si], labels, mask, names)
                if "control" in result.targets:
                    control = compute_metrics(kind, logits[li, 1, si], labels, mask, names)
                    values.update({f"control_{k}": v for k, v in control.items() if "/" not in k})
                    values["selectivity"] = values[headline] - control[headline]
                values.update(majority[split_name])
                if split_name == "val":
                    grid_point = result.chosen_grid[li]
                    values["best_epoch"] = int(result.best_epoch[li, 0, si, grid_point])
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
            for epoch in range(result.train_loss.shape[0]):
                for split_name, losses in (("train", result.train_loss), ("val", result.val_loss)):
                    loss = float(losses[epoch, li, 0, si, grid_point])
                    table.append((int(layer), int(seed), epoch + 1, split_name, loss))
    return table


def _csv_bytes(header: tuple[str, ...], rows: list[tuple]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        # repr keeps every float bit, so reruns compare exactly.
        writer.writerow([repr(float(v)) if isinstance(v, float | np.floating) else v for v in row])
    return buffer.getvalue().encode()


def summarize(
    table: list[tuple[int, int, str, str, float]],
    result: SweepResult,
    label_data: LabelData,
    pooling: str,
) -> dict[str, Any]:
    """summary.json: per layer, split and metric the seed summary; the best layer."""
    headline = HEADLINE[label_data.label_kind]
    values: dict[tuple[int, str, str], list[float]] = {}
    for layer, _, split_name, metric, value in table:
        values.setdefault((layer, split_name, metric), []).append(float(value))
    layers = []
    for li, layer in enumerate(result.layers):
        entry: dict[str, Any] = {"layer": int(layer)}
        for split_name in SPLIT_NAMES:
            entry[split_name] = {
                metric: seed_summary(np.asarray(v))
                for (lay, sp, metric), v in values.items()
                if lay == layer and sp == split_name
            }
        entry["hyperparameters"] = {
            name: float(column[result.chosen_grid[li]]) for name, column in result.grid.items()
        }
        layers.append(entry)

    def mean_of(entry, split_name):
        mean = entry[split_name][headline]["mean"]
        return -np.inf if mean is None else mean

    best = max(layers, key=lambda e: mean_of(e, "val"))  # first layer wins ties
    best_test = best["test"][headline]
    return {
        "pooling": pooling,
        "label_kind": label_data.label_kind,
        "headline_metric": headline,
        "num_layers": len(layers),
        "num_seeds": len(result.seeds),
        "layers": layers,
        "best_layer": {
            "layer": best["layer"],
            "metric": headline,
            "split": "test",
            "mean": best_test["mean"],
            "ci95": best_test["ci95"],
            "val_mean": best["val"][headline]["mean"],
            "selected_on": "val",
        },
    }


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
    """predictions.npz: the test-split outputs of the chosen probes, per example.

    With these, `stats.image_bootstrap` compares two layers, or the same layer
    of two models probed on the same images, resampling test images. Keys:
      rows [n]: workdir row index of each test row, in row order;
      group [n]: its image id (arrays/group; the row index when the workdir
        has no group array, i.e. one image per row);
      layers [L], seeds [S]; label_kind; label_names [C];
      labels int8 [n] (binary) or [n, K], mask uint8 [n, K] (multilabel only);
      logits float32 [L, S, n] (binary) or [L, S, n, K]: task probes at the
        chosen grid point and best epoch, the logits metrics.csv was scored on;
      control_logits, same shape, when the shuffled-label control ran.
    """
    test = label_data.split_rows(SPLIT_NAMES.index("test"))
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
        "logits": squeeze(result.logits["test"][:, 0]),
    }
    if multilabel:
        arrays["mask"] = label_data.mask[test].astype(np.uint8)
    if "control" in result.targets:
        arrays["control_logits"] = squeeze(result.logits["test"][:, 1])
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def probe_config(settings: SweepSettings, result: SweepResult, label_data: LabelData) -> dict:
    """probe_config.json: the settings, grid, chosen points and split sizes."""
    return {
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
            "counter hash (lowbias32); see probing/probes/sweep.py"
        ),
    }


def write_results(
    workdir: Workdir,
    pooling: str,
    result: SweepResult,
    label_data: LabelData,
    settings: SweepSettings,
    write: bool = True,
) -> dict[str, Any]:
    """Writes every file of probes/<pooling>/ and returns the summary.

    `write=False` only computes the summary: on several hosts every process
    holds the same results and one of them writes.
    """
    directory = probes_dir(pooling)
    table = metric_table(result, label_data)
    summary = summarize(table, result, label_data, pooling)
    if not write:
        return summary
    workdir.write_bytes(
        f"{directory}/{METRICS_CSV}",
        _csv_bytes(("layer", "seed", "split", "metric", "value"), table),
    )
    workdir.write_bytes(
        f"{directory}/{CURVES_CSV}",
        _csv_bytes(("layer", "seed", "epoch", "split", "loss"), curve_table(result)),
    )
    workdir.write_json(f"{directory}/{SUMMARY_JSON}", _json_safe(summary))
    workdir.write_json(
        f"{directory}/{PROBE_CONFIG_JSON}", _json_safe(probe_config(settings, result, label_data))
    )
    workdir.write_bytes(f"{directory}/{WEIGHTS_NPZ}", weights_bytes(result, label_data))
    workdir.write_bytes(f"{directory}/{PREDICTIONS_NPZ}", predictions_bytes(result, label_data))
    return summary


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
