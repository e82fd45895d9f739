"""The report of a workdir probed with folds, and the convergence warning.

A planted workdir (signal in one layer, probing.testing.planted) is probed
with 3 grouped folds by the real trainer, then reported. The expected numbers
are computed here from metrics.csv alone (csv module, no probing code): the
best layer is the argmax over layers of the val mean over folds and seeds,
the peak its test mean, the wins the argmax of each fold's val means; the
interval is summary.json's folds x bootstrap ci95, and the table and figure
captions must name it so.
"""

from __future__ import annotations

import collections
import csv
import json
import pathlib
import shutil

import numpy as np
import pytest

from configs.probe import get_config
from probing.probes.stats import CI_LABEL, FOLD_CI_LABEL
from probing.probes.train import train_workdir
from probing.reporting import tables
from probing.reporting.builder import build_report
from probing.reporting.runs import load_runs
from probing.reporting.statistics import FOLDS, layer_interval
from probing.testing.planted import planted_arrays, write_workdir

SIGNAL_LAYER = 2


def _probed(tmp_path, epochs, folds=3):
    arrays = planted_arrays(240, 4, 8, [SIGNAL_LAYER], strength=3.0, seed=3)
    location = str(tmp_path / "w")
    write_workdir(location, arrays)
    config = get_config()
    config.update(
        num_seeds=2,
        epochs=epochs,
        batch_size=32,
        learning_rate=1e-2,
        folds=folds,
        bootstrap_resamples=500,
    )
    train_workdir(location, config)
    return location


def _metrics_by_fold(location):
    """(split, metric) -> {(layer, fold): [values over seeds]} from metrics.csv."""
    table = collections.defaultdict(lambda: collections.defaultdict(list))
    with open(f"{location}/probes/mean/metrics.csv") as f:
        for row in csv.DictReader(f):
            key = (int(row["layer"]), int(row["fold"]))
            table[(row["split"], row["metric"])][key].append(float(row["value"]))
    return table


@pytest.fixture(scope="module")
def fold_report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("folds")
    location = _probed(tmp_path, epochs=40)
    out = tmp_path / "report"
    build_report([location], str(out))
    return location, out


@pytest.mark.slow
def test_fold_report_shows_fold_means_wins_and_the_folds_x_bootstrap_interval(fold_report):
    location, out = fold_report
    table = _metrics_by_fold(location)
    layers, folds = range(4), range(3)

    def mean_over_folds(split, layer):
        values = table[(split, "accuracy")]
        return np.mean([np.mean(values[(layer, f)]) for f in folds])

    best = int(np.argmax([mean_over_folds("val", layer) for layer in layers]))
    wins = collections.Counter(
        int(np.argmax([np.mean(table[("val", "accuracy")][(layer, f)]) for layer in layers]))
        for f in folds
    )
    with open(out / "results.csv") as f:
        (row,) = list(csv.DictReader(f))
    summary = json.loads(pathlib.Path(f"{location}/probes/mean/summary.json").read_text())
    assert best == SIGNAL_LAYER == int(row["best_layer"])
    assert float(row["peak"]) == pytest.approx(mean_over_folds("test", best), abs=1e-9)
    assert float(row["last"]) == pytest.approx(mean_over_folds("test", 3), abs=1e-9)
    ci = summary["layers"][best]["test"]["accuracy"]["ci95"]
    assert [float(row["peak_ci_low"]), float(row["peak_ci_high"])] == pytest.approx(ci)
    assert row["ci_source"] == "folds × bootstrap" and int(row["num_folds"]) == 3
    expected_wins = " ".join(
        f"{layer}:{n}" for layer, n in sorted(wins.items(), key=lambda x: (-x[1], x[0]))
    )
    assert row["best_layer_wins"] == expected_wins
    report = (out / "report.md").read_text()
    wins_cell = ", ".join(
        f"L{layer}: {n}/3" for layer, n in sorted(wins.items(), key=lambda x: (-x[1], x[0]))
    )
    assert "best-layer wins across folds" in report and wins_cell in report
    assert f"peak [{FOLD_CI_LABEL}]" in report and f"peak [{CI_LABEL}]" not in report
    # The headline figure's caption names the interval kind too.
    assert f"(band: {FOLD_CI_LABEL})" in report
    # p (peak > last) on the folds x bootstrap resamples, as summary.json has it.
    assert float(row["p_peak_better_than_last"]) == summary["best_layer"]["vs_last"]["p_a_better"]
    assert row["p_unit"] == "folds × image"
    # The warning says what summary.json's convergence holds (the separable signal layer
    # keeps lowering its val loss: its probes may be flagged, noise layers stop early).
    convergence = summary["convergence"]
    flagged = f"{convergence['not_converged']} of 48 probes did not converge"
    assert (flagged in report) == (convergence["not_converged"] > 0)


@pytest.mark.slow
def test_report_warns_when_probes_hit_the_epoch_budget(tmp_path):
    # Two epochs with patience 5: no probe can have stopped, every one is flagged.
    location = _probed(tmp_path, epochs=2)
    build_report([location], str(tmp_path / "report"))
    report = (tmp_path / "report" / "report.md").read_text()
    summary = json.loads(pathlib.Path(f"{location}/probes/mean/summary.json").read_text())
    convergence = summary["convergence"]
    # 4 layers x 3 folds x 2 seeds x {labels, control}.
    assert convergence["probes"] == convergence["not_converged"] == 48
    # Independently of the flag: in curves.csv every task probe trained to the budget.
    with open(f"{location}/probes/mean/curves.csv") as f:
        assert {int(r["epoch"]) for r in csv.DictReader(f)} == {1, 2}
    assert "WARNING, probes that did not converge" in report
    assert "48 of 48 probes did not converge within max_epochs = 2" in report
    assert "layers 0, 1, 2, 3" in report


@pytest.mark.slow
def test_folds_without_a_bootstrap_fall_back_to_the_fold_interval(fold_report, tmp_path):
    # The same results as if trained with bootstrap_resamples = 0: no ci95 anywhere.
    location, _ = fold_report
    copy = tmp_path / "w"
    shutil.copytree(location, copy)
    (copy / "probes/mean/results.json").unlink()  # a hand-edited folder is read as is
    path = copy / "probes/mean/summary.json"
    summary = json.loads(path.read_text())
    for entry in summary["layers"]:
        for values in entry["test"].values():
            values.pop("ci95", None)
    path.write_text(json.dumps(summary))
    (run,) = load_runs([str(copy)])
    _, low, high, source = layer_interval(run, "accuracy")
    assert source == FOLDS
    for entry in summary["layers"]:
        layer = entry["layer"]
        assert [low[layer], high[layer]] == entry["test"]["accuracy"]["fold_interval"]
    row = tables.result_row(run)
    assert tables.results_cells([row])[0][5].endswith("(folds)")
