"""Per-layer curves of the headline metric: every run of a task, and each model's poolings.

Metrics are test-split means over seeds with their 95% CI band: the cluster
bootstrap over test images of summary.json (the seed interval, labelled so,
for runs trained without it); for runs trained with folds, means over folds
too with the folds x bootstrap band, named so in the caption.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from probing.probes.metrics import SELECTIVITY, control_metric, majority_metric
from probing.reporting.behaviour import model_answer
from probing.reporting.document import Figure
from probing.reporting.figures.context import FigureContext
from probing.reporting.figures.style import (
    LINE_STYLES,
    PAGE_WIDTH_IN,
    RC,
    SERIES_COLOURS,
    draw_series,
    file_stem,
    headline_stats,
    run_colours,
    save,
    series_fills,
    series_style,
)
from probing.reporting.runs import ProbeRun
from probing.reporting.statistics import (
    interval_label,
    layer_interval,
    layers_not_above_baseline,
    mean_and_ci,
    strongest_baseline,
)
from probing.store.layout import SCORING_SPLIT

# The model's own yes/no answer (probing.reporting.behaviour): thick and faint,
# its dash pattern from the style table.
ANSWER_STYLE = {"linestyle": LINE_STYLES["model's answer"], "linewidth": 2.2, "alpha": 0.45}


def headline_curves(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Headline metric per layer with a 95% CI band, raw layer and relative depth.

    The same axes carry the baselines found in the runs: the shuffled-label
    control probe (dotted), the strongest trivial baseline of summary.json
    (black dash-dot; the majority class for runs without one), each run's
    layer 0 (long dashes), the model's own yes/no answer on caption tasks
    (thick faint line), and untrained or blind runs in their own line style;
    layers whose interval does not lie above the strongest baseline get a
    cross. A second row shows the selectivity (metric minus control) when
    present. Baseline lines take the colour of their run; the legend names
    each kind once.
    """
    task = context.task
    colours = run_colours(runs)
    fills = series_fills(runs)
    metric = runs[0].headline_metric
    control = control_metric(metric)
    majority = majority_metric(metric)
    with_selectivity = any(run.has(SCORING_SPLIT, SELECTIVITY) for run in runs)
    rows = 2 if with_selectivity else 1
    # With one depth for all runs the relative-depth panel would repeat the
    # layer-index one; it becomes a second x axis on top instead.
    one_depth = len({run.num_layers for run in runs}) == 1
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            rows,
            1 if one_depth else 2,
            figsize=(PAGE_WIDTH_IN, 2.5 * rows + 0.9),
            squeeze=False,
            sharey="row",
            layout="constrained",
        )
        baseline_values = set()
        sources = set()
        with_control = with_flags = False
        with_baseline = False
        answered: set[str] = set()  # one answer line per workdir, in its first run's colour
        for run in runs:
            colour = colours[run.label]
            answer = None
            if metric == "accuracy" and run.workdir not in answered:
                answer = model_answer(run)
                if answer is not None:
                    answered.add(run.workdir)
            layers, mean, low, high, source = headline_stats(run, metric)
            sources.add(source)
            flagged = np.isin(layers, layers_not_above_baseline(run, metric))
            with_flags = with_flags or bool(flagged.any())
            xs = (layers,) if one_depth else (layers, run.relative_depth(layers))
            for column, x in enumerate(xs):
                ax = axes[0, column]
                draw_series(ax, x, mean, low, high, colour, series_style(run, fills), run.label)
                ax.plot(x[flagged], mean[flagged], "x", color=colour, markersize=5, mew=1.0)
                ax.axhline(
                    mean[0],
                    color=colour,
                    linestyle=LINE_STYLES["layer 0"],
                    linewidth=0.7,
                    alpha=0.6,
                )
                if answer is not None:
                    ax.axhline(answer.accuracy, color=colour, **ANSWER_STYLE)
                baseline = run.prompt_baseline
                if baseline is not None and metric in baseline.metrics:
                    ax.axhline(
                        baseline.metrics[metric],
                        color=colour,
                        linestyle=LINE_STYLES["prompt baseline"],
                        linewidth=1.1,
                    )
                    with_baseline = True
                if run.has(SCORING_SPLIT, control):
                    control_mean, _, _ = mean_and_ci(run.values(SCORING_SPLIT, control))
                    ax.plot(
                        x,
                        control_mean[layers],
                        color=colour,
                        linestyle=LINE_STYLES["control"],
                        linewidth=1.0,
                    )
                    with_control = True
                if with_selectivity and run.has(SCORING_SPLIT, SELECTIVITY):
                    sel_mean, sel_low, sel_high, sel_source = layer_interval(run, SELECTIVITY)
                    sources.add(sel_source)
                    draw_series(
                        axes[1, column],
                        x,
                        sel_mean[layers],
                        sel_low[layers],
                        sel_high[layers],
                        colour,
                        series_style(run, fills),
                        run.label,
                        bounds=(-1.0, 1.0),
                    )
            strongest = strongest_baseline(run, metric)
            if strongest is not None:
                baseline_values.add((strongest[0], round(strongest[1], 6)))
            elif run.has(SCORING_SPLIT, majority):
                value = float(np.nanmean(run.values(SCORING_SPLIT, majority)))
                baseline_values.add(("majority class", round(value, 6)))
        for _, value in sorted(baseline_values):
            for ax in axes[0]:
                ax.axhline(
                    value, color="black", linestyle=LINE_STYLES["strongest baseline"], linewidth=0.9
                )
        seeds = sorted({len(run.seeds) for run in runs})
        # Runs with folds average over their folds too (probing.reporting.runs).
        folds = sorted({int(run.folds.size) for run in runs if run.has_folds})
        over_folds = f" × {'/'.join(map(str, folds))} folds" if folds else ""
        axes[0, 0].set_ylabel(f"test {metric}")
        axes[-1, 0].set_xlabel("layer (0 = embedding output)")
        if one_depth:
            last = max(runs[0].num_layers - 1, 1)
            depth_axis = axes[0, 0].secondary_xaxis(
                "top", functions=(lambda x: x / last, lambda d: d * last)
            )
            depth_axis.set_xlabel("relative depth (layer / last layer)")
        else:
            axes[0, 0].set_title("by layer index")
            axes[0, 1].set_title("by relative depth")
            axes[-1, 1].set_xlabel("relative depth (layer / last layer)")
        if with_selectivity:
            axes[1, 0].set_ylabel(f"selectivity ({metric} − control)")
            for ax in axes[1]:
                ax.axhline(0.0, color="grey", linewidth=0.6)
        for ax in axes[:, 0]:
            ax.xaxis.get_major_locator().set_params(integer=True)
        handles, labels = axes[0, 0].get_legend_handles_labels()
        if with_control:
            handles.append(
                Line2D([], [], color="grey", linestyle=LINE_STYLES["control"], linewidth=1.0)
            )
            labels.append("shuffled-label control of each run")
        handles.append(
            Line2D([], [], color="grey", linestyle=LINE_STYLES["layer 0"], linewidth=0.7)
        )
        labels.append("layer 0 of each run")
        if answered:
            handles.append(Line2D([], [], color="grey", **ANSWER_STYLE))
            labels.append("the model's own yes/no answer (colour of its first run)")
        if with_baseline:
            handles.append(
                Line2D(
                    [], [], color="grey", linestyle=LINE_STYLES["prompt baseline"], linewidth=1.1
                )
            )
            labels.append("text-only baseline of each run (prompt text alone)")
        if baseline_values:
            names = sorted({name.replace("_", "-") for name, _ in baseline_values})
            handles.append(
                Line2D([], [], color="black", linestyle=LINE_STYLES["strongest baseline"], lw=0.9)
            )
            labels.append(f"strongest trivial baseline ({', '.join(names)})")
        if with_flags:
            handles.append(Line2D([], [], color="grey", marker="x", linestyle="none"))
            labels.append("layer not above the strongest baseline (CI low ≤ baseline)")
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        head = (
            f"Task {task}: test {metric} per layer, mean over {'/'.join(map(str, seeds))} "
            f"seeds{over_folds}"
        )
        title = f"{head}; {interval_label(sources)}"
        # About 95 characters of 9 pt text fill the page width; a longer title (a
        # category form, folds) breaks before the interval's name (kept whole, as the
        # legend and caption name it) instead of running past the figure's edges.
        if len(title) > 95:
            title = textwrap.fill(head, 95) + ";\n" + interval_label(sources)
        fig.suptitle(title, fontsize=9)
    caption = (
        f"Task {task}: test {metric} per layer for every model and pooling (band: "
        f"{interval_label(sources)}), by layer index and relative depth (one panel with a top axis "
        "when all runs have the same depth), "
        "with the baselines the runs provide; a cross marks a layer whose interval does not "
        "lie above the strongest trivial baseline. Bands are clipped to the metric's range."
    )
    return [save(fig, context.figures_dir, file_stem(task, "headline_per_layer"), caption)]


def _model_groups(runs: Sequence[ProbeRun]) -> dict[str, list[ProbeRun]]:
    groups: dict[str, list[ProbeRun]] = {}
    for run in runs:
        groups.setdefault(run.series or run.model_name, []).append(run)
    return {
        name: members
        for name, members in groups.items()
        if len({run.pooling for run in members}) > 1
    }


def pooling_comparison(runs: Sequence[ProbeRun], context: FigureContext) -> list[Figure]:
    """Headline metric per layer of each pooling, one panel per model; none if no model
    was probed with more than one pooling."""
    groups = _model_groups(runs)
    if not groups:
        return []
    metric = runs[0].headline_metric
    fills = series_fills(runs)
    # One colour per pooling (run name) in every panel, so "mean" is one colour throughout.
    names = list(dict.fromkeys(run.run_name for members in groups.values() for run in members))
    colours = {name: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, name in enumerate(names)}
    columns = min(len(groups), 2)
    rows = -(-len(groups) // columns)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(
            rows,
            columns,
            figsize=(PAGE_WIDTH_IN, 2.4 * rows + 0.4),
            squeeze=False,
            sharey=True,
            layout="constrained",
        )
        sources = set()
        for ax, (model, members) in zip(axes.flat, groups.items(), strict=False):
            for run in members:
                layers, mean, low, high, source = headline_stats(run, metric)
                sources.add(source)
                # A pooling's second probe run is named by its folder (mean-seeds5).
                name = run.run_name
                draw_series(
                    ax,
                    layers,
                    mean,
                    low,
                    high,
                    colours[name],
                    series_style(run, fills),
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
    caption = (
        f"Task {context.task}: test {metric} per layer for each pooling of the same model "
        f"(band: {interval_label(sources)})."
    )
    return [save(fig, context.figures_dir, file_stem(context.task, "pooling_comparison"), caption)]
