"""Heatmaps over layers: precision, recall and F1 per run, and F1 per category of the runs.

Cells are test-split means over seeds, coloured with viridis on the one 0-1
scale of scores (style.SCORE_RANGE), so colours compare across panels and
figures.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from probing.probes.metrics import PRF_METRICS
from probing.reporting.document import Figure
from probing.reporting.figures.context import FigureContext
from probing.reporting.figures.style import (
    COLUMN_WIDTH_IN,
    MAX_ANNOTATED_COLUMNS,
    PAGE_WIDTH_IN,
    RC,
    SCORE_RANGE,
    file_stem,
    save,
)
from probing.reporting.runs import ProbeRun
from probing.reporting.statistics import mean_and_ci
from probing.store.layout import SCORING_SPLIT


def _heatmap(ax, values: np.ndarray, vmin: float, vmax: float, annotate: bool):
    image = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    if annotate:
        midpoint = (vmin + vmax) / 2
        for (row, column), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(
                    column,
                    row,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=5.5,
                    color="black" if value > midpoint else "white",
                )
    ax.grid(False)
    return image


def prf_heatmaps(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Precision, recall and F1 (macro for multilabel) over layers x runs."""
    names = [
        m for m in PRF_METRICS[runs[0].label_kind] if any(r.has(SCORING_SPLIT, m) for r in runs)
    ]
    if not names:
        return []
    width = max(run.num_layers for run in runs)
    grids = []
    for name in names:
        grid = np.full((len(runs), width), np.nan)
        for row, run in enumerate(runs):
            if run.has(SCORING_SPLIT, name):
                grid[row, : run.num_layers] = mean_and_ci(run.values(SCORING_SPLIT, name))[0]
        grids.append(grid)
    # Scores share one 0-1 scale across panels and figures, so a colour means
    # the same F1 (or precision, recall) everywhere in the report.
    vmin, vmax = SCORE_RANGE
    annotate = width <= MAX_ANNOTATED_COLUMNS
    panel_height = 0.28 * len(runs) + 0.75
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            len(names),
            1,
            figsize=(PAGE_WIDTH_IN, panel_height * len(names) + 0.5),
            squeeze=False,
            layout="constrained",
        )
        for ax, name, grid in zip(axes[:, 0], names, grids, strict=True):
            image = _heatmap(ax, grid, vmin, vmax, annotate)
            ax.set_title(f"test {name}")
            ax.set_yticks(range(len(runs)), [run.label for run in runs])
            ax.set_xticks(range(width))
            ax.tick_params(axis="x", labelsize=6 if width > 20 else 7)
        axes[-1, 0].set_xlabel("layer (0 = embedding output)")
        fig.colorbar(image, ax=axes[:, 0], shrink=0.8, label="test score (mean over seeds)")
    caption = f"Task {context.task}: test {', '.join(names)} per layer (columns) and run (rows)."
    return [save(fig, context.figures_dir, file_stem(context.task, "precision_recall_f1"), caption)]


def category_order(runs: Sequence[ProbeRun]) -> tuple[list[str], np.ndarray]:
    """The per-category F1 metrics of `runs`, sorted by peak depth, and each one's peak.

    A category's peak is the relative depth of its best test F1 (mean over
    seeds), averaged over the runs that have it; relative depth, so that runs
    of different depths agree. Ties keep label order. Returns the metric names
    and their peaks, in that order.
    """
    names: list[str] = []
    for run in runs:
        names.extend(name for name in run.category_metrics("f1") if name not in names)
    peaks = []
    for name in names:
        depths = []
        for run in runs:
            if run.has(SCORING_SPLIT, name):
                mean = mean_and_ci(run.values(SCORING_SPLIT, name))[0]
                if np.isfinite(mean).any():
                    depths.append(float(run.relative_depth(int(np.nanargmax(mean)))))
        peaks.append(np.mean(depths) if depths else np.inf)
    order = np.argsort(peaks, kind="stable")
    return [names[i] for i in order], np.asarray(peaks)[order]


def category_heatmaps(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Test F1 per category (rows) and layer (columns), one panel per multilabel run.

    One figure for all runs, at one column's width for up to two runs, on the
    shared 0-1 scale; categories are sorted by the depth of their peak so the
    order reads as "found early" to "found late", and a tick marks each
    category's best layer in each panel.
    """
    runs = [run for run in runs if run.category_metrics("f1")]
    if not runs:
        return []
    names, _ = category_order(runs)
    # Rows shrink with many categories (80 COCO classes fit one column's height);
    # the labels shrink with them, down to a size print still resolves.
    row_in = 0.16 if len(names) <= 20 else 0.085
    label_size = 7 if len(names) <= 20 else 4.5
    width = COLUMN_WIDTH_IN if len(runs) <= 2 else PAGE_WIDTH_IN
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            1,
            len(runs),
            figsize=(width, row_in * len(names) + 1.4),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        for ax, run in zip(axes[0], runs, strict=True):
            grid = np.full((len(names), run.num_layers), np.nan)
            for row, name in enumerate(names):
                if run.has(SCORING_SPLIT, name):
                    grid[row] = mean_and_ci(run.values(SCORING_SPLIT, name))[0]
            image = _heatmap(ax, grid, *SCORE_RANGE, annotate=False)
            best = [(int(np.nanargmax(r)), i) for i, r in enumerate(grid) if np.isfinite(r).any()]
            if best:
                columns, rows = zip(*best, strict=True)
                ax.plot(columns, rows, "|", color="white", markersize=3, mew=0.8)
            # Wrapped to 85% of the panel's width (about 0.6 em per character),
            # so that neighbouring titles keep a gap; smaller type below an inch
            # per panel (the demo's nine runs), so that words still fit a line.
            panel_pt = width / len(runs) * 72
            size = 7 if panel_pt >= 72 else 6
            chars = max(10, int(0.85 * panel_pt / (0.6 * size)))
            ax.set_title(textwrap.fill(run.label, chars), fontsize=size)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_xlabel("layer")
        axes[0, 0].set_yticks(
            range(len(names)), [name.split("/", 1)[1] for name in names], fontsize=label_size
        )
        axes[0, 0].set_ylabel("category (by peak depth)")
        fig.colorbar(
            image, ax=axes[0], location="bottom", shrink=0.8, label="test F1 (mean over seeds)"
        )
    caption = (
        f"Task {context.task}: test F1 of every category per layer, one panel per run, "
        "on one 0-1 colour scale; categories sorted by the relative depth of their best layer "
        "(averaged over the runs), a white tick marks each category's best layer."
    )
    return [save(fig, context.figures_dir, file_stem(context.task, "category_f1"), caption)]
