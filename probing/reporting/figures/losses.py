"""Probe loss curves per epoch for the best, the worst and the named layers of each run.

Best and worst are chosen on the selection split, like the results table's
best layer; the curves are means over seeds.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from probing.reporting.document import Figure
from probing.reporting.figures.context import FigureContext
from probing.reporting.figures.style import (
    OKABE_ITO,
    PAGE_WIDTH_IN,
    RC,
    ROLE_COLOURS,
    file_stem,
    save,
)
from probing.reporting.runs import ProbeRun
from probing.reporting.statistics import mean_and_ci
from probing.store.layout import SCORING_SPLIT, SELECTION_SPLIT


def loss_curve_layers(run: ProbeRun, extra_layers: Sequence[int] = ()) -> dict[int, str]:
    """Layers whose loss curves are drawn -> their role ("best", "worst", "chosen").

    Best and worst are chosen on the val split's headline metric (test if
    there is no val split), like the results table's best layer.
    """
    split = SELECTION_SPLIT if run.has(SELECTION_SPLIT, run.headline_metric) else SCORING_SPLIT
    mean = mean_and_ci(run.values(split, run.headline_metric))[0]
    chosen = {int(np.nanargmax(mean)): "best", int(np.nanargmin(mean)): "worst"}
    for layer in extra_layers:
        if 0 <= layer < run.num_layers:
            chosen.setdefault(int(layer), "chosen")
    return chosen


def loss_curves(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Train (solid) and val (dashed) loss per epoch, mean over seeds, for the best,
    the worst and the named layers of each run; none if no run has curves."""
    extra_layers = context.extra_layers
    with_curves = [run for run in runs if run.curves]
    if not with_curves:
        return []
    columns = min(len(with_curves), 2)
    rows = -(-len(with_curves) // columns)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            rows,
            columns,
            # One run fits a single paper column; more go across the page.
            figsize=(PAGE_WIDTH_IN / 2 * columns, 2.3 * rows + 0.3),
            squeeze=False,
            layout="constrained",
        )
        for ax, run in zip(axes.flat, with_curves, strict=False):
            chosen = sorted(loss_curve_layers(run, extra_layers).items())
            named_colours = iter(OKABE_ITO[3:])
            for layer, role in chosen:
                colour = ROLE_COLOURS.get(role) or next(named_colours, "grey")
                for split, linestyle in (("train", "-"), ("val", "--")):
                    if split not in run.curves:
                        continue
                    # Seeds that stopped early have NaN after their last epoch; an
                    # epoch no seed reached stays NaN (a gap), without numpy's warning.
                    curves = run.curves[split][layer]
                    reached = np.isfinite(curves).sum(axis=0)
                    losses = np.where(
                        reached > 0,
                        np.nansum(curves, axis=0) / np.maximum(reached, 1),
                        np.nan,
                    )
                    label = f"layer {layer} ({role})" if split == "train" else None
                    ax.plot(
                        run.epochs,
                        losses,
                        color=colour,
                        linestyle=linestyle,
                        linewidth=1.3,
                        marker="o",
                        markersize=2.2,
                        label=label,
                    )
            ax.set_title(textwrap.fill(run.label, 48))
            ax.set_xlabel("epoch")
            ax.set_ylabel("probe loss (cross-entropy)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            # "best" keeps the layer labels off the curves, which rise or fall by run.
            ax.legend(frameon=False, loc="best")
        for ax in axes.flat[len(with_curves) :]:
            ax.set_visible(False)
        fig.legend(
            [Line2D([], [], color="grey", linestyle=style) for style in ("-", "--")],
            ["train loss", "val loss"],
            loc="outside lower center",
            ncol=2,
            frameon=False,
        )
    caption = (
        f"Task {context.task}: probe train (solid) and val (dashed) loss per epoch, mean over "
        "seeds, for the best and worst layer (chosen on val) of each run"
        + (f" and the named layer(s) {', '.join(map(str, extra_layers))}" if extra_layers else "")
        + "."
    )
    return [save(fig, context.figures_dir, file_stem(context.task, "loss_curves"), caption)]
