"""Loading a workdir's features and labels for probe training, with validation.

Everything the probe sweep needs comes through `probing.store.workdir.Workdir`
and is checked here: labels, splits and feature shapes before any compilation
or training starts, feature values as FeatureReader reads them into the
sweep's buffers (one read of each layer group, no separate validating pass).
A workdir written by another program that breaks WORKSPACE.md stops with a
message that names the file, array, layer or rows at fault and what to do.

Labels are brought to one shape for both task kinds: `[N, C]` targets and a
`[N, C]` mask of scored entries. A binary task is a multilabel task with one
always-scored output (C = 1), so the sweep has a single code path.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorstore as ts

from probing.store import integrity
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


# A block read by FeatureReader holds at most this many values (32 MB of
# float16): whole chunks of rows of the layers read, so that the temporaries
# of a read stay a fixed size whatever N is.
_BLOCK_VALUES = 1 << 24
# Block reads in flight at once: decoding the next overlaps copying this one.
_READS_IN_FLIGHT = 3


class FeatureReader:
    """Reads layers of features/<pooling>'s written rows into a caller's [n, k, D] buffer.

    One copy: each block of whole chunks is read from the store (of the
    layers asked for only: with the sharded layout of WORKSPACE.md one
    layer of a chunk is one byte range) straight into its place in `out`,
    in the example-major layout the sweep keeps on its devices (blocks with
    unwritten rows go through a block-sized temporary and a gather).
    Values are checked as they pass (NaN, Inf, magnitudes that overflow the
    float32 standardisation, missing chunks), so there is no separate
    validating read; the errors are those of probing.store.integrity.
    """

    def __init__(
        self,
        workdir: Workdir | str,
        pooling: str,
        label_data: LabelData,
        threshold: float | None = None,
    ):
        workdir = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
        self.name = f"features/{pooling}"
        self.where = f"{workdir.location}/{self.name}"
        check_pooling(workdir, pooling)
        self._array = integrity.strict_open(workdir, self.name)
        num_rows = int(workdir.manifest()["num_examples"])
        expected = (num_rows, label_data.num_layers, label_data.hidden_size)
        if tuple(self._array.shape) != expected:
            raise WorkdirError(
                f"{self.where} has shape {tuple(self._array.shape)}, manifest.json says "
                f"[num_examples, num_layers, hidden_size] = {list(expected)}"
            )
        self.rows = label_data.rows
        self.num_layers = label_data.num_layers
        self.dim = label_data.hidden_size
        self.dtype = np.dtype(self._array.dtype.numpy_dtype)
        self.limit = (
            integrity.overflow_threshold(self.rows.size) if threshold is None else float(threshold)
        )
        self.max_abs = 0.0  # largest finite |x| read so far
        # Rows of a chunk (of a shard, for the sharded layout: a write chunk).
        self._chunk_rows = int(self._array.chunk_layout.write_chunk.shape[0] or num_rows)
        self._num_store_rows = num_rows
        self._scratch: np.ndarray | None = None  # scan_values' working memory, reused

    @property
    def layer_bytes(self) -> int:
        """Bytes of one layer of the written rows."""
        return self.rows.size * self.dim * self.dtype.itemsize

    def _blocks(self, num_layers: int):
        """(start, stop, keep, at): store rows [start, stop) of whole chunks; `keep` the
        written ones (positions in the block; None when all are), `at` their first
        position in the output."""
        chunks = max(1, _BLOCK_VALUES // max(1, self._chunk_rows * num_layers * self.dim))
        per_block = chunks * self._chunk_rows
        for start in range(0, self._num_store_rows, per_block):
            stop = min(start + per_block, self._num_store_rows)
            low, high = np.searchsorted(self.rows, (start, stop))
            if high == low:
                continue  # no written row: its chunks may legitimately be absent
            keep = None if high - low == stop - start else self.rows[low:high] - start
            yield start, stop, keep, int(low)

    def read_into(self, out: np.ndarray, layers: Sequence[int]) -> None:
        """Fills out[:, j] with layer layers[j] of the written rows (layers may repeat).

        Raises:
          FeatureError: a chunk of written rows is missing, or a written row of
            these layers holds NaN, Inf or |x| > the overflow threshold; the
            message names the layer(s) and rows.
          ValueError: `out` has the wrong shape or dtype, or a layer does not exist.
        """
        self.read_all([(out, layers)])

    def read_all(self, targets: Sequence[tuple[np.ndarray, Sequence[int]]]) -> None:
        """read_into for several (out, layers) at once (one per device), in one pass over
        the store's rows, in row order.

        One pass, not one per target: each shard file is visited once, its
        layers for every device read together. Measured on the 14.3 GB store of
        benchmarks/load_path.py (N = 160,000) with the page cache emptied
        first, 10 layers for two devices: 7.1 s in one pass, 9.0 s in two
        (and 9.7 s in one pass backwards, files in reverse order).

        Raises: as read_into.
        """
        bad: dict[str, list[tuple[int, int]]] = {"nonfinite": [], "huge": []}
        missing: list[int] = []
        tasks, repeats = [], []
        for out, layers in targets:
            runs, repeated = self._runs(out, layers)
            tasks.extend((run, block, out) for run in runs for block in self._blocks(run[2]))
            repeats.append((out, repeated))
        tasks.sort(key=lambda task: task[1][0])  # by first row; stable: runs stay in order
        pending: collections.deque = collections.deque()
        for index in range(len(tasks) + _READS_IN_FLIGHT):
            if index < len(tasks):
                pending.append((tasks[index], self._start_read(*tasks[index])))
            if len(pending) > _READS_IN_FLIGHT or (index >= len(tasks) and pending):
                (run, block, out), read = pending.popleft()
                self._place(run, block, read, out, bad, missing)
        for out, repeated in repeats:
            for position, source in repeated:
                out[:, position] = out[:, source]
        if missing:
            raise integrity.missing_chunks_error(self.where, sorted(set(missing)))
        integrity.raise_bad_values(self.where, bad, self.limit)

    def _runs(self, out: np.ndarray, layers: Sequence[int]):
        """Checks one target; returns its runs [position, first layer, count] of distinct
        consecutive layers, and (position, first position) of each repeated layer."""
        layers = [int(x) for x in layers]
        if out.shape != (self.rows.size, len(layers), self.dim) or out.dtype != self.dtype:
            raise ValueError(
                f"output buffer {out.shape} {out.dtype}; expected "
                f"{(self.rows.size, len(layers), self.dim)} {self.dtype}"
            )
        bad_layers = [x for x in layers if not 0 <= x < self.num_layers]
        if bad_layers:
            raise ValueError(
                f"layers {bad_layers} do not exist in {self.where} "
                f"(it has layers 0..{self.num_layers - 1})"
            )
        first: dict[int, int] = {}
        runs: list[list[int]] = []
        for position, layer in enumerate(layers):
            if layer in first:
                continue
            first[layer] = position
            if (
                runs
                and runs[-1][0] + runs[-1][2] == position
                and runs[-1][1] + runs[-1][2] == layer
            ):
                runs[-1][2] += 1
            else:
                runs.append([position, layer, 1])
        repeated = [(p, first[x]) for p, x in enumerate(layers) if first[x] != p]
        return runs, repeated

    def _start_read(self, run, block, out: np.ndarray) -> ts.Future:
        """Starts reading one block: straight into its place in `out` when every row of it
        is written (TensorStore writes into the numpy view, no temporary), else into a
        temporary that `_place` gathers the written rows from."""
        (position, layer, count), (start, stop, keep, at) = run, block
        source = self._array[start:stop, layer : layer + count]
        if keep is not None:
            return source.read()
        target = out[at : at + stop - start, position : position + count]
        return ts.array(target, copy=False, write=True).write(source.translate_to[0, 0, 0])

    def _place(self, run, block, read, out, bad, missing) -> None:
        """Finishes one block read (into `out`) and scans its values."""
        (position, layer, count), (start, stop, keep, at) = run, block
        try:
            values = read.result()
        except ValueError as error:
            if "NOT_FOUND" not in str(error) and "missing" not in str(error):
                raise
            chunk_starts = integrity._missing_chunks(self._array, start, stop, self._chunk_rows)
            lost = np.concatenate(
                [np.arange(c, min(c + self._chunk_rows, stop)) for c in chunk_starts]
            )
            missing.extend(np.intersect1d(lost, self.rows).tolist())
            return
        if keep is None:
            written = out[at : at + stop - start, position : position + count]
        else:
            written = np.asarray(values)[keep]
            out[at : at + written.shape[0], position : position + count] = written
        if self._scratch is None or self._scratch.nbytes < written.nbytes:
            self._scratch = np.empty(written.nbytes, np.uint8)
        nonfinite, magnitude = integrity.scan_values(written, self._scratch)
        huge = ~nonfinite & (magnitude > self.limit)
        rows = self.rows[at : at + written.shape[0]]
        for kind, hit in (("nonfinite", nonfinite), ("huge", huge)):
            r, j = np.nonzero(hit)
            bad[kind].extend(zip(rows[r].tolist(), (j + layer).tolist(), strict=True))
        finite = magnitude[~nonfinite]
        if finite.size:
            self.max_abs = max(self.max_abs, float(finite.max()))

    def layers(self, layers: Sequence[int]) -> StoreFeatures:
        """Layers `layers` as a feature source for the sweep (read when placed)."""
        return StoreFeatures(self, [int(x) for x in layers])


@dataclasses.dataclass(frozen=True)
class StoreFeatures:
    """A group of layers of a FeatureReader, which run_sweep places on its devices.

    The sweep allocates each device's [n, k, D] buffer and calls `fill`; the
    features go from the store into it with no host array of all layers in
    between (probing.probes.devices.place_features).
    """

    reader: FeatureReader
    layer_ids: list[int]

    @property
    def num_layers(self) -> int:
        return len(self.layer_ids)

    @property
    def num_rows(self) -> int:
        return self.reader.rows.size

    @property
    def dim(self) -> int:
        return self.reader.dim

    @property
    def dtype(self) -> np.dtype:
        return self.reader.dtype

    def fill(self, out: np.ndarray, positions: Sequence[int]) -> None:
        """out[:, j] = layer layer_ids[positions[j]] of the written rows."""
        self.fill_all([(out, positions)])

    def fill_all(self, targets: Sequence[tuple[np.ndarray, Sequence[int]]]) -> None:
        """fill for every (out, positions), in one pass over the store (FeatureReader.read_all)."""
        self.reader.read_all([(out, [self.layer_ids[p] for p in pos]) for out, pos in targets])


def load_features(
    workdir: Workdir | str,
    pooling: str,
    label_data: LabelData,
    layers: Sequence[int] | None = None,
) -> np.ndarray:
    """Reads features/<pooling> of the written rows as [len(layers), N, D] in the store dtype.

    For callers that want a host array (tests, tools); training reads through
    FeatureReader into the sweep's own buffers instead. The dtype stays what
    the workdir stores (float16, bfloat16 or float32).

    Args:
      workdir: the workdir.
      pooling: name of the feature array under features/.
      label_data: from `load_labels`; selects the rows to read.
      layers: layer indices to read (default: all L+1).

    Raises:
      WorkdirError: when the array is missing, its shape disagrees with the
        manifest, a chunk of written rows is missing or a layer holds NaN, inf
        or overflowing values (the message names layer and rows).
    """
    reader = FeatureReader(workdir, pooling, label_data)
    layers = list(range(label_data.num_layers)) if layers is None else [int(x) for x in layers]
    out = np.empty((label_data.rows.size, len(layers), label_data.hidden_size), reader.dtype)
    reader.read_into(out, layers)
    return np.ascontiguousarray(np.moveaxis(out, 1, 0))
