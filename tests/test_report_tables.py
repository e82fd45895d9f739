"""Tests of the report's numbers: seed statistics, results table, first tokens.

The results table is checked against values recomputed here straight from
metrics.csv with the csv module, independently of probing.reporting.runs.
"""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from probing.reporting import tables
from probing.reporting.runs import ReportError, load_runs
from probing.reporting.statistics import BOOTSTRAP, SEEDS, mean_and_ci, paired_bootstrap_pvalue
from probing.testing.probed import write_probed_workdir

# The peak cell, whatever columns come before it.
PEAK_COLUMN = next(i for i, h in enumerate(tables.RESULTS_HEADER) if h.startswith("peak ["))


def test_mean_and_ci_matches_student_t_interval():
    values = np.array([[0.70, 0.74, 0.75, 0.71], [0.5, 0.5, 0.5, 0.5]])
    mean, low, high = mean_and_ci(values)
    expected = stats.t.interval(0.95, 3, loc=values[0].mean(), scale=stats.sem(values[0]))
    np.testing.assert_allclose(mean, [0.725, 0.5])
    np.testing.assert_allclose([low[0], high[0]], expected)
    assert low[1] == high[1] == 0.5


def test_mean_and_ci_one_seed_collapses_and_nan_is_ignored():
    mean, low, high = mean_and_ci(np.array([[0.8], [np.nan]]))
    assert (mean[0], low[0], high[0]) == (0.8, 0.8, 0.8)
    assert math.isnan(mean[1])
    mean, _, _ = mean_and_ci(np.array([[0.6, np.nan, 0.8]]))
    assert mean[0] == pytest.approx(0.7)


def test_paired_bootstrap_pvalue():
    better = np.array([0.90, 0.91, 0.92, 0.93])
    assert paired_bootstrap_pvalue(better, better - 0.1, num_resamples=999) == pytest.approx(1e-3)
    assert paired_bootstrap_pvalue(better, better) == 1.0
    # Mixed signs: neither certain nor impossible.
    p = paired_bootstrap_pvalue(np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 0.5]))
    assert 0.05 < p < 0.95
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_pvalue(better, better[:2])


def _recompute_from_csv(path: str, metric: str) -> dict[str, float]:
    """Best layer (on val) and its test numbers, straight from metrics.csv."""
    values: dict[tuple[str, str, int], list[float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (row["split"], row["metric"], int(row["layer"]))
            values.setdefault(key, []).append(float(row["value"]))
    layers = sorted({layer for (_, name, layer) in values if name == metric})
    val = [np.mean(values[("val", metric, layer)]) for layer in layers]
    best = layers[int(np.argmax(val))]
    test_best = values[("test", metric, best)]
    half = stats.t.ppf(0.975, len(test_best) - 1) * stats.sem(test_best)
    last = layers[-1]
    return {
        "best_layer": best,
        "peak": np.mean(test_best),
        "peak_ci_low": np.mean(test_best) - half,
        "peak_ci_high": np.mean(test_best) + half,
        "last": np.mean(values[("test", metric, last)]),
        "first": np.mean(values[("test", metric, 0)]),
        "selectivity_at_best": np.mean(values[("test", "selectivity", best)]),
    }


@pytest.mark.parametrize("task,metric", [("caption", "accuracy"), ("category", "macro_f1")])
@pytest.mark.parametrize("with_intervals", [True, False])
def test_results_row_equals_values_recomputed_from_metrics_csv(
    tmp_path, task, metric, with_intervals
):
    location = str(tmp_path / task)
    write_probed_workdir(
        location,
        task=task,
        num_layers=6,
        num_seeds=4,
        peak_layer=3,
        seed=7,
        with_intervals=with_intervals,
    )
    (run,) = load_runs([location])
    row = tables.result_row(run)
    expected = _recompute_from_csv(os.path.join(location, "probes/mean/metrics.csv"), metric)
    if with_intervals:
        # The interval is summary.json's bootstrap ci95, not the seed interval.
        with open(os.path.join(location, "probes/mean/summary.json")) as f:
            ci95 = json.load(f)["layers"][expected["best_layer"]]["test"][metric]["ci95"]
        expected["peak_ci_low"], expected["peak_ci_high"] = ci95
        assert (
            row.ci_source == BOOTSTRAP
            and "(seeds)" not in tables.results_cells([row])[0][PEAK_COLUMN]
        )
        # The fabricated baseline (0.6) is above layer 0 (0.55) and below the peak.
        assert row.strongest_baseline == "always_positive"
        assert row.layers_not_above_baseline.split()[0] == "0"
        assert str(expected["best_layer"]) not in row.layers_not_above_baseline.split()
    else:
        assert row.ci_source == SEEDS and tables.results_cells([row])[0][PEAK_COLUMN].endswith(
            "(seeds)"
        )
        assert row.strongest_baseline == "" and row.layers_not_above_baseline == ""
    assert row.metric == metric
    if task == "category":  # the fixture leaves one category without positives
        assert row.categories_left_out == 1
        assert tables.results_cells([row])[0][1] == "macro_f1 (1 left out)"
    assert row.best_layer == expected["best_layer"]
    assert row.relative_depth == pytest.approx(expected["best_layer"] / 5)
    for field in ("peak", "peak_ci_low", "peak_ci_high", "last", "first", "selectivity_at_best"):
        assert getattr(row, field) == pytest.approx(expected[field], abs=1e-9), field
    assert row.drop_from_peak == pytest.approx(expected["peak"] - expected["last"])
    assert row.gain_over_layer0 == pytest.approx(expected["peak"] - expected["first"])
    assert 0.0 < row.p_peak_better_than_last <= 1.0


def test_best_layer_is_chosen_on_val_and_scored_on_test(tmp_path):
    location = str(tmp_path / "w")
    write_probed_workdir(location, num_layers=3, num_seeds=2)
    # Val peaks at layer 1, test at layer 2: the table must report layer 1's test value.
    val = {0: 0.6, 1: 0.9, 2: 0.7}
    test = {0: 0.55, 1: 0.8, 2: 0.95}
    lines = ["layer,seed,split,metric,value"]
    for layer in range(3):
        for seed in range(2):
            lines.append(f"{layer},{seed},val,accuracy,{val[layer]}")
            lines.append(f"{layer},{seed},test,accuracy,{test[layer] + 0.01 * seed}")
    with open(os.path.join(location, "probes/mean/metrics.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    (run,) = load_runs([location])
    row = tables.result_row(run)
    # metrics.csv no longer matches summary.json: the report falls back to the seed interval.
    assert row.ci_source == SEEDS
    assert (row.best_layer, row.selected_on) == (1, "val")
    assert row.peak == pytest.approx(0.805)
    assert row.last == pytest.approx(0.955)
    assert row.drop_from_peak == pytest.approx(-0.15)
    assert row.gain_over_layer0 == pytest.approx(0.25)
    assert row.p_peak_better_than_last == 1.0  # the last layer is better on every seed
    assert math.isnan(row.selectivity_at_best)


def test_results_csv_round_trips_and_marks_missing_values_empty(tmp_path):
    location = str(tmp_path / "w")
    write_probed_workdir(location, num_layers=4, with_controls=False, peak_layer=3)
    (run,) = load_runs([location])
    row = tables.result_row(run)
    assert row.best_layer == row.last_layer == 3
    assert math.isnan(row.p_peak_better_than_last) and math.isnan(row.selectivity_at_best)
    (parsed,) = list(csv.DictReader(tables.results_csv([row]).splitlines()))
    assert parsed["selectivity_at_best"] == "" and parsed["p_peak_better_than_last"] == ""
    assert float(parsed["peak"]) == row.peak
    (cells,) = tables.results_cells([row])
    assert cells[-1] == "best is last"


def test_metrics_csv_without_a_column_names_file_and_column(tmp_path):
    location = str(tmp_path / "w")
    write_probed_workdir(location, num_layers=3)
    path = os.path.join(location, "probes/mean/metrics.csv")
    with open(path) as f:
        lines = f.read().replace("layer,seed,split,metric,value", "layer,seed,split,name,value")
    with open(path, "w") as f:
        f.write(lines)
    with pytest.raises(ReportError, match=r"metrics.csv lacks column\(s\) metric"):
        load_runs([location])


def test_first_token_table_splits_positive_and_negative_examples():
    examples = [
        {"label": 1, "first_token_topk": [["person", 0.7], ["a", 0.1]]},
        {"label": 1, "first_token_topk": [["person", 0.5]]},
        {"label": 1, "first_token_topk": [["man", 0.5]]},
        {"label": 0, "first_token_topk": [["A", 0.9]]},
        {"label": 0},  # no first token recorded: not counted
    ]
    table = tables.first_token_table(examples, top_k=1)
    assert table.counts == {"positive": 3, "negative": 1}
    assert table.groups["positive"] == [("person", 2 / 3), ("OTHERS", pytest.approx(1 / 3))]
    assert table.groups["negative"] == [("A", 1.0), ("OTHERS", 0.0)]
    header, cells = tables.first_token_cells(table)
    assert header == ["rank", "positive (n=3)", "freq.", "negative (n=1)", "freq."]
    assert cells == [
        ["1", "person", "0.6667", "A", "1.0000"],
        ["", "OTHERS", "0.3333", "OTHERS", "0.0000"],
    ]


def test_first_token_table_absent_without_first_tokens(tmp_path):
    plain = write_probed_workdir(str(tmp_path / "plain"), num_layers=3)
    with_tokens = write_probed_workdir(str(tmp_path / "tok"), num_layers=3, with_first_tokens=True)
    assert tables.load_first_token_table(plain.location) is None
    table = tables.load_first_token_table(with_tokens.location)
    assert table is not None and sum(table.counts.values()) == 40
