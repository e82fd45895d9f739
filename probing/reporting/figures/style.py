"""The look every figure shares: the palette, line styles, rc settings and `save`.

Figures are drawn with matplotlib's Agg backend for print: saved as PNG (300
dpi) and SVG, sized for a two-column paper (7 in wide, 8-9 pt text), with the
Okabe-Ito colour-blind-safe palette for lines, viridis for heatmaps on one shared
scale per metric, and line styles and markers (LINE_STYLES, POOLING_MARKERS:
one meaning each) that still separate the series in grey-scale print.
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
# Colours of series (runs, poolings, layers): black is left to the reference lines
# (the strongest baseline, the chance loss), so a seventh run is not read as one.
SERIES_COLOURS = tuple(colour for colour in OKABE_ITO if colour != "#000000")
# One table of what every line style and marker means, the same in every figure,
# so a figure printed in grey reads without colour. Solid lines are always the
# measurement itself (a trained model's scores, a train loss); each other style
# has exactly one meaning; markers only ever encode the pooling.
LINE_STYLES: dict[str, Any] = {
    TRAINED: "-",
    UNTRAINED: (0, (4, 1.5)),
    TEXT_ONLY: (0, (4, 1.5, 1, 1.5)),
    IMAGE_ONLY: (0, (1, 1)),
    "control": (0, (1, 3)),
    "layer 0": (0, (8, 3)),
    "strongest baseline": (0, (8, 2, 1, 2)),
    "prompt baseline": (0, (6, 2, 1, 2, 1, 2)),
    "val loss": (0, (2, 1)),
    "chance loss": (0, (3, 1, 1, 1, 1, 1)),
    "best epoch": (0, (1, 1.5, 4, 1.5)),
    # The model's own yes/no answer (probing.reporting.behaviour), drawn thick.
    "model's answer": (0, (10, 2, 2, 2)),
}
# Poolings in probing.extraction.pooling.POOLINGS order; an unknown name (a
# user's own) gets a fallback marker that no pooling here uses.
POOLING_MARKERS = {
    "mean": "o",
    "max": "^",
    "last": "s",
    "last_prompt": "D",
    "first": "v",
    "image_mean": "P",
    "text_mean": "X",
    "index": "<",
}
OTHER_POOLING_MARKER = "*"
# Marker fills tell apart the series of one figure that share a line style and a
# pooling: two models, prompt forms or probe runs of one pooling (same colour
# luminance in grey otherwise; Okabe-Ito blue and green differ by 8% in grey).
# One meaning: the run minus its pooling (`series_key`), in order of appearance.
SERIES_FILLS = ("full", "none", "top", "bottom", "left", "right")
# Loss curves colour a layer by its role, so "best" looks the same in every panel.
ROLE_COLOURS = {"best": OKABE_ITO[2], "worst": OKABE_ITO[1]}
# ... and by line width: green and vermillion are one grey (luminance 106 vs 119 of 255),
# so in greyscale print the best layer's curves are the thick ones.
ROLE_WIDTHS = {"best": 1.9, "worst": 0.8}
OTHER_ROLE_WIDTH = 1.3
# Scores (accuracy, precision, recall, F1) lie in [0, 1]; every heatmap of a
# score uses this one colour scale, so panels and figures compare by colour.
SCORE_RANGE = (0.0, 1.0)
# At most about this many markers on one line (loss curves over hundreds of epochs).
MAX_MARKERS = 15
PAGE_WIDTH_IN = 7.0
# One column of a two-column paper.
COLUMN_WIDTH_IN = 3.4
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


def pooling_marker(pooling: str) -> str:
    """The marker of a pooling name ("index:3" is an "index" pooling)."""
    return POOLING_MARKERS.get(pooling.partition(":")[0], OTHER_POOLING_MARKER)


def series_key(run: ProbeRun) -> str:
    """What a run is besides its pooling: its series (model, prompt, ...) and, for a
    pooling's second probe run (probes/<pooling>-<name>/), that name."""
    series = run.series or run.label
    return f"{series} · {run.run_name[len(run.pooling) :]}" if run.run else series


def series_fills(runs: Sequence[ProbeRun]) -> dict[str, str]:
    """Run label -> marker fill (SERIES_FILLS), one per series_key in run order."""
    keys = list(dict.fromkeys(series_key(run) for run in runs))
    fill = {key: SERIES_FILLS[i % len(SERIES_FILLS)] for i, key in enumerate(keys)}
    return {run.label: fill[series_key(run)] for run in runs}


def series_style(run: ProbeRun, fills: dict[str, str] | None = None) -> tuple[Any, str, str]:
    """(line style, marker, marker fill) of a run: its variant's line style, its
    pooling's marker, its series' fill in `fills` (series_fills; default full)."""
    fill = (fills or {}).get(run.label, "full")
    return LINE_STYLES[run.variant], pooling_marker(run.pooling), fill


def run_colours(runs: Sequence[ProbeRun]) -> dict[str, str]:
    """One palette colour per run label, in run order; call it once per task so
    that each figure starts at the most distinct colours."""
    return {run.label: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, run in enumerate(runs)}


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
    style: tuple[Any, str],
    label,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> None:
    """A mean line with its CI band; the band is clipped to the metric's `bounds`,
    since with two or three seeds a seed interval can reach past a score's range.
    `style` is (line style, marker[, marker fill]), from `series_style` or the tables above."""
    linestyle, marker, fill = (*style, "full")[:3]
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)
    ax.plot(
        x,
        mean,
        color=colour,
        linestyle=linestyle,
        marker=marker,
        markersize=3.2 if fill != "full" else 2.8,  # a hollow marker needs room to show
        fillstyle=fill,
        markerfacecoloralt="white",  # half-filled markers: the other half white, not colour
        linewidth=1.4,
        label=label,
    )
