"""The report's figures as a registry: FIGURES lists every figure function in report order.

Each figure function has one signature, `(runs, context) -> list[Figure]`
(`FigureFunction`): it gets the runs of one task and a `FigureContext` (task
name, figures folder, extra loss-curve layers) and returns the figures it
saved, none when the runs lack what it shows. `build_report` calls every
entry once per task. To add a figure, write such a function (style.py has the
palette, rc settings, `save` and LINE_STYLES / POOLING_MARKERS, the one table
of what each line style and marker means: add a new kind of line there) and
append it to FIGURES.
"""

from __future__ import annotations

from probing.reporting.figures.context import FigureContext, FigureFunction
from probing.reporting.figures.curves import headline_curves, pooling_comparison
from probing.reporting.figures.heatmaps import category_heatmaps, prf_heatmaps
from probing.reporting.figures.losses import loss_curves

FIGURES: list[FigureFunction] = [
    headline_curves,
    prf_heatmaps,
    category_heatmaps,
    pooling_comparison,
    loss_curves,
]

__all__ = ["FIGURES", "FigureContext", "FigureFunction"]
