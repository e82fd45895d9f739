"""Loading probe results of workdirs into `ProbeRun` objects.

A `ProbeRun` is one workdir x one probe run (probes/<run>/, one pooling
under one set of probe settings; probing.probes.run_names): the metrics of every (layer, seed,
split, metric) as dense arrays, the loss curves, and what the legends and
tables need to name it (model, pooling, task, baseline variant). Only files
of the contract are read (WORKSPACE.md), through `Workdir`, so workdirs on a
bucket work like local ones.

Probes trained with folds (a `fold` column in metrics.csv and curves.csv)
keep every fold in `fold_metrics` [layer, fold, seed]; `metrics` and `curves`
then hold the mean over folds per seed, so a layer's mean over seeds is the
mean over folds of each fold's seed mean, the `mean` of summary.json, and
every figure and table reads them as it reads a run without folds.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from probing.probes.metrics import category_metric
from probing.probes.run_names import run_folders, run_pooling
from probing.reporting.baselines import PromptBaseline, prompt_baseline
from probing.reporting.consistency import check_seeds_agree, dedupe_workdirs
from probing.reporting.labels import assign_labels, group_key
from probing.store.atomic import verify_probe_dir
from probing.store.integrity import require_complete
from probing.store.layout import (
    CONFIG_JSON,
    CONTROL_LABELS,
    CONTROL_LOGITS,
    CURVES_COLUMNS,
    CURVES_CSV,
    FOLD_COLUMN,
    HEADLINE_METRIC,
    METRICS_COLUMNS,
    METRICS_CSV,
    PREDICTIONS_NPZ,
    SCORING_SPLIT,
    SUMMARY_JSON,
    probe_file,
    probes_dir,
)
from probing.store.remote import check_remote_reachable
from probing.store.workdir import Workdir, WorkdirError

# Baseline variants a run can be, read from its manifest and config; the
# empty string is an ordinary trained model seeing image and text.
TRAINED = ""
UNTRAINED = "untrained"
TEXT_ONLY = "text only"
IMAGE_ONLY = "image only"
_BLIND_VARIANTS = {"text_only": TEXT_ONLY, "image_only": IMAGE_ONLY}


# Workdir -> its prompt-text baseline (None: none can be built); one fit per workdir.
_BASELINES: dict[str, PromptBaseline | None] = {}


class ReportError(ValueError):
    """The report cannot be built from the given workdirs or selection."""


def short_model_name(model_id: str) -> str:
    """A legend-sized model name: the last component of a hub id or a path."""
    trimmed = model_id.rstrip("/\\")
    if trimmed.startswith("tiny:"):
        return trimmed
    return os.path.basename(trimmed.replace("\\", "/")) or trimmed


@dataclasses.dataclass
class ProbeRun:
    """Probe results of one workdir and one probe run.

    Attributes:
      workdir: the workdir location.
      pooling: the pooling the run probed.
      manifest: manifest.json of the workdir.
      config: config.json of the workdir ({} when absent).
      metrics: (split, metric) -> [num_layers, num_seeds] values, NaN where a
        (layer, seed) has no row in metrics.csv.
      seeds: the seed ids, in column order of every metrics array.
      curves: split -> [num_layers, num_seeds, num_epochs] losses (NaN where
        missing); empty when the workdir has no curves.csv.
      epochs: the epoch ids, in order of the last axis of every curve array.
      label: unique display name, set by `load_runs` (probing.reporting.labels).
      series: the label without the pooling: what one extraction run is.
      predictions: the arrays of probes/<pooling>/predictions.npz (per test
        example logits of every layer and seed, image ids, labels), or None
        for workdirs trained before the trainer wrote it.
      summary: probes/<pooling>/summary.json ({} when absent): the bootstrap
        intervals (`ci95`), the best layer's paired comparison with the last
        and the trivial baselines come from it.
      folds: the fold ids of a sweep with folds, in column order of
        fold_metrics (empty without folds).
      fold_metrics: (split, metric) -> [num_layers, num_folds, num_seeds]
        (empty without folds); `metrics` is then their mean over folds.
    """

    workdir: str
    pooling: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    headline_metric: str
    metrics: dict[tuple[str, str], np.ndarray]
    seeds: np.ndarray
    curves: dict[str, np.ndarray]
    epochs: np.ndarray
    label: str = ""
    # The probes/<run>/ folder the results come from ("" = the pooling's own folder).
    run: str = ""
    predictions: dict[str, np.ndarray] | None = None
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    folds: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=int))
    fold_metrics: dict[tuple[str, str], np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def run_name(self) -> str:
        """The run's folder name under probes/ (the pooling for its first run)."""
        return self.run or self.pooling

    @property
    def has_folds(self) -> bool:
        """Trained with folds re-drawn at probe time (a fold column in metrics.csv)."""
        return self.folds.size > 0

    @property
    def partial(self) -> bool:
        """Probed from a store whose extraction had not finished (allow_partial)."""
        return self.manifest.get("complete") is not True

    series: str = ""
    _baseline: Any = dataclasses.field(default=None, repr=False)

    @property
    def prompt_baseline(self) -> PromptBaseline | None:
        """The prompt-text-only baseline of this run's task (computed once per workdir)."""
        if self._baseline is None:
            cached = _BASELINES.get(self.workdir)
            if self.workdir not in _BASELINES:
                cached = _BASELINES[self.workdir] = prompt_baseline(self.workdir, self.manifest)
            self._baseline = cached if cached is not None else False
        return self._baseline or None

    @property
    def model_id(self) -> str:
        return str(self.manifest.get("model", {}).get("id", "unknown model"))

    @property
    def model_name(self) -> str:
        """Short model name plus the baseline variant, e.g. "tiny:qwen2_vl (untrained)"."""
        name = short_model_name(self.model_id)
        return f"{name} ({self.variant})" if self.variant else name

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", "unknown task"))

    @property
    def label_kind(self) -> str:
        return str(self.manifest["label_kind"])

    @property
    def label_names(self) -> list[str]:
        return [str(name) for name in self.manifest.get("label_names", [])]

    @property
    def num_layers(self) -> int:
        """Number of hidden states, L+1 (embedding output included)."""
        return int(self.manifest["num_layers"])

    @property
    def variant(self) -> str:
        """TRAINED, UNTRAINED, TEXT_ONLY or IMAGE_ONLY."""
        if self.manifest.get("model", {}).get("random_init"):
            return UNTRAINED
        task_config = self.config.get("task", {})
        blind = task_config.get("blind") if isinstance(task_config, dict) else None
        return _BLIND_VARIANTS.get(str(blind), TRAINED) if blind else TRAINED

    def relative_depth(self, layer: int | np.ndarray) -> float | np.ndarray:
        """layer / L: 0 is the embedding output, 1 the last hidden state."""
        return np.asarray(layer) / max(self.num_layers - 1, 1)

    def has(self, split: str, metric: str) -> bool:
        return (split, metric) in self.metrics

    def values(self, split: str, metric: str) -> np.ndarray:
        """[num_layers, num_seeds] values of one metric on one split."""
        try:
            return self.metrics[(split, metric)]
        except KeyError:
            raise ReportError(
                f"{self.workdir}/{probe_file(self.run_name, METRICS_CSV)} has no rows for metric "
                f"{metric!r} on split {split!r}; re-run `python -m probing.train_all_layers "
                f"--workdir={self.workdir}`"
            ) from None

    def category_metrics(self, prefix: str, split: str = SCORING_SPLIT) -> list[str]:
        """Names of per-category metrics such as "f1/<name>", in label_names order."""
        present = {metric for (s, metric) in self.metrics if s == split}
        ordered = [category_metric(prefix, name) for name in self.label_names]
        found = [metric for metric in ordered if metric in present]
        start = category_metric(prefix, "")
        extra = sorted(m for m in present if m.startswith(start) and m not in found)
        return found + extra


def _read_csv(workdir: Workdir, name: str, columns: Sequence[str]) -> list[dict[str, str]]:
    text = workdir.read_bytes(name).decode()
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise ReportError(
            f"{workdir.location}/{name} lacks column(s) {', '.join(missing)}; expected the "
            f"columns {','.join(columns)} (see WORKSPACE.md)"
        )
    return list(reader)


def _parse_number(raw: str, name: str, row_number: int, column: str, kind: type) -> Any:
    try:
        return kind(float(raw)) if kind is int else kind(raw)
    except (TypeError, ValueError):
        raise ReportError(
            f"{name} row {row_number}: column {column!r} holds {raw!r}, expected a number"
        ) from None


def _fold_mean(grid: np.ndarray) -> np.ndarray:
    """[..., folds, x] -> [..., x], the mean over the folds that have a value (NaN: none)."""
    count = np.sum(~np.isnan(grid), axis=-2)
    total = np.nansum(grid, axis=-2)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _load_metrics(
    workdir: Workdir, pooling: str, num_layers: int
) -> tuple[dict[tuple[str, str], np.ndarray], np.ndarray, np.ndarray, dict]:
    """(metrics [L, S] per (split, metric), seeds, fold ids, fold metrics [L, F, S])."""
    name = probe_file(pooling, METRICS_CSV)
    rows = _read_csv(workdir, name, METRICS_COLUMNS)
    if not rows:
        raise ReportError(f"{workdir.location}/{name} has no rows")
    where = f"{workdir.location}/{name}"
    with_folds = FOLD_COLUMN in rows[0]
    parsed = [
        (
            _parse_number(r["layer"], where, i + 2, "layer", int),
            _parse_number(r[FOLD_COLUMN], where, i + 2, FOLD_COLUMN, int) if with_folds else 0,
            _parse_number(r["seed"], where, i + 2, "seed", int),
            r["split"],
            r["metric"],
            _parse_number(r["value"], where, i + 2, "value", float),
        )
        for i, r in enumerate(rows)
    ]
    seeds = np.array(sorted({row[2] for row in parsed}))
    folds = np.array(sorted({row[1] for row in parsed}))
    seed_column = {seed: i for i, seed in enumerate(seeds)}
    fold_column = {fold: i for i, fold in enumerate(folds)}
    grids: dict[tuple[str, str], np.ndarray] = {}
    for layer, fold, seed, split, metric, value in parsed:
        if not 0 <= layer < num_layers:
            raise ReportError(
                f"{where}: layer {layer} is outside 0..{num_layers - 1} "
                f"(manifest.json says num_layers={num_layers})"
            )
        grid = grids.get((split, metric))
        if grid is None:
            grid = grids[(split, metric)] = np.full((num_layers, len(folds), len(seeds)), np.nan)
        grid[layer, fold_column[fold], seed_column[seed]] = value
    metrics = {key: _fold_mean(grid) for key, grid in grids.items()}
    if not with_folds:
        return metrics, seeds, np.zeros(0, dtype=int), {}
    return metrics, seeds, folds, grids


def _load_curves(
    workdir: Workdir, pooling: str, num_layers: int, seeds: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """split -> [L, S, epochs] losses; with folds the mean over the folds that trained
    that long (a fold that stopped early drops out of the later epochs)."""
    name = probe_file(pooling, CURVES_CSV)
    if not workdir.exists(name):
        return {}, np.zeros(0, dtype=int)
    rows = _read_csv(workdir, name, CURVES_COLUMNS)
    where = f"{workdir.location}/{name}"
    with_folds = bool(rows) and FOLD_COLUMN in rows[0]
    parsed = [
        (
            _parse_number(r["layer"], where, i + 2, "layer", int),
            _parse_number(r[FOLD_COLUMN], where, i + 2, FOLD_COLUMN, int) if with_folds else 0,
            _parse_number(r["seed"], where, i + 2, "seed", int),
            _parse_number(r["epoch"], where, i + 2, "epoch", int),
            r["split"],
            _parse_number(r["loss"], where, i + 2, "loss", float),
        )
        for i, r in enumerate(rows)
    ]
    epochs = np.array(sorted({row[3] for row in parsed}), dtype=int)
    folds = sorted({row[1] for row in parsed})
    epoch_index = {epoch: i for i, epoch in enumerate(epochs)}
    fold_index = {fold: i for i, fold in enumerate(folds)}
    seed_column = {int(seed): i for i, seed in enumerate(seeds)}
    grids: dict[str, np.ndarray] = {}
    for layer, fold, seed, epoch, split, loss in parsed:
        if not 0 <= layer < num_layers or seed not in seed_column:
            continue  # A curve of a probe with no metrics cannot be placed; ignore it.
        grid = grids.get(split)
        if grid is None:
            grid = grids[split] = np.full((num_layers, len(seeds), len(folds), len(epochs)), np.nan)
        grid[layer, seed_column[seed], fold_index[fold], epoch_index[epoch]] = loss
    curves = {split: _fold_mean(grid) for split, grid in grids.items()}  # [L, S, F, E]
    return curves, epochs


def _load_predictions(workdir: Workdir, pooling: str) -> dict[str, np.ndarray] | None:
    name = probe_file(pooling, PREDICTIONS_NPZ)
    if not workdir.exists(name):
        return None
    try:
        with np.load(io.BytesIO(workdir.read_bytes(name))) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise ReportError(
            f"{workdir.location}/{name} is not a readable .npz file ({error}); delete it or "
            f"re-run `python -m probing.train_all_layers --workdir={workdir.location}`"
        ) from error
    missing = [k for k in ("layers", "group", "labels", "logits") if k not in arrays]
    if missing:
        raise ReportError(
            f"{workdir.location}/{name} lacks {', '.join(missing)} (see WORKSPACE.md); "
            f"re-run `python -m probing.train_all_layers --workdir={workdir.location}`"
        )
    if CONTROL_LOGITS in arrays and CONTROL_LABELS not in arrays:
        # Probes trained before the control was scored on its own shuffled test
        # labels: their control_* and selectivity values (metrics.csv, summary.json)
        # were scored on the real labels and can sit far from chance.
        logging.warning(
            "%s/%s: written before the shuffled-label control was scored on its own "
            "labels; its control and selectivity numbers are not comparable. Re-run "
            "`python -m probing.train_all_layers --workdir=%s`",
            workdir.location,
            name,
            workdir.location,
        )
    return arrays


def _optional_json(workdir: Workdir, name: str) -> dict[str, Any]:
    return workdir.read_json(name) if workdir.exists(name) else {}


def load_workdir_runs(
    location: str,
    poolings: Sequence[str] | None = None,
    allow_partial: bool = False,
    names: Sequence[str] | None = None,
) -> list[ProbeRun]:
    """Every probe run (probes/<run>/) of one workdir, or those of the selected
    `poolings` and run `names` (a folder name, or the --config.run_name it was given).

    Returns [] when the selection excludes every run of the workdir.

    Raises:
      ReportError: the workdir holds no probe results for any selected
        pooling, or a results folder mixes files of different runs.
      WorkdirError: it is not a workdir (no manifest.json), or its extraction
        has not finished and `allow_partial` is off.
    """
    workdir = Workdir(location)
    check_remote_reachable(workdir, write=False)
    manifest = require_complete(workdir, allow_partial, flag="--allow_partial")
    num_layers = int(manifest["num_layers"])
    config = _optional_json(workdir, CONFIG_JSON)
    available = [str(p) for p in manifest.get("poolings", [])]
    wanted = [p for p in available if poolings is None or p in poolings]
    if not wanted:
        # Not an error yet: another workdir may hold the selected poolings.
        logging.warning("%s: none of its poolings %s is selected; skipped", location, available)
        return []
    found = [(name, run_pooling(workdir, name)) for name in run_folders(workdir)]
    stray = [name for name, pooling in found if pooling not in available]
    if stray:
        logging.warning(
            "%s: probes/ folder(s) %s name no pooling of manifest.json %s; skipped",
            location,
            stray,
            available,
        )
    for pooling in wanted:
        if not any(p == pooling for _, p in found):
            logging.warning("%s: no probe results for pooling %r; skipped", location, pooling)
    selected = [
        (name, pooling)
        for name, pooling in found
        if pooling in wanted and (not names or name in names or name[len(pooling) + 1 :] in names)
    ]
    if names and found and not selected:
        # Not an error yet: another workdir may hold the selected runs.
        logging.warning(
            "%s: none of its runs %s is selected; skipped", location, [n for n, _ in found]
        )
        return []
    runs = []
    for run, pooling in selected:
        # A folder whose files are not one run is refused before anything is parsed.
        verified = verify_probe_dir(workdir, probes_dir(run)) is not None
        metrics, seeds, folds, fold_metrics = _load_metrics(workdir, run, num_layers)
        curves, epochs = _load_curves(workdir, run, num_layers, seeds)
        predictions = _load_predictions(workdir, run)
        if not verified:
            check_seeds_agree(workdir, run, seeds, curves, predictions)
        summary = _optional_json(workdir, probe_file(run, SUMMARY_JSON))
        headline = summary.get("headline_metric") or HEADLINE_METRIC[manifest["label_kind"]]
        runs.append(
            ProbeRun(
                workdir=location,
                pooling=pooling,
                run="" if run == pooling else run,
                manifest=manifest,
                config=config,
                headline_metric=str(headline),
                metrics=metrics,
                seeds=seeds,
                curves=curves,
                epochs=epochs,
                predictions=predictions,
                summary=summary,
                folds=folds,
                fold_metrics=fold_metrics,
            )
        )
    if not runs:
        raise ReportError(
            f"{location} has no probe results (no probes/<run>/metrics.csv for "
            f"pooling(s) {wanted}); produce them with "
            f"`python -m probing.train_all_layers --workdir={location}`"
        )
    return runs


def load_runs(
    workdirs: Sequence[str],
    poolings: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    allow_partial: bool = False,
    names: Sequence[str] | None = None,
) -> list[ProbeRun]:
    """Probe runs of all `workdirs` (each once), filtered by pooling, task and run name.

    Raises:
      ReportError: no workdirs were given, one has no probe results, mixes
        files of different probe runs, is incomplete (unless
        `allow_partial`), or the selection leaves nothing to report.
    """
    workdirs = [location for location in workdirs if location.strip()]
    if not workdirs:
        raise ReportError("no workdirs given; pass --workdirs=DIR[,DIR...]")
    workdirs = dedupe_workdirs(workdirs)
    runs: list[ProbeRun] = []
    for location in workdirs:
        try:
            runs.extend(load_workdir_runs(location, poolings, allow_partial, names))
        except WorkdirError as error:
            raise ReportError(str(error)) from error
    if tasks:
        runs = [run for run in runs if run.task in tasks]
    if not runs:
        raise ReportError(
            f"the selection (tasks={list(tasks or [])}, poolings={list(poolings or [])}, "
            f"runs={list(names or [])}) matches no probe results in {list(workdirs)}; widen or "
            "drop --tasks / --poolings / --runs (python -m probing.runs --workdir=DIR lists them)"
        )
    assign_labels(runs)
    for run in runs:
        # Every figure, table and legend names a partially extracted store as such.
        if run.partial:
            run.label += " [partial store]"
    return runs


def group_runs(runs: Sequence[ProbeRun]) -> dict[str, list[ProbeRun]]:
    """Runs per (task, category form) group (`labels.group_key`), in first-seen order.

    Raises:
      ReportError: one group mixes label kinds, so its runs do not share a
        headline metric.
    """
    groups: dict[str, list[ProbeRun]] = {}
    for run in runs:
        groups.setdefault(group_key(run), []).append(run)
    for task, members in groups.items():
        kinds = {(run.label_kind, run.headline_metric) for run in members}
        if len(kinds) > 1:
            where = ", ".join(f"{run.workdir} ({run.label_kind})" for run in members)
            raise ReportError(
                f"task {task!r} appears with different label kinds or headline metrics "
                f"({where}); their results cannot share a figure. Report them separately."
            )
    return groups
