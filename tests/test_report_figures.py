"""Figures for print, checked on the matplotlib objects the figure functions draw.

Each figure module's `save` is wrapped so the test sees the Figure before it is
closed; the runs come from fabricated workdirs (probing.testing.probed).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import types

import matplotlib.pyplot as plt
import numpy as np
import pytest

from probing.reporting.figures import context as context_module
from probing.reporting.figures import curves, heatmaps, losses, style
from probing.reporting.runs import load_runs
from probing.testing.probed import write_probed_workdir


@pytest.fixture
def drawn(monkeypatch):
    """stem -> the matplotlib Figure each figure function saved."""
    figures: dict[str, plt.Figure] = {}

    def keep(fig, figures_dir, stem, caption):
        figures[stem] = fig
        return style.Figure(png_path=stem + ".png", svg_path=stem + ".svg", caption=caption)

    for module in (curves, heatmaps, losses):
        monkeypatch.setattr(module, "save", keep)
    yield figures
    plt.close("all")


def _runs(tmp_path, task, layer_counts=(6,), poolings=("mean", "last")):
    workdirs = []
    for index, num_layers in enumerate(layer_counts):
        location = str(tmp_path / f"{task}_{index}")
        write_probed_workdir(
            location,
            model_id=f"tiny:model{index}",
            task=task,
            num_layers=num_layers,
            poolings=poolings,
            num_seeds=2,
        )
        workdirs.append(location)
    return load_runs(workdirs)


def _context(tmp_path, task):
    return context_module.FigureContext(task=task, figures_dir=str(tmp_path / "figures"))


def test_line_styles_and_markers_have_one_meaning_each():
    styles = [repr(s) for s in style.LINE_STYLES.values()]
    assert len(set(styles)) == len(styles)
    markers = [*style.POOLING_MARKERS.values(), style.OTHER_POOLING_MARKER]
    assert len(set(markers)) == len(markers)


def test_poolings_differ_by_more_than_colour(tmp_path, drawn):
    runs = _runs(tmp_path, "caption")
    curves.pooling_comparison(runs, _context(tmp_path, "caption"))
    (ax,) = drawn["caption_pooling_comparison"].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    mean, last = lines["pooling mean"], lines["pooling last"]
    assert mean.get_marker() != last.get_marker()
    assert mean.get_marker() == style.POOLING_MARKERS["mean"]
    # The same pooling has the same marker in the headline figure.
    curves.headline_curves(runs, _context(tmp_path, "caption"))
    headline = drawn["caption_headline_per_layer"].axes[0]
    markers = {line.get_label(): line.get_marker() for line in headline.get_lines()}
    assert markers["tiny:model0 · last"] == style.POOLING_MARKERS["last"]


def _second_probe_run(location, pooling="mean", name="seeds5"):
    """A copy of probes/<pooling>/ as another probe run of it, probes/<pooling>-<name>/."""
    folder = os.path.join(location, "probes")
    shutil.copytree(os.path.join(folder, pooling), os.path.join(folder, f"{pooling}-{name}"))
    config = os.path.join(folder, f"{pooling}-{name}", "probe_config.json")
    recorded = {}
    if os.path.exists(config):
        with open(config) as f:
            recorded = json.load(f)
    recorded["run"] = {"name": f"{pooling}-{name}", "pooling": pooling}
    with open(config, "w") as f:
        json.dump(recorded, f)


def test_runs_read_apart_in_greyscale(tmp_path, drawn):
    """Every two runs of a figure differ in line style, marker or marker fill, not in
    colour only: two models with the same pooling, and two probe runs of one pooling."""
    for index in range(2):
        write_probed_workdir(
            str(tmp_path / f"w{index}"), model_id=f"tiny:model{index}", poolings=("mean", "last")
        )
    # A second run of "last": it sorts between last and mean, shifting mean's place.
    _second_probe_run(str(tmp_path / "w0"), pooling="last")
    runs = load_runs([str(tmp_path / "w0"), str(tmp_path / "w1")])
    assert len(runs) == 5
    context = _context(tmp_path, "caption")
    curves.headline_curves(runs, context)
    curves.pooling_comparison(runs, context)
    for stem in ("caption_headline_per_layer", "caption_pooling_comparison"):
        for ax in drawn[stem].axes:
            looks = {
                line.get_label(): (
                    repr(line.get_linestyle()),
                    line.get_marker(),
                    line.get_fillstyle(),
                )
                for line in ax.get_lines()
                if not line.get_label().startswith("_")
            }
            assert len(set(looks.values())) == len(looks), (stem, looks)
    headline = drawn["caption_headline_per_layer"].axes[0]
    assert {line.get_label() for line in headline.get_lines()} >= {run.label for run in runs}
    # A pooling has one colour in every panel of the pooling figure.
    colours = {}
    for ax in drawn["caption_pooling_comparison"].axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert all(len(seen) == 1 for seen in colours.values()), colours
    panel = drawn["caption_pooling_comparison"].axes[0]
    assert sorted(line.get_label() for line in panel.get_lines()) == [
        "pooling last",
        "pooling last-seeds5",
        "pooling mean",
    ]


def test_depth_panel_drawn_once_when_depths_match(tmp_path, drawn):
    context = _context(tmp_path, "caption")
    curves.headline_curves(_runs(tmp_path / "same", "caption", (6, 6)), context)
    same = drawn.pop("caption_headline_per_layer")
    panels = [ax for ax in same.axes if ax.get_lines()]
    assert len(panels) == 2  # the metric and the selectivity row, one column
    (depth_axis,) = panels[0].child_axes  # relative depth as a top axis instead
    assert "relative depth" in depth_axis.get_xlabel()
    curves.headline_curves(_runs(tmp_path / "mixed", "caption", (6, 9)), context)
    mixed = drawn.pop("caption_headline_per_layer")
    assert len([ax for ax in mixed.axes if ax.get_lines()]) == 4


def test_score_heatmaps_share_one_colour_scale(tmp_path, drawn):
    runs = _runs(tmp_path, "category", (5, 7))
    context = _context(tmp_path, "category")
    heatmaps.prf_heatmaps(runs, context)
    heatmaps.category_heatmaps(runs, context)
    images = [
        image
        for stem in ("category_precision_recall_f1", "category_category_f1")
        for ax in drawn[stem].axes
        for image in ax.get_images()
    ]
    assert len(images) == 3 + 4  # precision, recall, F1; a category panel per run (2 x 2)
    # The fabricated scores lie inside (0.2, 0.95), so a scale fitted to the data
    # would differ from panel to panel.
    assert {image.get_clim() for image in images} == {style.SCORE_RANGE}


def test_category_figure_is_one_column_sorted_by_peak(tmp_path, drawn):
    categories = [f"class{i:02d}" for i in range(80)]
    runs = []
    for index in range(2):
        location = str(tmp_path / f"run{index}")
        write_probed_workdir(
            location,
            model_id=f"tiny:m{index}",
            task="category",
            num_layers=8,
            categories=categories,
        )
        runs.extend(load_runs([location]))
    # Give every category its own peak layer, in an order unrelated to its name.
    rng = np.random.default_rng(0)
    peaks = rng.integers(0, 8, size=len(categories))
    for run in runs:
        for category, peak in zip(categories, peaks, strict=True):
            key = ("test", f"f1/{category}")
            profile = 0.8 - 0.05 * np.abs(np.arange(8) - peak)
            run.metrics[key] = np.repeat(profile[:, None], run.metrics[key].shape[1], axis=1)
    heatmaps.category_heatmaps(runs, _context(tmp_path, "category"))
    assert list(drawn) == ["category_category_f1"]  # one figure, runs as panels
    fig = drawn["category_category_f1"]
    width, height = fig.get_size_inches()
    assert width <= 3.5 and height <= 9.0
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 2
    shown = [label.get_text() for label in panels[0].get_yticklabels()]
    expected = [categories[i] for i in np.argsort(peaks, kind="stable")]
    assert shown == expected


def _rules(ax):
    """(x of each vertical rule, y of each horizontal rule) drawn with axvline/axhline."""
    vertical, horizontal = [], []
    for line in ax.get_lines():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if len(x) == 2 and x[0] == x[1] and list(y) == [0, 1]:
            vertical.append(float(x[0]))
        elif len(y) == 2 and y[0] == y[1] and list(x) == [0, 1]:
            horizontal.append(float(y[0]))
    return vertical, horizontal


def test_loss_curves_mark_kept_epoch_and_chance(tmp_path, drawn):
    runs = _runs(tmp_path, "caption")
    for run in runs:
        # A kept epoch that differs by layer and seed, so the best layer's shows.
        grid = run.metrics[("val", "best_epoch")]
        grid[:] = np.arange(grid.shape[0])[:, None] + np.arange(grid.shape[1])[None, :] + 1
    losses.loss_curves(runs, _context(tmp_path, "caption"))
    fig = drawn["caption_loss_curves"]
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_lines()]
    assert len(panels) == len(runs)
    for ax, run in zip(panels, runs, strict=True):
        best = int(np.nanargmax(np.nanmean(run.values("val", run.headline_metric), axis=1)))
        vertical, horizontal = _rules(ax)
        assert vertical == [float(np.median(run.values("val", "best_epoch")[best]))]
        # Best and worst layer read apart without colour: the best layer's lines are thicker.
        widths = {
            line.get_label(): line.get_linewidth()
            for line in ax.get_lines()
            if line.get_label().startswith("layer")
        }
        best_width = next(w for label, w in widths.items() if "(best)" in label)
        worst_width = next(w for label, w in widths.items() if "(worst)" in label)
        assert best_width > 1.5 * worst_width
        assert horizontal == [pytest.approx(np.log(2))]


def test_multilabel_chance_loss_is_the_train_prevalence_entropy(tmp_path, drawn):
    location = str(tmp_path / "labelled")
    workdir = write_probed_workdir(location, task="category", num_layers=4, poolings=("mean",))
    rows = int(workdir.manifest()["num_examples"])
    rng = np.random.default_rng(1)
    labels = (rng.random((rows, 4)) < [0.1, 0.3, 0.5, 0.8]).astype(np.uint8)
    labels[:6] = [[1, 1, 1, 1], [0, 0, 0, 0]] * 3  # both classes in every split
    split = np.arange(rows) % 3
    workdir.write_array("arrays/labels", labels)
    workdir.write_array("arrays/label_mask", np.ones_like(labels))
    workdir.write_array("arrays/split", split.astype(np.int8))
    workdir.write_array("arrays/written", np.ones(rows, np.uint8))
    (run,) = load_runs([location])
    p = labels[split == 0].mean(axis=0)
    expected = float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))
    assert losses.chance_loss(run) == (pytest.approx(expected), losses.CHANCE_FROM_LABELS)
    losses.loss_curves([run], _context(tmp_path, "category"))
    (ax,) = [ax for ax in drawn["category_loss_curves"].axes if ax.get_lines()]
    assert _rules(ax)[1] == [pytest.approx(expected)]
    # Without readable labels the caption says which chance loss is drawn.
    (unlabelled,) = _runs(tmp_path / "bare", "category", poolings=("mean",))
    assert losses.chance_loss(unlabelled) == (pytest.approx(np.log(2)), losses.CHANCE_LOG2)
    (figure,) = losses.loss_curves([unlabelled], _context(tmp_path, "category"))
    assert "log 2" in figure.caption and "could not be read" in figure.caption


@pytest.mark.parametrize("workdirs", [2, 3])
def test_category_panel_titles_do_not_run_into_each_other(tmp_path, drawn, workdirs):
    # Six or nine runs with long labels (the demo has nine): the figure goes to
    # page width and each panel is an inch wide or less. Neighbouring titles
    # keep a visible gap (2 points), not merely touch.
    runs = _runs(tmp_path, "category", (6,) * workdirs, ("mean", "last", "image_mean"))
    for run in runs:
        run.label = f"trained:qwen2_vl · WithCat · {run.pooling} · a long label"
    heatmaps.category_heatmaps(runs, _context(tmp_path, "category"))
    fig = drawn["category_category_f1"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == 3 * workdirs
    boxes = [ax.title.get_window_extent(renderer) for ax in panels]
    gap = 2 * fig.dpi / 72
    for left, right in itertools.pairwise(boxes):
        assert left.x1 + gap <= right.x0, (left, right)


def test_no_run_is_drawn_in_the_baselines_black():
    runs = [types.SimpleNamespace(label=f"run {i}") for i in range(len(style.OKABE_ITO) + 2)]
    colours = style.run_colours(runs)
    assert len(set(colours.values())) == len(style.OKABE_ITO) - 1
    assert "#000000" not in colours.values()


def test_long_loss_curves_keep_few_markers(tmp_path, drawn):
    location = str(tmp_path / "long")
    write_probed_workdir(location, num_layers=3, num_epochs=300, poolings=("mean",))
    losses.loss_curves(load_runs([location]), _context(tmp_path, "caption"))
    lines = [
        line
        for ax in drawn["caption_loss_curves"].axes
        for line in ax.get_lines()
        if len(line.get_xdata()) == 300
    ]
    assert lines
    for line in lines:
        every = line.get_markevery() or 1  # an int: every nth epoch gets a marker
        shown = np.arange(300)[::every]
        assert 10 <= len(shown) <= style.MAX_MARKERS + 1


def test_headline_title_stays_inside_the_figure(tmp_path, drawn):
    runs = _runs(tmp_path, "category")
    task = "category (candidates)"  # the demo's long title was cut at both edges
    curves.headline_curves(runs, _context(tmp_path, task))
    fig = drawn[style.file_stem(task, "headline_per_layer")]
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    page = fig.bbox
    assert page.x0 <= title.x0 and title.x1 <= page.x1, (title, page)
