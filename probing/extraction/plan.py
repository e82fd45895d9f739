"""The work plan of one rank: rows cut into chunks, chunks into windows, windows into batches.

Rows are cut into fixed chunks of `extract.batch_size` rows (the chunk size of
every feature array), and chunks into fixed windows of `extract.bucket_window`
chunks. A rank owns every world-th window; the rows of a window are sorted by
token count and re-cut into forward batches (less padding), and the window's
chunks are written once all its rows are pooled. Windows are fixed, so a
resumed or a distributed run forms exactly the batches an uninterrupted single
run forms, and its features are bit-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from probing.extraction.settings import ExtractSettings


def plan_windows(
    num_rows: int, batch_size: int, window: int, rank: int, world: int
) -> list[list[np.ndarray]]:
    """The bucketing windows of rank `rank`, each a list of chunks (row ranges).

    Chunk c holds rows [c * batch_size, (c + 1) * batch_size); window w holds
    chunks [w * window, (w + 1) * window); rank r owns the windows with
    w % world == r. Windows, not chunks, are dealt out, so every rank forms
    exactly the batches a single process forms.
    """
    chunks = [
        np.arange(start, min(start + batch_size, num_rows))
        for start in range(0, num_rows, batch_size)
    ]
    windows = [chunks[i : i + window] for i in range(0, len(chunks), window)]
    return [w for index, w in enumerate(windows) if index % world == rank]


def forward_batches(
    window: Sequence[np.ndarray], batch_size: int, token_counts: np.ndarray | None
) -> list[np.ndarray]:
    """The rows of a window, sorted by token count (if given), cut into batches."""
    rows = np.concatenate(list(window))
    if token_counts is not None:
        rows = rows[np.argsort(token_counts[rows], kind="stable")]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


@dataclasses.dataclass(frozen=True)
class WorkPlan:
    """What one rank still has to compute."""

    windows: list[list[np.ndarray]]  # this rank's windows that hold unfinished rows
    batches: list[tuple[int, np.ndarray]]  # (index into windows, rows) per forward

    @property
    def num_rows(self) -> int:
        return int(sum(len(rows) for _, rows in self.batches))


def plan_work(
    num_rows: int,
    settings: ExtractSettings,
    rank: int,
    world: int,
    done: np.ndarray,
    token_counts: np.ndarray,
) -> WorkPlan:
    """The windows of `rank` with rows not yet `done` (written or rejected), and their batches."""
    windows = [
        w
        for w in plan_windows(num_rows, settings.batch_size, settings.bucket_window, rank, world)
        if not all(done[c].all() for c in w)
    ]
    # Rows of one image must stay together for prefix sharing (they are
    # consecutive in the task table); otherwise sort by length to cut padding.
    sort_key = None if settings.prefix_sharing else token_counts
    batches = [
        (i, rows)
        for i, w in enumerate(windows)
        for rows in forward_batches(w, settings.batch_size, sort_key)
    ]
    return WorkPlan(windows, batches)
