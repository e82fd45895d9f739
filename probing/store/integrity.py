"""Refusing a workdir that is not whole: incomplete manifests, missing chunks, bad feature values.

Readers call `require_complete` before anything else and `check_features`
for every pooling before any training: a missing feature chunk (which
TensorStore would otherwise read as its fill value, zeros), NaN, Inf or a
magnitude that overflows the float32 standardisation each stop the run with
one line naming the array, the layer and the rows.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import tensorstore as ts
from absl import logging

from probing.store import layout
from probing.store.workdir import Workdir, WorkdirError

# Rows an error message lists before it says how many there are in all.
ROWS_SHOWN = 8
# A block read by `check_features` holds at most this many float32 values.
_BLOCK_VALUES = 1 << 24
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class IncompleteWorkdirError(WorkdirError):
    """manifest.json says the extraction has not finished."""


class FeatureError(WorkdirError):
    """A feature array holds NaN, Inf, values too large, or lacks chunks of written rows."""


def format_rows(rows: np.ndarray | list[int], noun: str = "rows") -> str:
    """`1, 5, 9` or `1, 5, ..., (120 rows in all)`: row (or layer) numbers for a message."""
    rows = np.asarray(rows).reshape(-1)
    shown = ", ".join(str(int(r)) for r in rows[:ROWS_SHOWN])
    more = f", ... ({len(rows)} {noun} in all)" if len(rows) > ROWS_SHOWN else ""
    return shown + more


def _as_workdir(workdir: Workdir | str) -> Workdir:
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)


def require_complete(
    workdir: Workdir | str, allow_partial: bool = False, flag: str = "--config.allow_partial=True"
) -> dict[str, Any]:
    """Returns the manifest, refusing one whose `complete` is not true unless allowed.

    Args:
      workdir: the workdir.
      allow_partial: accept an incomplete store (its written rows only); a
        warning says so.
      flag: how the caller's user allows it, named in the refusal.
    """
    workdir = _as_workdir(workdir)
    manifest = workdir.manifest()
    if manifest.get("complete") is True:
        return manifest
    num_rows = int(manifest["num_examples"])
    try:
        written = int((workdir.read_array(layout.WRITTEN) == 1).sum())
        state = f"{written} of {num_rows} rows written"
    except WorkdirError:
        state = f"{layout.WRITTEN} is missing"
    if allow_partial:
        logging.warning(
            "%s is a PARTIAL store (%s); allow_partial is set, so only the written rows are used",
            workdir.location,
            state,
        )
        return manifest
    raise IncompleteWorkdirError(
        f"{workdir.location}/{layout.MANIFEST_JSON} says complete: "
        f"{manifest.get('complete', 'absent')} ({state}); finish the extraction (rerun the same "
        f"extract command, it resumes), or pass {flag} to use the written rows only"
    )


def overflow_threshold(num_rows: int) -> float:
    """The largest |x| whose float32 mean and variance over `num_rows` rows cannot overflow.

    The standardisation sums x and (x - mean)^2 in float32; with |x| <= t,
    |x - mean| <= 2t, so the sum of squares stays under num_rows * 4t^2.
    """
    return math.sqrt(_FLOAT32_MAX / (4.0 * max(int(num_rows), 1)))


@dataclasses.dataclass
class FeatureReport:
    """What `check_features` read: rows checked and the largest magnitude seen."""

    name: str
    rows_checked: int
    max_abs: float
    threshold: float


def missing_chunks_error(where: str, rows: list[int] | np.ndarray) -> FeatureError:
    """The error for written rows whose chunk files are missing (`where`: the array)."""
    return FeatureError(
        f"{where}: chunk files of written rows are missing (they would read as zeros): rows "
        f"{format_rows(rows)}; mark those rows written = 0 in {layout.WRITTEN} and rerun "
        "the extract command to recompute them"
    )


def raise_bad_values(where: str, bad: dict[str, list[tuple[int, int]]], limit: float) -> None:
    """Raises FeatureError for the (row, layer) pairs of bad["nonfinite"], then bad["huge"]."""
    for kind, what in (
        ("nonfinite", "NaN or Inf"),
        ("huge", f"values beyond ±{limit:.3g} (the float32 standardisation would overflow)"),
    ):
        if bad[kind]:
            rows = sorted({r for r, _ in bad[kind]})
            layers = sorted({lay for _, lay in bad[kind]})
            raise FeatureError(
                f"{where}: layer(s) {format_rows(layers, 'layers')} hold {what} in rows {format_rows(rows)}; "
                f"re-extract those rows (set them written = 0 in {layout.WRITTEN} and rerun "
                "the extract command) or leave them out"
            )


def scan_values(
    block: np.ndarray, scratch: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per (row, layer) of a [rows, layers, D] block: whether it holds NaN or Inf, and max |x|.

    Works on the bits (sign cleared, an integer max), in the store dtype: no
    float32 copy of the block, and fast for float16 / bfloat16, whose float
    arithmetic numpy emulates. The max of a non-finite entry is meaningless.
    `scratch`: a uint8 buffer of at least the block's bytes to work in, so
    that repeated scans do not fault in fresh memory each time.
    """
    dtype = block.dtype
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    bits = np.ascontiguousarray(block).view(unsigned)
    work = None
    if scratch is not None and scratch.nbytes >= bits.nbytes:
        work = scratch[: bits.nbytes].view(unsigned).reshape(bits.shape)
    top = np.bitwise_and(bits, unsigned(np.iinfo(unsigned).max >> 1), out=work).max(axis=-1)
    # Sign-cleared IEEE bits order like magnitudes; inf is the smallest non-finite pattern.
    infinite = np.asarray(np.inf, dtype).view(unsigned)
    nonfinite = top >= infinite
    magnitude = np.where(nonfinite, 0, top).astype(unsigned).view(dtype).astype(np.float32)
    return nonfinite, magnitude


def strict_open(workdir: Workdir, name: str) -> ts.TensorStore:
    """Opens an array so that a missing chunk is an error, not fill-value zeros."""
    if not workdir.array_exists(name):
        workdir.open_array(name)  # raises the usual "array is missing" error
    spec = workdir.array_spec(name)
    spec["fill_missing_data_reads"] = False
    return ts.open(spec, open=True, read=True).result()


def _missing_chunks(array: ts.TensorStore, start: int, stop: int, chunk: int) -> list[int]:
    """Row starts of the chunks in [start, stop) whose files are missing."""
    missing = []
    for at in range(start, stop, chunk):
        try:
            array[at : min(at + chunk, stop)].read().result()
        except ValueError as error:
            if "NOT_FOUND" not in str(error) and "missing" not in str(error):
                raise
            missing.append(at)
    return missing


def _open_with_written(
    workdir: Workdir, pooling: str, written: np.ndarray | None
) -> tuple[str, np.ndarray, ts.TensorStore]:
    """features/<pooling> opened strictly, with the bool [N] rows to check (default:
    arrays/written == 1); a row count that disagrees with the array is a FeatureError."""
    name = layout.features(pooling)
    if written is None:
        written = workdir.read_array(layout.WRITTEN) == 1
    written = np.asarray(written, bool).reshape(-1)
    array = strict_open(workdir, name)
    if written.shape != (int(array.shape[0]),):
        raise FeatureError(
            f"{workdir.location}/{name} has {array.shape[0]} rows but {layout.WRITTEN} has "
            f"{written.shape[0]}; the arrays of this workdir disagree, re-extract it"
        )
    return name, written, array


def check_features(
    workdir: Workdir | str,
    pooling: str,
    written: np.ndarray | None = None,
    threshold: float | None = None,
) -> FeatureReport:
    """Reads features/<pooling> of the written rows in row blocks and checks every value.

    Args:
      workdir: the workdir.
      pooling: the feature array's name under features/.
      written: bool [N], the rows to check (default: arrays/written == 1).
      threshold: largest allowed |x| (default: `overflow_threshold` of the
        number of written rows).

    Raises:
      FeatureError: a chunk holding written rows is missing, or a written row
        holds NaN, Inf or |x| > threshold; the message names the layer(s) and rows.
    """
    workdir = _as_workdir(workdir)
    name, written, array = _open_with_written(workdir, pooling, written)
    num_rows, num_layers, hidden = (int(n) for n in array.shape)
    limit = overflow_threshold(int(written.sum())) if threshold is None else float(threshold)
    chunk = int(array.chunk_layout.read_chunk.shape[0] or num_rows)
    # Whole chunks per block, so that each chunk file is read once.
    per_block = max(1, _BLOCK_VALUES // max(1, chunk * num_layers * hidden)) * chunk
    bad: dict[str, list[tuple[int, int]]] = {"nonfinite": [], "huge": []}
    missing: list[int] = []
    max_abs = 0.0
    for start in range(0, num_rows, per_block):
        stop = min(start + per_block, num_rows)
        keep = np.flatnonzero(written[start:stop])
        if keep.size == 0:
            continue  # unwritten rows may legitimately have no chunk yet
        try:
            block = np.asarray(array[start:stop].read().result())
        except ValueError as error:
            if "NOT_FOUND" not in str(error) and "missing" not in str(error):
                raise
            missing.extend(
                r
                for at in _missing_chunks(array, start, stop, chunk)
                for r in range(at, min(at + chunk, stop))
                if written[r]
            )
            continue
        x = block[keep].astype(np.float32)
        rows = keep + start
        magnitude = np.abs(x)
        finite = np.isfinite(x)
        for kind, hit in (
            ("nonfinite", ~finite.all(axis=2)),
            ("huge", (finite & (magnitude > limit)).any(axis=2)),
        ):
            r, layer = np.nonzero(hit)
            bad[kind].extend(zip(rows[r].tolist(), layer.tolist(), strict=True))
        if finite.any():
            max_abs = max(max_abs, float(magnitude[finite].max()))
    where = f"{workdir.location}/{name}"
    if missing:
        raise missing_chunks_error(where, missing)
    raise_bad_values(where, bad, limit)
    return FeatureReport(name, int(written.sum()), max_abs, limit)


def check_all_features(
    workdir: Workdir | str, poolings: list[str] | None = None, written: np.ndarray | None = None
) -> list[FeatureReport]:
    """`check_features` for every pooling (default: all in the manifest), before training."""
    workdir = _as_workdir(workdir)
    poolings = list(poolings or workdir.manifest()["poolings"])
    if written is None:
        written = workdir.read_array(layout.WRITTEN) == 1
    return [check_features(workdir, pooling, written) for pooling in poolings]


def _chunk_key(encoding: dict[str, Any], index: tuple[int, ...]) -> str | None:
    """The kvstore key of chunk `index` under a zarr v3 chunk_key_encoding; None if unknown."""
    name = encoding.get("name")
    configuration = encoding.get("configuration") or {}
    if name == "default":
        separator = configuration.get("separator", "/")
        return separator.join(["c", *map(str, index)])
    if name == "v2":
        return configuration.get("separator", ".").join(map(str, index))
    return None


def check_feature_chunks(
    workdir: Workdir | str, pooling: str, written: np.ndarray | None = None
) -> None:
    """Checks, without reading feature values, that every chunk holding written rows exists.

    The cheap part of `check_features`, for training to run on every pooling
    before it trains any: the array's metadata and the listing of its chunk
    keys (one kvstore list, no data read). The values (NaN, Inf, overflow)
    are checked as training loads them (probing.probes.data.FeatureReader).
    An array whose chunk key encoding this does not know gets the full read
    of `check_features` instead.

    Raises:
      FeatureError: written rows whose chunk file is missing, or a row count
        that disagrees with arrays/written.
    """
    workdir = _as_workdir(workdir)
    name, written, array = _open_with_written(workdir, pooling, written)
    metadata = workdir.read_json(f"{name}/{layout.ZARR_JSON}")
    encoding = metadata.get("chunk_key_encoding") or {"name": "default"}
    chunk = [int(n) for n in metadata["chunk_grid"]["configuration"]["chunk_shape"]]
    grid = [-(-int(n) // c) for n, c in zip(array.shape, chunk, strict=True)]
    if _chunk_key(encoding, (0,) * len(grid)) is None:
        check_features(workdir, pooling, written)
        return
    present = {
        bytes(key).decode()
        for key in ts.KvStore.open(workdir.kvstore(name)).result().list().result()
    }
    missing = []
    for row_chunk in np.unique(np.flatnonzero(written) // chunk[0]):
        start = int(row_chunk) * chunk[0]
        for rest in np.ndindex(*grid[1:]):
            if _chunk_key(encoding, (int(row_chunk), *rest)) not in present:
                rows = np.arange(start, min(start + chunk[0], written.size))
                missing.extend(rows[written[rows]].tolist())
                break
    if missing:
        raise missing_chunks_error(f"{workdir.location}/{name}", missing)
