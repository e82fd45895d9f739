"""The look every figure shares: the palette, line styles, rc settings and `save`.

Figures are drawn with matplotlib's Agg backend for print: saved as PNG (300
dpi) and SVG, sized for a two-column paper (7 in wide, 8-9 pt text), with the
Okabe-Ito colour-blind-safe palette for lines, viridis for heatmaps, and line
styles and markers that still separate the series in grey-scale print.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Reports are rendered headless; never open a window.

import matplotlib.pyplot as plt
import numpy as np

from probing.reporting.document import Figure
from probing.reporting.runs import (
    IMAGE_ONLY,
    TEXT_ONLY,
    TRAINED,
    UNTRAINED,
    ProbeRun,
)
from probing.reporting.statistics import layer_interval

# Okabe & Ito (2008), reordered so the first colours are the most distinct on
# white; yellow goes last because thin yellow lines are hard to see in print.
OKABE_ITO = (
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#009E73",  # bluish green
    "#E69F00",  # orange
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow
)
VARIANT_STYLE = {
    TRAINED: ("-", "o"),
    UNTRAINED: ("--", "s"),
    TEXT_ONLY: ("-.", "^"),
    IMAGE_ONLY: (":", "v"),
}
# Loss curves colour a layer by its role, so "best" looks the same in every panel.
ROLE_COLOURS = {"best": OKABE_ITO[2], "worst": OKABE_ITO[1]}
CONTROL_STYLE = (0, (1, 1.5))
LAYER0_STYLE = (0, (6, 3))
PAGE_WIDTH_IN = 7.0
# With more layers than this a cell is too narrow for its value at page width,
# so heatmaps drop the numbers and keep the colour scale.
MAX_ANNOTATED_COLUMNS = 12

RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "svg.fonttype": "none",  # Text stays text in the SVG, editable for a paper.
}


def file_stem(*parts: str) -> str:
    """A file-name-safe stem from free-form parts (task names, model labels)."""
    joined = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", joined).strip("-") or "figure"


def run_colours(runs: Sequence[ProbeRun]) -> dict[str, str]:
    """One palette colour per run label, in run order; call it once per task so
    that each figure starts at the most distinct colours."""
    return {run.label: OKABE_ITO[i % len(OKABE_ITO)] for i, run in enumerate(runs)}


def save(fig: plt.Figure, figures_dir: str, stem: str, caption: str) -> Figure:
    """Saves `fig` as <stem>.png and <stem>.svg in `figures_dir` and closes it."""
    os.makedirs(figures_dir, exist_ok=True)
    png = os.path.join(figures_dir, stem + ".png")
    svg = os.path.join(figures_dir, stem + ".svg")
    fig.savefig(png, dpi=300)
    # The salt must be set when the SVG is written (figures are saved after
    # their rc_context closes): it makes the SVG's element ids, and so its
    # bytes, the same on every run.
    with plt.rc_context({"svg.hashsalt": "probing"}):
        fig.savefig(svg, metadata={"Date": None})
    plt.close(fig)
    return Figure(png_path=png, svg_path=svg, caption=caption)


def headline_stats(run: ProbeRun, metric: str) -> tuple[Any, ...]:
    """Probed layers, the test mean, CI low and CI high of `metric` there, and the
    interval's source (statistics.BOOTSTRAP or statistics.SEEDS)."""
    mean, low, high, source = layer_interval(run, metric)
    layers = np.arange(run.num_layers)
    keep = ~np.isnan(mean)
    return layers[keep], mean[keep], low[keep], high[keep], source


def draw_series(
    ax,
    x,
    mean,
    low,
    high,
    colour,
    variant,
    label,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> None:
    """A mean line with its CI band; the band is clipped to the metric's `bounds`,
    since with two or three seeds a seed interval can reach past a score's range."""
    linestyle, marker = VARIANT_STYLE[variant]
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
    ax.plot(
        x,
        mean,
        color=colour,
        linestyle=linestyle,
        marker=marker,
        markersize=2.8,
        linewidth=1.4,
        label=label,
    )
