"""Loading a workdir's features and labels for probe training, with validation.

Everything the probe sweep needs comes through `probing.store.workdir.Workdir`
and is checked here, before any compilation or training starts: a workdir
written by another program that breaks WORKSPACE.md stops with a message that
names the file, array, layer or rows at fault and what to do about it.

Labels are brought to one shape for both task kinds: `[N, C]` targets and a
`[N, C]` mask of scored entries. A binary task is a multilabel task with one
always-scored output (C = 1), so the sweep has a single code path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from probing.store.layout import (
    GROUP,
    LABEL_MASK,
    LABELS,
    SPLIT,
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VAL,
    WRITTEN,
)
from probing.store.workdir import Workdir, WorkdirError

# How many offending rows an error message lists before it says "...".
_ROWS_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class LabelData:
    """Targets of the rows whose features are written, in row order.

    Attributes:
      labels: float32 [N, C] in {0, 1}; C = 1 for binary tasks.
      mask: float32 [N, C]; 1 = this entry is scored (all ones for binary tasks).
      split: int8 [N]: 0 train, 1 val, 2 test.
      rows: int64 [N]: row indices in the workdir (rows with written == 1).
      groups: int64 [N] image ids, or None when the workdir has no arrays/group.
      label_kind: "binary" or "multilabel".
      label_names: one name per output column (binary: the positive class).
      num_layers: L+1, the feature arrays' layer axis length.
      hidden_size: D.
    """

    labels: np.ndarray
    mask: np.ndarray
    split: np.ndarray
    rows: np.ndarray
    groups: np.ndarray | None
    label_kind: str
    label_names: list[str]
    num_layers: int
    hidden_size: int

    @property
    def num_outputs(self) -> int:
        return self.labels.shape[1]

    def split_rows(self, split: int) -> np.ndarray:
        """Positions (into the written rows) of one split, in row order."""
        return np.flatnonzero(self.split == split)


def _format_rows(rows: np.ndarray) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:_ROWS_SHOWN])
    more = f", ... ({len(rows)} rows in all)" if len(rows) > _ROWS_SHOWN else ""
    return shown + more


def _check_row_array(workdir: Workdir, name: str, values: np.ndarray, num_rows: int) -> None:
    if values.shape[:1] != (num_rows,):
        raise WorkdirError(
            f"{workdir.location}/{name} has shape {values.shape} but manifest.json says "
            f"num_examples = {num_rows}; rewrite the array with one entry per row"
        )


def load_labels(workdir: Workdir | str) -> LabelData:
    """Reads and validates labels, mask, split and written rows of a workdir.

    Raises:
      WorkdirError: on missing arrays or manifest fields, shapes that disagree
        with the manifest, labels or mask values outside {0, 1}, split values
        outside {0, 1, 2}, no written rows, or a split without rows, without
        positives, without negatives or without any scored entry.
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    manifest = workdir.manifest()
    num_rows = int(manifest["num_examples"])
    kind = manifest["label_kind"]
    names = [str(n) for n in manifest["label_names"]]

    written = workdir.read_array(WRITTEN)
    _check_row_array(workdir, WRITTEN, written, num_rows)
    rows = np.flatnonzero(written.reshape(num_rows) == 1)
    if rows.size == 0:
        raise WorkdirError(
            f"{workdir.location}/{WRITTEN}: no row is marked written (written == 1), so there "
            "are no features to probe; finish or rerun the extraction"
        )

    labels = workdir.read_array(LABELS)
    _check_row_array(workdir, LABELS, labels, num_rows)
    if kind == "binary":
        if labels.ndim != 1:
            raise WorkdirError(
                f"{workdir.location}/{LABELS} has shape {labels.shape}; a binary task needs "
                "[num_examples] (label_kind in manifest.json says 'binary')"
            )
        labels = labels[rows, None]
        mask = np.ones_like(labels, dtype=np.float32)
    else:
        if labels.ndim != 2 or labels.shape[1] != len(names):
            raise WorkdirError(
                f"{workdir.location}/{LABELS} has shape {labels.shape}; a multilabel task "
                f"needs [num_examples, {len(names)}] (one column per label_names entry)"
            )
        raw_mask = workdir.read_array(LABEL_MASK)
        if raw_mask.shape != labels.shape:
            raise WorkdirError(
                f"{workdir.location}/{LABEL_MASK} has shape {raw_mask.shape}, labels have "
                f"{labels.shape}; the mask needs one entry per label"
            )
        raw_mask = raw_mask[rows]
        bad = np.flatnonzero(~np.isin(raw_mask, (0, 1)).all(axis=1))
        if bad.size:
            raise WorkdirError(
                f"{workdir.location}/{LABEL_MASK}: values must be 0 or 1; rows "
                f"{_format_rows(rows[bad])} hold others"
            )
        labels = labels[rows]
        mask = raw_mask.astype(np.float32)

    # Unscored entries may hold anything (WORKSPACE.md), so only scored ones are checked.
    bad = np.flatnonzero(((~np.isin(labels, (0, 1))) & (mask > 0)).any(axis=1))
    if bad.size:
        raise WorkdirError(
            f"{workdir.location}/{LABELS}: labels must be 0 or 1; rows {_format_rows(rows[bad])} "
            f"hold other values (e.g. {labels[bad[0]].tolist()})"
        )
    labels = np.where(mask > 0, labels, 0).astype(np.float32)

    split = workdir.read_array(SPLIT)
    _check_row_array(workdir, SPLIT, split, num_rows)
    split = split.reshape(num_rows)[rows].astype(np.int8)
    bad = np.flatnonzero(~np.isin(split, (TRAIN, VAL, TEST)))
    if bad.size:
        raise WorkdirError(
            f"{workdir.location}/{SPLIT}: values must be 0 (train), 1 (val) or 2 (test); rows "
            f"{_format_rows(rows[bad])} hold {sorted(set(split[bad].tolist()))}"
        )

    groups = None
    if workdir.array_exists(GROUP):
        groups = workdir.read_array(GROUP)
        _check_row_array(workdir, GROUP, groups, num_rows)
        groups = groups.reshape(num_rows)[rows].astype(np.int64)

    for code, split_name in enumerate(SPLIT_NAMES):
        in_split = split == code
        scored = mask[in_split].sum()
        positives = (labels[in_split] * mask[in_split]).sum()
        problem = None
        if not in_split.any():
            problem = "has no written rows"
        elif scored == 0:
            problem = f"has no scored label entry ({LABEL_MASK} is 0 on all its rows)"
        elif positives == 0:
            problem = "has no positive label"
        elif positives == scored:
            problem = "has no negative label"
        if problem:
            raise WorkdirError(
                f"{workdir.location}: the {split_name} split {problem}; a probe cannot be "
                f"trained, selected and tested without both classes in train, val and test. "
                f"Re-split the data ({SPLIT}) or extract more rows."
            )

    return LabelData(
        labels=labels,
        mask=mask,
        split=split,
        rows=rows.astype(np.int64),
        groups=groups,
        label_kind=kind,
        label_names=names if kind == "multilabel" else names[:1],
        num_layers=int(manifest["num_layers"]),
        hidden_size=int(manifest["hidden_size"]),
    )


def check_pooling(workdir: Workdir | str, pooling: str) -> None:
    """Raises WorkdirError unless `pooling` is listed in the manifest and stored."""
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    poolings = list(workdir.manifest()["poolings"])
    if pooling not in poolings:
        raise WorkdirError(
            f"{workdir.location}: pooling {pooling!r} is not in manifest.json "
            f"(poolings: {', '.join(poolings) or 'none'}); pick one of those"
        )
    workdir.open_array(f"features/{pooling}")


def load_features(
    workdir: Workdir | str,
    pooling: str,
    label_data: LabelData,
    layers: Sequence[int] | None = None,
) -> np.ndarray:
    """Reads features/<pooling> of the written rows as [len(layers), N, D] in the store dtype.

    The dtype stays what the workdir stores (float16, bfloat16 or float32):
    the sweep standardises in float32 as it reads, so converting here would
    only double the memory and the bytes every training step reads.

    Args:
      workdir: the workdir.
      pooling: name of the feature array under features/.
      label_data: from `load_labels`; selects the rows to read.
      layers: layer indices to read (default: all L+1), so callers can stream
        a few layers at a time when all of them do not fit in memory.

    Raises:
      WorkdirError: when the array is missing, its shape disagrees with the
        manifest, or a layer holds NaN or inf (the message names layer and rows).
    """
    workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    name = f"features/{pooling}"
    check_pooling(workdir, pooling)
    array = workdir.open_array(name)
    num_rows = int(workdir.manifest()["num_examples"])
    expected = (num_rows, label_data.num_layers, label_data.hidden_size)
    if tuple(array.shape) != expected:
        raise WorkdirError(
            f"{workdir.location}/{name} has shape {tuple(array.shape)}, manifest.json says "
            f"[num_examples, num_layers, hidden_size] = {list(expected)}"
        )
    layers = list(range(label_data.num_layers)) if layers is None else [int(x) for x in layers]
    bad_layers = [x for x in layers if not 0 <= x < label_data.num_layers]
    if bad_layers:
        raise ValueError(
            f"layers {bad_layers} do not exist in {workdir.location}/{name} "
            f"(it has layers 0..{label_data.num_layers - 1})"
        )

    rows = label_data.rows
    out = np.empty((len(layers), rows.size, label_data.hidden_size), array.dtype.numpy_dtype)
    # Read contiguous layer runs: one TensorStore read per run, not per layer.
    start = 0
    while start < len(layers):
        stop = start + 1
        while stop < len(layers) and layers[stop] == layers[stop - 1] + 1:
            stop += 1
        block = array[:, layers[start] : layers[stop - 1] + 1, :].read().result()
        out[start:stop] = np.moveaxis(np.asarray(block)[rows], 1, 0)
        start = stop

    for position, layer in enumerate(layers):
        finite = np.isfinite(out[position]).all(axis=1)
        if not finite.all():
            bad_rows = rows[~finite]
            raise WorkdirError(
                f"{workdir.location}/{name}: layer {layer} holds NaN or inf in rows "
                f"{_format_rows(bad_rows)}; re-extract those rows (or mark them "
                f"written = 0 in {WRITTEN} to leave them out)"
            )
    return out
