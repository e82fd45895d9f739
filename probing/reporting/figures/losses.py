"""Probe loss curves per epoch for the best, the worst and the named layers of each run.

Best and worst are chosen on the selection split, like the results table's
best layer; the curves are means over seeds. Each panel marks the epoch the
best layer's probe was kept at (metrics.csv's best_epoch) and the chance loss,
the loss of a probe that ignores the features.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from probing.probes.data import load_labels
from probing.probes.metrics import BEST_EPOCH
from probing.reporting.document import Figure
from probing.reporting.figures.context import FigureContext
from probing.reporting.figures.style import (
    LINE_STYLES,
    MAX_MARKERS,
    OTHER_ROLE_WIDTH,
    PAGE_WIDTH_IN,
    RC,
    ROLE_COLOURS,
    ROLE_WIDTHS,
    SERIES_COLOURS,
    file_stem,
    pooling_marker,
    save,
)
from probing.reporting.runs import ProbeRun
from probing.reporting.statistics import mean_and_ci
from probing.store.layout import SCORING_SPLIT, SELECTION_SPLIT, SPLIT_NAMES
from probing.store.workdir import WorkdirError

# How `chance_loss` got its value, for the caption.
CHANCE_FROM_LABELS = "train prevalence"
CHANCE_LOG2 = "log 2"


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


def chance_loss(run: ProbeRun) -> tuple[float, str]:
    """The loss of a probe that ignores the features, and how it was found.

    Binary runs: log 2, the cross-entropy of predicting 1/2 (where a probe
    starts). Multilabel runs: the best constant predictor's loss, the entropy
    of each category's train prevalence averaged over the scored label entries
    as the trainer's loss averages them (probing.probes.kernels); log 2 when
    the workdir's labels cannot be read (the second value says which).
    """
    if run.label_kind != "multilabel":
        return math.log(2), CHANCE_LOG2
    try:
        data = load_labels(run.workdir)
    except (WorkdirError, OSError, ValueError, KeyError):
        return math.log(2), CHANCE_LOG2
    train = data.split == SPLIT_NAMES.index("train")
    labels, mask = data.labels[train], data.mask[train]
    scored = mask.sum(axis=0)
    prevalence = np.clip((labels * mask).sum(axis=0) / np.maximum(scored, 1), 1e-7, 1 - 1e-7)
    entropy = -(prevalence * np.log(prevalence) + (1 - prevalence) * np.log(1 - prevalence))
    return float((entropy * scored).sum() / max(scored.sum(), 1.0)), CHANCE_FROM_LABELS


def chosen_epoch(run: ProbeRun, layer: int) -> float | None:
    """The epoch the probe of `layer` was kept at (median over seeds), if recorded."""
    if not run.has(SELECTION_SPLIT, BEST_EPOCH):
        return None
    epochs = run.values(SELECTION_SPLIT, BEST_EPOCH)[layer]
    return float(np.nanmedian(epochs)) if np.isfinite(epochs).any() else None


def loss_curves(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Train (solid) and val (dashed) loss per epoch, mean over seeds, for the best,
    the worst and the named layers of each run; none if no run has curves."""
    extra_layers = context.extra_layers
    with_curves = [run for run in runs if run.curves]
    if not with_curves:
        return []
    chance_sources = set()
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
            roles = loss_curve_layers(run, extra_layers)
            chosen = sorted(roles.items())
            named_colours = iter(SERIES_COLOURS[3:])
            for layer, role in chosen:
                colour = ROLE_COLOURS.get(role) or next(named_colours, "grey")
                for split, linestyle in (("train", "-"), ("val", LINE_STYLES["val loss"])):
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
                        linewidth=ROLE_WIDTHS.get(role, OTHER_ROLE_WIDTH),
                        marker=pooling_marker(run.pooling),
                        markersize=2.2,
                        # A marker per epoch merges into a thick band over 300 epochs.
                        markevery=max(1, len(run.epochs) // MAX_MARKERS),
                        label=label,
                    )
            best_layer = next(layer for layer, role in roles.items() if role == "best")
            best_epoch = chosen_epoch(run, best_layer)
            if best_epoch is not None:
                ax.axvline(
                    best_epoch,
                    color=ROLE_COLOURS["best"],
                    linestyle=LINE_STYLES["best epoch"],
                    linewidth=0.9,
                )
            chance, chance_source = chance_loss(run)
            chance_sources.add(chance_source)
            ax.axhline(chance, color="black", linestyle=LINE_STYLES["chance loss"], linewidth=0.9)
            ax.set_title(textwrap.fill(run.label, 48))
            ax.set_xlabel("epoch")
            ax.set_ylabel("probe loss (cross-entropy)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            # "best" keeps the layer labels off the curves, which rise or fall by run.
            ax.legend(frameon=False, loc="best")
        for ax in axes.flat[len(with_curves) :]:
            ax.set_visible(False)
        fig.legend(
            [
                Line2D([], [], color="grey", linestyle="-"),
                Line2D([], [], color="grey", linestyle=LINE_STYLES["val loss"]),
                Line2D([], [], color="black", linestyle=LINE_STYLES["chance loss"], lw=0.9),
                Line2D([], [], color=ROLE_COLOURS["best"], linestyle=LINE_STYLES["best epoch"]),
            ],
            ["train loss", "val loss", "chance loss", "epoch kept for the best layer"],
            loc="outside lower center",
            ncol=2,
            frameon=False,
        )
    multilabel = with_curves[0].label_kind == "multilabel"
    chance_text = {
        CHANCE_LOG2: "log 2, the loss of predicting 1/2"
        + (" (the workdir's labels could not be read for the prevalence)" if multilabel else ""),
        CHANCE_FROM_LABELS: "the entropy of each category's train prevalence, averaged over "
        "scored label entries, the loss of the best constant prediction",
    }
    caption = (
        f"Task {context.task}: probe train (solid) and val (dashed) loss per epoch, mean over "
        "seeds, for the best and worst layer (chosen on val) of each run"
        + (f" and the named layer(s) {', '.join(map(str, extra_layers))}" if extra_layers else "")
        + ". The vertical line is the epoch the best layer's probe was kept at (median over "
        "seeds); the horizontal line the chance loss: "
        + "; ".join(chance_text[source] for source in sorted(chance_sources))
        + "."
    )
    return [save(fig, context.figures_dir, file_stem(context.task, "loss_curves"), caption)]
