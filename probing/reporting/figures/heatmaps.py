"""Heatmaps over layers: precision, recall and F1 per run, and F1 per category of a run.

Cells are test-split means over seeds, coloured with viridis.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np

from probing.probes.metrics import PRF_METRICS
from probing.reporting.document import Figure
from probing.reporting.figures.context import FigureContext
from probing.reporting.figures.style import (
    MAX_ANNOTATED_COLUMNS,
    PAGE_WIDTH_IN,
    RC,
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


def _value_range(arrays: Sequence[np.ndarray]) -> tuple[float, float]:
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays] + [np.zeros(0)])
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.01, high + 0.01)


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
    vmin, vmax = _value_range(grids)
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


def _category_heatmap(run: ProbeRun, figures_dir: str) -> Figure | None:
    """Per-category test F1, categories x layers, for a multilabel run."""
    names = run.category_metrics("f1")
    if not names:
        return None
    grid = np.stack([mean_and_ci(run.values(SCORING_SPLIT, name))[0] for name in names])
    vmin, vmax = _value_range([grid])
    with plt.rc_context(RC):
        fig, ax = plt.subplots(
            figsize=(PAGE_WIDTH_IN, 0.2 * len(names) + 1.3), layout="constrained"
        )
        image = _heatmap(ax, grid, vmin, vmax, run.num_layers <= MAX_ANNOTATED_COLUMNS)
        ax.set_yticks(range(len(names)), [name.split("/", 1)[1] for name in names])
        ax.set_xticks(range(run.num_layers))
        ax.set_xlabel("layer (0 = embedding output)")
        ax.set_ylabel("category")
        ax.set_title(f"{run.label}, task {run.task}: test F1 per category")
        fig.colorbar(image, ax=ax, label="test F1 (mean over seeds)")
    caption = f"Task {run.task}, {run.label}: test F1 of every category per layer."
    return save(fig, figures_dir, file_stem(run.task, "category_f1", run.label), caption)


def category_heatmaps(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """One per-category F1 heatmap per multilabel run, in run order."""
    drawn = (_category_heatmap(run, context.figures_dir) for run in runs)
    return [figure for figure in drawn if figure is not None]
