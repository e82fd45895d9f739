"""Figures of the report, drawn with matplotlib's Agg backend for print.

Every figure is saved as PNG (300 dpi) and SVG, sized for a two-column paper
(7 in wide, 8-9 pt text), with the Okabe-Ito colour-blind-safe palette for
lines, viridis for heatmaps, and line styles and markers that still separate
the series in grey-scale print. Metrics are test-split means over seeds.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # Reports are rendered headless; never open a window.

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from probing.reporting.document import Figure
from probing.reporting.runs import (
    IMAGE_ONLY,
    TEXT_ONLY,
    TRAINED,
    UNTRAINED,
    ProbeRun,
)
from probing.reporting.statistics import mean_and_ci

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
SPLIT = "test"
PRF_METRICS = {
    "binary": ("precision", "recall", "f1"),
    "multilabel": ("macro_precision", "macro_recall", "macro_f1"),
}
# With more layers than this a cell is too narrow for its value at page width,
# so heatmaps drop the numbers and keep the colour scale.
MAX_ANNOTATED_COLUMNS = 12

_RC = {
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
    "svg.hashsalt": "probing",  # Deterministic SVG ids across runs.
}


def file_stem(*parts: str) -> str:
    """A file-name-safe stem from free-form parts (task names, model labels)."""
    joined = "_".join(parts)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", joined).strip("-") or "figure"


def run_colours(runs: Sequence[ProbeRun]) -> dict[str, str]:
    """One palette colour per run label, in run order; call it once per task so
    that each figure starts at the most distinct colours."""
    return {run.label: OKABE_ITO[i % len(OKABE_ITO)] for i, run in enumerate(runs)}


def _save(fig: plt.Figure, figures_dir: str, stem: str, caption: str) -> Figure:
    os.makedirs(figures_dir, exist_ok=True)
    png = os.path.join(figures_dir, stem + ".png")
    svg = os.path.join(figures_dir, stem + ".svg")
    fig.savefig(png, dpi=300)
    fig.savefig(svg, metadata={"Date": None})
    plt.close(fig)
    return Figure(png_path=png, svg_path=svg, caption=caption)


def _headline_stats(run: ProbeRun, metric: str) -> tuple[np.ndarray, ...]:
    mean, low, high = mean_and_ci(run.values(SPLIT, metric))
    layers = np.arange(run.num_layers)
    keep = ~np.isnan(mean)
    return layers[keep], mean[keep], low[keep], high[keep]


def _draw_series(
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
    since with two or three seeds the t interval can reach past a score's range."""
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


def plot_headline_curves(
    runs: Sequence[ProbeRun], colours: dict[str, str], figures_dir: str, task: str
) -> Figure:
    """Headline metric per layer with a 95% CI band, raw layer and relative depth.

    The same axes carry the baselines found in the runs: the shuffled-label
    control probe (dotted), the majority class (black dash-dot), each run's
    layer 0 (long dashes), and untrained or blind runs in their own line style;
    a second row shows the selectivity (metric minus control) when present.
    Baseline lines take the colour of their run; the legend names each kind once.
    """
    metric = runs[0].headline_metric
    control = f"control_{metric}"
    with_selectivity = any(run.has(SPLIT, "selectivity") for run in runs)
    rows = 2 if with_selectivity else 1
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            rows,
            2,
            figsize=(PAGE_WIDTH_IN, 2.5 * rows + 0.9),
            squeeze=False,
            sharey="row",
            layout="constrained",
        )
        majority_values = set()
        with_control = False
        for run in runs:
            colour = colours[run.label]
            layers, mean, low, high = _headline_stats(run, metric)
            for column, x in enumerate((layers, run.relative_depth(layers))):
                ax = axes[0, column]
                _draw_series(ax, x, mean, low, high, colour, run.variant, run.label)
                ax.axhline(mean[0], color=colour, linestyle=LAYER0_STYLE, linewidth=0.7, alpha=0.6)
                if run.has(SPLIT, control):
                    control_mean, _, _ = mean_and_ci(run.values(SPLIT, control))
                    ax.plot(
                        x,
                        control_mean[layers],
                        color=colour,
                        linestyle=CONTROL_STYLE,
                        linewidth=1.0,
                    )
                    with_control = True
                if with_selectivity and run.has(SPLIT, "selectivity"):
                    sel_mean, sel_low, sel_high = mean_and_ci(run.values(SPLIT, "selectivity"))
                    _draw_series(
                        axes[1, column],
                        x,
                        sel_mean[layers],
                        sel_low[layers],
                        sel_high[layers],
                        colour,
                        run.variant,
                        run.label,
                        bounds=(-1.0, 1.0),
                    )
            for name in (f"majority_{metric}", "majority_accuracy"):
                if run.has(SPLIT, name) and (name == f"majority_{metric}" or metric == "accuracy"):
                    majority_values.add(round(float(np.nanmean(run.values(SPLIT, name))), 6))
                    break
        for value in sorted(majority_values):
            for ax in axes[0]:
                ax.axhline(value, color="black", linestyle="-.", linewidth=0.9)
        seeds = sorted({len(run.seeds) for run in runs})
        axes[0, 0].set_ylabel(f"test {metric}")
        axes[0, 0].set_title("by layer index")
        axes[0, 1].set_title("by relative depth")
        for ax in axes[-1]:
            ax.set_xlabel("")
        axes[-1, 0].set_xlabel("layer (0 = embedding output)")
        axes[-1, 1].set_xlabel("relative depth (layer / last layer)")
        if with_selectivity:
            axes[1, 0].set_ylabel(f"selectivity ({metric} − control)")
            for ax in axes[1]:
                ax.axhline(0.0, color="grey", linewidth=0.6)
        for ax in axes[:, 0]:
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if with_control:
            handles.append(Line2D([], [], color="grey", linestyle=CONTROL_STYLE, linewidth=1.0))
            labels.append("shuffled-label control of each run")
        handles.append(Line2D([], [], color="grey", linestyle=LAYER0_STYLE, linewidth=0.7))
        labels.append("layer 0 of each run")
        if majority_values:
            handles.append(Line2D([], [], color="black", linestyle="-.", linewidth=0.9))
            labels.append("majority class")
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        fig.suptitle(
            f"Task {task}: test {metric} per layer, mean over {'/'.join(map(str, seeds))} "
            "seeds with 95% CI",
            fontsize=9,
        )
    caption = (
        f"Task {task}: test {metric} per layer for every model and pooling (band: 95% CI "
        "over seeds), by layer index (left) and relative depth (right), with the baselines "
        "the runs provide. Bands are clipped to the metric's range."
    )
    return _save(fig, figures_dir, file_stem(task, "headline_per_layer"), caption)


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


def plot_prf_heatmaps(runs: Sequence[ProbeRun], figures_dir: str, task: str) -> Figure | None:
    """Precision, recall and F1 (macro for multilabel) over layers x runs."""
    names = [m for m in PRF_METRICS[runs[0].label_kind] if any(r.has(SPLIT, m) for r in runs)]
    if not names:
        return None
    width = max(run.num_layers for run in runs)
    grids = []
    for name in names:
        grid = np.full((len(runs), width), np.nan)
        for row, run in enumerate(runs):
            if run.has(SPLIT, name):
                grid[row, : run.num_layers] = mean_and_ci(run.values(SPLIT, name))[0]
        grids.append(grid)
    vmin, vmax = _value_range(grids)
    annotate = width <= MAX_ANNOTATED_COLUMNS
    panel_height = 0.28 * len(runs) + 0.75
    with plt.rc_context(_RC):
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
    caption = f"Task {task}: test {', '.join(names)} per layer (columns) and run (rows)."
    return _save(fig, figures_dir, file_stem(task, "precision_recall_f1"), caption)


def plot_category_heatmap(run: ProbeRun, figures_dir: str) -> Figure | None:
    """Per-category test F1, categories x layers, for a multilabel run."""
    names = run.category_metrics("f1")
    if not names:
        return None
    grid = np.stack([mean_and_ci(run.values(SPLIT, name))[0] for name in names])
    vmin, vmax = _value_range([grid])
    with plt.rc_context(_RC):
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
    return _save(fig, figures_dir, file_stem(run.task, "category_f1", run.label), caption)


def _model_groups(runs: Sequence[ProbeRun]) -> dict[str, list[ProbeRun]]:
    groups: dict[str, list[ProbeRun]] = {}
    for run in runs:
        groups.setdefault(run.model_name, []).append(run)
    return {
        name: members
        for name, members in groups.items()
        if len({run.pooling for run in members}) > 1
    }


def plot_pooling_comparison(runs: Sequence[ProbeRun], figures_dir: str, task: str) -> Figure | None:
    """Headline metric per layer of each pooling, one panel per model; None if no model
    was probed with more than one pooling."""
    groups = _model_groups(runs)
    if not groups:
        return None
    metric = runs[0].headline_metric
    columns = min(len(groups), 2)
    rows = -(-len(groups) // columns)
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(
            rows,
            columns,
            figsize=(PAGE_WIDTH_IN, 2.4 * rows + 0.4),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        for ax, (model, members) in zip(axes.flat, groups.items(), strict=False):
            for index, run in enumerate(members):
                layers, mean, low, high = _headline_stats(run, metric)
                name = run.label.split(" · ", 1)[1]
                _draw_series(
                    ax,
                    layers,
                    mean,
                    low,
                    high,
                    OKABE_ITO[index % len(OKABE_ITO)],
                    TRAINED,
                    f"pooling {name}",
                )
            ax.set_title(model)
            ax.set_xlabel("layer (0 = embedding output)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.legend(frameon=False)
        for ax in axes.flat[len(groups) :]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel(f"test {metric}")
    caption = f"Task {task}: test {metric} per layer for each pooling of the same model."
    return _save(fig, figures_dir, file_stem(task, "pooling_comparison"), caption)


def loss_curve_layers(run: ProbeRun, extra_layers: Sequence[int] = ()) -> dict[int, str]:
    """Layers whose loss curves are drawn -> their role ("best", "worst", "chosen").

    Best and worst are chosen on the val split's headline metric (test if
    there is no val split), like the results table's best layer.
    """
    split = "val" if run.has("val", run.headline_metric) else SPLIT
    mean = mean_and_ci(run.values(split, run.headline_metric))[0]
    chosen = {int(np.nanargmax(mean)): "best", int(np.nanargmin(mean)): "worst"}
    for layer in extra_layers:
        if 0 <= layer < run.num_layers:
            chosen.setdefault(int(layer), "chosen")
    return chosen


def plot_loss_curves(
    runs: Sequence[ProbeRun], figures_dir: str, task: str, extra_layers: Sequence[int] = ()
) -> Figure | None:
    """Train (solid) and val (dashed) loss per epoch, mean over seeds, for the best,
    the worst and the named layers of each run; None if no run has curves."""
    with_curves = [run for run in runs if run.curves]
    if not with_curves:
        return None
    columns = min(len(with_curves), 2)
    rows = -(-len(with_curves) // columns)
    with plt.rc_context(_RC):
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
                    losses = np.nanmean(run.curves[split][layer], axis=0)
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
        f"Task {task}: probe train (solid) and val (dashed) loss per epoch, mean over seeds, "
        "for the best and worst layer (chosen on val) of each run"
        + (f" and the named layer(s) {', '.join(map(str, extra_layers))}" if extra_layers else "")
        + "."
    )
    return _save(fig, figures_dir, file_stem(task, "loss_curves"), caption)
